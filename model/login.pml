/*
 * The login state machine of src/login.rs (LoginFlow::complete, exchange,
 * fail_claim, AbandonGuard) against the store contract of src/store/mod.rs,
 * for one login and NCB callbacks of it arriving on any replicas, in any
 * interleaving, each of which may crash at any step. model/README.md maps
 * every process and variable to the code.
 *
 * Mutants (negative controls), chosen with -D at `spin -a`:
 *   NO_FENCE       the commit does not check the claim's version
 *   CLAIM_IGNORED  a callback that lost the claim exchanges anyway
 *   NAIVE          the case study's flow: "no session yet?" -> exchange -> create
 *   UNBOUNDED_WAIT a callback waits for the exchanging one without a bound
 *                  (liveness: a crashed holder keeps it waiting)
 */

#ifndef NCB
#define NCB 3          /* callbacks of one login */
#endif
#ifndef LEASE
#define LEASE 2        /* exchange_lease, in model clock ticks */
#endif
#ifndef MAXT
#define MAXT 4         /* the model clock stops here */
#endif
#define NONE 255

/* The properties, each an assertion that a check can keep alone
 * (-DONLY_I1, -DONLY_I2, -DONLY_FENCE, -DONLY_I3): a mutant's
 * counterexample must break the property it stands for. */
#if defined(ONLY_I1) || defined(ONLY_I2) || defined(ONLY_FENCE) || defined(ONLY_I3)
#define ONE_PROPERTY
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_I1)
#define I1(c) assert(c)
#else
#define I1(c) skip
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_I2)
#define I2(c) assert(c)
#else
#define I2(c) skip
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_FENCE)
#define FENCE(c) assert(c)
#else
#define FENCE(c) skip
#endif
#if !defined(ONE_PROPERTY) || defined(ONLY_I3)
#define I3(c) assert(c)
#else
#define I3(c) skip
#endif

/* The login record (store key login:{state}). */
mtype = { ABSENT, EXCHANGING, COMPLETED, FAILED };
mtype phase = ABSENT;
byte version = 0;       /* bumped by every write: never repeats */
byte lease_until = 0;   /* Phase::Exchanging.lease_until */
byte owner = NONE;      /* Phase::Exchanging/Completed.lease_id: whose claim */

/* Session records: session id = derive_session_id(state, lease_id), one per claim. */
bool session[NCB];

/* The model clock (Clock::now_ms) and the IdP's count of code exchanges. */
byte now = 0;
byte exchanges = 0;

/* What each callback ended with. */
byte got[NCB];          /* the session it answered with, or NONE */
bool done[NCB];

/* Each step that stands for a store call, a provider call, a crash or a
 * clock tick prints an event ("EV ..."), which only a simulation prints:
 * tests/model_trails.rs replays a counterexample's events on the code. */
active proctype Clock() {
    do
    :: now < MAXT -> atomic { now++; printf("EV tick\n") }
    :: now >= MAXT -> break
    od
}

/* I2: every successful callback of the login yields the same session. */
inline answered(who, sess) {
    atomic {
        got[who] = sess;
        k = 0;
        do
        :: k < NCB -> I2(got[k] == NONE || got[k] == sess); k++
        :: k >= NCB -> break
        od
    }
}

/* CAS(expected version) -> Failed: fail_claim and the lease-expiry takeover. */
inline cas_failed(expected) {
    atomic {
        printf("EV %d cas\n", me);
        if
        :: version == expected -> phase = FAILED; version++
        :: else -> skip
        fi
    }
}

/* The token exchange at the IdP: counted (I1), then any answer. */
inline exchange_code(ok) {
    atomic { exchanges++; I1(exchanges <= 1) }
    if
    :: ok = true; printf("EV %d exchange ok\n", me)
    :: ok = false; printf("EV %d exchange fail\n", me)   /* invalid_grant, invalid response or transient error */
    fi
}

proctype Callback(byte me) {
    byte seen_version, seen_until, claim_version, claim_until;
    mtype seen_phase;
    bool won, ok, committed;
    byte k;
#ifdef NAIVE
    /* The case study: check for a session, exchange, create one. */
    if
    :: atomic { session[0] == false && session[1] == false && session[2] == false } ->
        exchange_code(ok);
        if
        :: ok -> atomic { session[me] = true }; answered(me, me)
        :: else -> skip
        fi
    :: else -> skip
    fi;
    goto finish;
#endif
read:
    /* self.store.get(&key) */
    atomic { seen_phase = phase; seen_version = version; seen_until = lease_until; printf("EV %d get\n", me) };
    if
    :: printf("EV %d crash\n", me); goto crashed     /* a replica killed (SIGKILL) between any two steps */
    :: skip
    fi;
    if
    :: seen_phase == ABSENT ->
        /* insert_if_absent: the first claim wins (I1) */
        atomic {
            printf("EV %d insert\n", me);
            won = (phase == ABSENT);
            if
            :: won -> phase = EXCHANGING; version++; lease_until = now + LEASE; owner = me
            :: else -> skip
            fi
        };
#ifdef CLAIM_IGNORED
        won = true;
#endif
        if
        :: !won -> goto read
        :: won -> skip
        fi;
        /* inserted_claim: read back the version the store gave it */
        atomic {
            printf("EV %d get\n", me);
            if
            :: phase == EXCHANGING && owner == me ->
                claim_version = version; claim_until = lease_until
            :: else -> claim_version = NONE
            fi
        };
#ifdef CLAIM_IGNORED
        if
        :: claim_version == NONE -> claim_version = version; claim_until = lease_until
        :: else -> skip
        fi;
#endif
        if
        :: claim_version == NONE -> goto finish    /* LeaseLost */
        :: else -> skip
        fi;
        goto exchange
    :: seen_phase == EXCHANGING && now >= seen_until ->
        /* the lease ran out: CAS it to Failed, then read again */
        cas_failed(seen_version);
        goto read
    :: seen_phase == EXCHANGING && now < seen_until && now < MAXT ->
        /* wait_for_change, bounded by the lease: read again */
        goto read
#ifndef UNBOUNDED_WAIT
    :: seen_phase == EXCHANGING && now < seen_until && now >= MAXT ->
        /* the wait is bounded (wait_timeout): StillInProgress */
        goto finish
#endif
    :: seen_phase == COMPLETED ->
        /* the same session again (idempotent replay, I4: nothing exchanged) */
        answered(me, owner);
        goto finish
    :: seen_phase == FAILED -> goto finish
    fi;

exchange:
    if
    :: printf("EV %d crash\n", me); goto crashed
    :: printf("EV %d drop\n", me); goto dropped     /* the request's future dropped: the AbandonGuard runs */
    :: skip
    fi;
    exchange_code(ok);
    if
    :: printf("EV %d crash\n", me); goto crashed
    :: printf("EV %d drop\n", me); goto dropped
    :: skip
    fi;
    if
    :: !ok -> cas_failed(claim_version); goto finish
    :: ok -> skip
    fi;
    /* no commit after the lease */
    if
    :: now >= claim_until -> cas_failed(claim_version); goto finish
    :: else -> skip
    fi;
    if
    :: printf("EV %d crash\n", me); goto crashed
    :: skip
    fi;
    /* commit_login: the fenced CAS of the login record and the session insert, one step */
    atomic {
        printf("EV %d commit\n", me);
#ifdef NO_FENCE
        committed = (session[me] == false);
#else
        committed = (version == claim_version && session[me] == false);
#endif
        if
        :: committed ->
            /* Failed is final: no write lands after its lease was lost */
            FENCE(phase != FAILED);
            phase = COMPLETED; version++; owner = me; session[me] = true
        :: else -> skip
        fi
    };
    if
    :: committed -> answered(me, me)
    :: else -> skip    /* LeaseLost */
    fi;
    goto finish;

dropped:
    /* AbandonGuard: Failed{Cancelled}, fenced at the claim's version */
    cas_failed(claim_version);
crashed:
    skip;
finish:
    done[me] = true
}

/* Once every callback has ended and the clock has stopped: */
active proctype Invariants() {
    byte k, sessions;
    atomic {
        (done[0] && done[1] && done[2] && now >= MAXT) ->
        k = 0; sessions = 0;
        do
        :: k < NCB ->
            if
            :: session[k] ->
                sessions++;
                /* the fence: a session exists only for the claim the login completed with */
                FENCE(phase == COMPLETED && owner == k)
            :: else -> skip
            fi;
            k++
        :: k >= NCB -> break
        od;
        /* I3: at most one session; none unless the login completed */
        I3(sessions <= 1);
        I3(phase == COMPLETED || sessions == 0)
    }
}

#ifdef LIVENESS
/* Every callback ends (answered, failed, crashed or told to come back):
 * checked with weak fairness, `pan -a -f`. */
ltl every_callback_ends { <> (done[0] && done[1] && done[2]) }
#endif

init {
    byte i = 0;
    atomic {
        do
        :: i < NCB -> got[i] = NONE; i++
        :: i >= NCB -> break
        od;
        run Callback(0); run Callback(1); run Callback(2)
    }
}
