#!/usr/bin/env bash
# A Redis Cluster for the tests, from Debian's redis-server on loopback:
# three primaries with one replica each, nothing kept on disk.
#
#   tests/redis/cluster.sh start DIR FIRST_PORT   # ports FIRST_PORT..+5; prints the store URL
#   tests/redis/cluster.sh stop DIR
#
# With REDIS_TLS_DIR set, over TLS only (see tls.sh): a rediss+cluster:// URL.
set -euo pipefail
. "$(dirname "$0")/tls.sh"

command=${1:?start or stop}
dir=${2:?a directory for the nodes}

case "$command" in
start)
    first=${3:?the first port}
    mkdir -p "$dir"
    nodes=()
    for i in 0 1 2 3 4 5; do
        port=$((first + i))
        tls_server_args "$port"
        redis-server "${server_args[@]}" --bind 127.0.0.1 --daemonize yes \
            --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
            --cluster-node-timeout 2000 --save "" --appendonly no --dir "$dir" \
            --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
        nodes+=("127.0.0.1:$port")
    done
    for node in "${nodes[@]}"; do
        for _ in $(seq 1 50); do
            cli -p "${node#*:}" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log"
    # Every node must agree the cluster is up before a test may use it.
    for node in "${nodes[@]}"; do
        for _ in $(seq 1 100); do
            cli -p "${node#*:}" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
            sleep 0.1
        done
        cli -p "${node#*:}" cluster info | grep -q '^cluster_state:ok' \
            || { echo "node $node never saw the cluster up" >&2; cat "$dir/create.log" >&2; exit 1; }
    done
    # And every replica in sync with its primary (wait_replicas needs them).
    for node in "${nodes[@]}"; do
        for _ in $(seq 1 100); do
            info=$(cli -p "${node#*:}" info replication)
            echo "$info" | grep -q '^role:master' && break
            echo "$info" | grep -q '^master_link_status:up' && break
            sleep 0.1
        done
    done
    echo "$(scheme)+cluster://$(IFS=,; echo "${nodes[*]}")/"
    ;;
stop)
    "$(dirname "$0")/stop.sh" "$dir"
    ;;
*)
    echo "usage: $0 start DIR FIRST_PORT | stop DIR" >&2
    exit 2
    ;;
esac
