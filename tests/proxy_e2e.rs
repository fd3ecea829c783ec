//! `latchkey serve` end to end over real sockets: a scripted browser with a
//! cookie jar, the development IdP, the sample upstream, and the proxy between.

use std::sync::Arc;

use base64::Engine;
use std::time::Duration;

mod common;

use common::browser::{browser, location};
use latchkey::demo::sample_app;
use reqwest::header::{ACCEPT, COOKIE, LOCATION};
use serde_json::Value;
use tokio::net::TcpListener;
use url::Url;

use common::proxy::{HTML, Harness, SECRET, sign_in, to_callback, upstream_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_reaches_the_upstream_with_identity_headers() {
    let h = Harness::start(|_| {}).await;
    let b = browser();
    let landed = sign_in(&h, &b, "/app/page?x=1", "alice").await;
    assert_eq!(landed.path(), "/app/page");
    assert_eq!(landed.query(), Some("x=1"));
    let spoofed = [
        ("x-forwarded-user", "mallory"),
        ("x-forwarded-email", "mallory@evil.example"),
        ("x-auth-request-user", "mallory"),
        ("x-forwarded-groups", "admins"),
    ];
    let (status, seen) = upstream_json(&b, landed.as_str(), &spoofed).await;
    assert_eq!(status, 200, "{seen}");
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-user"], "alice");
    assert_eq!(headers["x-forwarded-email"], "alice@example.com");
    assert_eq!(headers["x-forwarded-groups"], "admins,staff");
    assert!(headers.get("x-auth-request-user").is_none(), "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    // latchkey's own cookies never reach the app; the app's own do.
    let (_, seen) = upstream_json(&b, landed.as_str(), &[(COOKIE.as_str(), "app=1")]).await;
    let cookie = seen["headers"]["cookie"].as_str().unwrap_or("");
    assert!(
        !cookie.contains("_latchkey") && !cookie.contains("latchkey-login"),
        "{cookie}"
    );
    assert_eq!(h.idp.knobs().code_grants(), 1);
    assert_eq!(h.metric("latchkey_logins_completed_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_without_a_session_get_401_json() {
    let h = Harness::start(|_| {}).await;
    let response = reqwest::Client::new()
        .get(h.url("/api/things"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_signed_in");
    // A browser is sent to sign in instead, keeping its destination.
    let response = browser()
        .get(h.url("/app?a=b"))
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()[LOCATION],
        "/oauth2/start?rd=%2Fapp%3Fa%3Db"
    );
}

/// `extra_auth_params`, `acr_values` and `pass_auth_params`: what the
/// provider is asked for, and what an attacker's start link cannot change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_requests_carry_configured_and_allowed_parameters() {
    let h = Harness::start(|raw| {
        raw.extra_auth_params = Some(vec!["audience=https://api.example.test".into()]);
        raw.acr_values = Some("mfa".into());
        raw.pass_auth_params = Some(vec!["login_hint".into(), "prompt".into()]);
    })
    .await;
    let b = browser();
    let start = b
        .get(h.url(
            "/oauth2/start?rd=/app&login_hint=bob%40example.com&prompt=login&domain_hint=evil.test\
             &state=forged&redirect_uri=https%3A%2F%2Fevil.test%2Fcb&client_id=other",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let all: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    let values = |name: &str| -> Vec<&str> {
        all.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("login_hint"), ["bob@example.com"]);
    assert_eq!(values("prompt"), ["login"]);
    assert_eq!(values("audience"), ["https://api.example.test"]);
    assert_eq!(values("acr_values"), ["mfa"]);
    assert!(values("domain_hint").is_empty(), "not allowed: {all:?}");
    // The protocol's own parameters are latchkey's, once each.
    assert_eq!(values("client_id"), ["latchkey"]);
    assert_eq!(values("redirect_uri"), [h.url("/oauth2/callback").as_str()]);
    let state = values("state");
    assert_eq!(state.len(), 1);
    assert_ne!(state[0], "forged");
    // The sign-in completes with them.
    let callback = common::browser::sign_in_at_idp(&b, &authorize, "bob").await;
    assert_eq!(b.get(callback).send().await.unwrap().status(), 302);
    // Oversized or control characters: refused, nothing started.
    for bad in [
        format!("login_hint={}", "a".repeat(300)),
        "prompt=login%0Aevil".to_owned(),
    ] {
        let response = b
            .get(h.url(&format!("/oauth2/start?rd=/&{bad}")))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");
    }
    // Not allowed by default.
    let plain = Harness::start(|_| {}).await;
    let start = browser()
        .get(plain.url("/oauth2/start?rd=/&login_hint=bob%40example.com"))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert!(
        !authorize.query_pairs().any(|(k, _)| k == "login_hint"),
        "{authorize}"
    );
}

/// nginx locations with their own rules (`auth_request
/// /oauth2/auth?allowed_groups=admins;`): they narrow the global policy and
/// never widen it, and a rule latchkey does not know is not taken as none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_query_parameters_narrow_the_policy() {
    // Globally: staff only (alice is in admins and staff, bob in staff).
    let h = Harness::start_with(false, |raw| {
        raw.email_domains = None;
        raw.allowed_groups = Some(vec!["staff".into()]);
    })
    .await;
    let alice = browser();
    sign_in(&h, &alice, "/", "alice").await;
    let bob = browser();
    sign_in(&h, &bob, "/", "bob").await;
    let status = |b: &reqwest::Client, query: &str| {
        let request = b.get(h.url(&format!("/oauth2/auth?{query}"))).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    // Groups: one match of the location's list, on top of the global one.
    assert_eq!(status(&alice, "allowed_groups=admins").await, 202);
    assert_eq!(status(&bob, "allowed_groups=admins").await, 403);
    assert_eq!(status(&bob, "allowed_groups=ops,admins").await, 403);
    assert_eq!(
        status(&bob, "allowed_groups=ops&allowed_groups=staff").await,
        202
    );
    // Emails and domains (verified emails only, one `@`).
    assert_eq!(
        status(&alice, "allowed_emails=alice%40example.com").await,
        202
    );
    assert_eq!(
        status(&bob, "allowed_emails=alice%40example.com").await,
        403
    );
    assert_eq!(status(&bob, "allowed_email_domains=example.com").await, 202);
    assert_eq!(status(&bob, "allowed_email_domains=example.org").await, 403);
    assert_eq!(
        status(
            &bob,
            "allowed_email_domains=example.org&allowed_emails=bob%40example.com"
        )
        .await,
        202
    );
    // Never wider than the global policy: a group the global rule does not
    // admit stays out, whatever the location lists.
    let outsider = Harness::start_with_idp(
        None,
        |idp| {
            idp.users.push(latchkey::dev_idp::DevUser {
                username: "eve".into(),
                password: "eve".into(),
                email: "eve@example.com".into(),
                email_verified: true,
                groups: vec!["admins".into()],
                claims: Default::default(),
                userinfo_claims: Default::default(),
            })
        },
        |raw| {
            raw.email_domains = None;
            raw.allowed_groups = Some(vec!["staff".into()]);
        },
    )
    .await;
    let eve = browser();
    sign_in(&outsider, &eve, "/", "eve").await;
    let eve_status = eve
        .get(outsider.url("/oauth2/auth?allowed_groups=admins"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(eve_status, 403);
    // An unknown parameter restricts nothing (and is logged); empty lists
    // and a misspelt name leave the global policy as it is.
    assert_eq!(status(&bob, "allowed_group=admins").await, 202);
    assert_eq!(status(&bob, "allowed_groups=").await, 202);
    // Not signed in: 401 whatever the rules.
    assert_eq!(status(&browser(), "allowed_groups=admins").await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_202_with_headers_or_401() {
    let h = Harness::start_with(false, |_| {}).await;
    let b = browser();
    let anonymous = b.get(h.url("/oauth2/auth")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    sign_in(&h, &b, "/", "bob").await;
    let ok = b.get(h.url("/oauth2/auth")).send().await.unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.headers()["x-auth-request-user"], "bob");
    assert_eq!(ok.headers()["x-auth-request-email"], "bob@example.com");
    assert_eq!(ok.headers()["x-auth-request-groups"], "staff");
    let info: Value = b
        .get(h.url("/oauth2/userinfo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["email"], "bob@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_auth_routes_match_the_path_only() {
    let h = Harness::start(|raw| raw.skip_auth_routes = Some(vec!["GET=^/public/".into()])).await;
    let client = reqwest::Client::new();
    let (status, seen) = upstream_json(
        &client,
        &h.url("/public/style.css"),
        &[("x-forwarded-user", "mallory")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(seen["headers"].get("x-forwarded-user").is_none(), "{seen}");
    // The query string cannot open a protected path, nor can another method.
    let protected = client
        .get(h.url("/private?x=/public/"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(protected.status(), 401);
    let post = client
        .post(h.url("/public/x"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_outside_allowed_groups_are_denied_with_a_page() {
    let h = Harness::start(|raw| raw.allowed_groups = Some(vec!["admins".into()])).await;
    let bob = browser();
    let landed = sign_in(&h, &bob, "/", "bob").await;
    let response = bob
        .get(landed)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("bob@example.com") && page.contains("/oauth2/sign_out"),
        "{page}"
    );
    assert!(page.contains("access_denied"));
    let alice = browser();
    let landed = sign_in(&h, &alice, "/", "alice").await;
    let (status, _) = upstream_json(&alice, landed.as_str(), &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ends_the_session_everywhere() {
    let h = Harness::start(|_| {}).await;
    let b = browser();
    sign_in(&h, &b, "/", "alice").await;
    assert_eq!(
        b.get(h.url("/oauth2/auth")).send().await.unwrap().status(),
        202
    );
    let out = b.get(h.url("/oauth2/sign_out")).send().await.unwrap();
    let to_idp = location(&out, &Url::parse(&h.url("/")).unwrap());
    assert!(
        to_idp
            .as_str()
            .starts_with(&format!("{}/end_session", h.idp.issuer())),
        "{to_idp}"
    );
    let back = b.get(to_idp.clone()).send().await.unwrap();
    assert_eq!(location(&back, &to_idp).as_str(), h.url("/"));
    assert_eq!(
        b.get(h.url("/oauth2/auth")).send().await.unwrap().status(),
        401
    );
}

/// `/oauth2/signed_out/forget` is anonymous, so as anyone may call it: it
/// removes the sign-out's marker and nothing else. A signed-in browser (or
/// a page that embeds the image to annoy it) keeps its session; one without
/// the marker gets an empty answer that sets no cookie; no method but GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forget_image_removes_the_marker_and_nothing_else() {
    let h = Harness::start(|_| {}).await;
    let b = browser();
    sign_in(&h, &b, "/", "alice").await;
    let forget = h.url("/oauth2/signed_out/forget");
    let nothing = b.get(&forget).send().await.unwrap();
    assert_eq!(nothing.status(), 204);
    assert!(
        nothing.headers().get("set-cookie").is_none(),
        "no marker, no change"
    );
    assert_eq!(nothing.headers()["cache-control"], "no-store, private");
    let auth = async || b.get(h.url("/oauth2/auth")).send().await.unwrap().status();
    assert_eq!(auth().await, 202, "the session survived the image");
    // Marked (an old sign-out's cookie) yet signed in: only the marker goes.
    let marked = b
        .get(&forget)
        .header(COOKIE, "latchkey-signed-out=x")
        .send()
        .await
        .unwrap();
    let set: Vec<String> = (marked.headers().get_all("set-cookie").iter())
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(
        set[0].starts_with("latchkey-signed-out=") && set[0].contains("Max-Age=0"),
        "{set:?}"
    );
    assert_eq!(auth().await, 202);
    let posted = b.post(&forget).send().await.unwrap();
    assert_eq!(posted.status(), 405);
}

/// `sign_out_post_only`, as an attacker probes it: a GET (link, image,
/// API client) ends nothing; a POST the browser marks as another site's is
/// refused even when it carries the cookie (a browser without SameSite);
/// the site's own POST signs out, and the marker cookie it sets is one
/// latchkey's, never the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sign_out_post_only_nothing_but_a_same_site_post_signs_out() {
    let h = Harness::start(|raw| raw.sign_out_post_only = Some(true)).await;
    let b = browser();
    sign_in(&h, &b, "/", "alice").await;
    let signed_in = async || b.get(h.url("/oauth2/auth")).send().await.unwrap().status();
    let api = b
        .get(h.url("/oauth2/sign_out"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 405);
    assert_eq!(api.headers()["allow"], "POST");
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");
    let page = b
        .get(h.url("/oauth2/sign_out?rd=/after%22%3E"))
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!csp.contains("form-action") && csp.contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<form method="post" action="/oauth2/sign_out?rd=%2Fafter%22%3E">"#),
        "{html}"
    );
    assert_eq!(signed_in().await, 202, "a GET ended the session");
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ] {
        let refused = b
            .post(h.url("/oauth2/sign_out"))
            .header(ACCEPT, HTML)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{name}: {value}");
        assert!(refused.headers().get("set-cookie").is_none());
        assert!(refused.text().await.unwrap().contains("cross_site_request"));
        assert_eq!(signed_in().await, 202, "{name}: {value} ended the session");
    }
    let out = b
        .post(h.url("/oauth2/sign_out"))
        .header("sec-fetch-site", "same-origin")
        .header("origin", format!("http://{}", h.proxy))
        .send()
        .await
        .unwrap();
    assert!(out.status().is_redirection(), "{}", out.status());
    let marked = (out.headers().get_all("set-cookie").iter())
        .any(|c| c.to_str().unwrap().starts_with("latchkey-signed-out="));
    assert!(marked, "sign-out sets its marker");
    assert_eq!(signed_in().await, 401);
    // The marker is latchkey's cookie: signed in again, the upstream never
    // sees it (the browser still holds it: nothing here loaded the image).
    sign_in(&h, &b, "/", "alice").await;
    let (status, seen) = upstream_json(&b, &h.url("/x"), &[("accept", "application/json")]).await;
    assert_eq!(status, 200);
    assert!(!seen.to_string().contains("latchkey-signed-out"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_revokes_the_refresh_token_at_the_provider() {
    let h = Harness::start(|_| {}).await;
    let b = browser();
    sign_in(&h, &b, "/", "alice").await;
    assert_eq!(h.idp.knobs().revocations(), 0);
    let out = b.get(h.url("/oauth2/sign_out")).send().await.unwrap();
    assert!(out.status().is_redirection());
    // In the background: the sign-out answered without waiting for it.
    common::within("the revocation", h.idp.knobs().wait_revocations(1)).await;
    assert_eq!(h.idp.knobs().revocations(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_login_gets_the_login_expired_page() {
    let h = Harness::start(|_| {}).await;
    let response = browser()
        .get(h.url("/oauth2/callback?state=nope&code=x"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("login_expired") && page.contains("Start again"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_expired_link_keeps_the_destination() {
    let h = Harness::start(|_| {}).await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let b = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let callback = to_callback(&b, &h.url("/deep/link"), "alice").await;
    // The browser comes back after login_ttl (10 minutes): its login cookie
    // says when the login started, so it is as this browser would hold it
    // eleven minutes later.
    use reqwest::cookie::CookieStore;
    let sent = jar.cookies(&callback).unwrap().to_str().unwrap().to_owned();
    let aged = h.aged_login_cookies(&sent, Duration::from_secs(11 * 60));
    let response = reqwest::Client::new()
        .get(callback)
        .header(COOKIE, aged)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let page = response.text().await.unwrap();
    assert!(page.contains("login_expired"), "{page}");
    assert!(page.contains("/oauth2/start?rd=%2Fdeep%2Flink"), "{page}");
    assert_eq!(
        h.idp.knobs().code_grants(),
        0,
        "an expired login exchanged its code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redirects_through_rd_end_on_a_local_path() {
    let h = Harness::start(|_| {}).await;
    for rd in [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "javascript:alert(1)",
    ] {
        let b = browser();
        let start = format!(
            "/oauth2/start?rd={}",
            url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
        );
        let landed = sign_in(&h, &b, &start, "alice").await;
        assert_eq!(landed.as_str(), h.url("/"), "rd {rd:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cookies_get_400_or_a_fresh_sign_in_never_500() {
    let h = Harness::start(|_| {}).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let huge = format!("_latchkey={}", "a".repeat(20_000));
    let response = client
        .get(h.url("/"))
        .header(COOKIE, huge)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    for junk in [
        "_latchkey=garbage",
        "_latchkey=",
        "_latchkey",
        "=;;=;",
        "latchkey-login-abcdefgh=%%%",
    ] {
        let response = client
            .get(h.url("/"))
            .header(COOKIE, junk)
            .header(ACCEPT, "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302, "{junk:?}");
        if junk.starts_with("_latchkey=") {
            // The unreadable session cookie is expired in the browser.
            let cleared = response
                .headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .any(|c| {
                    c.to_str().unwrap().starts_with("_latchkey=")
                        && c.to_str().unwrap().contains("Max-Age=0")
                });
            assert!(cleared, "{junk:?}: {:?}", response.headers());
        }
    }
    let response = client
        .get(h.url("/oauth2/callback?state=s&code=c"))
        .header(COOKIE, "latchkey-login-abcdefgh=garbage")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_callbacks_through_http_give_one_session() {
    let h = Harness::start(|_| {}).await;
    let b = browser();
    let callback = to_callback(&b, &h.url("/"), "alice").await;
    // A slow token endpoint, so that both callbacks are in flight together
    // (the guarantee holds for any interleaving; the delay only makes the
    // concurrent one the likely one).
    h.idp.knobs().delay_token_calls(Duration::from_millis(300));
    let (first, second) = tokio::join!(
        b.get(callback.clone()).header(ACCEPT, HTML).send(),
        b.get(callback.clone()).header(ACCEPT, HTML).send()
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.status(), 302);
    assert_eq!(second.status(), 302);
    assert_eq!(first.headers()[LOCATION], "/");
    assert_eq!(second.headers()[LOCATION], "/");
    assert_eq!(h.idp.knobs().code_grants(), 1);
    assert_eq!(h.metric("latchkey_code_exchanges_total").await, 1.0);
    assert_eq!(h.metric("latchkey_logins_completed_total").await, 1.0);
    assert_eq!(
        h.metric("latchkey_duplicate_callbacks_absorbed_total")
            .await,
        1.0
    );
    assert_eq!(
        b.get(h.url("/oauth2/auth")).send().await.unwrap().status(),
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tabs_cannot_grow_the_cookie_header() {
    let h = Harness::start(|_| {}).await;
    let b = browser();
    // Cookies are per host, not per port: an echo server on another port of
    // 127.0.0.1 sees exactly what the browser would send latchkey.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, sample_app()).await.unwrap() });
    let login_cookies = || async {
        let seen: Value = b
            .get(&echo)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen["headers"]["cookie"]
            .as_str()
            .unwrap_or("")
            .split(';')
            .filter(|c| c.trim().starts_with("latchkey-login-"))
            .count()
    };
    for tabs in 1..=12 {
        let response = b.get(h.url("/oauth2/start?rd=/")).send().await.unwrap();
        assert_eq!(response.status(), 302);
        let expected = tabs.min(latchkey::web::cookies::MAX_LOGIN_COOKIES);
        assert_eq!(login_cookies().await, expected, "after {tabs} tabs");
    }
    // The newest tab can still finish its login.
    let newest = b
        .get(h.url("/oauth2/start?rd=/newest"))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(newest.headers()[LOCATION].to_str().unwrap()).unwrap();
    let callback = to_callback(&b, authorize.as_str(), "alice").await;
    let done = b.get(callback.clone()).send().await.unwrap();
    assert_eq!(location(&done, &callback).path(), "/newest");
}

/// oauth2-proxy's probe paths answer like /healthz and /readyz, may be
/// moved or turned off, and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_proxy_probe_paths() {
    let h = Harness::start(|_| {}).await;
    let ping = reqwest::get(h.url("/ping")).await.unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.text().await.unwrap(), "ok\n");
    let ready = reqwest::get(h.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], true);
    let moved = Harness::start(|raw| {
        raw.ping_path = Some("/lb/alive".into());
        raw.ready_path = Some(String::new());
    })
    .await;
    assert_eq!(
        reqwest::get(moved.url("/lb/alive")).await.unwrap().status(),
        200
    );
    // Turned off or moved: those paths are the app's again (behind sign-in).
    for path in ["/ready", "/ping"] {
        let answer = reqwest::get(moved.url(path)).await.unwrap();
        assert_eq!(answer.status(), 401, "{path}");
    }
}

/// `/oauth2/sign_in`, the usual `error_page 401` target: a page whose
/// button starts the login for `rd` or `X-Auth-Request-Redirect`, or with
/// `skip_provider_button` the login itself; the destination is checked as
/// `/oauth2/start` checks `rd`, and the page escapes what it shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_proxy_sign_in_page() {
    let h = Harness::start(|_| {}).await;
    let client = browser();
    let page = client
        .get(h.url("/oauth2/sign_in"))
        .header(ACCEPT, HTML)
        .header("x-auth-request-redirect", "/reports?q=1&x=\"<b>")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store, private");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<b>"), "{html}");
    let href = html
        .split("class=\"button\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let href = href.replace("&amp;", "&");
    let start = Url::parse(&h.url(&href)).unwrap();
    assert_eq!(start.path(), "/oauth2/start");
    let rd = start.query_pairs().find(|(k, _)| k == "rd").unwrap().1;
    assert_eq!(rd, "/reports?q=1&x=\"<b>");
    // The button signs in and lands there.
    let landed = sign_in(&h, &client, &href, "alice").await;
    assert_eq!(landed.path(), "/reports");

    let direct = Harness::start(|raw| raw.skip_provider_button = Some(true)).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (rd, header, expected) in [
        (Some("/deep/link"), None, "/deep/link"),
        (None, Some("/from/nginx"), "/from/nginx"),
        // rd wins over the header.
        (Some("/mine"), Some("/theirs"), "/mine"),
        // Another origin, by every trick, falls back to /.
        (Some("https://evil.example/"), None, "/"),
        (None, Some("//evil.example"), "/"),
        (None, Some("/\\evil.example"), "/"),
        (Some("%2F%2Fevil.example"), None, "/"),
    ] {
        let mut url = direct.url("/oauth2/sign_in");
        if let Some(rd) = rd {
            url = format!("{url}?rd={}", urlencoding(rd));
        }
        let mut request = no_redirects.get(url);
        if let Some(header) = header {
            request = request.header("x-auth-request-redirect", header);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 302, "{rd:?} {header:?}");
        let to = Url::parse(&direct.url(answer.headers()[LOCATION].to_str().unwrap())).unwrap();
        assert_eq!(to.path(), "/oauth2/start");
        let kept = to.query_pairs().find(|(k, _)| k == "rd").unwrap().1;
        assert_eq!(kept, expected, "{rd:?} {header:?}");
    }
}

/// The ingress-nginx pattern: one latchkey at auth.example.test for every
/// app of example.test. A login started with an absolute `rd` on a
/// whitelisted host lands back there; the session cookie, set for the
/// domain, signs the browser in on another app's host too; `rd` to any
/// other host, by every trick, lands on `/`; and `sign_out?rd=` takes a
/// whitelisted URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_auth_host_for_many_apps() {
    let h = Harness::start_named(
        Some("auth.example.test"),
        None,
        |_| {},
        |raw| {
            raw.cookie_domain = Some(".example.test".into());
            raw.whitelist_domains = Some(vec![".example.test:*".into()]);
        },
    )
    .await;
    let port = h.proxy.port();
    let on = |host: &str, path: &str| format!("http://{host}:{port}{path}");
    let resolving = |builder: reqwest::ClientBuilder| {
        [
            "auth.example.test",
            "app1.example.test",
            "app2.example.test",
            "evil.test",
        ]
        .into_iter()
        .fold(builder, |b, host| b.resolve(host, h.proxy))
    };
    let browser = resolving(reqwest::Client::builder())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let app1_page = on("app1.example.test", "/reports?q=1");
    let start = format!(
        "{}?rd={}",
        on("auth.example.test", "/oauth2/start"),
        urlencoding(&app1_page)
    );
    let callback = to_callback(&browser, &start, "alice").await;
    assert_eq!(callback.host_str(), Some("auth.example.test"));
    let done = browser.get(callback).send().await.unwrap();
    assert_eq!(done.status(), 302);
    assert_eq!(done.headers()[LOCATION], app1_page.as_str());
    let set_cookie = done.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("Domain=example.test"), "{set_cookie}");
    // Another app's host: the domain cookie signs it in at forward-auth.
    for host in [
        "app2.example.test",
        "app1.example.test",
        "auth.example.test",
    ] {
        let auth = browser.get(on(host, "/oauth2/auth")).send().await.unwrap();
        assert_eq!(auth.status(), 202, "{host}");
        assert_eq!(auth.headers()["x-auth-request-user"], "alice");
    }
    // A host outside the domain gets no cookie, and no session.
    let outside = browser
        .get(on("evil.test", "/oauth2/auth"))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 401);

    // Every other destination falls back to the auth host's `/`.
    let fresh = resolving(reqwest::Client::builder())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for hostile in [
        on("evil.test", "/"),
        format!("http://app1.example.test.evil.test:{port}/"),
        format!("http://alice@evil.test:{port}/"),
        format!("http://evil.test:{port}\\@app1.example.test/"),
        format!("http://evil.test:{port}#@app1.example.test/"),
        "//evil.test/".to_owned(),
        format!("http://app1%2Eexample.test:{port}/"),
        format!("http://аpp1.example.test:{port}/"),
        format!("javascript://app1.example.test:{port}/%0aalert(1)"),
    ] {
        let url = format!(
            "{}?rd={}",
            on("auth.example.test", "/oauth2/start"),
            urlencoding(&hostile)
        );
        let started = fresh.get(url).send().await.unwrap();
        assert_eq!(started.status(), 302, "{hostile}");
        let cookie = started.headers()["set-cookie"].to_str().unwrap();
        let sealed = cookie.split(';').next().unwrap().to_owned();
        let authorize = Url::parse(started.headers()[LOCATION].to_str().unwrap()).unwrap();
        let back = common::browser::sign_in_at_idp(&fresh, &authorize, "alice").await;
        let done = fresh
            .get(back.as_str())
            .header(COOKIE, sealed)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 302, "{hostile}");
        assert_eq!(done.headers()[LOCATION], "/", "{hostile}");
    }

    // Sign-out to a whitelisted URL; to any other, the usual sign-out.
    let out = browser
        .get(format!(
            "{}?rd={}",
            on("app1.example.test", "/oauth2/sign_out"),
            urlencoding(&on("app2.example.test", "/bye"))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    assert_eq!(
        out.headers()[LOCATION],
        on("app2.example.test", "/bye").as_str()
    );
    let auth = browser
        .get(on("app2.example.test", "/oauth2/auth"))
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status(), 401, "signed out everywhere in the domain");
    let elsewhere = browser
        .get(format!(
            "{}?rd={}",
            on("app1.example.test", "/oauth2/sign_out"),
            urlencoding("https://evil.test/")
        ))
        .send()
        .await
        .unwrap();
    let to = elsewhere.headers()[LOCATION].to_str().unwrap();
    assert!(!to.contains("evil.test"), "{to}");
}

/// Claims to headers (what apps behind mod_auth_openidc and oauth2-proxy
/// read): the user header from another claim, `preferred_username`, any
/// claim of the ID token (nested too) as a header of its own, non-ASCII
/// and control characters encoded rather than dropped, a groups separator,
/// the ID token itself; the same in forward-auth's answer; and a client's
/// own copy of a configured header, under any spelling, never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_become_headers_and_clients_cannot_forge_them() {
    let carol = latchkey::dev_idp::DevUser {
        username: "carol".into(),
        password: "carol".into(),
        email: "carol@example.com".into(),
        email_verified: true,
        groups: vec!["ops".into(), "staff".into()],
        claims: serde_json::json!({
            "department": "R&D Zürich",
            "org": { "name": "Acme", "cost_centre": 4711 },
            "motto": "line one\r\nX-Injected: yes",
        })
        .as_object()
        .unwrap()
        .clone(),
        // What only userinfo tells.
        userinfo_claims: serde_json::json!({ "office": "Basel 3.14" })
            .as_object()
            .unwrap()
            .clone(),
    };
    let users = vec![carol];
    let rules = |raw: &mut latchkey::config::RawSettings| {
        raw.user_id_claim = Some("email".into());
        raw.claim_headers = Some(vec![
            "X-Department=department".into(),
            "X-Org=org/name".into(),
            "X-Cost-Centre=org/cost_centre".into(),
            "X-Motto=motto".into(),
            "X-Office=office".into(),
            "X-Missing=no/such/claim".into(),
        ]);
        raw.groups_separator = Some(";".into());
        raw.pass_id_token = Some(true);
        raw.pass_authorization_header = Some(true);
    };
    let h = Harness::start_with_users(None, users.clone(), rules).await;
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = upstream_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(upstream_listener, sample_app()).await.unwrap() });
    let proxied = Harness::start_with_users(Some(upstream), users, rules).await;

    let b = browser();
    let landed = sign_in(&proxied, &b, "/page", "carol").await;
    let forged = [
        ("x-department", "Forged"),
        ("X_Department", "Forged"),
        ("x-org", "Forged"),
        ("x-missing", "Forged"),
        ("x-forwarded-id-token", "forged"),
    ];
    let (status, seen) = upstream_json(&b, landed.as_str(), &forged).await;
    assert_eq!(status, 200, "{seen}");
    let headers = seen["headers"].as_object().unwrap();
    assert_eq!(headers["x-forwarded-user"], "carol@example.com");
    assert_eq!(headers["x-forwarded-preferred-username"], "carol");
    assert_eq!(headers["x-forwarded-groups"], "ops;staff");
    assert_eq!(headers["x-department"], "R&D Z%C3%BCrich");
    assert_eq!(headers["x-org"], "Acme");
    assert_eq!(headers["x-cost-centre"], "4711");
    assert_eq!(headers["x-motto"], "line one%0D%0AX-Injected: yes");
    assert_eq!(
        headers["x-office"], "Basel 3.14",
        "a claim only userinfo has"
    );
    assert!(!headers.contains_key("x-injected"), "{headers:?}");
    for name in ["x-missing", "x_department"] {
        let names: Vec<_> = headers.keys().collect();
        assert!(
            !headers.contains_key(name),
            "{name} reached the app: {names:?}"
        );
    }
    let id_token = headers["x-forwarded-id-token"].as_str().unwrap();
    assert_eq!(id_token.split('.').count(), 3, "a JWT");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {id_token}").as_str()
    );

    // Forward-auth answers with the same values.
    let fa = browser();
    sign_in(&h, &fa, "/oauth2/start?rd=/", "carol").await;
    let auth = fa.get(h.url("/oauth2/auth")).send().await.unwrap();
    assert_eq!(auth.status(), 202);
    let out = auth.headers();
    assert_eq!(out["x-auth-request-user"], "carol@example.com");
    assert_eq!(out["x-auth-request-preferred-username"], "carol");
    assert_eq!(out["x-auth-request-groups"], "ops;staff");
    assert_eq!(out["x-department"], "R&D Z%C3%BCrich");
    assert_eq!(out["x-org"], "Acme");
    assert_eq!(out["x-office"], "Basel 3.14");
    assert!(out.contains_key("x-auth-request-id-token"));
    assert!(
        out["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ey")
    );
    assert!(!out.contains_key("x-missing"));
}

/// `latchkey import-oauth2-proxy`, as a team switching would run it: their
/// oauth2-proxy config file, imported, starts latchkey, and the app behind
/// it gets the headers oauth2-proxy sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_oauth2_proxy_config_starts_and_serves_the_same_headers() {
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = upstream_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(upstream_listener, sample_app()).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_in_front_of(Some(upstream), |raw| {
        let cookie_secret =
            base64::engine::general_purpose::STANDARD.encode(common::proxy::COOKIE_SECRET);
        let cfg = format!(
            r#"
http_address = "127.0.0.1:4180"
provider = "oidc"
oidc_issuer_url = "{issuer}"
client_id = "latchkey"
client_secret = "{SECRET}"
redirect_url = "{redirect}"
cookie_secret = "{cookie_secret}"
cookie_secure = false
upstreams = ["http://{upstream}/"]
email_domains = ["example.com"]
pass_access_token = true
set_xauthrequest = true
custom_sign_in_logo = "/logo.png"
"#,
            issuer = raw.issuer.clone().unwrap(),
            redirect = raw.redirect_url.clone().unwrap(),
        );
        let file = dir.path().join("oauth2-proxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .arg("import-oauth2-proxy")
            .arg(&file)
            .env("OAUTH2_PROXY_ALLOWED_GROUPS", "admins")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let toml_text = String::from_utf8(out.stdout).unwrap();
        assert!(toml_text.contains("#   custom_sign_in_logo"), "{toml_text}");
        let mut imported: latchkey::config::RawSettings = toml::from_str(&toml_text).unwrap();
        // The store is where this test keeps it (oauth2-proxy had cookies).
        imported.store = raw.store.clone();
        *raw = imported;
    })
    .await;
    let b = browser();
    let landed = sign_in(&h, &b, "/page", "alice").await;
    let (status, seen) = upstream_json(&b, landed.as_str(), &[]).await;
    assert_eq!(status, 200, "{seen}");
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-user"], "alice");
    assert_eq!(headers["x-forwarded-email"], "alice@example.com");
    assert_eq!(headers["x-forwarded-groups"], "admins,staff");
    assert!(
        headers["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer ")
    );
    // bob is not in the group the environment added.
    let bobs = browser();
    let bob_landed = sign_in(&h, &bobs, "/page", "bob").await;
    let (status, _) = upstream_json(&bobs, bob_landed.as_str(), &[]).await;
    assert_eq!(
        status, 403,
        "OAUTH2_PROXY_ALLOWED_GROUPS was not carried over"
    );
}

fn urlencoding(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let h = Harness::start(|_| {}).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(h.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready = client.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["store"], "ok");
    assert_eq!(body["idp"], "ok");
    // Requests are counted by route, and anything else is the app's.
    let _ = client.get(h.url("/some/app/page")).send().await.unwrap();
    let metrics = client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "latchkey_logins_started_total",
        r#"latchkey_http_requests_total{route="/healthz",status="200"} 1"#,
        r#"latchkey_http_requests_total{route="/readyz",status="200"} 1"#,
        r#"latchkey_http_requests_total{route="upstream",status="401"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
    // /readyz read the store: the `get` series counted it.
    let gets = metrics
        .lines()
        .find_map(|l| l.strip_prefix("latchkey_store_operation_seconds_count{operation=\"get\"} "))
        .and_then(|n| n.trim().parse::<f64>().ok());
    assert!(gets.is_some_and(|n| n >= 1.0), "{metrics}");
    h.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_access_token_sends_the_users_token_upstream() {
    let h = Harness::start(|raw| raw.pass_access_token = Some(true)).await;
    let b = browser();
    let landed = sign_in(&h, &b, "/", "alice").await;
    let (status, seen) = upstream_json(
        &b,
        landed.as_str(),
        &[("authorization", "Bearer client-sent")],
    )
    .await;
    assert_eq!(status, 200);
    let auth = seen["headers"]["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with("Bearer ") && auth != "Bearer client-sent",
        "{auth}"
    );
    let forward = b.get(h.url("/oauth2/auth")).send().await.unwrap();
    assert_eq!(
        forward.headers()["x-auth-request-access-token"]
            .to_str()
            .unwrap(),
        auth.trim_start_matches("Bearer ")
    );
}

/// An ID token for `latchkey` straight from the dev IdP (as an API client's
/// own login would produce).
async fn id_token_from(h: &Harness) -> String {
    id_token_for_client(h, "latchkey", SECRET, &h.url("/oauth2/callback")).await
}

/// An ID token for bob issued to `client_id` (another app of the provider,
/// a CLI, a mobile app).
async fn id_token_for_client(h: &Harness, client_id: &str, secret: &str, redirect: &str) -> String {
    id_token_at(h.idp.issuer(), client_id, secret, redirect).await
}

/// An ID token for bob issued by the development IdP at `issuer` to `client_id`.
async fn id_token_at(issuer: &str, client_id: &str, secret: &str, redirect: &str) -> String {
    let (challenge, verifier) = openidconnect::PkceCodeChallenge::new_random_sha256();
    let redirect = redirect.to_owned();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect.as_str()),
        ("scope", "openid email"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("username", "bob"),
        ("password", "bob"),
        ("action", "login"),
    ];
    let issuer = issuer.to_owned();
    let back = client
        .post(format!("{issuer}/authorize"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let back = Url::parse(back.headers()[LOCATION].to_str().unwrap()).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let tokens: Value = client
        .post(format!("{issuer}/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("code_verifier", verifier.secret().as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tokens["id_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_may_present_a_validated_bearer_jwt() {
    let h = Harness::start(|raw| raw.skip_jwt_bearer_tokens = Some(true)).await;
    let token = id_token_from(&h).await;
    let api = reqwest::Client::new();
    let (status, seen) = upstream_json(
        &api,
        &h.url("/api/report"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-user"], "bob");
    // A forged or foreign token is refused, as JSON.
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    for bad in [forged.as_str(), "a.b.c"] {
        let response = api
            .get(h.url("/api/report"))
            .header("authorization", format!("Bearer {bad}"))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_signed_in");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_of_another_client_need_extra_jwt_audiences() {
    let cli = |idp: &mut latchkey::dev_idp::DevIdpConfig| {
        idp.clients.push(latchkey::dev_idp::DevClient {
            client_id: "cli".into(),
            client_secret: "cli-secret".into(),
            redirect_uris: vec!["http://127.0.0.1:9/cli".into()],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
        });
    };
    let status_with = |h: &Harness, token: String| {
        let url = h.url("/oauth2/userinfo");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Not listed: another client's token is refused.
    let h = Harness::start_with_idp(None, cli, |raw| raw.skip_jwt_bearer_tokens = Some(true)).await;
    let token = id_token_for_client(&h, "cli", "cli-secret", "http://127.0.0.1:9/cli").await;
    assert_eq!(status_with(&h, token).await, 401);
    // Listed: accepted, for that audience only.
    let h = Harness::start_with_idp(None, cli, |raw| {
        raw.skip_jwt_bearer_tokens = Some(true);
        raw.extra_jwt_audiences = Some(vec!["cli".into()]);
    })
    .await;
    let token = id_token_for_client(&h, "cli", "cli-secret", "http://127.0.0.1:9/cli").await;
    assert_eq!(status_with(&h, token.clone()).await, 200);
    let own = id_token_from(&h).await;
    assert_eq!(status_with(&h, own).await, 200);
    // A forged signature is still refused under the extra audience.
    let mut forged = token;
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_eq!(status_with(&h, forged).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_of_another_provider_need_extra_jwt_issuers() {
    // A second provider (another realm, a CI system's OIDC issuer) with two
    // clients: the one listed, and one that is not.
    let client = |id: &str| latchkey::dev_idp::DevClient {
        client_id: id.into(),
        client_secret: format!("{id}-secret"),
        redirect_uris: vec![format!("http://127.0.0.1:9/{id}")],
        post_logout_redirect_uris: vec![],
        backchannel_logout_uri: None,
    };
    let other = latchkey::dev_idp::DevIdp::start(latchkey::dev_idp::DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![client("ci"), client("stray")],
        ..latchkey::dev_idp::DevIdpConfig::default()
    })
    .await
    .unwrap();
    let issuer = other.issuer().to_owned();
    let token_of = |id: &'static str| {
        let issuer = issuer.clone();
        async move {
            let (secret, redirect) = (format!("{id}-secret"), format!("http://127.0.0.1:9/{id}"));
            id_token_at(&issuer, id, &secret, &redirect).await
        }
    };
    let userinfo = |h: &Harness, token: String| {
        let url = h.url("/oauth2/userinfo");
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    // Not listed: refused.
    let h = Harness::start(|raw| raw.skip_jwt_bearer_tokens = Some(true)).await;
    assert_eq!(userinfo(&h, token_of("ci").await).await.0, 401);
    // Listed: accepted as that provider's user, for the listed audience only.
    let listed = format!("{}=ci", other.issuer());
    let h = Harness::start(|raw| {
        raw.skip_jwt_bearer_tokens = Some(true);
        raw.extra_jwt_issuers = Some(vec![listed]);
    })
    .await;
    let token = token_of("ci").await;
    let (status, seen) = userinfo(&h, token.clone()).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["issuer"], other.issuer());
    assert_eq!(seen["user"], "bob");
    assert_eq!(userinfo(&h, token_of("stray").await).await.0, 401);
    // The own provider's tokens still work beside it.
    assert_eq!(userinfo(&h, id_token_from(&h).await).await.0, 200);
    // A forged signature is refused under the listed issuer.
    let mut forged = token;
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_eq!(userinfo(&h, forged).await.0, 401);
    // The own provider's token for `ci` is not the other provider's.
    let h2 = Harness::start_with_idp(
        None,
        |idp| idp.clients.push(client("ci")),
        |raw| {
            raw.skip_jwt_bearer_tokens = Some(true);
            raw.extra_jwt_issuers = Some(vec![format!("{}=ci", other.issuer())]);
        },
    )
    .await;
    let own_ci = id_token_for_client(&h2, "ci", "ci-secret", "http://127.0.0.1:9/ci").await;
    assert_eq!(userinfo(&h2, own_ci).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_refused_unless_turned_on() {
    let h = Harness::start(|_| {}).await;
    let token = id_token_from(&h).await;
    let response = reqwest::Client::new()
        .get(h.url("/api/report"))
        .header("authorization", format!("Bearer {token}"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_signed_in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_users_earlier_bearer_tokens_are_refused() {
    let h = Harness::start(|raw| raw.skip_jwt_bearer_tokens = Some(true)).await;
    let token = id_token_from(&h).await;
    let api = |token: String| {
        let url = h.url("/oauth2/userinfo");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(api(token.clone()).await, 200);
    // bob signs in with a browser, then signs out there.
    let b = browser();
    sign_in(&h, &b, "/", "bob").await;
    let out = b.get(h.url("/oauth2/sign_out")).send().await.unwrap();
    assert!(out.status().is_redirection());
    assert_eq!(
        api(token).await,
        401,
        "a token from before the sign-out still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_to_the_upstream() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    // An upstream that accepts one upgrade, reports the request head it got,
    // then echoes bytes.
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = raw.local_addr().unwrap();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (socket, _) = raw.accept().await.unwrap();
        let mut socket = BufReader::new(socket);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            socket.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        head_tx.send(head).unwrap();
        let mut socket = socket.into_inner();
        socket
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            socket.write_all(&buf[..n]).await.unwrap();
        }
    });
    let h = Harness::start_in_front_of(Some(upstream), |_| {}).await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let b = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let callback = to_callback(&b, &h.url("/oauth2/start?rd=/"), "alice").await;
    b.get(callback).send().await.unwrap();
    use reqwest::cookie::CookieStore;
    let cookies = jar
        .cookies(&Url::parse(&h.url("/")).unwrap())
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut socket = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
    let request = format!(
        "GET /socket HTTP/1.1\r\nHost: {}\r\nCookie: {cookies}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        h.proxy
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(socket);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let head = head_rx.await.unwrap().to_ascii_lowercase();
    assert!(
        head.contains("upgrade: echo") && head.contains("x-forwarded-user: alice"),
        "{head}"
    );
    let mut socket = reader.into_inner();
    socket.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    socket.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    use std::sync::Mutex;
    // An upstream whose answer the test releases.
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let gates = Arc::new(Mutex::new((Some(arrived_tx), Some(release_rx))));
    let app = axum::Router::new().route(
        "/public/slow",
        axum::routing::get(move || {
            let gates = gates.clone();
            async move {
                let (arrived, release) = {
                    let mut g = gates.lock().unwrap();
                    (g.0.take(), g.1.take())
                };
                arrived.unwrap().send(()).unwrap();
                release.unwrap().await.unwrap();
                "done"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let h = Harness::start_in_front_of(Some(upstream), |raw| {
        raw.skip_auth_routes = Some(vec!["^/public/".into()]);
    })
    .await;
    let url = h.url("/public/slow");
    let in_flight =
        tokio::spawn(async move { reqwest::get(url).await.unwrap().text().await.unwrap() });
    arrived_rx.await.unwrap();
    let proxy = h.proxy;
    let shutdown = tokio::spawn(h.server.shutdown());
    release_tx.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap(), "done");
    shutdown.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_httponly_lax_and_host_prefixed_over_https() {
    // Over http (this harness): no prefix, no Secure, but HttpOnly and Lax.
    let h = Harness::start(|_| {}).await;
    let response = browser()
        .get(h.url("/oauth2/start?rd=/"))
        .send()
        .await
        .unwrap();
    let set: Vec<String> = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let login = set
        .iter()
        .find(|c| c.starts_with("latchkey-login-"))
        .expect("a login cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(login.contains(attribute), "{attribute} missing: {login}");
    }
    assert!(!login.contains("Secure"), "{login}");
    // Over https: __Host- names and Secure.
    let h = Harness::start(|raw| {
        let url = raw.redirect_url.take().unwrap();
        raw.redirect_url = Some(url.replace("http://", "https://"));
    })
    .await;
    let response = browser()
        .get(h.url("/oauth2/start?rd=/"))
        .send()
        .await
        .unwrap();
    let login = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-latchkey-login-"))
        .expect("a __Host- login cookie");
    assert!(
        login.contains("Secure") && login.contains("HttpOnly"),
        "{login}"
    );
    assert!(!login.contains("Domain"), "{login}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_forwarding_headers_decide_nothing() {
    let h = Harness::start(|raw| raw.skip_auth_routes = Some(vec!["^/public/".into()])).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (name, value) in [
        ("x-forwarded-uri", "/public/x"),
        ("x-original-url", "/public/x"),
        ("x-forwarded-host", "public.example"),
        ("x-forwarded-user", "alice"),
    ] {
        let response = client
            .get(h.url("/private"))
            .header(name, value)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{name}");
        let auth = client
            .get(h.url("/oauth2/auth"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(auth.status(), 401, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gets_a_502_page_not_a_hang() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_in_front_of(Some(closed), |_| {}).await;
    let b = browser();
    let landed = sign_in(&h, &b, "/", "alice").await;
    let response = b
        .get(landed)
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
}

/// The operator's templates and branding replace latchkey's pages
/// everywhere a page is shown (the layer's refusals, the login routes, the
/// edge's 400), keeping each answer's status and headers; what the request
/// carries is shown escaped; the built-in signed-out page is the landing of
/// a sign-out with nothing else configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_templates_and_branding_replace_every_page() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("error.html"),
        "<!doctype html><title>{{ title }}</title><main>ACME-ERROR {{ status }} {{ code }}: {{ message }} [{{ banner }}]</main>",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("signed_out.html"),
        "<!doctype html><title>Bye</title><main>ACME-BYE <a href=\"{{ sign_in_url }}\">again</a> {{ footer }}</main>",
    )
    .unwrap();
    let templates = dir.path().to_path_buf();
    let h = Harness::start(move |raw| {
        raw.allowed_groups = Some(vec!["admins".into()]);
        raw.custom_templates_dir = Some(templates);
        raw.banner = Some("Acme <Corp>".into());
        raw.footer = Some("Call \"IT\"".into());
    })
    .await;
    let bob = browser();
    let landed = sign_in(&h, &bob, "/", "bob").await;
    let denied = (bob.get(landed).header(ACCEPT, "text/html").send().await).unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-frame-options"], "DENY");
    assert!(
        denied.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let page = denied.text().await.unwrap();
    assert!(
        page.contains("ACME-ERROR 403 access_denied: You are signed in as bob@example.com"),
        "{page}"
    );
    assert!(page.contains("[Acme &lt;Corp&gt;]"), "{page}");
    // The edge's refusal, before any route.
    let refused = (bob
        .get(h.url("/a%2Fb"))
        .header(ACCEPT, "text/html")
        .send()
        .await)
        .unwrap();
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(page.contains("ACME-ERROR 400 bad_request"), "{page}");
    // A login route's refusal, with hostile text in the request: only
    // latchkey's fixed message is shown.
    let callback = (bob
        .get(h.url("/oauth2/callback?state=<script>x</script>&code=c"))
        .header(ACCEPT, "text/html")
        .send()
        .await)
        .unwrap();
    assert_eq!(callback.status(), 400);
    let page = callback.text().await.unwrap();
    assert!(page.contains("ACME-ERROR 400 login_expired"), "{page}");
    assert!(!page.contains("<script>"), "{page}");
    // JSON stays JSON.
    let api = (reqwest::Client::new()
        .get(h.url("/"))
        .header(ACCEPT, "application/json")
        .send()
        .await)
        .unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(
        api.json::<serde_json::Value>().await.unwrap()["error"],
        "not_signed_in"
    );
    // The signed-out page, custom; the sign-in page, built in with the banner.
    let bye = (bob.get(h.url("/oauth2/signed_out")).send().await).unwrap();
    assert_eq!(bye.status(), 200);
    let page = bye.text().await.unwrap();
    assert!(
        page.contains("ACME-BYE <a href=\"/oauth2/start?rd=%2F\">again</a> Call &quot;IT&quot;"),
        "{page}"
    );
    let sign_in_page = (bob.get(h.url("/oauth2/sign_in?rd=/x")).send().await).unwrap();
    let page = sign_in_page.text().await.unwrap();
    assert!(
        page.contains("<p class=\"banner\">Acme &lt;Corp&gt;</p>"),
        "{page}"
    );
    assert!(page.contains("/oauth2/start?rd=%2Fx"), "{page}");
}

/// A template that does not compile stops `serve` at startup, naming the
/// setting and the file.
#[tokio::test]
async fn a_broken_template_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sign_in.html"), "{% for %}").unwrap();
    let raw = latchkey::config::RawSettings {
        issuer: Some("http://127.0.0.1:1".into()),
        client_id: Some("c".into()),
        client_secret: Some("s".to_owned().into()),
        redirect_url: Some("http://127.0.0.1:4180/oauth2/callback".into()),
        cookie_secret: Some("0123456789abcdef0123456789abcdef".to_owned().into()),
        email_domains: Some(vec!["example.com".into()]),
        custom_templates_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let error = raw.validate().unwrap_err().to_string();
    assert!(
        error.contains("custom_templates_dir") && error.contains("sign_in.html"),
        "{error}"
    );
}
