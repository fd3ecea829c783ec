//! `https://` upstreams: an app served over TLS with a certificate from a
//! CA the test makes is reached with `upstream_ca_files` (and refused
//! without: a 502, never the app); one that demands a client certificate
//! gets latchkey's `upstream_client_cert_file` and refuses a latchkey
//! without it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::proxy::{Harness, sign_in, upstream_json};
use common::tls::TestPki;
use latchkey::demo::sample_app;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The sample app over https with `pki`'s server certificate; with
/// `client_ca`, only clients with a certificate from `pki`'s CA get in.
async fn https_app(pki: &TestPki, client_ca: bool) -> SocketAddr {
    let config = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&pki.ca_file).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = vec![CertificateDer::from_pem_file(&pki.cert_file).unwrap()];
        let key = PrivateKeyDer::from_pem_file(&pki.key_file).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        )
    } else {
        latchkey::tls::server_config(&pki.cert_file, &pki.key_file, &[b"http/1.1"]).unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(latchkey::tls::serve_tls(
        listener,
        acceptor,
        sample_app(),
        std::future::pending(),
    ));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_behind_a_private_ca_is_reached_with_upstream_ca_files() {
    let pki = TestPki::new();
    let app = https_app(&pki, false).await;
    let h = Harness::start_in_front_of(None, |raw| {
        raw.upstream = Some(format!("https://{app}"));
        raw.upstream_ca_files = Some(vec![pki.ca_file.clone()]);
    })
    .await;
    let b = common::browser::browser();
    let landed = sign_in(&h, &b, "/over/tls", "alice").await;
    let (status, seen) = upstream_json(&b, landed.as_str(), &[]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], "/over/tls");
    assert_eq!(seen["headers"]["x-forwarded-user"], "alice");

    // Without the CA: the app is never reached, and the browser gets 502.
    let (url, _server) = h.another(|raw| raw.upstream_ca_files = None).await;
    let (status, _) = upstream_json(&b, &format!("{url}/over/tls"), &[]).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_demands_a_client_certificate_gets_latchkeys() {
    let pki = TestPki::new();
    let app = https_app(&pki, true).await;
    let h = Harness::start_in_front_of(None, |raw| {
        raw.upstream = Some(format!("https://{app}"));
        raw.upstream_ca_files = Some(vec![pki.ca_file.clone()]);
        raw.upstream_client_cert_file = Some(pki.client_cert_file.clone());
        raw.upstream_client_key_file = Some(pki.client_key_file.clone());
    })
    .await;
    let b = common::browser::browser();
    let landed = sign_in(&h, &b, "/mtls", "alice").await;
    let (status, seen) = upstream_json(&b, landed.as_str(), &[]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-user"], "alice");
    // No client certificate: refused by the app, a 502 here.
    let (url, _server) = h
        .another(|raw| {
            raw.upstream_client_cert_file = None;
            raw.upstream_client_key_file = None;
        })
        .await;
    let (status, _) = upstream_json(&b, &format!("{url}/mtls"), &[]).await;
    assert_eq!(status, 502);
    // Only one of the pair: a settings error naming it.
    let mut half = h.settings.clone();
    half.upstream_client_key_file = None;
    let err = half.validate().unwrap_err();
    assert_eq!(err.setting, "upstream_client_cert_file");
}
