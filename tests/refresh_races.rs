//! Single-flight refresh (invariant I5, and I6 for refresh), on every store
//! backend: one identity provider call per session per refresh cycle, a
//! rotated refresh token never presented twice, and sessions that never wait
//! on each other.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::backends::TestBackend;
use common::idp_double::{ControlledIdp, identity};
use common::naive::{GlobalLockRefresh, NaiveRefresh, RefreshDriver};
use common::observed_store::ObservedStore;
use common::within;
use latchkey::clock::{Clock, ManualClock, SystemClock, UnixMillis, duration_ms};
use latchkey::idp::IdpError;
use latchkey::secret::SessionId;
use latchkey::secret::random_token;
use latchkey::session::{SessionError, SessionRecord, SessionSettings, Sessions, session_key};
use latchkey::store::Store;
use tokio::sync::{Barrier, watch};

const ACCESS_TTL: Duration = Duration::from_secs(3600);
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);

struct Rig {
    store: Arc<ObservedStore>,
    idp: Arc<ControlledIdp>,
    clock: Arc<ManualClock>,
    sessions: Arc<Sessions>,
    _backend: TestBackend,
}

fn rig_with(backend: TestBackend, refresh_wait: Duration) -> Rig {
    let store = ObservedStore::new(backend.store.clone());
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), ACCESS_TTL);
    let sessions = Arc::new(Sessions::new(
        store.clone(),
        idp.clone(),
        clock.clone(),
        SessionSettings {
            refresh_before_expiry: REFRESH_BEFORE_EXPIRY,
            refresh_lease: Duration::from_secs(3600),
            refresh_wait,
            ..SessionSettings::default()
        },
    ));
    Rig {
        store,
        idp,
        clock,
        sessions,
        _backend: backend,
    }
}

fn rig(backend: TestBackend) -> Rig {
    rig_with(backend, Duration::from_secs(3600))
}

/// When a new session's access token expires, relative to now.
#[derive(Clone, Copy)]
enum Token {
    /// Outside the refresh window.
    Fresh,
    /// Inside the refresh window but still valid.
    DueButValid,
    /// Already expired: requests cannot proceed without the refresh.
    Expired,
}

/// Stores a new session of alice whose access token, issued by `idp`, is in
/// the state `token` at `now`.
async fn store_session(
    store: &dyn Store,
    idp: &ControlledIdp,
    now: UnixMillis,
    token: Token,
) -> SessionId {
    let mut tokens = idp.issue_tokens();
    tokens.access_expires_at = match token {
        Token::Fresh => now + 2 * duration_ms(ACCESS_TTL),
        Token::DueButValid => now + 10_000,
        Token::Expired => now - 1,
    };
    let record = SessionRecord::new(identity("alice"), tokens, now, Duration::from_secs(86400));
    let id = random_token();
    assert!(
        store
            .insert_if_absent(
                &session_key(&id),
                &record.seal(&SessionSettings::default().seal, &id),
                Duration::from_secs(86400)
            )
            .await
            .unwrap()
    );
    SessionId::from(id)
}

impl Rig {
    /// Stores a new session whose access token is in the state `token`.
    async fn session(&self, token: Token) -> SessionId {
        store_session(&*self.store, &self.idp, self.clock.now_ms(), token).await
    }

    fn naive(&self) -> Arc<NaiveRefresh> {
        Arc::new(NaiveRefresh {
            store: self.store.clone(),
            idp: self.idp.clone(),
            clock: self.clock.clone(),
            refresh_before_expiry: REFRESH_BEFORE_EXPIRY,
        })
    }
}

#[derive(Debug)]
struct Storm {
    refreshes: usize,
    presented: Vec<String>,
    results: Vec<Result<String, String>>,
}

impl Storm {
    /// I5: one refresh call, no refresh token presented twice, nobody failed.
    fn single_flight(&self) -> bool {
        let distinct: HashSet<_> = self.presented.iter().collect();
        self.refreshes == 1
            && distinct.len() == self.presented.len()
            && self.results.iter().all(Result::is_ok)
    }
}

/// `n` concurrent requests on one session that is due for refresh. Two of them
/// are forced to read the due session before either acts; the refresh call is
/// held until every other request has either finished or parked waiting.
async fn refresh_storm(
    rig: &Rig,
    driver: Arc<dyn RefreshDriver>,
    session: &SessionId,
    n: usize,
) -> Storm {
    rig.idp.refresh_gate.close();
    rig.store.hold_reads("session:", 2);
    let start = Arc::new(Barrier::new(n));
    let finished = Arc::new(AtomicUsize::new(0));
    let (finished_tx, mut finished_rx) = watch::channel(0usize);
    let finished_tx = Arc::new(finished_tx);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (driver, start, session) = (driver.clone(), start.clone(), session.clone());
            let (finished, finished_tx) = (finished.clone(), finished_tx.clone());
            tokio::spawn(async move {
                start.wait().await;
                let result = driver.access_token(&session).await;
                finished_tx.send_replace(finished.fetch_add(1, Ordering::SeqCst) + 1);
                result
            })
        })
        .collect();
    let mut arrivals = rig.idp.refresh_gate.subscribe_arrivals();
    let mut waiters = rig.store.subscribe_waiters();
    within("one refreshing, the rest waiting or served", async {
        loop {
            let arrived = *arrivals.borrow_and_update();
            let parked = *waiters.borrow_and_update() + *finished_rx.borrow_and_update();
            if arrived >= 1 && (arrived >= 2 || parked >= n - 1) {
                break;
            }
            tokio::select! {
                _ = arrivals.changed() => {}
                _ = waiters.changed() => {}
                _ = finished_rx.changed() => {}
            }
        }
    })
    .await;
    rig.idp.refresh_gate.open();
    let mut results = Vec::new();
    for task in tasks {
        results.push(within("request", task).await.unwrap());
    }
    Storm {
        refreshes: rig.idp.refreshes(),
        presented: rig.idp.presented_refresh_tokens(),
        results,
    }
}

async fn hundred_requests_on_an_expired_token_refresh_once(backend: TestBackend) {
    let rig = rig(backend);
    let session = rig.session(Token::Expired).await;
    let storm = refresh_storm(&rig, rig.sessions.clone(), &session, 100).await;
    assert!(storm.single_flight(), "{storm:?}");
    // Nobody could use the expired token: all got the refreshed one.
    let first = storm.results[0].clone().unwrap();
    assert!(
        storm.results.iter().all(|r| r.as_ref() == Ok(&first)),
        "{storm:?}"
    );
    assert_ne!(first, "access-0");
}

async fn hundred_requests_on_a_due_token_refresh_once(backend: TestBackend) {
    let rig = rig(backend);
    let session = rig.session(Token::DueButValid).await;
    let storm = refresh_storm(&rig, rig.sessions.clone(), &session, 100).await;
    assert!(storm.single_flight(), "{storm:?}");
    // The others kept using the still-valid token instead of waiting.
    let old = storm
        .results
        .iter()
        .filter(|r| r.as_deref() == Ok("access-0"))
        .count();
    assert_eq!(old, 99, "{storm:?}");
}

/// Negative control: the same storm catches a refresh without a lease.
async fn negative_control_naive_refresh_is_caught(backend: TestBackend) {
    let rig = rig(backend);
    let session = rig.session(Token::Expired).await;
    let storm = refresh_storm(&rig, rig.naive(), &session, 100).await;
    assert!(!storm.single_flight(), "{storm:?}");
    assert!(storm.refreshes >= 2, "{storm:?}");
}

async fn each_refresh_cycle_calls_once_with_the_latest_token(backend: TestBackend) {
    let rig = rig(backend);
    let session = rig.session(Token::Expired).await;
    for cycle in 1..=3 {
        let storm = refresh_storm(&rig, rig.sessions.clone(), &session, 20).await;
        assert_eq!(storm.refreshes, cycle, "{storm:?}");
        let expected: Vec<String> = (0..cycle).map(refresh_token_of_cycle).collect();
        assert_eq!(storm.presented, expected);
        // A fresh token needs no refresh.
        rig.sessions.load(&session).await.unwrap();
        assert_eq!(rig.idp.refreshes(), cycle);
        rig.clock.advance(ACCESS_TTL);
    }
}

/// The double numbers tokens in issue order; the session's first tokens are
/// number 0 and each refresh issues the next.
fn refresh_token_of_cycle(i: usize) -> String {
    format!("refresh-{i}")
}

const SLOW_REFRESH: Duration = Duration::from_millis(200);

/// `count` sessions due at once, each refresh taking [`SLOW_REFRESH`]; returns
/// the wall time until all are served.
async fn many_sessions_due_at_once(
    rig: &Rig,
    driver: Arc<dyn RefreshDriver>,
    count: usize,
) -> Duration {
    rig.idp.set_refresh_latency(SLOW_REFRESH);
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(rig.session(Token::Expired).await);
    }
    let start = Arc::new(Barrier::new(count + 1));
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let (driver, start) = (driver.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                driver.access_token(&id).await
            })
        })
        .collect();
    start.wait().await;
    let started = tokio::time::Instant::now();
    for task in tasks {
        within("refresh", task).await.unwrap().unwrap();
    }
    started.elapsed()
}

async fn unrelated_sessions_refresh_in_parallel(backend: TestBackend) {
    let rig = rig(backend);
    let elapsed = many_sessions_due_at_once(&rig, rig.sessions.clone(), 50).await;
    assert_eq!(rig.idp.refreshes(), 50);
    assert!(elapsed < 5 * SLOW_REFRESH, "50 refreshes took {elapsed:?}");
}

/// Negative control: a process-wide lock around refresh serializes sessions,
/// and the same measurement catches it (10 × 200 ms > 5 × 200 ms).
async fn negative_control_global_lock_is_caught(backend: TestBackend) {
    let rig = rig(backend);
    let global = Arc::new(GlobalLockRefresh {
        sessions: (*rig.sessions).clone(),
        lock: tokio::sync::Mutex::new(()),
    });
    let elapsed = many_sessions_due_at_once(&rig, global, 10).await;
    assert!(
        elapsed >= 5 * SLOW_REFRESH,
        "serialized refreshes took only {elapsed:?}"
    );
}

async fn invalid_grant_ends_the_session(backend: TestBackend) {
    let rig = rig(backend);
    let session = rig.session(Token::DueButValid).await;
    rig.idp
        .fail_next_refresh(IdpError::InvalidGrant("revoked".into()));
    let err = rig.sessions.load(&session).await.unwrap_err();
    assert!(matches!(err, SessionError::Ended(_)), "{err:?}");
    assert!(matches!(
        rig.sessions.load(&session).await.unwrap_err(),
        SessionError::NotFound
    ));
    assert_eq!(rig.store.count_live("session:").await.unwrap(), 0);
}

async fn transient_error_keeps_the_session_and_frees_the_lease(backend: TestBackend) {
    let rig = rig(backend);
    let valid = rig.session(Token::DueButValid).await;
    rig.idp
        .fail_next_refresh(IdpError::Transient("503 from token endpoint".into()));
    // Still-valid token: served as is.
    let served = rig.sessions.load(&valid).await.unwrap();
    assert_eq!(served.tokens().access_token, "access-0");
    // The lease was freed: the next request refreshes at once.
    let refreshed = within("refresh after transient error", rig.sessions.load(&valid)).await;
    assert_ne!(refreshed.unwrap().tokens().access_token, "access-0");
    assert_eq!(rig.idp.refreshes(), 2);

    // Expired token: the request fails, but the session stays.
    let expired = rig.session(Token::Expired).await;
    rig.idp
        .fail_next_refresh(IdpError::Transient("timeout".into()));
    let err = rig.sessions.load(&expired).await.unwrap_err();
    assert!(
        matches!(err, SessionError::RefreshUnavailable(_)),
        "{err:?}"
    );
    let later = within("retry", rig.sessions.load(&expired)).await.unwrap();
    assert_eq!(later.identity().subject, "alice");
}

/// Each process keeps decoded records, but the store decides: a change or a
/// sign-out made by another replica (another `Sessions` over the same store,
/// with its own cache) is seen by the next load.
async fn cached_records_follow_the_store(backend: TestBackend) {
    let rig = rig(backend);
    let other_replica = Sessions::new(
        rig.store.clone(),
        rig.idp.clone(),
        rig.clock.clone(),
        SessionSettings::default(),
    );
    let id = rig.session(Token::Fresh).await;
    let first = rig.sessions.load(&id).await.unwrap();
    assert_eq!(rig.sessions.cached_records(), 1);
    let second = rig.sessions.load(&id).await.unwrap();
    assert_eq!(second, first);
    // What a caller derives from the record is made once per version.
    let token = |s: &latchkey::session::ActiveSession| {
        s.derived(|record| record.tokens.access_token.clone())
    };
    assert!(Arc::ptr_eq(&token(&first), &token(&second)));

    // Another replica rewrites the record (as its refresh would).
    let key = session_key(id.secret());
    let stored = rig.store.get(&key).await.unwrap().unwrap();
    let seal = SessionSettings::default().seal;
    let mut record = SessionRecord::open(&seal, id.secret(), &stored.value).unwrap();
    record.tokens.access_token = "rewritten-elsewhere".into();
    record.tokens.access_expires_at = rig.clock.now_ms() + 3_600_000;
    assert!(
        rig.store
            .compare_and_swap(
                &key,
                stored.version,
                &record.seal(&seal, id.secret()),
                Duration::from_secs(86400)
            )
            .await
            .unwrap()
    );
    let seen = rig.sessions.load(&id).await.unwrap();
    assert_eq!(seen.tokens().access_token, "rewritten-elsewhere");
    assert_eq!(*token(&seen), "rewritten-elsewhere");

    // Another replica signs the session out.
    other_replica.sign_out(&id).await.unwrap();
    assert!(matches!(
        rig.sessions.load(&id).await.unwrap_err(),
        SessionError::NotFound
    ));
    assert_eq!(rig.sessions.cached_records(), 0);
}

async fn refreshed_id_token_must_keep_the_subject(backend: TestBackend) {
    let rig = rig(backend);
    let same = rig.session(Token::Expired).await;
    rig.idp.refresh_as_subject("alice");
    assert!(rig.sessions.load(&same).await.is_ok());
    let other = rig.session(Token::Expired).await;
    rig.idp.refresh_as_subject("mallory");
    let err = rig.sessions.load(&other).await.unwrap_err();
    assert!(matches!(err, SessionError::Ended(_)), "{err:?}");
    assert!(matches!(
        rig.sessions.load(&other).await.unwrap_err(),
        SessionError::NotFound
    ));
}

async fn a_refresh_without_userinfo_keeps_the_sessions_claims(backend: TestBackend) {
    let rig = rig(backend);
    let session = rig.session(Token::Expired).await;
    let before = rig
        .sessions
        .load(&rig.session(Token::Fresh).await)
        .await
        .unwrap();
    assert!(before.identity().email.is_some() && !before.identity().groups.is_empty());
    rig.idp.refresh_as_subject("alice");
    rig.idp.refresh_without_claims(true);
    let refreshed = rig.sessions.load(&session).await.unwrap();
    assert_eq!(rig.idp.refreshes(), 1);
    assert_eq!(refreshed.identity().email, before.identity().email);
    assert_eq!(refreshed.identity().groups, before.identity().groups);
    assert!(!before.identity().userinfo_claims.is_empty());
    assert_eq!(
        refreshed.identity().userinfo_claims,
        before.identity().userinfo_claims
    );
    // Negative control: a complete answer without them means they are gone.
    let other = rig.session(Token::Expired).await;
    rig.idp.refresh_without_claims(false);
    let refreshed = rig.sessions.load(&other).await.unwrap();
    assert_eq!(refreshed.identity().email, None);
    assert!(refreshed.identity().groups.is_empty());
    assert!(refreshed.identity().userinfo_claims.is_empty());
}

async fn sign_out_during_refresh_is_not_undone(backend: TestBackend) {
    let rig = rig(backend);
    let session = rig.session(Token::Expired).await;
    rig.idp.refresh_gate.close();
    let loading = {
        let (sessions, session) = (rig.sessions.clone(), session.clone());
        tokio::spawn(async move { sessions.load(&session).await })
    };
    rig.idp.refresh_gate.wait_arrived(1).await;
    let signed_out = rig.sessions.sign_out(&session).await.unwrap();
    assert!(signed_out.is_some());
    rig.idp.refresh_gate.open();
    let err = within("refresh", loading).await.unwrap().unwrap_err();
    assert!(matches!(err, SessionError::NotFound), "{err:?}");
    assert_eq!(rig.store.count_live("session:").await.unwrap(), 0);
}

async fn waiting_for_a_refresh_is_bounded_and_deletes_nothing(backend: TestBackend) {
    let rig = rig_with(backend, Duration::from_millis(300));
    let session = rig.session(Token::Expired).await;
    rig.idp.refresh_gate.close();
    let holder = {
        let (sessions, session) = (rig.sessions.clone(), session.clone());
        tokio::spawn(async move { sessions.load(&session).await })
    };
    rig.idp.refresh_gate.wait_arrived(1).await;
    let err = within("bounded wait", rig.sessions.load(&session))
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::RefreshTimedOut), "{err:?}");
    assert_eq!(rig.store.count_live("session:").await.unwrap(), 1);
    rig.idp.refresh_gate.open();
    within("holder", holder).await.unwrap().unwrap();
    assert_eq!(rig.idp.refreshes(), 1);
}

/// A provider slower than the refresh lease (here: one that holds its
/// answer until the test lets it go), by the system's clock, on two replicas:
/// the holder gives its call up before its lease ends, so the other
/// replica's refresh, which may start once the lease is gone, never runs
/// beside it (I5), whatever the provider's own request timeout. Without the
/// bound the other replica takes over the expired lease while the holder
/// still waits for the provider.
async fn a_provider_slower_than_the_lease_is_given_up_within_it(backend: TestBackend) {
    const LEASE: Duration = Duration::from_secs(4);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let idp = ControlledIdp::new(clock.clone(), ACCESS_TTL);
    let replica = || {
        Arc::new(Sessions::new(
            backend.store.clone(),
            idp.clone(),
            clock.clone(),
            SessionSettings {
                refresh_lease: LEASE,
                refresh_wait: 3 * LEASE,
                ..SessionSettings::default()
            },
        ))
    };
    let (holding, waiting) = (replica(), replica());
    let session = store_session(&*backend.store, &idp, clock.now_ms(), Token::Expired).await;
    idp.refresh_gate.close();
    let holder = {
        let session = session.clone();
        tokio::spawn(async move { holding.load(&session).await })
    };
    idp.refresh_gate.wait_arrived(1).await;
    let stored = backend.store.get(&session_key(session.secret())).await;
    let leased = SessionRecord::open(
        &SessionSettings::default().seal,
        session.secret(),
        &stored.unwrap().expect("the session").value,
    )
    .unwrap();
    let lease_until = leased.refresh_lease.expect("the holder's lease").until;
    let waiter = {
        let session = session.clone();
        tokio::spawn(async move { waiting.load(&session).await })
    };
    // The waiting replica calls once the holder's lease is gone: freed by
    // the holder giving up, or run out while it still waits.
    idp.refresh_gate.wait_arrived(2).await;
    assert_eq!(
        idp.most_refreshes_in_flight(),
        1,
        "two refreshes of one session were in flight at once"
    );
    let abandoned = idp.abandoned_refreshes();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert!(
        abandoned[0] < lease_until,
        "given up {} ms after its lease ended",
        abandoned[0] - lease_until
    );
    // Its token expired and the provider did not answer: the provider's fault.
    let err = within("holder", holder).await.unwrap().unwrap_err();
    assert!(
        matches!(err, SessionError::RefreshUnavailable(_)),
        "{err:?}"
    );
    idp.refresh_gate.open();
    let served = within("waiter", waiter).await.unwrap().unwrap();
    assert_ne!(served.tokens().access_token, "access-0");
    assert_eq!(idp.refreshes(), 2);
}

async fn unknown_session_is_not_found(backend: TestBackend) {
    let rig = rig(backend);
    let err = rig.sessions.load(&random_token().into()).await.unwrap_err();
    assert!(matches!(err, SessionError::NotFound), "{err:?}");
}

backend_tests!(
    hundred_requests_on_an_expired_token_refresh_once,
    hundred_requests_on_a_due_token_refresh_once,
    negative_control_naive_refresh_is_caught,
    each_refresh_cycle_calls_once_with_the_latest_token,
    unrelated_sessions_refresh_in_parallel,
    negative_control_global_lock_is_caught,
    invalid_grant_ends_the_session,
    transient_error_keeps_the_session_and_frees_the_lease,
    refreshed_id_token_must_keep_the_subject,
    a_refresh_without_userinfo_keeps_the_sessions_claims,
    cached_records_follow_the_store,
    sign_out_during_refresh_is_not_undone,
    waiting_for_a_refresh_is_bounded_and_deletes_nothing,
    a_provider_slower_than_the_lease_is_given_up_within_it,
    unknown_session_is_not_found,
);
