#!/usr/bin/env bash
# Model-checks the login state machine (model/login.pml) with Spin: the real
# model must have no counterexample, and each mutant (a negative control)
# must have one that breaks the property it stands for.
#
#   model/check.sh          the CI bounds (3 callbacks, clock 0..4, lease 2): seconds
#   model/check.sh --large  a larger clock (0..7, lease 3), for the record
#
# Exits non-zero if the real model fails or a mutant stops failing.
set -euo pipefail
cd "$(dirname "$0")"
bounds=(-DMAXT=4 -DLEASE=2)
[ "${1:-}" = "--large" ] && bounds=(-DMAXT=7 -DLEASE=3)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp login.pml "$work/"

# check NAME EXPECT [-DDEFINE…]: EXPECT is "none" or the assertion text a
# counterexample must report.
status=0
check() {
    local name=$1 expect=$2
    shift 2
    (
        cd "$work"
        rm -f pan pan.* login.pml.trail
        spin -a "${bounds[@]}" "$@" login.pml >/dev/null
        gcc -O2 -DSAFETY -DMEMLIM=2048 -o pan pan.c
        ./pan -m200000 >report.txt 2>&1 || true
    )
    local report="$work/report.txt"
    local errors states
    errors=$(grep -oE 'errors: [0-9]+' "$report" | grep -oE '[0-9]+' || echo "?")
    states=$(grep -oE '[0-9.e+]+ states, stored' "$report" | head -1 || true)
    if [ "$expect" = none ]; then
        if [ "$errors" = 0 ] && ! grep -q "max search depth too small" "$report"; then
            echo "ok      $name: no counterexample ($states)"
        else
            echo "FAILED  $name: expected no counterexample"; cat "$report"; status=1
        fi
    else
        if [ "$errors" != 0 ] && grep -qF "assertion violated ($expect" "$report"; then
            echo "ok      $name: counterexample, as it must: $(grep -o 'assertion violated.*' "$report" | head -1)"
        else
            echo "FAILED  $name: expected a counterexample breaking ($expect…)"; cat "$report"; status=1
        fi
    fi
}

check "the login, every property"             none
check "mutant: no fence on the commit"        "phase!=1"                  -DNO_FENCE -DONLY_FENCE
check "mutant: the claim's verdict ignored"   "exchanges<=1"              -DCLAIM_IGNORED -DONLY_I1
check "mutant: claim ignored, two sessions"   "(got[k]==255)"             -DCLAIM_IGNORED -DONLY_I2
check "mutant: the case study's naive flow"   "exchanges<=1"              -DNAIVE -DONLY_I1
check "mutant: naive flow, session unfenced"  "(phase==2)"                -DNAIVE -DONLY_I3
exit $status
