//! Two `latchkey serve` processes sharing one store (Redis, Redis Cluster,
//! Redis behind Sentinel, PostgreSQL, or one SQLite file on one machine),
//! behind an imagined load balancer: the same callback sent to both at once,
//! a replica killed with SIGKILL in the middle of its code exchange, and a
//! refresh storm across both, and a back-channel logout delivered to one
//! that signs the user out on both. The SQLite tests always run; the others
//! when LATCHKEY_TEST_REDIS, LATCHKEY_TEST_REDIS_CLUSTER,
//! LATCHKEY_TEST_REDIS_SENTINEL and LATCHKEY_TEST_POSTGRES are set (CI sets
//! them).

use std::time::{Duration, Instant};

mod common;

use common::browser::browser;
use common::replica::{Replica, dev_idp, login_until_callback, session_id, sign_in_at};
use latchkey::secret::random_token;
use reqwest::header::ACCEPT;

/// The store URL for `var`, with a key prefix no other run uses.
fn store_url(var: &str, feature: bool) -> Option<String> {
    let Ok(url) = std::env::var(var) else {
        eprintln!("skipping: set {var} to run the multi-replica tests against it");
        return None;
    };
    assert!(
        feature,
        "{var} is set but the store's feature is not enabled"
    );
    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{separator}prefix=replicas-{}",
        &random_token()[..10]
    ))
}

async fn same_callback_on_both_replicas(store: String) {
    let idp = dev_idp(Duration::from_secs(300)).await;
    let a = Replica::start(idp.issuer(), &store);
    let b = Replica::start(idp.issuer(), &store);
    for round in 1..=5u64 {
        let browser = browser();
        let query = login_until_callback(&browser, &a).await;
        idp.knobs().hold_token_calls(true);
        let waits = || async {
            a.metric("latchkey_login_waits_total").await
                + b.metric("latchkey_login_waits_total").await
        };
        let waits_before = waits().await;
        let to_a = browser
            .get(a.url(&format!("/oauth2/callback?{query}")))
            .send();
        let to_b = browser
            .get(b.url(&format!("/oauth2/callback?{query}")))
            .send();
        let both = async {
            // Release the exchange once one replica is exchanging and the other
            // is waiting on the login record (seen in its metrics).
            idp.knobs().wait_token_calls(round).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            while waits().await <= waits_before {
                assert!(Instant::now() < deadline, "round {round}: nobody waited");
                tokio::task::yield_now().await;
            }
            idp.knobs().hold_token_calls(false);
        };
        let (ra, rb, ()) = tokio::join!(to_a, to_b, both);
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.status(), 302, "round {round}");
        assert_eq!(rb.status(), 302, "round {round}");
        assert_eq!(
            session_id(&ra),
            session_id(&rb),
            "round {round}: two sessions"
        );
        assert_eq!(
            idp.knobs().code_grants(),
            round,
            "round {round}: extra exchanges"
        );
    }
    assert_eq!(
        a.metric("latchkey_duplicate_callbacks_absorbed_total")
            .await
            + b.metric("latchkey_duplicate_callbacks_absorbed_total")
                .await,
        5.0
    );
    purge(&store).await;
}

async fn replica_killed_mid_exchange(store: String) {
    let idp = dev_idp(Duration::from_secs(300)).await;
    let mut a = Replica::start(idp.issuer(), &store);
    let b = Replica::start(idp.issuer(), &store);
    let browser = browser();
    let query = login_until_callback(&browser, &a).await;
    idp.knobs().hold_token_calls(true);
    let in_a = tokio::spawn({
        let request = browser.get(a.url(&format!("/oauth2/callback?{query}")));
        async move { request.send().await }
    });
    idp.knobs().wait_token_calls(1).await;
    a.child.kill().unwrap(); // SIGKILL, mid-exchange
    a.child.wait().unwrap();
    assert!(in_a.await.unwrap().is_err(), "the killed replica answered");
    // The other replica answers within the lease (2 s), with a clean failure.
    let started = Instant::now();
    let from_b = browser
        .get(b.url(&format!("/oauth2/callback?{query}")))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    // The exchange was cut short on latchkey's side, not refused: 503.
    assert_eq!(from_b.status(), 503);
    let body: serde_json::Value = from_b.json().await.unwrap();
    assert_eq!(body["error"], "login_interrupted");
    assert!(waited < Duration::from_secs(8), "waited {waited:?}");
    idp.knobs().hold_token_calls(false);
    // Nothing is left locked: a replay answers at once, and a new login works.
    let replay = browser
        .get(b.url(&format!("/oauth2/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    let query = login_until_callback(&browser, &b).await;
    let done = browser
        .get(b.url(&format!("/oauth2/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
    assert_eq!(
        browser
            .get(b.url("/oauth2/auth"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    purge(&store).await;
}

async fn refresh_storm_across_replicas(store: String) {
    // Access tokens live 5 s and are refreshed 3 s before they expire: a fresh
    // token is not due for 2 s, so requests of the storm that are answered late
    // (a loaded CI machine) cannot start a second refresh within one cycle.
    let idp = dev_idp(Duration::from_secs(5)).await;
    let a = Replica::start(idp.issuer(), &store);
    let b = Replica::start(idp.issuer(), &store);
    let browser = browser();
    sign_in_at(&browser, &a).await;
    for cycle in 1..=2u64 {
        // Let the access token enter its refresh window (time has to pass).
        tokio::time::sleep(Duration::from_millis(2100)).await;
        idp.knobs().hold_token_calls(true);
        let before = idp.knobs().token_calls();
        let requests: Vec<_> = (0..40)
            .map(|i| {
                let replica = if i % 2 == 0 { &a } else { &b };
                tokio::spawn(browser.get(replica.url("/oauth2/auth")).send())
            })
            .collect();
        idp.knobs().wait_token_calls(before + 1).await;
        // While the one refresh is held, every other request is answered with
        // the still-valid token.
        let mut pending = Vec::new();
        for request in requests {
            if request.is_finished() {
                assert_eq!(request.await.unwrap().unwrap().status(), 202);
            } else {
                pending.push(request);
            }
        }
        idp.knobs().hold_token_calls(false);
        for request in pending {
            assert_eq!(request.await.unwrap().unwrap().status(), 202);
        }
        assert_eq!(idp.knobs().refresh_grants(), cycle, "cycle {cycle}");
    }
    purge(&store).await;
}

/// The provider's logout token for alice, delivered to one replica, signs
/// her out on both at once; the same token at the other replica is a replay.
async fn back_channel_logout_reaches_every_replica(store: String) {
    let idp = dev_idp(Duration::from_secs(300)).await;
    let a = Replica::start(idp.issuer(), &store);
    let b = Replica::start(idp.issuer(), &store);
    let browser = browser();
    sign_in_at(&browser, &a).await;
    let auth = async |replica: &Replica| {
        let response = browser.get(replica.url("/oauth2/auth")).send().await;
        response.unwrap().status().as_u16()
    };
    assert_eq!((auth(&a).await, auth(&b).await), (202, 202));
    // What the IdP sends when an administrator signs alice out everywhere.
    let token = idp.sign_jwt(
        "logout+jwt",
        &idp.logout_claims("latchkey", Some("alice"), None),
    );
    let deliver = async |replica: &Replica| {
        let response = (reqwest::Client::new())
            .post(replica.url("/oauth2/backchannel_logout"))
            .form(&[("logout_token", token.as_str())])
            .send()
            .await;
        response.unwrap().status().as_u16()
    };
    assert_eq!(deliver(&b).await, 200);
    assert_eq!((auth(&a).await, auth(&b).await), (401, 401));
    assert_eq!(
        deliver(&a).await,
        400,
        "a replay at the other replica was accepted"
    );
    let accepted = r#"latchkey_backchannel_logouts_total{result="accepted"}"#;
    assert_eq!(b.metric(accepted).await, 1.0);
    let replayed = r#"latchkey_backchannel_logouts_total{result="replayed"}"#;
    assert_eq!(a.metric(replayed).await, 1.0);
    purge(&store).await;
}

async fn purge(store: &str) {
    let store = latchkey::store::connect(store).await.unwrap();
    store.purge("").await.unwrap();
}

/// One SQLite file for two processes, removed when dropped.
struct SharedFile(tempfile::TempDir);

impl SharedFile {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.path().join("shared.db").display())
    }
}

macro_rules! on_shared_stores {
    ($($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let file = super::SharedFile::new();
                    super::$name(file.url()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(url) = super::store_url("LATCHKEY_TEST_REDIS", cfg!(feature = "redis")) {
                        super::$name(url).await;
                    }
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(url) = super::store_url("LATCHKEY_TEST_REDIS_CLUSTER", cfg!(feature = "redis")) {
                        super::$name(url).await;
                    }
                }
            )*
        }
        mod redis_sentinel {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(url) = super::store_url("LATCHKEY_TEST_REDIS_SENTINEL", cfg!(feature = "redis")) {
                        super::$name(url).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(url) = super::store_url("LATCHKEY_TEST_POSTGRES", cfg!(feature = "postgres")) {
                        super::$name(url).await;
                    }
                }
            )*
        }
    };
}

on_shared_stores!(
    same_callback_on_both_replicas,
    replica_killed_mid_exchange,
    refresh_storm_across_replicas,
    back_channel_logout_reaches_every_replica
);
