//! What the store holds of a session, on every backend: no token and no
//! identity in clear, and nothing an attacker with write access can turn into
//! a session, another user's or an edited one.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::backends::TestBackend;
use common::idp_double::ControlledIdp;
use latchkey::clock::ManualClock;
use latchkey::login::{LoginFlow, LoginSettings};
use latchkey::secret::SessionId;
use latchkey::session::{SessionError, SessionSettings, Sessions, session_key};

struct Rig {
    backend: TestBackend,
    flow: LoginFlow,
    sessions: Sessions,
}

fn rig(backend: TestBackend) -> Rig {
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    let flow = LoginFlow::new(
        backend.store.clone(),
        idp.clone(),
        clock.clone(),
        LoginSettings::default(),
    );
    let sessions = Sessions::new(
        backend.store.clone(),
        idp,
        clock,
        SessionSettings::default(),
    );
    Rig {
        backend,
        flow,
        sessions,
    }
}

/// A session made by a real login; its id.
async fn log_in(rig: &Rig, code: &str) -> SessionId {
    common::naive::sign_in(&rig.flow, code).await
}

async fn a_store_dump_reveals_no_token_and_no_identity(backend: TestBackend) {
    let rig = rig(backend);
    let id = log_in(&rig, "c1").await;
    let session = rig.sessions.load(&id).await.unwrap();
    let stored = rig
        .backend
        .store
        .get(&session_key(id.secret()))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&stored.value);
    let tokens = session.tokens();
    let identity = session.identity();
    let secrets = [
        Some(tokens.access_token.secret()),
        tokens.refresh_token.as_ref().map(|t| t.secret()),
        tokens.id_token.as_ref().map(|t| t.secret()),
        identity.email.as_deref(),
        Some(identity.subject.as_str()),
        Some(id.secret()),
    ];
    for secret in secrets.into_iter().flatten() {
        assert!(!raw.contains(secret), "{secret:?} is in the store in clear");
    }
    for word in [
        "access_token",
        "refresh_token",
        "identity",
        "groups",
        "staff",
    ] {
        assert!(!raw.contains(word), "{word:?} is in the store in clear");
    }
}

async fn an_altered_record_is_no_session_never_another(backend: TestBackend) {
    let rig = rig(backend);
    let victim = log_in(&rig, "victim").await;
    let attacker = log_in(&rig, "attacker").await;
    let victim_key = session_key(victim.secret());
    let attacker_key = session_key(attacker.secret());
    assert_eq!(
        rig.sessions
            .load(&attacker)
            .await
            .unwrap()
            .identity()
            .subject,
        "user-of-attacker"
    );

    // The attacker copies the victim's record over their own: it does not
    // open under the attacker's session, so it is no session at all.
    let store = &rig.backend.store;
    let stolen = store.get(&victim_key).await.unwrap().unwrap();
    let own = store.get(&attacker_key).await.unwrap().unwrap();
    assert!(
        store
            .compare_and_swap(
                &attacker_key,
                own.version,
                &stolen.value,
                Duration::from_secs(600)
            )
            .await
            .unwrap()
    );
    let err = rig.sessions.load(&attacker).await.unwrap_err();
    assert!(matches!(err, SessionError::Corrupt(_)), "{err:?}");

    // One flipped byte anywhere in a record: no session.
    let original = store.get(&victim_key).await.unwrap().unwrap();
    for at in [0, 1, 13, original.value.len() / 2, original.value.len() - 1] {
        let current = store.get(&victim_key).await.unwrap().unwrap();
        let mut altered = original.value.to_vec();
        altered[at] ^= 0x20;
        assert!(
            store
                .compare_and_swap(
                    &victim_key,
                    current.version,
                    &altered,
                    Duration::from_secs(600)
                )
                .await
                .unwrap()
        );
        let err = rig.sessions.load(&victim).await.unwrap_err();
        assert!(
            matches!(err, SessionError::Corrupt(_)),
            "byte {at}: {err:?}"
        );
    }
    // Control: the untouched bytes put back are the victim's session again.
    let current = store.get(&victim_key).await.unwrap().unwrap();
    assert!(
        store
            .compare_and_swap(
                &victim_key,
                current.version,
                &original.value,
                Duration::from_secs(600)
            )
            .await
            .unwrap()
    );
    assert_eq!(
        rig.sessions.load(&victim).await.unwrap().identity().subject,
        "user-of-victim"
    );
}

async fn anonymous_starts_write_nothing(backend: TestBackend) {
    let rig = rig(backend);
    for _ in 0..2_000 {
        rig.flow.begin("/some/deep/link?with=query").await.unwrap();
    }
    assert_eq!(rig.backend.store.count_live("").await.unwrap(), 0);
    // The first callback writes the login's first record, and only then.
    let id = log_in(&rig, "c").await;
    assert!(rig.sessions.load(&id).await.is_ok());
    assert_eq!(rig.backend.store.count_live("login:").await.unwrap(), 1);
}

backend_tests!(
    a_store_dump_reveals_no_token_and_no_identity,
    an_altered_record_is_no_session_never_another,
    anonymous_starts_write_nothing,
);
