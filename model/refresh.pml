/*
 * The refresh of src/session.rs (Sessions::load, try_refresh, sign_out)
 * against the store contract, for one signed-in session whose access token
 * is due, NRQ requests of it on any replicas, a sign-out at any moment, and
 * a provider whose refresh tokens rotate and which revokes the grant when a
 * rotated one comes back. model/README.md maps it to the code.
 *
 * Assumption, stated: a lease's holder reaches the provider and has its
 * answer within the lease (the clock does not pass a lease while its holder
 * is working: in the code, the provider's request timeout is shorter than
 * the lease). A
 * request may crash at any step before the provider answered; one that
 * crashes after (the provider rotated, the new token is lost) is the case
 * no store can cover (README, "What a failover can lose"): -DCRASH_AFTER_IDP
 * lets it happen, and the check expects its counterexample.
 *
 * Mutants: NO_LEASE (a due request refreshes without taking the lease),
 * NO_FENCE (the refreshed tokens are written without the lease's version).
 */

#define NRQ 2
#ifndef LEASE
#define LEASE 2
#endif
#ifndef MAXT
#define MAXT 4
#endif

#if defined(ONLY_I5) || defined(ONLY_SIGNOUT)
#define ONE_PROPERTY
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_I5)
#define I5(c) assert(c)
#else
#define I5(c) skip
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_SIGNOUT)
#define SIGNOUT(c) assert(c)
#else
#define SIGNOUT(c) skip
#endif

/* The session record. */
bool exists = true;
byte version = 1;
byte lease_until = 0;   /* 0: no lease */
byte rt = 1;            /* the refresh token the record holds */
bool due = true;        /* the access token is within refresh_before_expiry */

/* The provider: the newest refresh token of the grant, which ones were
 * used, whether the grant was revoked, and calls in flight. */
byte idp_rt = 1;
bool used[8];
bool revoked = false;
byte in_flight = 0;
/* Holders of a lease between taking it and handling the provider's answer. */
byte working = 0;

bool signed_out = false;
byte now = 0;
bool done[NRQ];

/* Each step that stands for a store call, a provider call, a crash or a
 * clock tick prints an event ("EV ..."; only a simulation prints it):
 * tests/model_trails.rs replays a counterexample's events on the code.
 * The sign-out is process 9. */
active proctype Clock() {
    do
    :: atomic { now < MAXT && !(working > 0 && now + 1 >= lease_until) -> now++; printf("EV tick\n") }
    :: now >= MAXT -> break
    od
}

/* sign_out: deletes the record (a later CAS cannot revive it). */
active proctype SignOut() {
    if
    :: atomic { exists = false; version++; signed_out = true; printf("EV 9 delete\n") }
    :: skip
    fi
}

/* The provider's refresh grant for token `t`: rotation with reuse detection. */
inline refresh_at_idp(t, ok, fresh) {
    atomic {
        in_flight++;
        I5(in_flight <= 1);          /* no two refreshes of one session overlap */
        I5(!used[t]);                /* no rotated refresh token presented twice */
        if
        :: revoked || used[t] -> revoked = true; ok = false; printf("EV %d refresh invalid\n", me)
        :: else ->
            used[t] = true; idp_rt++; fresh = idp_rt;
            if
            :: ok = true; printf("EV %d refresh ok\n", me)
            :: ok = false; fresh = 0   /* a transient error: nothing rotated */
               ; idp_rt--; used[t] = false; printf("EV %d refresh transient\n", me)
            fi
        fi
    }
}

proctype Request(byte me) {
    byte v, until, t, lease_v, fresh;
    bool alive, is_due, ok, won;
read:
    atomic { alive = exists; v = version; until = lease_until; t = rt; is_due = due; printf("EV %d get\n", me) };
    if
    :: printf("EV %d crash\n", me); goto finish      /* killed */
    :: skip
    fi;
    if
    :: !alive -> goto finish                       /* NotFound */
    :: alive && !is_due -> goto finish             /* served */
#ifndef NO_LEASE
    :: alive && is_due && until > now && now < MAXT -> goto read /* someone refreshes: wait */
    :: alive && is_due && until > now && now >= MAXT -> goto finish /* the bounded wait ends: 503 */
    :: alive && is_due && until <= now ->
#else
    :: alive && is_due ->
#endif
        /* take the refresh lease: CAS at the version read */
        atomic {
            printf("EV %d cas\n", me);
            won = (exists && version == v);
#ifndef NO_LEASE
            if
            :: won -> version++; lease_until = now + LEASE; working++
            :: else -> skip
            fi
#endif
#ifdef NO_LEASE
            if
            :: won -> working++
            :: else -> skip
            fi
#endif
        };
        if
        :: !won -> goto read
        :: else -> skip
        fi;
        lease_v = v + 1;
#ifdef NO_LEASE
        lease_v = v;
#endif
        if
        :: atomic { working--; printf("EV %d crash\n", me) }; goto finish    /* killed holding the lease: it runs out */
        :: skip
        fi;
        refresh_at_idp(t, ok, fresh);
#ifdef CRASH_AFTER_IDP
        if
        :: atomic { in_flight--; working--; printf("EV %d crash\n", me) }; goto finish     /* its lease runs out by the clock */
        :: skip
        fi;
#endif
        if
        :: ok ->
            atomic {
                in_flight--; working--; printf("EV %d cas\n", me);
#ifdef NO_FENCE
                won = true;
#else
                won = (exists && version == lease_v);
#endif
                if
                :: won ->
                    SIGNOUT(!signed_out);   /* sign-out is final */
                    exists = true; version++; rt = fresh; due = false; lease_until = 0
                :: else -> skip
                fi
            };
            if
            :: won -> goto finish
            :: else -> goto read                  /* Superseded */
            fi
        :: !ok && revoked ->
            atomic { in_flight--; working--; exists = false; version++; printf("EV %d delete\n", me) }   /* invalid_grant: the session ends */
            goto finish
        :: !ok && !revoked ->
            /* transient: free the lease, keep the session */
            atomic {
                in_flight--; working--; printf("EV %d cas\n", me);
                if
                :: exists && version == lease_v -> version++; lease_until = 0
                :: else -> skip
                fi
            };
            goto finish
        fi
    fi;
finish:
    done[me] = true
}

active proctype Invariants() {
    atomic {
        (done[0] && done[1] && now >= MAXT) ->
        SIGNOUT(!(signed_out && exists))
    }
}

#ifdef LIVENESS
/* Every request ends (served, refreshed, failed or signed out): checked
 * with weak fairness, `pan -a -f`. */
ltl every_request_ends { <> (done[0] && done[1]) }
#endif

init {
    atomic { run Request(0); run Request(1) }
}
