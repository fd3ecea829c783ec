#!/usr/bin/env bash
# Model-checks the login, refresh and logout state machines (model/login.pml,
# model/refresh.pml, model/logout.pml) with Spin: each real model must have
# no counterexample over a complete search, and each mutant (a negative
# control) must have one that breaks the property it stands for.
#
#   model/check.sh          the CI bounds (3 callbacks, 2 requests, or 2 logins, a refresh
#                           and a logout; clock 0..4, lease 2): under a minute
#   model/check.sh --large  a larger clock (0..7, lease 3; the logout 0..5, lease 2), for the record
#
# Exits non-zero if the real model fails, its search was cut short, or a
# mutant stops failing.
set -euo pipefail
cd "$(dirname "$0")"
bounds=(-DMAXT=4 -DLEASE=2)
logout_bounds=(-DMAXT=4 -DLEASE=2)
memory=4096
if [ "${1:-}" = "--large" ]; then
    bounds=(-DMAXT=7 -DLEASE=3)
    logout_bounds=(-DMAXT=5 -DLEASE=2)
    memory=16384
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp login.pml refresh.pml logout.pml "$work/"

# check MODEL NAME EXPECT [-DDEFINE…]: EXPECT is "none" or the text of the
# assertion a counterexample must break.
status=0
check() {
    local model=$1 name=$2 expect=$3
    shift 3
    (
        cd "$work"
        rm -f pan pan.* ./*.trail
        if [ "$model" = logout.pml ]; then
            spin -a "${logout_bounds[@]}" "$@" "$model" >/dev/null
        else
            spin -a "${bounds[@]}" "$@" "$model" >/dev/null
        fi
        gcc -O2 -w -DSAFETY -DCOLLAPSE -DMEMLIM="$memory" -o pan pan.c
        ./pan -m200000 >report.txt 2>&1 || true
    )
    local report="$work/report.txt"
    local errors states
    errors=$(grep -oE 'errors: [0-9]+' "$report" | grep -oE '[0-9]+' || echo "?")
    states=$(grep -oE '[0-9.e+]+ states, stored' "$report" | head -1 || true)
    if [ "$expect" = none ]; then
        # A search cut short (depth or memory) proves nothing.
        if [ "$errors" = 0 ] && ! grep -qE "max search depth too small|reached -DMEMLIM bound|out of memory" "$report"; then
            echo "ok      $name: no counterexample ($states)"
        else
            echo "FAILED  $name: expected no counterexample"; cat "$report"; status=1
        fi
    else
        if [ "$errors" != 0 ] && grep "assertion violated" "$report" | grep -qF "$expect"; then
            echo "ok      $name: counterexample, as it must: $(grep -o 'assertion violated.*' "$report" | head -1)"
        else
            echo "FAILED  $name: expected a counterexample breaking ($expect…)"; cat "$report"; status=1
        fi
    fi
}

# check_ends MODEL NAME EXPECT [-DDEFINE…]: liveness, the model's LIVENESS
# formula (everything ends) under weak fairness; EXPECT is "none" or
# "cycle" (a run that never ends).
check_ends() {
    local model=$1 name=$2 expect=$3
    shift 3
    (
        cd "$work"
        rm -f pan pan.* ./*.trail
        spin -a "${bounds[@]}" -DLIVENESS "$@" "$model" >/dev/null
        gcc -O2 -w -DCOLLAPSE -DNFAIR=3 -DMEMLIM="$memory" -o pan pan.c
        ./pan -a -f -m200000 >report.txt 2>&1 || true
    )
    local report="$work/report.txt"
    local errors
    errors=$(grep -oE 'errors: [0-9]+' "$report" | grep -oE '[0-9]+' || echo "?")
    if [ "$expect" = none ]; then
        if [ "$errors" = 0 ] && ! grep -qE "max search depth too small|reached -DMEMLIM bound|out of memory" "$report"; then
            echo "ok      $name: every run ends ($(grep -oE '[0-9.e+]+ states, stored' "$report" | head -1))"
        else
            echo "FAILED  $name: expected every run to end"; cat "$report"; status=1
        fi
    elif [ "$errors" != 0 ] && grep -q "acceptance cycle" "$report"; then
        echo "ok      $name: a run that never ends, as it must"
    else
        echo "FAILED  $name: expected a run that never ends"; cat "$report"; status=1
    fi
}

check login.pml "the login, every property"            none
check login.pml "mutant: no fence on the commit"       "(phase!=1)"      -DNO_FENCE -DONLY_FENCE
check login.pml "mutant: the claim's verdict ignored"  "(exchanges<=1)"  -DCLAIM_IGNORED -DONLY_I1
check login.pml "mutant: claim ignored, two sessions"  "(got[k]==255)"   -DCLAIM_IGNORED -DONLY_I2
check login.pml "mutant: the case study's naive flow"  "(exchanges<=1)"  -DNAIVE -DONLY_I1
check login.pml "mutant: naive flow, session unfenced" "(phase==2)"      -DNAIVE -DONLY_I3
check refresh.pml "the refresh, every property"        none
check refresh.pml "mutant: a refresh with no lease"    "!(used[t])"      -DNO_LEASE -DONLY_I5
check refresh.pml "mutant: tokens written unfenced"    "!(signed_out)"   -DNO_FENCE -DONLY_SIGNOUT
# Not a mutant: what no store can cover, kept visible. A request that dies
# after the provider rotated its token loses the new one; the next refresh
# presents the old one (README, "What a failover can lose").
check refresh.pml "known: a crash after the provider answered" "!(used[t])" -DCRASH_AFTER_IDP -DONLY_I5
check logout.pml "the logout, every property"              none
check logout.pml "mutant: delete only, no tombstone"       "key_iat"     -DDELETE_ONLY -DONLY_I8
check logout.pml "mutant: revoking deletes, no marker"     "key_iat"     -DNO_MARKER -DONLY_I8
check logout.pml "mutant: a tombstone of the skew only"    "key_iat"     -DSHORT_TOMBSTONE -DONLY_I8
check logout.pml "mutant: keys unlisted before revoked"    "key_iat"     -DREMOVE_FIRST -DONLY_I8
check logout.pml "mutant: refreshed tokens unfenced"       "key_iat[2]"  -DREFRESH_UNFENCED -DONLY_I8
check logout.pml "mutant: every sign-in refused"           "!(after[i])" -DIGNORE_IAT -DONLY_LATER
check_ends login.pml "the login: every callback ends"             none
check_ends login.pml "mutant: a wait without a bound never ends"  cycle -DUNBOUNDED_WAIT
check_ends refresh.pml "the refresh: every request ends"          none
if [ "${1:-}" = "--large" ]; then
    # Four minutes and more: for the record only.
    bounds=("${logout_bounds[@]}")
    check_ends logout.pml "the logout: it and everything it races end" none
fi
exit $status
