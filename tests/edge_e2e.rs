//! The request edge under attack, through the real server: what a hostile
//! client sends, what latchkey answers, and exactly what reaches an upstream
//! that records every byte of each request head.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::browser::{browser, location, submit_login_form};
use common::proxy::{HTML, Harness, sign_in, to_callback};
use common::recorder::{self, Recorder};
use reqwest::header::{ACCEPT, COOKIE, SET_COOKIE};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

async fn behind_recorder(
    customize: impl FnOnce(&mut latchkey::config::RawSettings),
) -> (Harness, Recorder) {
    let recorder = Recorder::start().await;
    let h = Harness::start_in_front_of(Some(recorder.addr), customize).await;
    (h, recorder)
}

/// A header line's name as CGI, WSGI, Rack and PHP read it.
fn folded(line: &str) -> String {
    line.split(':')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .replace('_', "-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_never_leaves_a_skip_route() {
    let (h, upstream) =
        behind_recorder(|raw| raw.skip_auth_routes = Some(vec!["GET=^/static/".into()])).await;
    let attacks = [
        "/static/../admin",
        "/static/%2e%2e/admin",
        "/static/%2E%2E/admin",
        "/static/.%2e/admin",
        "/static/..;/admin",
        "/static/%2e%2e;/admin",
        "/static/.;x/../admin",
        "/static/..%2fadmin",
        "/static/%2e%2e%2fadmin",
        "/static/..%5cadmin",
        "/static/..\\admin",
        "/static/%252e%252e/admin",
        "/static//../admin",
        "/static/./../admin",
        "//static/../admin",
        "/static/%2e%2e/%2e%2e/admin",
        "/static/x/../../admin",
        "/static/%00/../admin",
    ];
    for attack in attacks {
        let response = recorder::get(h.proxy, attack, &["Accept: application/json"]).await;
        assert!(
            [400, 401].contains(&response.status),
            "{attack}: {}",
            response.text
        );
    }
    assert!(
        upstream.targets().is_empty(),
        "reached the upstream: {:?}",
        upstream.targets()
    );
    // What is matched is what is forwarded: equivalent spellings of a path
    // under the prefix reach the upstream in their one canonical form.
    for (sent, forwarded) in [
        ("/static/a.css", "/static/a.css"),
        ("/static/%61.css?v=1", "/static/a.css?v=1"),
        ("/static/x/../a.css", "/static/a.css"),
        ("/static//a.css", "/static/a.css"),
        ("/static/a%2a.css", "/static/a%2A.css"),
    ] {
        let response = recorder::get(h.proxy, sent, &[]).await;
        assert_eq!(response.status, 200, "{sent}: {}", response.text);
        assert_eq!(upstream.targets().last().unwrap(), forwarded, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alternative_of_a_skip_route_is_anchored() {
    let (h, upstream) =
        behind_recorder(|raw| raw.skip_auth_routes = Some(vec!["GET=/static/|/assets/".into()]))
            .await;
    for path in ["/private/assets/x", "/private/static/x", "/x/assets/"] {
        let response = recorder::get(h.proxy, path, &["Accept: application/json"]).await;
        assert_eq!(response.status, 401, "{path}");
    }
    assert!(upstream.targets().is_empty(), "{:?}", upstream.targets());
    assert_eq!(recorder::get(h.proxy, "/assets/x", &[]).await.status, 200);
    assert_eq!(recorder::get(h.proxy, "/static/x", &[]).await.status, 200);
}

/// Headers an attacker sends to pose as someone, or to reroute the request.
const SMUGGLED: [&str; 14] = [
    "X_Forwarded_User: mallory",
    "X_Forwarded_Email: mallory@evil.example",
    "X_Forwarded_Groups: admins",
    "x-forwarded_preferred_username: mallory",
    "X_Auth_Request_User: mallory",
    "X-Auth-Request-Email: mallory@evil.example",
    "X_Auth_Request_Groups: admins",
    "X-Forwarded-Access-Token: forged",
    "X_Forwarded_For: 10.9.9.9",
    "Forwarded: for=10.9.9.9;host=admin.example",
    "X-Original-URL: /admin",
    "X_Rewrite_URL: /admin",
    "X-HTTP-Method-Override: DELETE",
    "X-Forwarded-Prefix: /admin",
];

/// The folded names of the headers latchkey sets itself, with their values.
fn assert_nothing_smuggled(head: &str, user: Option<&str>) {
    let lines: Vec<&str> = head.lines().skip(1).collect();
    for sent in SMUGGLED {
        let name = folded(sent);
        let value = sent.split_once(':').unwrap().1.trim();
        for line in lines.iter().filter(|l| folded(l) == name) {
            assert!(
                !line.contains(value),
                "{sent:?} reached the upstream as {line:?}\n{head}"
            );
        }
    }
    let users: Vec<&&str> = lines
        .iter()
        .filter(|l| folded(l) == "x-forwarded-user")
        .collect();
    match user {
        Some(user) => assert_eq!(users, [&&*format!("x-forwarded-user: {user}")], "{head}"),
        None => assert!(users.is_empty(), "{head}"),
    }
    for name in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "forwarded",
    ] {
        assert!(
            lines.iter().all(|l| folded(l) != name),
            "{name} reached the upstream\n{head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_an_identity_header_reaches_the_upstream() {
    let (h, upstream) =
        behind_recorder(|raw| raw.skip_auth_routes = Some(vec!["GET=^/public/".into()])).await;
    // Anonymous, on a skip route: the attacker's copies would be the only ones.
    let response = recorder::get(h.proxy, "/public/x", &SMUGGLED).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_nothing_smuggled(&upstream.heads()[0], None);
    // Signed in: latchkey's own values, once.
    let b = browser();
    let landed = sign_in(&h, &b, "/app", "bob").await;
    let mut request = b.get(landed);
    for header in SMUGGLED {
        let (name, value) = header.split_once(':').unwrap();
        request = request.header(name, value.trim());
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    let head = upstream.heads().last().unwrap().clone();
    assert_nothing_smuggled(&head, Some("bob"));
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_overrides_pass_only_when_the_operator_says_so() {
    let (h, upstream) = behind_recorder(|raw| {
        raw.skip_auth_routes = Some(vec!["GET=^/public/".into()]);
        raw.pass_routing_headers = Some(true);
    })
    .await;
    let response = recorder::get(
        h.proxy,
        "/public/x",
        &["X-Original-URL: /admin", "X_Forwarded_User: mallory"],
    )
    .await;
    assert_eq!(response.status, 200);
    let head = &upstream.heads()[0];
    assert!(
        head.contains("X-Original-URL: /admin") || head.contains("x-original-url: /admin"),
        "{head}"
    );
    assert!(!head.contains("mallory"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_closed_after_the_header_timeout() {
    let (h, _upstream) = behind_recorder(|raw| {
        raw.header_read_timeout = Some("300ms".into());
        raw.idle_timeout = Some("60s".into());
    })
    .await;
    let mut slow = TcpStream::connect(h.proxy).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a half-sent head was held open for 20 s");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );
    // A complete head on another connection is served.
    let whole = recorder::get(h.proxy, "/healthz", &[]).await;
    assert_eq!(whole.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let (h, _upstream) = behind_recorder(|raw| {
        raw.header_read_timeout = Some("60s".into());
        raw.idle_timeout = Some("300ms".into());
    })
    .await;
    let mut socket = TcpStream::connect(h.proxy).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = socket.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // Kept alive, then idle: closed well before the 60 s header timeout.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "an idle connection was held open for 20 s");
}

/// An upstream whose `/hold` requests wait until the test releases them,
/// with latchkey in front (`/hold` needs no sign-in) and at most two client
/// connections.
async fn holding_upstream() -> (
    Harness,
    tokio::sync::mpsc::Receiver<()>,
    Arc<tokio::sync::Notify>,
) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::channel::<()>(8);
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let app = axum::Router::new().route(
        "/hold",
        axum::routing::get(move || {
            let (arrived, gate) = (arrived_tx.clone(), gate.clone());
            async move {
                let released = gate.notified();
                arrived.send(()).await.unwrap();
                released.await;
                "released"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let h = Harness::start_in_front_of(Some(upstream), |raw| {
        raw.max_connections = Some(2);
        raw.skip_auth_routes = Some(vec!["GET=^/hold$".into()]);
    })
    .await;
    (h, arrived, release)
}

/// A connection whose request is in flight at the upstream (busy, never idle).
async fn busy_connection(h: &Harness, arrived: &mut tokio::sync::mpsc::Receiver<()>) -> TcpStream {
    let mut socket = TcpStream::connect(h.proxy).await.unwrap();
    socket
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    arrived.recv().await.unwrap();
    socket
}

async fn read_status_line(socket: &mut TcpStream) -> String {
    let mut answer = vec![0u8; 512];
    let n = socket.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A connection that was served one request and is kept alive, idle.
async fn idle_connection(h: &Harness) -> TcpStream {
    let mut socket = TcpStream::connect(h.proxy).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 256];
    let n = socket.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_accept() {
    let (h, mut arrived, release) = holding_upstream().await;
    let mut held = [
        busy_connection(&h, &mut arrived).await,
        busy_connection(&h, &mut arrived).await,
    ];
    // Two requests in flight fill the cap: a third connection is closed.
    let third = recorder::get(h.proxy, "/healthz", &[]).await;
    assert_eq!(
        third.status, 0,
        "a third connection was served: {}",
        third.text
    );
    assert!(third.text.is_empty());
    let metrics = h.server.app().metrics().render();
    assert!(
        metrics.contains("latchkey_connections_refused_total 1"),
        "{metrics}"
    );
    // The held ones are answered when the upstream is.
    release.notify_waiters();
    for socket in held.iter_mut() {
        assert!(read_status_line(socket).await.starts_with("HTTP/1.1 200"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_idle_connections_make_room() {
    let (h, mut arrived, release) = holding_upstream().await;
    let mut busy = busy_connection(&h, &mut arrived).await;
    let mut idle = idle_connection(&h).await;
    // The cap is reached, but one connection is only kept alive: it is
    // closed, and the new one is served.
    let third = recorder::get(h.proxy, "/healthz", &[]).await;
    assert_eq!(third.status, 200, "{}", third.text);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was kept");
    // The busy one was not touched.
    release.notify_waiters();
    assert!(
        read_status_line(&mut busy)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let metrics = h.server.app().metrics().render();
    assert!(
        metrics.contains("latchkey_connections_refused_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    let (h, upstream) = behind_recorder(|raw| raw.max_header_bytes = Some(8192)).await;
    let big = format!("X-Big: {}", "a".repeat(9000));
    let response = recorder::get(h.proxy, "/x", &[&big]).await;
    assert_eq!(response.status, 431, "{}", response.text);
    assert!(upstream.targets().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_pages_reflect_no_attacker_text() {
    let h = Harness::start(|_| {}).await;
    let sentence = "Your%20account%20is%20locked%2C%20call%20%2B1-555-0100";
    // Unknown state: a fixed message.
    let response = browser()
        .get(h.url(&format!(
            "/oauth2/callback?state=made-up&error=access_denied&error_description={sentence}&error_uri=https%3A%2F%2Fevil.example"
        )))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let page = response.text().await.unwrap();
    for reflected in ["locked", "555", "evil.example", "access_denied"] {
        assert!(!page.contains(reflected), "{reflected} in {page}");
    }
    // A known login: the checked error code alone.
    for (error, shown) in [
        ("access_denied", "access_denied"),
        ("Call%20%2B1-555-0100%20now", "invalid_error_code"),
        ("%3Cscript%3E", "invalid_error_code"),
    ] {
        let b = browser();
        let start = b.get(h.url("/oauth2/start?rd=/")).send().await.unwrap();
        let authorize = location(&start, &Url::parse(&h.url("/")).unwrap());
        let state = authorize
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let response = b
            .get(h.url(&format!(
                "/oauth2/callback?state={state}&error={error}&error_description={sentence}"
            )))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{error}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "login_refused");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(shown), "{message}");
        assert!(
            !message.contains("locked") && !message.contains("555"),
            "{message}"
        );
    }
}

/// `url` with query parameter `name` set to `value` (replaced, not added).
fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.push((name.to_owned(), value.to_owned()));
    let mut changed = url.clone();
    changed.query_pairs_mut().clear().extend_pairs(pairs);
    changed
}

/// The JSON error of a callback response.
async fn callback_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_answered_by_cause() {
    let h = Harness::start(|_| {}).await;
    let json = "application/json";

    // The user pressed "cancel" at the IdP: error=access_denied → 403.
    let b = browser();
    let start = b.get(h.url("/oauth2/start?rd=/")).send().await.unwrap();
    let authorize = location(&start, &Url::parse(&h.url("/")).unwrap());
    let back = submit_login_form(&b, &authorize, "alice", "alice", "cancel").await;
    let callback = location(&back, &authorize);
    let refused = b
        .get(callback.clone())
        .header(ACCEPT, json)
        .send()
        .await
        .unwrap();
    assert_eq!(callback_error(refused).await, (403, "login_refused".into()));
    // Its replay: 400.
    let replay = b.get(callback).header(ACCEPT, json).send().await.unwrap();
    assert_eq!(
        callback_error(replay).await,
        (400, "login_already_failed".into())
    );

    // The browser's response names another issuer (RFC 9207): 400.
    let b = browser();
    let callback = to_callback(&b, &h.url("/"), "alice").await;
    let mixed_up = with_param(&callback, "iss", "https://evil.example");
    let response = b.get(mixed_up).header(ACCEPT, json).send().await.unwrap();
    assert_eq!(callback_error(response).await, (400, "bad_request".into()));

    // A code the token endpoint refuses (invalid_grant): 400, start again.
    let b = browser();
    let callback = to_callback(&b, &h.url("/"), "alice").await;
    let forged = with_param(&callback, "code", "forged-code");
    let response = b
        .get(forged.clone())
        .header(ACCEPT, json)
        .send()
        .await
        .unwrap();
    assert_eq!(
        callback_error(response).await,
        (400, "login_code_rejected".into())
    );
    let replay = b.get(forged).header(ACCEPT, json).send().await.unwrap();
    assert_eq!(
        callback_error(replay).await,
        (400, "login_already_failed".into())
    );

    // The token endpoint answers 503: the IdP's fault, 503.
    let b = browser();
    let callback = to_callback(&b, &h.url("/"), "alice").await;
    h.idp.knobs().fail_next_token_calls(1);
    let response = b.get(callback).header(ACCEPT, json).send().await.unwrap();
    assert_eq!(
        callback_error(response).await,
        (503, "idp_unavailable".into())
    );

    // The IdP's answer fails validation (userinfo for another subject): 502.
    let b = browser();
    let callback = to_callback(&b, &h.url("/"), "alice").await;
    h.idp.knobs().misreport_userinfo_subject(Some("mallory"));
    let response = b.get(callback).header(ACCEPT, json).send().await.unwrap();
    assert_eq!(callback_error(response).await, (502, "login_failed".into()));
    h.idp.knobs().misreport_userinfo_subject(None);

    // Parameters that do not parse (one given twice): a 400 of latchkey's
    // own, JSON for an API client.
    for query in [
        "state=a&state=b&code=c",
        "code=a&code=b&state=s",
        "rd=/a&rd=/b",
    ] {
        let path = if query.starts_with("rd") {
            "/oauth2/start"
        } else {
            "/oauth2/callback"
        };
        let response = reqwest::Client::new()
            .get(h.url(&format!("{path}?{query}")))
            .header(ACCEPT, json)
            .send()
            .await
            .unwrap();
        assert_eq!(
            callback_error(response).await,
            (400, "bad_request".into()),
            "{query}"
        );
    }

    // None of these was a 500.
    let metrics = reqwest::get(h.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("status=\"500\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latchkeys_own_answers_are_hardened() {
    let h = Harness::start_with(false, |_| {}).await;
    let client = reqwest::Client::new();
    let page = client
        .get(h.url("/oauth2/callback"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    let headers = page.headers();
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store, private");
    // Forward-auth and userinfo answers, signed in or not, are never cached.
    let b = browser();
    for path in ["/oauth2/auth", "/oauth2/userinfo"] {
        let response = b.get(h.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(
            response.headers()["cache-control"],
            "no-store, private",
            "{path}"
        );
    }
    sign_in(&h, &b, "/", "bob").await;
    for path in ["/oauth2/auth", "/oauth2/userinfo"] {
        let response = b.get(h.url(path)).send().await.unwrap();
        assert!(response.status().is_success(), "{path}");
        assert_eq!(
            response.headers()["cache-control"],
            "no-store, private",
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_rd_is_refused_and_a_deep_link_too_long_lands_on_slash() {
    let h = Harness::start(|_| {}).await;
    let long = format!("/{}", "a".repeat(3000));
    let response = browser()
        .get(h.url(&format!("/oauth2/start?rd={long}")))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().get(SET_COOKIE).is_none());
    // A deep link that long is not carried into the login at all.
    let response = browser()
        .get(h.url(&long))
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/oauth2/start?rd=%2F");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookies_stay_small_and_go_once_used() {
    let h = Harness::start(|_| {}).await;
    let b = browser();
    // Four tabs with the longest destination allowed.
    let rd = format!("/{}", "d".repeat(latchkey::web::redirect::MAX_RD - 1));
    for _ in 0..4 {
        let response = b
            .get(h.url(&format!("/oauth2/start?rd={rd}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302);
    }
    // The browser can still make requests: its Cookie header fits.
    let response = b
        .get(h.url("/oauth2/userinfo"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "the login cookies grew past the limit"
    );
    // A login's cookie is cleared once its callback succeeds.
    let b = browser();
    let callback = to_callback(&b, &h.url("/oauth2/start?rd=/"), "alice").await;
    let done = b.get(callback).send().await.unwrap();
    assert_eq!(done.status(), 302);
    let cleared = done
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .any(|c| c.starts_with("latchkey-login-") && c.contains("Max-Age=0"));
    assert!(cleared, "{:?}", done.headers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_sign_in_starts_leave_nothing_in_the_store() {
    // No rate limit: every one of the starts must be served to count.
    let h = Harness::start(|raw| raw.login_rate_per_minute = Some(0)).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for i in 0..2_000 {
        let rd = format!("/page/{i}?{}", "q".repeat(1500));
        let response = client
            .get(h.url(&format!("/oauth2/start?rd={rd}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302);
    }
    let path = h.store_dir.path().join("s.db");
    let store = latchkey::store::sqlite::SqliteStore::open(path.to_str().unwrap())
        .await
        .unwrap();
    use latchkey::store::Store;
    assert_eq!(
        store.count_live("").await.unwrap(),
        0,
        "anonymous starts wrote records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_floods_are_rate_limited_per_client() {
    let h = Harness::start(|raw| raw.login_rate_per_minute = Some(3)).await;
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let flooder = from("127.0.0.1");
    for path in [
        "/oauth2/start",
        "/oauth2/start",
        "/oauth2/callback?state=x&code=y",
    ] {
        let response = flooder.get(h.url(path)).send().await.unwrap();
        assert_ne!(response.status(), 429, "{path}");
    }
    for path in ["/oauth2/start", "/oauth2/callback?state=x&code=y"] {
        let response = flooder
            .get(h.url(path))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429, "{path}");
        let wait: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "too_many_requests");
    }
    // Another client is not held back, and the rest of the app is not limited.
    let other = from("127.0.0.2");
    assert_eq!(
        other
            .get(h.url("/oauth2/start"))
            .send()
            .await
            .unwrap()
            .status(),
        302
    );
    assert_eq!(
        flooder
            .get(h.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_bomb_is_answered_with_removals_of_the_login_cookies() {
    let h = Harness::start(|_| {}).await;
    let bomb = (0..6)
        .map(|i| format!("latchkey-login-0000000{i}={}", "x".repeat(3000)))
        .collect::<Vec<_>>()
        .join("; ");
    for path in ["/oauth2/start?rd=/", "/oauth2/sign_out", "/app"] {
        let response = reqwest::Client::new()
            .get(h.url(path))
            .header(COOKIE, format!("_latchkey=abc; {bomb}"))
            .header(ACCEPT, "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let removed: Vec<&str> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .filter(|c| c.starts_with("latchkey-login-") && c.contains("Max-Age=0"))
            .collect();
        assert_eq!(removed.len(), 6, "{path}: {:?}", response.headers());
        // The session cookie is not the culprit and stays.
        assert!(
            response
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .all(|c| !c.to_str().unwrap().starts_with("_latchkey=")),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_cached_and_says_no_more_than_ok() {
    let h = Harness::start(|_| {}).await;
    let before = h.idp.knobs().discovery_requests();
    for _ in 0..20 {
        let ready = reqwest::get(h.url("/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
    }
    assert_eq!(h.idp.knobs().discovery_requests() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_move_to_a_listener_of_their_own() {
    let h = Harness::start(|raw| raw.metrics_address = Some("127.0.0.1:0".into())).await;
    let public = reqwest::get(h.url("/metrics")).await.unwrap();
    assert_eq!(public.status(), 401, "metrics still public");
    let ops = h.server.metrics_addr().unwrap();
    let metrics = reqwest::get(format!("http://{ops}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("latchkey_http_requests_total")
    );
    let ready = reqwest::get(format!("http://{ops}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
}
