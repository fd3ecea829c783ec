//! Redis over TLS (`rediss://`, `rediss+cluster://`, `rediss+sentinel://`)
//! against TLS-only redis-servers the tests start with a CA of their own:
//! every store guarantee holds through `check-store` on each topology, and
//! the connection trusts only what the URL says — no other CA, no other
//! name, no client certificate when the server demands one, and no
//! plaintext to a TLS port.

#![cfg(feature = "redis")]

mod common;

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use common::redis_servers::OwnServers;
use common::tls::TestPki;
use latchkey::store::StoreError;

const TTL: Duration = Duration::from_secs(60);

/// `tests/redis/SCRIPT` servers over TLS only, certified by `pki`;
/// `auth_clients`: whether they require a client certificate.
fn tls_servers(script: &str, ports: u16, pki: &TestPki, auth_clients: &str) -> OwnServers {
    OwnServers::start_with(
        script,
        ports,
        &[
            ("REDIS_TLS_DIR", pki.dir.path().as_os_str()),
            ("REDIS_TLS_AUTH_CLIENTS", OsStr::new(auth_clients)),
        ],
    )
}

/// `url` with the query options `options` added.
fn with(url: &str, options: &str) -> String {
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}{options}")
}

fn ca(pki: &TestPki) -> String {
    format!("ca_file={}", pki.ca_file.display())
}

/// `latchkey check-store --store URL`: every guarantee holds.
fn check_store_passes(url: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["check-store", "--store", url])
        .env_remove("LATCHKEY_STORE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{url}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks = latchkey::store::contract::CHECKS.len();
    assert!(
        stdout.contains(&format!("{checks} of {checks} guarantees hold.")),
        "{stdout}"
    );
}

/// Whether the environment has Redis for the tests (CI sets it).
fn redis_available(variable: &str) -> bool {
    let set = std::env::var(variable).is_ok();
    if !set {
        eprintln!("skipping: set {variable} to run it (it starts its own TLS servers)");
    }
    set
}

/// One TLS server, trusted through `ca_file`: the whole contract holds, as
/// `check-store` runs it.
#[test]
fn every_guarantee_holds_over_rediss_with_a_private_ca() {
    if !redis_available("LATCHKEY_TEST_REDIS") {
        return;
    }
    let pki = TestPki::new();
    let own = tls_servers("single.sh", 1, &pki, "optional");
    assert!(own.url.starts_with("rediss://"), "{}", own.url);
    check_store_passes(&with(&own.url, &ca(&pki)));
}

/// What a connection must refuse, each on a live TLS server: the bundled
/// web roots (the URL names no CA), another CA (a server impersonated with
/// a certificate from elsewhere), a name the certificate does not hold
/// (127.0.0.2), and plaintext to the TLS port (a downgrade). Each is an
/// outage (503), never a store that works unverified; the control connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_trusts_only_the_ca_and_name_it_was_given() {
    if !redis_available("LATCHKEY_TEST_REDIS") {
        return;
    }
    let pki = TestPki::new();
    let other = TestPki::new();
    let own = tls_servers("single.sh", 1, &pki, "optional");
    let port = own.first_port;
    let refused = [
        format!("rediss://127.0.0.1:{port}/0"),
        format!("rediss://127.0.0.1:{port}/0?{}", ca(&other)),
        format!("rediss://127.0.0.2:{port}/0?{}", ca(&pki)),
        format!("redis://127.0.0.1:{port}/0"),
    ];
    for url in &refused {
        let started = std::time::Instant::now();
        match latchkey::store::connect(url).await {
            Err(StoreError::Unavailable(why)) => eprintln!("{url}: {why}"),
            Err(other) => panic!("{url}: not an outage: {other}"),
            Ok(_) => panic!("{url}: connected"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{url} hung");
    }
    let store = latchkey::store::connect(&format!(
        "rediss://localhost:{port}/0?{}&prefix=tls-control",
        ca(&pki)
    ))
    .await
    .unwrap();
    assert!(store.insert_if_absent("k", b"v", TTL).await.unwrap());
    store.purge("").await.unwrap();
}

/// A server that requires client certificates (`tls-auth-clients yes`):
/// without `client_cert`/`client_key` the store cannot connect; with the
/// CA's client certificate it can, and every guarantee holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_client_certificates_gets_one() {
    if !redis_available("LATCHKEY_TEST_REDIS") {
        return;
    }
    let pki = TestPki::new();
    let own = tls_servers("single.sh", 1, &pki, "yes");
    let anonymous = latchkey::store::connect(&with(&own.url, &ca(&pki))).await;
    assert!(
        matches!(anonymous, Err(StoreError::Unavailable(_))),
        "connected without a client certificate: {:?}",
        anonymous.err()
    );
    let identified = with(
        &own.url,
        &format!(
            "{}&client_cert={}&client_key={}",
            ca(&pki),
            pki.client_cert_file.display(),
            pki.client_key_file.display()
        ),
    );
    tokio::task::spawn_blocking(move || check_store_passes(&identified))
        .await
        .unwrap();
}

/// A cluster whose nodes speak TLS only (among themselves too): every
/// guarantee holds, scans per primary included.
#[test]
fn every_guarantee_holds_on_a_tls_cluster() {
    if !redis_available("LATCHKEY_TEST_REDIS_CLUSTER") {
        return;
    }
    let pki = TestPki::new();
    let own = tls_servers("cluster.sh", 6, &pki, "optional");
    assert!(own.url.starts_with("rediss+cluster://"), "{}", own.url);
    check_store_passes(&with(&own.url, &ca(&pki)));
}

/// Sentinels and servers that speak TLS only: the sentinels are asked over
/// TLS, the master they name is reached over TLS, every guarantee holds;
/// and the sentinels are not asked in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guarantee_holds_behind_tls_sentinels() {
    if !redis_available("LATCHKEY_TEST_REDIS_SENTINEL") {
        return;
    }
    let pki = TestPki::new();
    let own = tls_servers("sentinel.sh", 5, &pki, "optional");
    assert!(own.url.starts_with("rediss+sentinel://"), "{}", own.url);
    let plaintext = own.url.replacen("rediss+", "redis+", 1);
    assert!(
        matches!(
            latchkey::store::connect(&plaintext).await,
            Err(StoreError::Unavailable(_))
        ),
        "asked TLS sentinels in plaintext"
    );
    let url = with(&own.url, &ca(&pki));
    tokio::task::spawn_blocking(move || check_store_passes(&url))
        .await
        .unwrap();
}
