#!/usr/bin/env bash
# Redis with Sentinel for the tests, from Debian's redis-server on loopback:
# one master, one replica, three sentinels watching them as "latchkey",
# nothing kept on disk.
#
#   tests/redis/sentinel.sh start DIR FIRST_PORT   # ports FIRST_PORT..+4; prints the store URL
#   tests/redis/sentinel.sh rejoin DIR PORT  # a server again on PORT, as a replica of the current master
#   tests/redis/sentinel.sh stop DIR
#
# With REDIS_TLS_DIR set, over TLS only (see tls.sh): a rediss+sentinel:// URL.
set -euo pipefail
. "$(dirname "$0")/tls.sh"

command=${1:?start or stop}
dir=${2:?a directory for the servers}

up() { # port: waits until it answers PING
    for _ in $(seq 1 50); do
        cli -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    return 1
}

common=(--bind 127.0.0.1 --daemonize yes --save "" --appendonly no --dir "$dir")

case "$command" in
start)
    first=${3:?the first port}
    master=$first replica=$((first + 1))
    mkdir -p "$dir"
    tls_server_args "$master"
    redis-server "${server_args[@]}" "${common[@]}" \
        --pidfile "$dir/redis-$master.pid" --logfile "$dir/redis-$master.log"
    up "$master"
    tls_server_args "$replica"
    redis-server "${server_args[@]}" "${common[@]}" --replicaof 127.0.0.1 "$master" \
        --pidfile "$dir/redis-$replica.pid" --logfile "$dir/redis-$replica.log"
    up "$replica"
    sentinels=()
    for i in 2 3 4; do
        port=$((first + i))
        if [ -n "${REDIS_TLS_DIR:-}" ]; then
            listen="port 0
tls-port $port
tls-cert-file $REDIS_TLS_DIR/server.pem
tls-key-file $REDIS_TLS_DIR/server.key
tls-ca-cert-file $REDIS_TLS_DIR/ca.pem
tls-auth-clients ${REDIS_TLS_AUTH_CLIENTS:-optional}
tls-replication yes"
        else
            listen="port $port"
        fi
        cat >"$dir/sentinel-$port.conf" <<CONF
$listen
bind 127.0.0.1
daemonize yes
pidfile $dir/redis-$port.pid
logfile $dir/sentinel-$port.log
dir $dir
sentinel monitor latchkey 127.0.0.1 $master 2
sentinel down-after-milliseconds latchkey 1000
sentinel failover-timeout latchkey 3000
sentinel parallel-syncs latchkey 1
CONF
        redis-server "$dir/sentinel-$port.conf" --sentinel
        up "$port"
        sentinels+=("127.0.0.1:$port")
    done
    # Ready when the replica is in sync and every sentinel knows the
    # replica and the two other sentinels (a failover needs two of three).
    field() { # sentinel-port name: the value of one field of SENTINEL MASTER
        cli -p "$1" sentinel master latchkey 2>/dev/null \
            | grep -A1 "^$2\$" | tail -1
    }
    ready() {
        cli -p "$replica" info replication | grep -q '^master_link_status:up' || return 1
        for s in "${sentinels[@]}"; do
            [ "$(field "${s#*:}" num-slaves)" = 1 ] || return 1
            [ "$(field "${s#*:}" num-other-sentinels)" = 2 ] || return 1
        done
    }
    for _ in $(seq 1 150); do
        ready && break
        sleep 0.1
    done
    ready || { echo "the sentinels never saw the whole set" >&2; exit 1; }
    echo "$(scheme)+sentinel://$(IFS=,; echo "${sentinels[*]}")/latchkey/0"
    ;;
rejoin)
    # After a failover: the old master (killed) back, as the sentinels would
    # have it, a replica of the master they name now; ready once in sync.
    port=${3:?the port}
    sentinel=$(sed -n 's/^\(tls-\)\{0,1\}port \([1-9][0-9]*\)$/\2/p' "$(ls "$dir"/sentinel-*.conf | head -1)" | head -1)
    master=$(cli -p "$sentinel" sentinel get-master-addr-by-name latchkey | tail -1)
    tls_server_args "$port"
    redis-server "${server_args[@]}" "${common[@]}" --replicaof 127.0.0.1 "$master" \
        --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
    for _ in $(seq 1 100); do
        cli -p "$port" info replication 2>/dev/null | grep -q '^master_link_status:up' && exit 0
        sleep 0.1
    done
    echo "the server on $port never caught up with the master on $master" >&2
    exit 1
    ;;
stop)
    "$(dirname "$0")/stop.sh" "$dir"
    ;;
*)
    echo "usage: $0 start DIR FIRST_PORT | rejoin DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
