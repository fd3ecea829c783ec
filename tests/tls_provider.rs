//! An identity provider behind a private CA (most internal Keycloak, ADFS
//! and Dex instances): the development IdP serves https with a certificate
//! from a CA the test makes. With the CA in `provider_ca_files`, latchkey
//! discovers it, validates its tokens and signs a browser in; without, it
//! refuses to start and says which setting fixes it; a file that holds no
//! certificate is a configuration error naming the setting.

mod common;

use common::proxy::{Harness, complete_sign_in};
use common::tls::TestPki;
use latchkey::config::RawSettings;
use latchkey::proxy::App;

/// latchkey (forward-auth) in front of the development IdP serving https
/// with `pki`'s certificate, trusting `pki`'s CA.
async fn behind_private_ca(pki: &TestPki) -> Harness {
    Harness::start_with_idp(
        None,
        |idp| {
            idp.tls_cert_file = Some(pki.cert_file.clone());
            idp.tls_key_file = Some(pki.key_file.clone());
        },
        |raw| raw.provider_ca_files = Some(vec![pki.ca_file.clone()]),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_behind_a_private_ca_works_with_provider_ca_files() {
    let pki = TestPki::new();
    let h = behind_private_ca(&pki).await;
    assert!(
        h.idp.issuer().starts_with("https://127.0.0.1:"),
        "{}",
        h.idp.issuer()
    );
    let browser = pki.browser();
    let landed = complete_sign_in(&browser, &h.url("/oauth2/start?rd=/after"), "alice").await;
    assert_eq!(landed, "/after");
    let auth = browser.get(h.url("/oauth2/auth")).send().await.unwrap();
    assert_eq!(auth.status(), 202);
    assert_eq!(auth.headers()["x-auth-request-user"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_provider_is_refused_with_a_clear_message() {
    let pki = TestPki::new();
    let h = behind_private_ca(&pki).await;
    // The same settings without the CA: the system's roots do not know it.
    let without = RawSettings {
        provider_ca_files: None,
        ..h.settings.clone()
    };
    let refused = App::new(without.validate().unwrap())
        .await
        .err()
        .expect("started anyway");
    let message = refused.to_string();
    assert!(message.contains("provider_ca_files"), "{message}");
    assert!(message.contains(h.idp.issuer()), "{message}");
    // Another CA's certificate does not help either.
    let other = TestPki::new();
    let wrong = RawSettings {
        provider_ca_files: Some(vec![other.ca_file.clone()]),
        ..h.settings.clone()
    };
    assert!(App::new(wrong.validate().unwrap()).await.is_err());
}

#[test]
fn provider_ca_files_must_hold_certificates() {
    let pki = TestPki::new();
    let empty = pki.dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let junk = pki.dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for file in [
        pki.dir.path().join("missing.pem"),
        empty,
        junk,
        // A private key is not a CA certificate.
        pki.key_file.clone(),
    ] {
        let raw = RawSettings {
            issuer: Some("https://idp.example.com".into()),
            client_id: Some("app".into()),
            redirect_url: Some("https://app.example.com/oauth2/callback".into()),
            cookie_secret: Some(
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
                    .to_owned()
                    .into(),
            ),
            email_domains: Some(vec!["*".into()]),
            provider_ca_files: Some(vec![file.clone()]),
            ..RawSettings::default()
        };
        let err = raw.validate().unwrap_err();
        assert_eq!(
            err.setting,
            "provider_ca_files",
            "{}: {err}",
            file.display()
        );
    }
}
