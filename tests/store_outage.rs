//! The shared store goes away mid-traffic and comes back: requests fail fast
//! with 503 and a clear answer (no panic, no corrupted record), and latchkey
//! recovers without a restart. The outage is made by a TCP relay between
//! latchkey and the real server, which the test cuts and restores, so the
//! shared servers themselves are never touched.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::browser::{browser, sign_in_at_idp};
use common::proxy::Harness;
use latchkey::secret::random_token;
use reqwest::header::{ACCEPT, LOCATION};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use url::Url;

/// Relays TCP to `target` while up; when cut, drops every relayed connection
/// and refuses new ones.
struct Relay {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    /// How many relayed connections are open.
    live: watch::Sender<usize>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = watch::Sender::new(true);
        let live = watch::Sender::new(0usize);
        let state = up.subscribe();
        let counter = live.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let mut state = state.clone();
                if !*state.borrow_and_update() {
                    continue; // dropped: the connection is refused
                }
                counter.send_modify(|n| *n += 1);
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = state.wait_for(|up| !*up) => {}
                        }
                    }
                    // Both ends are closed before the count goes down.
                    drop(client);
                    counter.send_modify(|n| *n -= 1);
                });
            }
        });
        Relay { addr, up, live }
    }

    /// Cuts the store off: returns once every relayed connection is
    /// closed, so that no request after it can still reach the server.
    async fn cut(&self) {
        self.up.send_replace(false);
        let _ = self.live.subscribe().wait_for(|n| *n == 0).await;
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// `url` with its host and port replaced by the relay's, and a fresh prefix.
fn through(url: &str, relay: SocketAddr) -> String {
    let mut url = Url::parse(url).unwrap();
    url.set_ip_host(relay.ip()).unwrap();
    url.set_port(Some(relay.port())).unwrap();
    url.query_pairs_mut()
        .append_pair("prefix", &format!("outage-{}", &random_token()[..10]));
    url.to_string()
}

fn target_of(url: &str) -> SocketAddr {
    let url = Url::parse(url).unwrap();
    let host = url.host_str().unwrap();
    let port = url
        .port()
        .unwrap_or(if url.scheme() == "redis" { 6379 } else { 5432 });
    format!("{host}:{port}").parse().unwrap()
}

async fn outage_and_recovery(server_url: String) {
    let relay = Relay::start(target_of(&server_url)).await;
    let store = through(&server_url, relay.addr);
    // Forward-auth only (no upstream), the store through the relay.
    let h = Harness::start_with(false, |raw| raw.store = Some(store.clone().into())).await;
    let proxy = h.proxy;
    let url = |path: &str| format!("http://{proxy}{path}");
    let browser = browser();

    // Sign in while the store is up.
    let start = browser.get(url("/oauth2/start")).send().await.unwrap();
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let callback = sign_in_at_idp(&browser, &authorize, "alice").await;
    assert_eq!(browser.get(callback).send().await.unwrap().status(), 302);
    assert_eq!(
        browser
            .get(url("/oauth2/auth"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );

    // The store goes away: fast 503s with a clear code, for browsers and APIs.
    relay.cut().await;
    for path in ["/oauth2/auth", "/oauth2/userinfo", "/app"] {
        let started = Instant::now();
        let response = browser
            .get(url(path))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(response.status(), 503, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "store_unavailable", "{path}");
        assert!(took < Duration::from_secs(6), "{path} took {took:?}");
    }
    let page = browser
        .get(url("/app"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 503);
    assert!(page.text().await.unwrap().contains("store_unavailable"));
    let ready = browser.get(url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    // A sign-in can still start (it needs nothing from the store); its
    // callback gets the same clear 503.
    let start = browser.get(url("/oauth2/start")).send().await.unwrap();
    assert_eq!(start.status(), 302);
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let callback = sign_in_at_idp(&browser, &authorize, "alice").await;
    let response = browser
        .get(callback)
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");

    // It comes back: the same session works again, without a restart.
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = browser
            .get(url("/oauth2/auth"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "only 503 while reconnecting");
        assert!(Instant::now() < deadline, "latchkey did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Readiness follows at its next probe (it is cached for a few seconds).
    let deadline = Instant::now() + latchkey::proxy::readiness::PROBE_TTL + Duration::from_secs(10);
    loop {
        let status = browser.get(url("/readyz")).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only 503 while the last probe failed");
        assert!(Instant::now() < deadline, "readiness did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = latchkey::store::connect(&store).await.unwrap();
    store.purge("").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_and_recovery() {
    match std::env::var("LATCHKEY_TEST_REDIS") {
        Ok(url) => outage_and_recovery(url).await,
        Err(_) => eprintln!("skipping: set LATCHKEY_TEST_REDIS to run it"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_and_recovery() {
    match std::env::var("LATCHKEY_TEST_POSTGRES") {
        Ok(url) => outage_and_recovery(url).await,
        Err(_) => eprintln!("skipping: set LATCHKEY_TEST_POSTGRES to run it"),
    }
}

/// The server ends latchkey's pooled connections (as a restart or an
/// administrator's `pg_terminate_backend` does): the next read still answers,
/// on a fresh connection, instead of failing on the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_survive_connections_the_server_ended() {
    let Ok(server) = std::env::var("LATCHKEY_TEST_POSTGRES") else {
        eprintln!("skipping: set LATCHKEY_TEST_POSTGRES to run it");
        return;
    };
    let tag = random_token()[..12].to_lowercase().replace(['-', '_'], "x");
    let app_name = format!("latchkey-test-{tag}");
    let url = format!("{server}?application_name={app_name}&prefix=ended-{tag}");
    let store = latchkey::store::connect(&url).await.unwrap();
    assert!(
        store
            .insert_if_absent("k", b"v", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(store.get("k").await.unwrap().is_some());

    let admin = sqlx::PgPool::connect(&server).await.unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = $1) AS t",
    )
    .bind(&app_name)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(ended >= 1, "no connection of the store was found to end");

    let read = store
        .get("k")
        .await
        .expect("a read after the server ended the connections");
    assert_eq!(read.unwrap().value[..], *b"v");
    store.purge("").await.unwrap();
}
