//! Two `latchkey serve` processes sharing one Redis or PostgreSQL store,
//! behind an imagined load balancer: the same callback sent to both at once,
//! a replica killed with SIGKILL in the middle of its code exchange, and a
//! refresh storm across both, and a back-channel logout delivered to one
//! that signs the user out on both. Runs when LATCHKEY_TEST_REDIS,
//! LATCHKEY_TEST_REDIS_CLUSTER, LATCHKEY_TEST_REDIS_SENTINEL and
//! LATCHKEY_TEST_POSTGRES are set (CI sets them).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use base64::Engine;
use common::browser::{browser, sign_in_at_idp};
use common::process::KillOnDrop;
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig};
use latchkey::secret::random_token;
use reqwest::header::{ACCEPT, LOCATION};
use url::Url;

const CALLBACK: &str = "http://lb.test/oauth2/callback";
const SECRET: &str = "replica-secret";
const COOKIE_KEY: [u8; 32] = [42; 32];

/// One `latchkey serve` process, killed when dropped.
struct Replica {
    child: KillOnDrop,
    addr: SocketAddr,
}

impl Replica {
    fn start(issuer: &str, store: &str) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .arg("serve")
            .env("LATCHKEY_LISTEN", "127.0.0.1:0")
            .env("LATCHKEY_ISSUER", issuer)
            .env("LATCHKEY_CLIENT_ID", "latchkey")
            .env("LATCHKEY_CLIENT_SECRET", SECRET)
            .env("LATCHKEY_REDIRECT_URL", CALLBACK)
            .env("LATCHKEY_STORE", store)
            .env(
                "LATCHKEY_COOKIE_SECRET",
                base64::engine::general_purpose::STANDARD.encode(COOKIE_KEY),
            )
            .env("LATCHKEY_EMAIL_DOMAINS", "*")
            .env("LATCHKEY_EXCHANGE_LEASE", "2s")
            .env("LATCHKEY_REFRESH_BEFORE_EXPIRY", "3s")
            .env("LATCHKEY_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start latchkey serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("latchkey serve exited before listening")
                .unwrap();
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "latchkey is listening" {
                break entry["fields"]["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Replica {
            child: KillOnDrop(child),
            addr,
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    async fn metric(&self, name: &str) -> f64 {
        common::process::scrape(&self.url("/metrics"), name).await
    }
}

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

async fn dev_idp(access_ttl: Duration) -> DevIdp {
    DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![DevClient {
            client_id: "latchkey".into(),
            client_secret: SECRET.into(),
            redirect_uris: vec![CALLBACK.into()],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
        }],
        access_ttl,
        ..DevIdpConfig::default()
    })
    .await
    .unwrap()
}

/// Starts a login at `replica` and signs in at the IdP as alice; returns the
/// callback's query string (the IdP's redirect, not yet followed).
async fn login_until_callback(browser: &reqwest::Client, replica: &Replica) -> String {
    let start = browser
        .get(replica.url("/oauth2/start?rd=/"))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let back = sign_in_at_idp(browser, &authorize, "alice").await;
    assert!(back.as_str().starts_with(CALLBACK));
    back.query().unwrap().to_owned()
}

/// Signs alice in at `replica`, callback included.
async fn sign_in_at(browser: &reqwest::Client, replica: &Replica) {
    let query = login_until_callback(browser, replica).await;
    let done = browser
        .get(replica.url(&format!("/oauth2/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
}

/// The session id inside a response's session cookie.
fn session_id(response: &reqwest::Response) -> String {
    common::browser::session_id_set_by(response, &COOKIE_KEY)
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

macro_rules! on_shared_stores {
    ($($name:ident),*) => {
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
