#!/usr/bin/env bash
# One Redis server for the tests, from Debian's redis-server on loopback,
# nothing kept on disk.
#
#   tests/redis/single.sh start DIR PORT   # prints the store URL
#   tests/redis/single.sh stop DIR
#
# With REDIS_TLS_DIR set, over TLS only (see tls.sh): a rediss:// URL.
set -euo pipefail
. "$(dirname "$0")/tls.sh"

command=${1:?start or stop}
dir=${2:?a directory for the server}

case "$command" in
start)
    port=${3:?the port}
    mkdir -p "$dir"
    tls_server_args "$port"
    # Also on 127.0.0.2, a loopback address its certificate does not name.
    redis-server "${server_args[@]}" --bind 127.0.0.1 127.0.0.2 --daemonize yes --save "" \
        --appendonly no --dir "$dir" --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
    for _ in $(seq 1 50); do
        cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    cli -p "$port" ping >/dev/null || { echo "nothing answers on port $port" >&2; exit 1; }
    echo "$(scheme)://127.0.0.1:$port/0"
    ;;
stop)
    "$(dirname "$0")/stop.sh" "$dir"
    ;;
*)
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
