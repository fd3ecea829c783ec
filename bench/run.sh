#!/usr/bin/env bash
# latchkey's benchmark: one command, everything on 127.0.0.1.
#
#   bench/run.sh           full run (a few minutes); writes bench/RESULTS.md
#   bench/run.sh --quick   a few-second smoke (what CI runs so that it cannot rot)
#
# Installs what it needs from Debian's packages: wrk for the load, and for a
# full run nginx (forward-auth row) and Apache with mod_auth_openidc.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ "$quick" = 0 ]; then
    command -v nginx >/dev/null 2>&1 || need+=(nginx)
    command -v apache2 >/dev/null 2>&1 || need+=(apache2)
    [ -e /usr/lib/apache2/modules/mod_auth_openidc.so ] || need+=(libapache2-mod-auth-openidc)
fi
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "$quick" = 1 ]; then
    # The smoke reuses the test build; numbers from it mean nothing.
    cargo build -q --all-features --bin latchkey --example bench
    exec target/debug/examples/bench run --quick
else
    cargo build -q --release --all-features --bin latchkey --example bench
    exec target/release/examples/bench run
fi
