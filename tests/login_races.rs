//! The login state machine under concurrency (invariants I1–I4, I6), on every
//! store backend, with the interleavings forced by gates and barriers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::backends::TestBackend;
use common::idp_double::ControlledIdp;
use common::naive::{Begun, LoginDriver, NaiveLoginFlow};
use common::observed_store::ObservedStore;
use common::within;
use latchkey::clock::{Clock, ManualClock, SystemClock, duration_ms};
use latchkey::idp::{IdpError, call_budget};
use latchkey::login::{Callback, FailureReason, LoginError, LoginFlow, LoginSettings};
use latchkey::secret::SessionId;
use latchkey::store::Store;
use tokio::sync::Barrier;

struct Rig {
    store: Arc<ObservedStore>,
    idp: Arc<ControlledIdp>,
    clock: Arc<ManualClock>,
    flow: Arc<LoginFlow>,
    _backend: TestBackend,
}

fn rig(backend: TestBackend, settings: LoginSettings) -> Rig {
    let store = ObservedStore::new(backend.store.clone());
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    let flow = Arc::new(LoginFlow::new(
        store.clone(),
        idp.clone(),
        clock.clone(),
        settings,
    ));
    Rig {
        store,
        idp,
        clock,
        flow,
        _backend: backend,
    }
}

/// Long enough that a test never passes by a lease or wait running out.
fn patient() -> LoginSettings {
    LoginSettings {
        exchange_lease: Duration::from_secs(3600),
        wait_timeout: Duration::from_secs(3600),
        ..LoginSettings::default()
    }
}

impl Rig {
    async fn sessions(&self) -> u64 {
        self.store.count_live("session:").await.unwrap()
    }

    fn naive(&self) -> Arc<NaiveLoginFlow> {
        Arc::new(NaiveLoginFlow {
            store: self.store.clone(),
            idp: self.idp.clone(),
            clock: self.clock.clone(),
            session_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Waits until `done(exchange calls arrived, tasks waiting in the store)`.
    async fn wait_until(&self, what: &str, done: impl Fn(usize, usize) -> bool) {
        let mut arrivals = self.idp.exchange_gate.subscribe_arrivals();
        let mut waiters = self.store.subscribe_waiters();
        within(what, async {
            while !done(*arrivals.borrow_and_update(), *waiters.borrow_and_update()) {
                tokio::select! {
                    _ = arrivals.changed() => {}
                    _ = waiters.changed() => {}
                }
            }
        })
        .await;
    }
}

fn spawn_callback(
    driver: Arc<dyn LoginDriver>,
    begun: &Begun,
) -> tokio::task::JoinHandle<Result<String, String>> {
    let begun = begun.clone();
    tokio::spawn(async move { driver.callback(&begun).await })
}

/// What a scenario observed.
#[derive(Debug)]
struct Observed {
    exchanges: usize,
    sessions: u64,
    results: Vec<Result<String, String>>,
}

impl Observed {
    /// I1 and I2: one exchange, one session, the same session for every caller.
    fn one_exchange_one_session(&self) -> bool {
        let first = &self.results[0];
        self.exchanges == 1
            && self.sessions == 1
            && first.is_ok()
            && self.results.iter().all(|r| r == first)
    }
}

/// The seed interleaving of the case study: A checks, B checks, then A
/// exchanges (and B exchanges, if the flow lets it). Both callbacks read the
/// login's state before either acts on it, and the exchange is held until B has
/// reached its decision (exchanging, or waiting for A).
async fn seed_interleaving(rig: &Rig, driver: Arc<dyn LoginDriver>) -> Observed {
    rig.idp.exchange_gate.close();
    let begun = driver.begin().await;
    rig.store.hold_reads("login:", 2);
    let a = spawn_callback(driver.clone(), &begun);
    let b = spawn_callback(driver.clone(), &begun);
    rig.wait_until("both callbacks past their check", |arrived, waiting| {
        arrived >= 1 && (arrived >= 2 || waiting >= 1)
    })
    .await;
    rig.idp.exchange_gate.open();
    let results = vec![
        within("callback A", a).await.unwrap(),
        within("callback B", b).await.unwrap(),
    ];
    Observed {
        exchanges: rig.idp.exchanges(),
        sessions: rig.sessions().await,
        results,
    }
}

/// `n` callbacks for one login at once; the exchange is held until all the
/// others are waiting.
async fn concurrent_callbacks(rig: &Rig, n: usize) -> Observed {
    rig.idp.exchange_gate.close();
    let begun = LoginDriver::begin(rig.flow.as_ref()).await;
    let start = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (flow, begun, start) = (rig.flow.clone(), begun.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                flow.callback(&begun).await
            })
        })
        .collect();
    rig.wait_until("one exchanging, the rest waiting", |arrived, waiting| {
        arrived >= 1 && waiting >= n - 1
    })
    .await;
    rig.idp.exchange_gate.open();
    let mut results = Vec::new();
    for task in tasks {
        results.push(within("callback", task).await.unwrap());
    }
    Observed {
        exchanges: rig.idp.exchanges(),
        sessions: rig.sessions().await,
        results,
    }
}

async fn two_concurrent_callbacks_one_exchange_one_session(backend: TestBackend) {
    let rig = rig(backend, patient());
    let seen = concurrent_callbacks(&rig, 2).await;
    assert!(seen.one_exchange_one_session(), "{seen:?}");
}

async fn sixteen_concurrent_callbacks_one_exchange_one_session(backend: TestBackend) {
    let rig = rig(backend, patient());
    let seen = concurrent_callbacks(&rig, 16).await;
    assert!(seen.one_exchange_one_session(), "{seen:?}");
}

async fn seed_interleaving_yields_one_exchange_one_session(backend: TestBackend) {
    let rig = rig(backend, patient());
    let seen = seed_interleaving(&rig, rig.flow.clone()).await;
    assert!(seen.one_exchange_one_session(), "{seen:?}");
}

/// Negative control: the same scenario catches the case study's flow.
async fn negative_control_naive_flow_is_caught(backend: TestBackend) {
    let rig = rig(backend, patient());
    let seen = seed_interleaving(&rig, rig.naive()).await;
    assert!(!seen.one_exchange_one_session(), "{seen:?}");
    assert_eq!(seen.exchanges, 2, "{seen:?}");
    assert_eq!(seen.sessions, 2, "{seen:?}");
}

/// After a failure the login is terminal, holds nothing, and the browser can
/// log in again at once.
async fn assert_failed_cleanly(rig: &Rig, begun: &Begun, expected: FailureReason) {
    // The first callback after the failure may still have seen the login in
    // flight (the abandon guard writes in a task of its own); either way it
    // gets the same reason. Any later one is a replay.
    let again = within("callback after failure", rig.flow.callback(begun)).await;
    let in_flight = Err(LoginError::Failed(expected.clone()).to_string());
    let replay = Err(LoginError::AlreadyFailed(expected).to_string());
    assert!(again == in_flight || again == replay, "{again:?}");
    let replayed = within("replay after failure", rig.flow.callback(begun)).await;
    assert_eq!(replayed, replay);
    assert_eq!(rig.sessions().await, 0, "a failed login left a session");
    let exchanges_before = rig.idp.exchanges();
    rig.idp.exchange_gate.open();
    let fresh = LoginDriver::begin(rig.flow.as_ref()).await;
    let session = within("fresh login", rig.flow.callback(&fresh)).await;
    assert!(session.is_ok(), "fresh login failed: {session:?}");
    assert_eq!(rig.idp.exchanges(), exchanges_before + 1);
    assert_eq!(rig.sessions().await, 1);
}

async fn failed_exchange_leaves_no_session_and_no_lease(backend: TestBackend) {
    let rig = rig(backend, patient());
    rig.idp.exchange_gate.close();
    rig.idp
        .fail_next_exchange(IdpError::InvalidGrant("code expired".into()));
    let begun = LoginDriver::begin(rig.flow.as_ref()).await;
    let a = spawn_callback(rig.flow.clone(), &begun);
    let b = spawn_callback(rig.flow.clone(), &begun);
    rig.wait_until("A exchanging, B waiting", |arrived, waiting| {
        arrived >= 1 && waiting >= 1
    })
    .await;
    rig.idp.exchange_gate.open();
    let reason = FailureReason::CodeRejected("code expired".into());
    let expected = Err(LoginError::Failed(reason.clone()).to_string());
    assert_eq!(within("A", a).await.unwrap(), expected);
    assert_eq!(within("B", b).await.unwrap(), expected);
    assert_eq!(rig.idp.exchanges(), 1);
    assert_failed_cleanly(&rig, &begun, reason).await;
}

async fn cancelled_exchange_leaves_no_session_and_no_lease(backend: TestBackend) {
    let rig = rig(backend, patient());
    rig.idp.exchange_gate.close();
    let begun = LoginDriver::begin(rig.flow.as_ref()).await;
    let a = spawn_callback(rig.flow.clone(), &begun);
    rig.idp.exchange_gate.wait_arrived(1).await;
    a.abort();
    assert!(within("aborted A", a).await.unwrap_err().is_cancelled());
    // With an hour-long lease and wait, only the abandon guard can end this
    // login in time.
    assert_failed_cleanly(&rig, &begun, FailureReason::Cancelled).await;
}

async fn expired_lease_is_failed_and_late_commit_is_fenced(backend: TestBackend) {
    let settings = LoginSettings {
        exchange_lease: Duration::from_secs(30),
        ..patient()
    };
    let rig = rig(backend, settings);
    rig.idp.exchange_gate.close();
    let begun = LoginDriver::begin(rig.flow.as_ref()).await;
    let a = spawn_callback(rig.flow.clone(), &begun);
    rig.idp.exchange_gate.wait_arrived(1).await;
    // A hangs past its lease; the next callback sees the lease expired.
    rig.clock.advance(Duration::from_secs(31));
    let b = within("B", rig.flow.callback(&begun)).await;
    assert_eq!(
        b,
        Err(LoginError::Failed(FailureReason::LeaseExpired).to_string())
    );
    // A's exchange finally returns: its commit must not resurrect the login.
    rig.idp.exchange_gate.open();
    assert_eq!(
        within("A", a).await.unwrap(),
        Err(LoginError::LeaseLost.to_string())
    );
    assert_eq!(rig.idp.exchanges(), 1);
    assert_failed_cleanly(&rig, &begun, FailureReason::LeaseExpired).await;
}

/// A provider that holds its answer past the lease (the test never lets it
/// go): the callback gives the exchange up within the lease, by the
/// system's clock, and the login fails as the provider's fault, at once
/// for every callback, instead of waiting for the provider's own timeout.
async fn an_exchange_slower_than_the_lease_is_given_up_within_it(backend: TestBackend) {
    const LEASE: Duration = Duration::from_secs(2);
    let store = ObservedStore::new(backend.store.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    let settings = LoginSettings {
        exchange_lease: LEASE,
        ..patient()
    };
    let flow = Arc::new(LoginFlow::new(store, idp.clone(), clock.clone(), settings));
    idp.exchange_gate.close();
    let begun = LoginDriver::begin(flow.as_ref()).await;
    let started = clock.now_ms();
    let a = spawn_callback(flow.clone(), &begun);
    idp.exchange_gate.wait_arrived(1).await;
    let result = within("A", a).await.unwrap();
    let abandoned = idp.abandoned_exchanges();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert!(
        abandoned[0] < started + duration_ms(LEASE),
        "given up {} ms after the lease",
        abandoned[0] - started
    );
    let reason = FailureReason::Unavailable(format!(
        "no answer within {} ms, the part of the lease a provider call may take",
        call_budget(LEASE).as_millis()
    ));
    assert_eq!(result, Err(LoginError::Failed(reason.clone()).to_string()));
    let replay = within("replay", flow.callback(&begun)).await;
    assert_eq!(replay, Err(LoginError::AlreadyFailed(reason).to_string()));
    assert_eq!(idp.exchanges(), 1);
    assert_eq!(backend.store.count_live("session:").await.unwrap(), 0);
}

async fn replay_with_binding_is_idempotent(backend: TestBackend) {
    let rig = rig(backend, patient());
    let begun = LoginDriver::begin(rig.flow.as_ref()).await;
    let callback = Callback {
        state: &begun.state,
        code: "the-code",
        binding: Some(&begun.binding),
        pending: begun.pending.as_ref(),
    };
    let first = rig.flow.complete(callback).await.unwrap();
    let replay = rig.flow.complete(callback).await.unwrap();
    assert!(first.exchanged_here);
    assert!(!replay.exchanged_here);
    assert_eq!(replay.session_id, first.session_id);
    assert_eq!(replay.return_to, "/after-login");
    assert_eq!(rig.idp.exchanges(), 1);
    assert_eq!(rig.sessions().await, 1);
}

/// A used callback from the browser its login signed in, after the login
/// cookie was spent (the history's forward button, a reopened tab): it is
/// sent back to where the login was going with nothing exchanged (I4); any
/// other session, a login still in flight or an unknown one, gets `None`.
async fn replay_by_its_own_session_goes_back_without_an_exchange(backend: TestBackend) {
    let rig = rig(backend, patient());
    let begun = LoginDriver::begin(rig.flow.as_ref()).await;
    let other = LoginDriver::begin(rig.flow.as_ref()).await;
    let before = SessionId::new("a-session-of-nobody");
    assert_eq!(
        rig.flow
            .replayed_by_its_session(&begun.state, &before)
            .await
            .unwrap(),
        None,
        "a pending login has made no session yet"
    );
    let done = rig
        .flow
        .complete(Callback {
            state: &begun.state,
            code: "the-code",
            binding: Some(&begun.binding),
            pending: begun.pending.as_ref(),
        })
        .await
        .unwrap();
    let replay = rig
        .flow
        .replayed_by_its_session(&begun.state, &done.session_id);
    assert_eq!(replay.await.unwrap().as_deref(), Some("/after-login"));
    // Another browser's session, or this session on another login: nothing.
    for (state, session) in [
        (begun.state.as_str(), &before),
        (other.state.as_str(), &done.session_id),
        ("never-started", &done.session_id),
    ] {
        let found = rig
            .flow
            .replayed_by_its_session(state, session)
            .await
            .unwrap();
        assert_eq!(found, None, "{state}");
    }
    assert_eq!(rig.idp.exchanges(), 1);
    assert_eq!(rig.sessions().await, 1);
}

async fn replay_without_binding_is_rejected(backend: TestBackend) {
    let rig = rig(backend, patient());
    let begun = LoginDriver::begin(rig.flow.as_ref()).await;
    let other_browser = LoginDriver::begin(rig.flow.as_ref()).await;
    let with = |binding| Callback {
        state: &begun.state,
        code: "the-code",
        binding,
        pending: begun.pending.as_ref(),
    };
    // Before completion: a foreign or missing binding neither succeeds nor
    // consumes the login.
    for binding in [None, Some(other_browser.binding.as_str()), Some("")] {
        let err = rig.flow.complete(with(binding)).await.unwrap_err();
        assert!(matches!(err, LoginError::BindingMismatch), "{err:?}");
    }
    // Nor does another login's cookie, or none at all (a callback link sent
    // to a browser that never started this login).
    let foreign = Callback {
        binding: Some(&other_browser.binding),
        pending: other_browser.pending.as_ref(),
        ..with(None)
    };
    let err = rig.flow.complete(foreign).await.unwrap_err();
    assert!(matches!(err, LoginError::BindingMismatch), "{err:?}");
    let no_cookie = Callback {
        pending: None,
        ..with(Some(&begun.binding))
    };
    let err = rig.flow.complete(no_cookie).await.unwrap_err();
    assert!(matches!(err, LoginError::UnknownLogin), "{err:?}");
    assert_eq!(rig.idp.exchanges(), 0);
    rig.flow.complete(with(Some(&begun.binding))).await.unwrap();
    // After completion: replays without the binding are rejected too.
    for binding in [None, Some(other_browser.binding.as_str())] {
        let err = rig.flow.complete(with(binding)).await.unwrap_err();
        assert!(matches!(err, LoginError::BindingMismatch), "{err:?}");
    }
    assert_eq!(rig.idp.exchanges(), 1);
    assert_eq!(rig.sessions().await, 1);
}

async fn unknown_state_is_rejected(backend: TestBackend) {
    let rig = rig(backend, patient());
    let err = rig
        .flow
        .complete(Callback {
            state: "never-started",
            code: "c",
            binding: Some("b"),
            pending: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::UnknownLogin), "{err:?}");
    assert_eq!(rig.idp.exchanges(), 0);
}

async fn parallel_tabs_get_separate_sessions(backend: TestBackend) {
    let rig = rig(backend, patient());
    let tab1 = LoginDriver::begin(rig.flow.as_ref()).await;
    let tab2 = LoginDriver::begin(rig.flow.as_ref()).await;
    let s1 = rig.flow.callback(&tab1).await.unwrap();
    let s2 = rig.flow.callback(&tab2).await.unwrap();
    assert_ne!(s1, s2);
    assert_eq!(rig.sessions().await, 2);
}

backend_tests!(
    two_concurrent_callbacks_one_exchange_one_session,
    sixteen_concurrent_callbacks_one_exchange_one_session,
    seed_interleaving_yields_one_exchange_one_session,
    negative_control_naive_flow_is_caught,
    failed_exchange_leaves_no_session_and_no_lease,
    cancelled_exchange_leaves_no_session_and_no_lease,
    expired_lease_is_failed_and_late_commit_is_fenced,
    an_exchange_slower_than_the_lease_is_given_up_within_it,
    replay_with_binding_is_idempotent,
    replay_without_binding_is_rejected,
    replay_by_its_own_session_goes_back_without_an_exchange,
    unknown_state_is_rejected,
    parallel_tabs_get_separate_sessions,
);
