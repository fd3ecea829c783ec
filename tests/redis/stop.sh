#!/usr/bin/env bash
# Stops the servers tests/redis/cluster.sh or sentinel.sh started in DIR
# (their pid files), waits until they are gone so that their ports are free
# again, and removes DIR.
#
#   tests/redis/stop.sh DIR
set -euo pipefail
dir=${1:?the directory the servers run from}
pids=()
for pidfile in "$dir"/redis-*.pid; do
    [ -e "$pidfile" ] && pids+=("$(cat "$pidfile")")
done
# CONT too: a test that failed with a server stopped (SIGSTOP) left it
# unable to act on TERM.
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null && kill -CONT "$pid" 2>/dev/null || true; done
for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
done
rm -rf "$dir"
