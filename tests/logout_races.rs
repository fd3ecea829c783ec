//! Logouts against logins and refreshes in flight (invariant I8), on every
//! store backend: after a logout for a user (`sub`) or a provider session
//! (`sid`) is accepted, no session of theirs is usable, including the one a
//! login still exchanging its code was about to write. The interleavings are
//! forced by the IdP double's gates and the store's commit gate; the
//! negative control runs them against a delete-only logout (delete the
//! sessions found at logout time, leave no tombstone) and catches it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::backends::TestBackend;
use common::idp_double::ControlledIdp;
use common::naive::{Begun, LoginDriver};
use common::observed_store::ObservedStore;
use common::within;
use latchkey::clock::{Clock, ManualClock};
use latchkey::login::{FailureReason, LoginError, LoginFlow, LoginSettings};
use latchkey::logout::{Handle, SessionIndex};
use latchkey::secret::SessionId;
use latchkey::session::{SessionError, SessionSettings, Sessions};
use latchkey::store::Store;

const SUBJECT: &str = "user-of-the-code";
const TOMBSTONE: Duration = Duration::from_secs(90);

/// A way of handling a logout for a handle.
#[async_trait]
trait Logout: Send + Sync {
    async fn logout(&self, rig: &Rig, handle: Handle<'_>);
}

/// Latchkey's: tombstone the handle, take and revoke its sessions.
struct Latchkey;

#[async_trait]
impl Logout for Latchkey {
    async fn logout(&self, rig: &Rig, handle: Handle<'_>) {
        rig.index
            .end(handle, rig.clock.now_ms(), TOMBSTONE)
            .await
            .expect("logout");
    }
}

/// The negative control: delete the sessions indexed at logout time.
struct DeleteOnly;

#[async_trait]
impl Logout for DeleteOnly {
    async fn logout(&self, rig: &Rig, handle: Handle<'_>) {
        for session in rig.index.list(handle).await.expect("list") {
            rig.store.delete(&session.key).await.expect("delete");
        }
    }
}

struct Rig {
    store: Arc<ObservedStore>,
    idp: Arc<ControlledIdp>,
    clock: Arc<ManualClock>,
    flow: Arc<LoginFlow>,
    sessions: Sessions,
    index: SessionIndex,
    _backend: TestBackend,
}

fn rig(backend: TestBackend) -> Rig {
    let store = ObservedStore::new(backend.store.clone());
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    let patient = LoginSettings {
        exchange_lease: Duration::from_secs(3600),
        wait_timeout: Duration::from_secs(3600),
        ..LoginSettings::default()
    };
    let flow = Arc::new(LoginFlow::new(
        store.clone(),
        idp.clone(),
        clock.clone(),
        patient,
    ));
    let sessions = Sessions::new(
        store.clone(),
        idp.clone(),
        clock.clone(),
        SessionSettings {
            refresh_before_expiry: Duration::from_secs(60),
            refresh_lease: Duration::from_secs(3600),
            refresh_wait: Duration::from_secs(3600),
            ..SessionSettings::default()
        },
    );
    let index = SessionIndex::new(store.clone(), clock.clone());
    Rig {
        store,
        idp,
        clock,
        flow,
        sessions,
        index,
        _backend: backend,
    }
}

impl Rig {
    /// Whether the session is usable (loads as signed in).
    async fn usable(&self, session_id: &str) -> bool {
        match self
            .sessions
            .load(&SessionId::from(session_id.to_owned()))
            .await
        {
            Ok(_) => true,
            Err(SessionError::NotFound | SessionError::Ended(_)) => false,
            Err(other) => panic!("loading the session failed: {other}"),
        }
    }

    /// Starts a login and sends its callback, in its own task.
    async fn spawn_login(&self) -> tokio::task::JoinHandle<Result<String, String>> {
        let begun = self.begin().await;
        let flow = self.flow.clone();
        tokio::spawn(async move { flow.callback(&begun).await })
    }

    async fn begin(&self) -> Begun {
        LoginDriver::begin(self.flow.as_ref()).await
    }

    /// A login as `subject` with its own code (so its own `sid`).
    async fn sign_in(&self, code: &str) -> String {
        common::naive::sign_in(&self.flow, code)
            .await
            .secret()
            .to_owned()
    }
}

/// What a login in flight came to after the logout.
struct Outcome {
    callback: Result<String, String>,
    /// A session of the logged-out user is usable afterwards.
    live_session: bool,
}

/// The logout arrives while the callback waits for the IdP's token
/// response: the ID token was issued before the logout, the session is not
/// registered yet.
async fn logout_during_exchange(rig: &Rig, logout: &dyn Logout) -> Outcome {
    rig.idp.exchange_gate.close();
    let callback = rig.spawn_login().await;
    rig.idp.exchange_gate.wait_arrived(1).await;
    rig.clock.advance(Duration::from_secs(1));
    logout.logout(rig, Handle::Subject(SUBJECT)).await;
    rig.idp.exchange_gate.open();
    let callback = within("the callback", callback).await.unwrap();
    outcome(rig, callback).await
}

/// The logout arrives after the login registered its session in the index
/// and before it committed it.
async fn logout_between_registration_and_commit(rig: &Rig, logout: &dyn Logout) -> Outcome {
    rig.store.commit_gate.close();
    let callback = rig.spawn_login().await;
    rig.store.commit_gate.wait_arrived(1).await;
    rig.clock.advance(Duration::from_secs(1));
    logout.logout(rig, Handle::Subject(SUBJECT)).await;
    rig.store.commit_gate.open();
    let callback = within("the callback", callback).await.unwrap();
    outcome(rig, callback).await
}

async fn outcome(rig: &Rig, callback: Result<String, String>) -> Outcome {
    let live_session = match &callback {
        Ok(session_id) => rig.usable(session_id).await,
        Err(_) => false,
    };
    Outcome {
        callback,
        live_session,
    }
}

fn logged_out() -> Result<String, String> {
    Err(LoginError::Failed(FailureReason::LoggedOut).to_string())
}

async fn a_logout_during_the_exchange_writes_no_session(backend: TestBackend) {
    let rig = rig(backend);
    let seen = logout_during_exchange(&rig, &Latchkey).await;
    assert_eq!(seen.callback, logged_out());
    assert!(!seen.live_session);
    assert_eq!(rig.store.count_live("session:").await.unwrap(), 0);
    assert_eq!(rig.idp.exchanges(), 1);
}

async fn a_logout_between_registration_and_commit_leaves_no_usable_session(backend: TestBackend) {
    let rig = rig(backend);
    let seen = logout_between_registration_and_commit(&rig, &Latchkey).await;
    assert_eq!(seen.callback, logged_out());
    assert!(!seen.live_session);
    assert_eq!(rig.idp.exchanges(), 1);
}

async fn negative_control_delete_only_logout_is_caught(backend: TestBackend) {
    let rig = rig(backend);
    let seen = logout_during_exchange(&rig, &DeleteOnly).await;
    assert!(
        seen.live_session,
        "a delete-only logout must leave the in-flight login's session live: {:?}",
        seen.callback
    );
    let rig2 = self::rig(rig._backend.clone());
    let seen = logout_between_registration_and_commit(&rig2, &DeleteOnly).await;
    assert!(
        seen.live_session,
        "a delete-only logout must leave the in-flight login's session live: {:?}",
        seen.callback
    );
}

async fn a_logout_during_a_refresh_leaves_nothing_written(backend: TestBackend) {
    let rig = rig(backend);
    let session_id = rig.sign_in("the-code").await;
    // The access token is due; the refresh is held at the IdP.
    rig.clock.advance(Duration::from_secs(3600));
    rig.idp.refresh_gate.close();
    let refreshing = {
        let sessions = rig.sessions.clone();
        let id = SessionId::from(session_id.clone());
        tokio::spawn(async move { sessions.load(&id).await.map(|_| ()) })
    };
    rig.idp.refresh_gate.wait_arrived(1).await;
    rig.index
        .end(Handle::Subject(SUBJECT), rig.clock.now_ms(), TOMBSTONE)
        .await
        .unwrap();
    rig.idp.refresh_gate.open();
    let refreshed = within("the refresh", refreshing).await.unwrap();
    assert!(
        matches!(refreshed, Err(SessionError::NotFound)),
        "{refreshed:?}"
    );
    assert!(!rig.usable(&session_id).await);
    assert_eq!(rig.idp.refreshes(), 1);
}

async fn a_logout_by_sid_ends_that_provider_session_and_by_sub_every_session(backend: TestBackend) {
    let rig = rig(backend);
    rig.idp.exchange_as_subject("alice");
    let first = rig.sign_in("c1").await;
    let second = rig.sign_in("c2").await;
    let ended = rig
        .index
        .end(
            Handle::ProviderSession("sid-of-c1"),
            rig.clock.now_ms(),
            TOMBSTONE,
        )
        .await
        .unwrap();
    assert_eq!(ended.sessions_revoked, 1);
    assert!(!rig.usable(&first).await);
    assert!(rig.usable(&second).await);
    let ended = rig
        .index
        .end(Handle::Subject("alice"), rig.clock.now_ms(), TOMBSTONE)
        .await
        .unwrap();
    assert_eq!(ended.sessions_revoked, 2);
    assert!(!rig.usable(&second).await);
    assert_eq!(rig.index.list(Handle::Subject("alice")).await.unwrap(), []);
}

async fn a_sign_in_after_the_logout_is_not_refused(backend: TestBackend) {
    let rig = rig(backend);
    rig.index
        .end(Handle::Subject(SUBJECT), rig.clock.now_ms(), TOMBSTONE)
        .await
        .unwrap();
    // The tombstone covers ID tokens issued until the logout, no later.
    rig.clock.advance(Duration::from_secs(1));
    let session_id = rig.sign_in("the-code").await;
    assert!(rig.usable(&session_id).await);
    assert_eq!(
        rig.index
            .list(Handle::Subject(SUBJECT))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn a_logout_that_fails_part_way_is_finished_by_its_retry(backend: TestBackend) {
    let rig = rig(backend);
    rig.idp.exchange_as_subject("alice");
    let sessions = [rig.sign_in("c1").await, rig.sign_in("c2").await];
    // The store goes away as the logout revokes the first session.
    rig.store.fail_writes("session:", 1);
    let failed = rig
        .index
        .end(Handle::Subject("alice"), rig.clock.now_ms(), TOMBSTONE)
        .await;
    assert!(failed.is_err());
    // The provider retries (or the operator runs the command again).
    let ended = rig
        .index
        .end(Handle::Subject("alice"), rig.clock.now_ms(), TOMBSTONE)
        .await
        .unwrap();
    assert_eq!(ended.sessions_revoked, 2);
    for session in &sessions {
        assert!(!rig.usable(session).await, "a session outlived the retry");
    }
    assert_eq!(rig.index.list(Handle::Subject("alice")).await.unwrap(), []);
}

backend_tests!(
    a_logout_that_fails_part_way_is_finished_by_its_retry,
    a_logout_during_the_exchange_writes_no_session,
    a_logout_between_registration_and_commit_leaves_no_usable_session,
    negative_control_delete_only_logout_is_caught,
    a_logout_during_a_refresh_leaves_nothing_written,
    a_logout_by_sid_ends_that_provider_session_and_by_sub_every_session,
    a_sign_in_after_the_logout_is_not_refused,
);
