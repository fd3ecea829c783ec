//! https on the listener (`tls_cert_file`, `tls_key_file`, `tls_min_version`)
//! with certificates the test makes: a browser signs in over https and gets
//! `__Host-`/`Secure` cookies; plain http to the port gets nothing; a
//! renewed certificate is presented after a reload (SIGHUP for `serve`),
//! and one that cannot be used is refused while the old one stays.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::process::KillOnDrop;
use common::proxy::{HTML, Harness, to_callback};
use common::tls::TestPki;
use reqwest::header::{ACCEPT, LOCATION};

/// latchkey (forward-auth) serving https with the certificate and key at
/// `cert` and `key`, its redirect URL and the IdP's registration https too.
async fn https_latchkey(
    cert: &Path,
    key: &Path,
    customize: impl FnOnce(&mut latchkey::config::RawSettings),
) -> Harness {
    Harness::start_with_idp(
        None,
        |idp| {
            for client in &mut idp.clients {
                client.redirect_uris = (client.redirect_uris.iter())
                    .map(|uri| uri.replace("http://", "https://"))
                    .collect();
            }
        },
        |raw| {
            raw.redirect_url = raw
                .redirect_url
                .take()
                .map(|u| u.replace("http://", "https://"));
            raw.tls_cert_file = Some(cert.to_owned());
            raw.tls_key_file = Some(key.to_owned());
            customize(raw);
        },
    )
    .await
}

fn https(h: &Harness, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", h.proxy.port())
}

/// Whether a fresh client trusting `pki`'s CA gets an answer from `/healthz`.
async fn trusted_by(pki: &TestPki, h: &Harness) -> bool {
    pki.browser().get(https(h, "/healthz")).send().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_over_https_with_secure_cookies() {
    let pki = TestPki::new();
    let h = https_latchkey(&pki.cert_file, &pki.key_file, |_| {}).await;
    let browser = pki.browser();
    let callback = to_callback(&browser, &https(&h, "/oauth2/start?rd=/after"), "alice").await;
    assert_eq!(callback.scheme(), "https");
    let done = browser
        .get(callback)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
    assert_eq!(done.headers()[LOCATION], "/after");
    let cookie = done.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("__Host-") && cookie.contains("Secure"),
        "{cookie}"
    );
    let auth = browser.get(https(&h, "/oauth2/auth")).send().await.unwrap();
    assert_eq!(auth.status(), 202);
    assert_eq!(auth.headers()["x-auth-request-user"], "alice");
    // Plain http to the https port: no answer at all.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/healthz", h.proxy.port())).await;
    assert!(
        plain.is_err(),
        "plain http was answered: {:?}",
        plain.map(|r| r.status())
    );
    // An untrusted certificate is an untrusted certificate.
    assert!(!trusted_by(&TestPki::new(), &h).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_min_version_refuses_older_clients() {
    let pki = TestPki::new();
    let old_client = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .max_tls_version(reqwest::tls::Version::TLS_1_2)
            .build()
            .unwrap()
    };
    let default = https_latchkey(&pki.cert_file, &pki.key_file, |_| {}).await;
    assert!(
        old_client()
            .get(https(&default, "/healthz"))
            .send()
            .await
            .is_ok()
    );
    let strict = https_latchkey(&pki.cert_file, &pki.key_file, |raw| {
        raw.tls_min_version = Some("1.3".into())
    })
    .await;
    assert!(
        old_client()
            .get(https(&strict, "/healthz"))
            .send()
            .await
            .is_err()
    );
    assert!(
        trusted_by(&pki, &strict).await,
        "TLS 1.3 clients still get in"
    );
    let mut bad = strict.settings.clone();
    bad.tls_min_version = Some("1.1".into());
    assert_eq!(bad.validate().unwrap_err().setting, "tls_min_version");
    let mut half = strict.settings.clone();
    half.tls_key_file = None;
    assert_eq!(half.validate().unwrap_err().setting, "tls_cert_file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_after_a_reload() {
    let (first, second) = (TestPki::new(), TestPki::new());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |pki: &TestPki| {
        std::fs::copy(&pki.cert_file, &cert).unwrap();
        std::fs::copy(&pki.key_file, &key).unwrap();
    };
    install(&first);
    let h = https_latchkey(&cert, &key, |_| {}).await;
    assert!(trusted_by(&first, &h).await);
    assert!(!trusted_by(&second, &h).await);
    install(&second);
    // Not before the reload...
    assert!(trusted_by(&first, &h).await);
    assert_eq!(h.server.reload_tls(), Ok(true));
    // ...and at once after it, for new connections.
    assert!(trusted_by(&second, &h).await);
    assert!(!trusted_by(&first, &h).await);
    // A certificate that cannot be used is refused; the last good one stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(h.server.reload_tls().is_err());
    assert!(trusted_by(&second, &h).await);
}

/// `latchkey serve` reloads on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_its_certificate_on_sighup() {
    let (first, second) = (TestPki::new(), TestPki::new());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first.cert_file, &cert).unwrap();
    std::fs::copy(&first.key_file, &key).unwrap();
    let idp = latchkey::dev_idp::DevIdp::start(latchkey::dev_idp::DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("serve")
        .env("LATCHKEY_LISTEN", "127.0.0.1:0")
        .env("LATCHKEY_ISSUER", idp.issuer())
        .env("LATCHKEY_CLIENT_ID", "latchkey")
        .env("LATCHKEY_CLIENT_SECRET", "latchkey-dev-secret")
        .env(
            "LATCHKEY_REDIRECT_URL",
            "https://127.0.0.1:4180/oauth2/callback",
        )
        .env("LATCHKEY_STORE", "memory://")
        .env(
            "LATCHKEY_COOKIE_SECRET",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("LATCHKEY_EMAIL_DOMAINS", "*")
        .env("LATCHKEY_TLS_CERT_FILE", &cert)
        .env("LATCHKEY_TLS_KEY_FILE", &key)
        .env("LATCHKEY_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Its log, read to the end in a thread of its own (a closed pipe would
    // fail its next write); each JSON line's fields, in order.
    let (log, messages) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = log.send(entry["fields"].clone());
            }
        }
    });
    let next_message =
        move || (messages.recv_timeout(common::TEST_TIMEOUT)).expect("serve exited or went silent");
    let addr = loop {
        let fields = next_message();
        if fields["message"] == "latchkey is listening" {
            break fields["addr"].as_str().unwrap().to_owned();
        }
    };
    let pid = child.id().to_string();
    let _child = KillOnDrop(child);
    let healthz = |pki: &TestPki| {
        let client = pki.browser();
        let url = format!("https://{addr}/healthz");
        async move { client.get(url).send().await.is_ok() }
    };
    assert!(healthz(&first).await);
    std::fs::copy(&second.cert_file, &cert).unwrap();
    std::fs::copy(&second.key_file, &key).unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The log says when it is done; then new connections get the new one.
    let next = tokio::task::spawn_blocking(move || {
        loop {
            let fields = next_message();
            if fields["message"] == "reloaded the listener's certificate" {
                return;
            }
        }
    });
    next.await.unwrap();
    assert!(healthz(&second).await);
    assert!(!healthz(&first).await);
}

/// Browsers speak HTTP/2 to an https endpoint (ALPN): sign-in, forward-auth
/// and the proxied app behave over it exactly as over HTTP/1.1, and the
/// upstream hears HTTP/1.1 with the host the browser named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_speaking_http2_get_the_same_answers() {
    let pki = TestPki::new();
    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = upstream_listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(upstream_listener, latchkey::demo::sample_app())
            .await
            .unwrap()
    });
    let h = https_latchkey(&pki.cert_file, &pki.key_file, |raw| {
        raw.upstream = Some(format!("http://{upstream}"));
    })
    .await;
    for (browser, version) in [
        (pki.browser(), reqwest::Version::HTTP_2),
        (
            reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .add_root_certificate(
                    reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap(),
                )
                .http1_only()
                .build()
                .unwrap(),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let health = browser.get(https(&h, "/healthz")).send().await.unwrap();
        assert_eq!(health.version(), version);
        let callback = to_callback(&browser, &https(&h, "/oauth2/start?rd=/app"), "alice").await;
        let done = browser
            .get(callback)
            .header(ACCEPT, HTML)
            .send()
            .await
            .unwrap();
        assert_eq!(done.version(), version);
        assert_eq!(done.status(), 302);
        assert_eq!(done.headers()[LOCATION], "/app");
        let app = browser
            .get(https(&h, "/app?x=1"))
            .header(ACCEPT, "application/json")
            .header("x-forwarded-user", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(app.status(), 200, "{version:?}");
        let seen: serde_json::Value = app.json().await.unwrap();
        assert_eq!(seen["path"], "/app");
        assert_eq!(seen["headers"]["x-forwarded-user"], "alice", "{version:?}");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        let host = format!("127.0.0.1:{}", h.proxy.port());
        assert_eq!(
            seen["headers"]["x-forwarded-host"],
            host.as_str(),
            "{version:?}"
        );
        let anonymous = pki
            .browser()
            .get(https(&h, "/app"))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
    }
}
