//! Who latchkey admits and what it tells the upstream about them: only
//! verified, plausible emails count, and nobody is admitted by default.

mod common;

use common::browser::browser;
use common::proxy::{Harness, sign_in};
use common::recorder::Recorder;
use latchkey::config::RawSettings;
use latchkey::dev_idp::DevUser;
use reqwest::header::ACCEPT;

fn user(name: &str, email: &str, verified: bool) -> DevUser {
    DevUser {
        username: name.into(),
        password: name.into(),
        email: email.into(),
        email_verified: verified,
        groups: vec![],
        claims: Default::default(),
        userinfo_claims: Default::default(),
    }
}

fn users() -> Vec<DevUser> {
    vec![
        user("carol", "carol@corp.com", true),
        // Typed into a self-service profile: the provider never verified it.
        user("mallory", "mallory@corp.com", false),
        // The CVE-2026-40574 class: a second `@` before the allowed domain.
        user("eve", "eve@evil.test@corp.com", true),
    ]
}

async fn status_as(h: &Harness, name: &str) -> u16 {
    let b = browser();
    let landed = sign_in(h, &b, "/app", name).await;
    b.get(landed)
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn start(customize: impl FnOnce(&mut RawSettings)) -> (Harness, Recorder) {
    let upstream = Recorder::start().await;
    let h = Harness::start_with_users(Some(upstream.addr), users(), customize).await;
    (h, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_verified_plausible_emails_pass_an_email_domain_rule() {
    let (h, upstream) = start(|raw| raw.email_domains = Some(vec!["corp.com".into()])).await;
    assert_eq!(status_as(&h, "carol").await, 200);
    let head = upstream.heads().last().unwrap().to_ascii_lowercase();
    assert!(head.contains("x-forwarded-email: carol@corp.com"), "{head}");
    assert_eq!(
        status_as(&h, "mallory").await,
        403,
        "an unverified email was trusted"
    );
    assert_eq!(
        status_as(&h, "eve").await,
        403,
        "a second @ passed the domain rule"
    );
    assert_eq!(
        upstream.heads().len(),
        1,
        "a refused user reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_email_is_never_sent_upstream() {
    let (h, upstream) = start(|raw| raw.email_domains = Some(vec!["*".into()])).await;
    // Everyone is admitted, but the unverified address is not theirs to claim.
    for name in ["mallory", "eve"] {
        assert_eq!(status_as(&h, name).await, 200, "{name}");
        let head = upstream.heads().last().unwrap().to_ascii_lowercase();
        assert!(
            head.contains(&format!("x-forwarded-user: {name}")),
            "{head}"
        );
        assert!(!head.contains("x-forwarded-email"), "{head}");
    }
    let b = browser();
    sign_in(&h, &b, "/", "mallory").await;
    let info: serde_json::Value = b
        .get(h.url("/oauth2/userinfo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info["email"].is_null(), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opt_out_trusts_unverified_but_never_implausible_emails() {
    let (h, upstream) = start(|raw| {
        raw.email_domains = Some(vec!["corp.com".into()]);
        raw.insecure_allow_unverified_email = Some(true);
    })
    .await;
    assert_eq!(status_as(&h, "mallory").await, 200);
    let head = upstream.heads().last().unwrap().to_ascii_lowercase();
    assert!(
        head.contains("x-forwarded-email: mallory@corp.com"),
        "{head}"
    );
    assert_eq!(status_as(&h, "eve").await, 403);
}

/// Whether `browser` is signed in at `base` (`/oauth2/auth` says 202), and
/// the session cookie that answer set, if any.
async fn signed_in_at(browser: &reqwest::Client, base: &str) -> (u16, Vec<String>) {
    let response = browser.get(format!("{base}/app")).send().await.unwrap();
    let set = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (response.status().as_u16(), set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_secret_rotation_signs_nobody_out() {
    use base64::Engine;
    let b64 = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let (a, b) = (b64(0xA1), b64(0xB2));
    let upstream = Recorder::start().await;
    let h = Harness::start_with_users(Some(upstream.addr), users(), |raw| {
        raw.email_domains = Some(vec!["*".into()]);
        raw.cookie_secret = Some(a.clone().into());
    })
    .await;
    let first = browser();
    sign_in(&h, &first, "/", "carol").await;
    let second = browser();
    sign_in(&h, &second, "/", "carol").await;

    // The next deployment encrypts with B and still reads A.
    let (rotated, _server) = h
        .another(|raw| {
            raw.cookie_secret = Some(b.clone().into());
            raw.previous_cookie_secrets = Some(vec![a.clone().into()]);
        })
        .await;
    let (status, set) = signed_in_at(&first, &rotated).await;
    assert_eq!(status, 200, "a rotation signed a browser out");
    assert!(
        set.iter()
            .any(|c| c.starts_with("_latchkey=") && !c.contains("Max-Age=0")),
        "the session cookie was not set again with the new secret: {set:?}"
    );

    // Then A is retired: the browser that came by in between stays signed in;
    // the one that did not is signed out cleanly (sent to sign in, its
    // unreadable cookie expired), never an error.
    let (retired, _server) = h
        .another(|raw| {
            raw.cookie_secret = Some(b.clone().into());
            raw.previous_cookie_secrets = None;
        })
        .await;
    assert_eq!(signed_in_at(&first, &retired).await.0, 200);
    let stale = second
        .get(format!("{retired}/app"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 302);
    let cleared = stale
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .any(|c| {
            let c = c.to_str().unwrap();
            c.starts_with("_latchkey=") && c.contains("Max-Age=0")
        });
    assert!(cleared, "{:?}", stale.headers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_that_only_userinfo_gives_survive_a_refresh() {
    let h = Harness::start_with_idp(
        None,
        |idp| idp.groups_in_id_token = false,
        |raw| {
            raw.allowed_groups = Some(vec!["admins".into()]);
            // Every request finds the access token due: it refreshes at once.
            raw.refresh_before_expiry = Some("1h".into());
        },
    )
    .await;
    let b = browser();
    sign_in(&h, &b, "/", "alice").await;
    for _ in 0..3 {
        let answer = b.get(h.url("/oauth2/auth")).send().await.unwrap();
        assert_eq!(
            answer.status(),
            202,
            "alice lost her groups after a refresh"
        );
        assert_eq!(answer.headers()["x-auth-request-groups"], "admins,staff");
    }
    assert!(h.idp.knobs().refresh_grants() >= 1, "no refresh happened");
}
