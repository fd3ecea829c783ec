/*
 * The logout of src/logout.rs (SessionIndex::register, end, revoke) against
 * what it races, on the store contract: one user, a session already signed
 * in (key S, listed in the user's index), NL logins of that user each at
 * any point of its exchange, a refresh of S in flight, and one back-channel
 * logout for the user, whose first attempt may fail part-way (the store went
 * away) and is then retried by the provider. model/README.md maps it to the
 * code.
 *
 * Steps. A store call pair "get, then a CAS at the version read, again if
 * the CAS lost" is one atomic step at the CAS that wins: the version did
 * not change between, so neither did the record, and a lost CAS only
 * retries. Where the value written depends on the clock read before the
 * get (the tombstone's end), the read and the CAS stay two steps. A
 * login's claim is taken as its provider answers (login.pml checks the
 * claim's races); that only widens what a login may do here.
 *
 * Assumption, stated: the two store calls between a login's "no commit
 * after the lease" check and its commit take less than the clock skew (the
 * Clock does not pass lease_until + SKEW while a login is between them).
 * The provider's and latchkey's clocks are one clock here (their skew is
 * what SKEW stands for), and ID token and logout token `iat` have the
 * clock's resolution.
 *
 * Mutants: DELETE_ONLY (the logout deletes the sessions it finds and
 * leaves no tombstone), NO_MARKER (revoking deletes the session instead of
 * writing the marker), SHORT_TOMBSTONE (the tombstone is kept for the
 * clock skew only, not the exchange lease too), REMOVE_FIRST (the listed
 * keys come off the index before they are revoked), REFRESH_UNFENCED (the
 * refreshed tokens are written without the lease's version), and
 * IGNORE_IAT (the tombstone refuses every sign-in while it lasts, also
 * those the provider issued after the logout).
 */

#ifndef NL
#define NL 2          /* logins of the user in flight around the logout: 1 or 2 */
#endif
#define S 2           /* the session signed in before: key 2 (logins use 0 and 1) */
#ifndef LEASE
#define LEASE 2       /* exchange_lease, in model clock ticks */
#endif
#ifndef SKEW
#define SKEW 1        /* clock_skew */
#endif
#ifdef SHORT_TOMBSTONE
#define TOMB SKEW
#else
#define TOMB (LEASE + SKEW)   /* the tombstone's (and the marker's) lifetime */
#endif
#ifndef MAXT
#define MAXT 4
#endif
#define NONE 255

#if defined(ONLY_I8) || defined(ONLY_LATER)
#define ONE_PROPERTY
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_I8)
#define I8(c) assert(c)
#else
#define I8(c) skip
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_LATER)
#define LATER(c) assert(c)
#else
#define LATER(c) skip
#endif

/* Session keys: absent, a sealed session, or the revoked marker (which
 * expires: the contract makes an expired record absent). */
mtype = { GONE, LIVE, REVOKED };
mtype key_state[3];
byte s_version = 1;     /* the store's version of S (the refresh's fence) */
byte marker_until[3];
byte key_iat[3];        /* the iat of the sign-in the session is of */

/* The user's index record (logout:{…}:hash(sub)). */
byte ix_version = 1;
bool listed[3];
byte lo_at = NONE;      /* logged_out_at: the logout token's iat */
byte tomb_until = 0;    /* tombstone_until; 0: none */

byte now = 0;
bool ended = false;     /* the logout was accepted: answered 200 */
bool after[2];          /* login i exchanged after the logout ended, in a later tick than its iat */
bool committed[2];
byte window_until[2];   /* the assumption's clock guard; 0: not in the window */
bool done[4];           /* logins 0 and 1, the refresh (2), the logout (3) */

/* What the store answers for key k now. */
#define eff(k) (key_state[k] == REVOKED && marker_until[k] <= now -> GONE : key_state[k])
/* Each step that stands for store calls, a provider call, a failure or a
 * clock tick prints its events ("EV ..."; only a simulation prints them):
 * tests/model_trails.rs replays a counterexample's events on the code.
 * Logins are processes 0 and 1, the refresh 2, the logout 3. */
/* Whether session k is of a sign-in the logout covers. */
#define covered(k) (key_iat[k] <= lo_at)
#define covered_live(k) (eff(k) == LIVE && covered(k))
/* I8: no session of a sign-in the logout covers is usable. */
#define none_covered_live (!covered_live(0) && !covered_live(1) && !covered_live(S))
/* The assumption: the clock stays within login i's window. */
#define clock_may_pass(i) (window_until[i] == 0 || now + 1 < window_until[i])

active proctype Clock() {
    do
    :: atomic { now < MAXT && clock_may_pass(0) && clock_may_pass(1) -> now++; printf("EV tick\n") }
    :: now >= MAXT -> break
    od
}

/* LoginFlow::exchange from the provider's answer on. */
proctype Login(byte i) {
    byte iat;
    /* The provider answers (its ID token issued now) within the lease
     * (answer_within), and the lease check passes: the window opens. */
    atomic {
        printf("EV %d start\n", i); printf("EV %d exchange ok\n", i);
        iat = now;
        after[i] = (ended && now > lo_at);
        window_until[i] = now + LEASE + SKEW
    };
    /* SessionIndex::register: refused if tombstoned, else the key is listed. */
    atomic {
        if
#ifdef IGNORE_IAT
        :: tomb_until > now ->
#else
        :: tomb_until > now && iat <= lo_at ->
#endif
            printf("EV %d get\n", i);
            LATER(!after[i]);       /* a sign-in after the logout is never refused by it */
            window_until[i] = 0;
            goto finish             /* Failed{logged_out} */
        :: else -> printf("EV %d get\n", i); printf("EV %d cas\n", i); ix_version++; listed[i] = true
        fi
    };
    /* commit_login: the session is inserted if its key is free. */
    atomic {
        printf("EV %d commit\n", i);
        window_until[i] = 0;
        if
        :: eff(i) == GONE ->
            key_state[i] = LIVE; key_iat[i] = iat; committed[i] = true;
            I8(!(ended && covered(i)))
        :: else ->
            LATER(!after[i])        /* the key taken by a revocation */
        fi
    };
finish:
    /* a finished process's locals are part of every later state: clear them */
    atomic { iat = 0; done[i] = true }
}

/* Sessions::load's refresh of S: the lease taken by CAS, the provider
 * called with no lock held, the tokens written by CAS at the lease's
 * version. */
proctype Refresh() {
    byte lease_version;
    atomic {
        if
        :: eff(S) == LIVE -> printf("EV 2 get\n"); printf("EV 2 cas\n"); s_version++; lease_version = s_version
        :: else -> printf("EV 2 get\n"); goto finish      /* NotFound */
        fi
    };
    atomic {
        printf("EV 2 refresh ok\n"); printf("EV 2 cas\n");
#ifdef REFRESH_UNFENCED
        if
        :: true ->
#else
        if
        :: eff(S) != GONE && s_version == lease_version ->
#endif
            key_state[S] = LIVE; s_version++;
            I8(!(ended && covered(S)))
        :: else -> skip             /* Superseded: the next read finds it revoked */
        fi
    };
finish:
    atomic { lease_version = 0; done[2] = true }
}

/* Every write to S changes its version (only the refresh reads it). */
#define bump(k) s_version = (k == S -> s_version + 1 : s_version)
/* SessionIndex::revoke(k): the marker replaces whatever is there. */
#ifdef NO_MARKER
#define revoke(k) atomic { printf("EV 3 get\n"); printf("EV 3 write\n"); key_state[k] = (key_state[k] == LIVE -> GONE : key_state[k]); bump(k) }
#else
#define revoke(k) \
    atomic { \
        if \
        :: eff(k) != REVOKED -> printf("EV 3 get\n"); printf("EV 3 write\n"); \
            key_state[k] = REVOKED; bump(k); marker_until[k] = now + TOMB \
        :: else -> printf("EV 3 get\n") \
        fi \
    }
#endif

/* Step 2 for key k, if the tombstone's CAS listed it; the store may go
 * away before it (the first attempt only), and the provider retries. */
#define revoke_listed(k) \
    if \
    :: taken[k] -> \
        if \
        :: may_fail -> may_fail = false; printf("EV 3 fail\n"); goto attempt \
        :: skip \
        fi; \
        revoke(k) \
    :: else -> skip \
    fi

#define take_listed taken[0] = listed[0]; taken[1] = listed[1]; taken[S] = listed[S]

/* SessionIndex::end for the user, as the back-channel logout calls it. */
proctype Logout() {
    byte token_iat, v, read_at;
    bool taken[3];
    bool may_fail = true;
    atomic { token_iat = now; printf("EV 3 start\n") };
attempt:
#ifdef REMOVE_FIRST
    /* 3. before 2.: the keys come off the list first */
    atomic {
        ix_version++; take_listed;
        listed[0] = false; listed[1] = false; listed[S] = false
    };
    if
    :: may_fail -> may_fail = false; goto attempt
    :: skip
    fi;
#endif
    /* 1. the tombstone, and the keys listed when it was written: the clock
     * and the index read, then the CAS at that version. */
    do
    :: atomic { read_at = now; v = ix_version; printf("EV 3 get\n") };
       atomic {
           printf("EV 3 cas\n");
           if
           :: ix_version == v ->
               ix_version++;
               lo_at = (lo_at == NONE -> token_iat : lo_at);
#ifndef DELETE_ONLY
               tomb_until = (read_at + TOMB > tomb_until -> read_at + TOMB : tomb_until);
#endif
#ifndef REMOVE_FIRST
               take_listed;
#endif
               read_at = 0; v = 0;
               break
           :: else -> read_at = 0; v = 0
           fi
       }
    od;
    /* 2. every listed key revoked */
    revoke_listed(0);
    revoke_listed(1);
    revoke_listed(S);
#ifndef REMOVE_FIRST
    /* 3. only then off the list (keys listed since stay on it) */
    atomic {
        printf("EV 3 get\n"); printf("EV 3 cas\n");
        ix_version++;
        listed[0] = (listed[0] && !taken[0]);
        listed[1] = (listed[1] && !taken[1]);
        listed[S] = (listed[S] && !taken[S])
    };
#endif
    atomic {
        ended = true;
        I8(none_covered_live);
        token_iat = 0; taken[0] = false; taken[1] = false; taken[S] = false;
        done[3] = true
    }
}

/* Once everything has ended and the clock has stopped: */
active proctype Invariants() {
    atomic {
        (done[0] && done[1] && done[2] && done[3] && now >= MAXT) ->
        I8(none_covered_live);
        /* signing in again afterwards works: committed and still live */
        LATER(!(after[0] && committed[0]) || eff(0) == LIVE);
        LATER(!(after[1] && committed[1]) || eff(1) == LIVE)
    }
}

#ifdef LIVENESS
/* The logout is accepted, and every login and the refresh end: checked
 * with weak fairness, `pan -a -f`. */
ltl everything_ends { <> (done[0] && done[1] && done[2] && done[3]) }
#endif

init {
    atomic {
        key_state[0] = GONE; key_state[1] = GONE; key_iat[0] = NONE; key_iat[1] = NONE;
        /* S: signed in at 0, listed in the index */
        key_state[S] = LIVE; key_iat[S] = 0; listed[S] = true;
        run Login(0);
        if
        :: NL > 1 -> run Login(1)
        :: else -> done[1] = true
        fi;
        run Refresh();
        run Logout()
    }
}
