//! Interop with a provider nobody here wrote: panva's certified
//! `oidc-provider` (npm, pinned in `tests/interop/oidc-provider/package.json`).
//! The same flow as against the development IdP: login through its
//! development interaction forms, userinfo, refresh with rotation and reuse
//! detection, token revocation at sign-out (RFC 7009), RP-initiated logout.
//!
//! Runs when `LATCHKEY_TEST_OIDC_PROVIDER` names that folder with its
//! `node_modules` installed (`.ci/run` installs it and sets the variable).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::process::KillOnDrop;
use latchkey::clock::SystemClock;
use latchkey::idp::{IdentityProvider, IdpError};
use latchkey::login::{Callback, LoginFlow, LoginSettings};
use latchkey::oidc::{OidcProvider, OidcSettings};
use latchkey::session::{SessionError, SessionSettings, Sessions};
use latchkey::store::Store;
use latchkey::store::memory::MemoryStore;
use url::Url;

const REDIRECT: &str = "http://127.0.0.1:9/oauth2/callback";
const AFTER_LOGOUT: &str = "http://127.0.0.1:9/signed-out";

/// The provider process, killed when dropped.
struct NodeProvider {
    _child: KillOnDrop,
    issuer: String,
}

fn start_provider() -> Option<NodeProvider> {
    start_provider_with(&[REDIRECT, AFTER_LOGOUT])
}

/// The provider started with `args` (redirect URI, post-logout URI and,
/// optionally, the back-channel logout URI).
fn start_provider_with(args: &[&str]) -> Option<NodeProvider> {
    let Ok(dir) = std::env::var("LATCHKEY_TEST_OIDC_PROVIDER") else {
        eprintln!(
            "skipping: set LATCHKEY_TEST_OIDC_PROVIDER to tests/interop/oidc-provider \
             (after `npm ci` there) to run the interop test"
        );
        return None;
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "{} has no node_modules/oidc-provider: run `npm ci` there",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg("server.mjs")
        .args(args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node (Node.js 20 or later is needed)");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // Keep draining its output: a closed pipe would kill it at its next write.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let issuer = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected output from the provider: {line:?}"))
        .to_owned();
    Some(NodeProvider {
        _child: KillOnDrop(child),
        issuer,
    })
}

/// A browser with a cookie jar that does not follow redirects by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of `attribute="…"` after `marker` in `html`.
fn attribute_after(html: &str, marker: &str, attribute: &str) -> Option<String> {
    let from = html.find(marker)?;
    let rest = &html[from..];
    let start = rest.find(&format!("{attribute}=\""))? + attribute.len() + 2;
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_owned())
}

/// Drives the provider's development interactions (login, then consent) until
/// it redirects to the relying party; returns that redirect.
async fn sign_in(browser: &reqwest::Client, authorization_url: &str, user: &str) -> Url {
    sign_in_back_to(browser, authorization_url, user, REDIRECT).await
}

/// [`sign_in`] for a relying party whose redirect URI is `redirect`.
async fn sign_in_back_to(
    browser: &reqwest::Client,
    authorization_url: &str,
    user: &str,
    redirect: &str,
) -> Url {
    let mut next = Url::parse(authorization_url).unwrap();
    for _ in 0..12 {
        let response = browser.get(next.clone()).send().await.unwrap();
        let response = if response.status().is_success() {
            let html = response.text().await.unwrap();
            let action = attribute_after(&html, "<form", "action").expect("a form");
            let target = next.join(&action).unwrap();
            let form: Vec<(&str, &str)> = if html.contains("value=\"login\"") {
                vec![("prompt", "login"), ("login", user), ("password", "any")]
            } else if html.contains("value=\"consent\"") {
                vec![("prompt", "consent")]
            } else {
                panic!("unexpected interaction page");
            };
            browser.post(target).form(&form).send().await.unwrap()
        } else {
            response
        };
        assert!(response.status().is_redirection(), "{}", response.status());
        let location = response.headers()["location"].to_str().unwrap();
        next = next.join(location).unwrap();
        if next.as_str().starts_with(redirect) {
            return next;
        }
    }
    panic!("the provider never redirected back");
}

/// Opens the provider's logout page at `logout_url` and confirms it
/// ("sign out of every app"); returns the provider's answer.
async fn confirm_logout(browser: &reqwest::Client, logout_url: Url) -> reqwest::Response {
    let page = browser.get(logout_url.clone()).send().await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    let html = page.text().await.unwrap();
    let action = attribute_after(&html, "op.logoutForm", "action").unwrap();
    let xsrf = attribute_after(&html, "name=\"xsrf\"", "value").unwrap();
    browser
        .post(logout_url.join(&action).unwrap())
        .form(&[("xsrf", xsrf.as_str()), ("logout", "yes")])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_against_panva_oidc_provider() {
    let Some(node) = start_provider() else {
        return;
    };
    let mut settings =
        OidcSettings::new(&node.issuer, "latchkey", Some("interop-secret"), REDIRECT);
    settings.scopes = ["openid", "email", "groups", "offline_access"]
        .map(String::from)
        .to_vec();
    let provider = Arc::new(OidcProvider::discover(&settings).await.unwrap());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let flow = LoginFlow::new(
        store.clone(),
        provider.clone(),
        Arc::new(SystemClock),
        LoginSettings::default(),
    );
    let browser = browser();

    // Login.
    let started = flow.begin("/after").await.unwrap();
    assert!(started.authorization_url.contains("prompt=consent"));
    let back = sign_in(&browser, &started.authorization_url, "alice").await;
    let query: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert!(!query.contains_key("error"), "{query:?}");
    assert_eq!(query["state"], started.state.secret());
    provider
        .check_response_issuer(query.get("iss").map(String::as_str))
        .unwrap();
    let done = flow
        .complete(Callback {
            state: &query["state"],
            code: &query["code"],
            binding: Some(started.binding.secret()),
            pending: Some(&started.pending),
        })
        .await
        .unwrap();

    // Identity: sub from the ID token, email and groups from userinfo.
    let sessions = |refresh_before_expiry| {
        Sessions::new(
            store.clone(),
            provider.clone(),
            Arc::new(SystemClock),
            SessionSettings {
                refresh_before_expiry,
                ..SessionSettings::default()
            },
        )
    };
    let session = sessions(Duration::ZERO)
        .load(&done.session_id)
        .await
        .unwrap();
    assert_eq!(session.identity().subject, "alice");
    assert_eq!(session.identity().issuer, node.issuer);
    assert_eq!(
        session.identity().email.as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(session.identity().groups, ["admins", "staff"]);
    let first = session
        .tokens()
        .refresh_token
        .clone()
        .expect("offline_access granted");

    // Refresh: rotated.
    let refreshed = sessions(Duration::from_secs(24 * 3600))
        .load(&done.session_id)
        .await
        .unwrap();
    let second = refreshed.tokens().refresh_token.clone().unwrap();
    assert_ne!(second, first, "the provider rotates refresh tokens");
    assert_ne!(
        refreshed.tokens().access_token,
        session.tokens().access_token
    );
    assert_eq!(refreshed.identity().subject, "alice");

    // Reuse of the rotated token is refused (and the provider revokes the grant).
    let reuse = provider.refresh(&first).await.unwrap_err();
    assert!(matches!(reuse, IdpError::InvalidGrant(_)), "{reuse:?}");
    let revoked = provider.refresh(&second).await.unwrap_err();
    assert!(matches!(revoked, IdpError::InvalidGrant(_)), "{revoked:?}");

    // Revocation (RFC 7009): a second login's refresh token works until
    // sign-out revokes it at the provider, and not after.
    let again = flow.begin("/after").await.unwrap();
    let back = sign_in(&browser, &again.authorization_url, "alice").await;
    let query: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    let second_login = flow
        .complete(Callback {
            state: &query["state"],
            code: &query["code"],
            binding: Some(again.binding.secret()),
            pending: Some(&again.pending),
        })
        .await
        .unwrap();
    let live = sessions(Duration::from_secs(24 * 3600))
        .load(&second_login.session_id)
        .await
        .unwrap()
        .tokens()
        .refresh_token
        .clone()
        .expect("offline_access granted");
    let signed_out = sessions(Duration::ZERO)
        .sign_out(&second_login.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(signed_out.tokens.refresh_token.as_ref(), Some(&live));
    assert_eq!(
        provider.revoke_refresh_token(&live).await,
        Ok(true),
        "discovery offers oidc-provider's revocation_endpoint"
    );
    let after = provider.refresh(&live).await.unwrap_err();
    assert!(matches!(after, IdpError::InvalidGrant(_)), "{after:?}");

    // RP-initiated logout: the provider asks for confirmation, then returns.
    let record = sessions(Duration::ZERO)
        .sign_out(&done.session_id)
        .await
        .unwrap()
        .unwrap();
    let logout = provider
        .end_session_url(record.tokens.id_token.as_ref(), Some(AFTER_LOGOUT))
        .expect("oidc-provider has an end_session_endpoint");
    let confirmed = confirm_logout(&browser, Url::parse(&logout).unwrap()).await;
    assert!(
        confirmed.status().is_redirection(),
        "{}",
        confirmed.status()
    );
    let location = confirmed.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(AFTER_LOGOUT), "{location}");
    assert!(matches!(
        sessions(Duration::ZERO).load(&done.session_id).await,
        Err(SessionError::NotFound)
    ));
}

/// Back-Channel Logout 1.0 with a provider nobody here wrote: an app built
/// with the library signs alice in through oidc-provider (whose ID tokens
/// then carry a `sid`); she signs out at the provider, which POSTs its
/// logout token to the app's `/oauth2/backchannel_logout` before it
/// answers; her session at the app is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_logout_from_panva_oidc_provider() {
    use latchkey::web::{AccessPolicy, Latchkey};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{app}/oauth2/callback");
    let Some(node) = start_provider_with(&[
        &callback,
        &format!("{app}/signed-out"),
        &format!("{app}/oauth2/backchannel_logout"),
    ]) else {
        return;
    };
    let latchkey = Latchkey::builder(&node.issuer, "latchkey", &callback)
        .client_secret("interop-secret")
        .cookie_secret(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            [5u8; 32],
        ))
        .policy(AccessPolicy::everyone())
        .settings(|raw| raw.scopes = Some(vec!["openid".into(), "email".into()]))
        .build()
        .await
        .unwrap();
    let router = axum::Router::new()
        .route("/me", axum::routing::get(|| async { "hello" }))
        .route_layer(latchkey.require_login())
        .merge(latchkey.login_routes());
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });

    let browser = browser();
    let start = (browser.get(format!("{app}/oauth2/start?rd=/me")))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let authorize = start.headers()["location"].to_str().unwrap().to_owned();
    let back = sign_in_back_to(&browser, &authorize, "alice", &callback).await;
    let done = browser.get(back).send().await.unwrap();
    assert_eq!(done.status(), 302, "{}", done.text().await.unwrap());
    let me = async || {
        browser
            .get(format!("{app}/me"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(me().await, 200);

    // Signing out at the provider (its own logout page, confirmed).
    let end_session = Url::parse(&format!("{}/session/end", node.issuer)).unwrap();
    let confirmed = confirm_logout(&browser, end_session).await;
    assert!(confirmed.status().is_redirection() || confirmed.status().is_success());

    // The provider waited for the app's answer: the session is over.
    assert_eq!(
        me().await,
        401,
        "still signed in after the provider's logout"
    );
    let metrics = latchkey.metrics().render();
    assert!(
        metrics.contains(r#"latchkey_backchannel_logouts_total{result="accepted"} 1"#),
        "{metrics}"
    );
}
