//! The library surface, end to end: `examples/axum_app.rs` (compiled in
//! here as a module) in front of the development IdP, over real sockets.
//! It proves through the layer what the proxy proves: one callback fired 8×
//! at once makes one code exchange and one session; 100 API requests whose
//! token is due make one refresh call; and two apps (two `Latchkey`s) over
//! one store keep both guarantees across them, on every store backend.

#[path = "../examples/axum_app.rs"]
#[allow(dead_code)] // the example's `main` is not used here
mod axum_app;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use latchkey::clock::ManualClock;
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig};
use latchkey::store::Store;
use latchkey::web::{AccessPolicy, IdTokenClaims, Latchkey, LatchkeyBuilder, SignedIn};
use reqwest::header::{ACCEPT, LOCATION};
use serde_json::Value;
use tokio::net::TcpListener;
use url::Url;

use common::backends::TestBackend;
use common::browser::{browser, query_param, sign_in_at_idp};
use common::observed_store::ObservedStore;
use common::within;

const SECRET: &str = "library-e2e-secret";
const COOKIE_KEY: [u8; 32] = [11u8; 32];

/// Two apps (two `Latchkey`s, as two replicas or two services) over one
/// store, one provider and one clock; both answer for the first one's
/// callback URL, as replicas behind one name do.
struct Apps {
    idp: DevIdp,
    urls: [String; 2],
    clock: Arc<ManualClock>,
    store: Arc<ObservedStore>,
    latchkeys: [Latchkey; 2],
}

impl Apps {
    async fn start(store: Arc<dyn Store>) -> Self {
        Self::start_with(store, |builder| builder).await
    }

    async fn start_with(
        store: Arc<dyn Store>,
        customize: impl Fn(LatchkeyBuilder) -> LatchkeyBuilder,
    ) -> Self {
        let listeners = [
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ];
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let callback = format!("http://{}/oauth2/callback", addrs[0]);
        let idp = DevIdp::start(DevIdpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            clients: vec![DevClient {
                client_id: "app".into(),
                client_secret: SECRET.into(),
                redirect_uris: vec![callback.clone()],
                post_logout_redirect_uris: vec![],
                // The second app's: a logout there ends sessions made at the first.
                backchannel_logout_uri: Some(format!(
                    "http://{}/oauth2/backchannel_logout",
                    addrs[1]
                )),
            }],
            test_knobs: true,
            ..DevIdpConfig::default()
        })
        .await
        .unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let store = ObservedStore::new(store);
        let mut latchkeys = Vec::new();
        for listener in listeners {
            let builder = Latchkey::builder(idp.issuer(), "app", &callback)
                .client_secret(SECRET)
                .cookie_secret(base64::engine::general_purpose::STANDARD.encode(COOKIE_KEY))
                .policy(AccessPolicy::email_domains(["example.com"]))
                .store(store.clone())
                .clock(clock.clone());
            // The second shares the first's provider, discovered once.
            let builder = match latchkeys.first() {
                Some(first) => builder.provider(Latchkey::provider(first).clone()),
                None => builder,
            };
            let latchkey = customize(builder).build().await.unwrap();
            let api = axum_app::Api {
                url: format!("{}/userinfo", idp.issuer()),
                client: reqwest::Client::new(),
            };
            let app = axum_app::app(&latchkey, api).merge(test_routes(&latchkey));
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
            latchkeys.push(latchkey);
        }
        let [a, b] = <[Latchkey; 2]>::try_from(latchkeys).unwrap();
        Self {
            idp,
            urls: [
                format!("http://{}", addrs[0]),
                format!("http://{}", addrs[1]),
            ],
            clock,
            store,
            latchkeys: [a, b],
        }
    }

    /// App `i % 2`'s URL for `path`.
    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.urls[i % 2])
    }

    /// Starts a login at app 0 for `path` and signs alice in at the IdP;
    /// returns the callback URL the IdP sends the browser to.
    async fn to_callback(&self, browser: &reqwest::Client, path: &str) -> Url {
        self.to_callback_as(browser, path, "alice").await
    }

    async fn to_callback_as(&self, browser: &reqwest::Client, path: &str, user: &str) -> Url {
        let start = self.url(0, &format!("/oauth2/start?rd={path}"));
        let response = browser.get(&start).send().await.unwrap();
        assert_eq!(response.status(), 302);
        let authorize = Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
        sign_in_at_idp(browser, &authorize, user).await
    }

    async fn sign_in(&self, browser: &reqwest::Client) {
        self.sign_in_as(browser, "alice").await
    }

    async fn sign_in_as(&self, browser: &reqwest::Client, user: &str) {
        let callback = self.to_callback_as(browser, "/me", user).await;
        let done = browser.get(callback).send().await.unwrap();
        assert_eq!(done.status(), 302);
        assert_eq!(done.headers()[LOCATION], "/me");
    }
}

/// The groups claim, as an app's own claims type.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Groups {
    groups: Vec<String>,
}
impl latchkey::web::AdditionalClaims for Groups {}

/// A claim the development IdP never sends.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Badge {
    badge: String,
}
impl latchkey::web::AdditionalClaims for Badge {}

/// Routes of this test only: the claims extractors, and, for the negative
/// control, what `axum-oidc` does: refresh inline in the handler, with no
/// coordination between requests.
fn test_routes(latchkey: &Latchkey) -> Router {
    let provider = latchkey.provider().clone();
    Router::new()
        .route(
            "/claims/groups",
            get(|IdTokenClaims(claims): IdTokenClaims<Groups>| async move {
                format!(
                    "{} {}",
                    claims.subject().as_str(),
                    claims.additional_claims().groups.join(",")
                )
            }),
        )
        .merge(
            Router::new()
                .route("/claims/mfa-only", get(|| async { "mfa" }))
                .route_layer(
                    latchkey.require(
                        AccessPolicy::everyone()
                            .and_claim("this page needs a multi-factor sign-in", |claims| {
                                claims.get("acr").and_then(Value::as_str) == Some("mfa")
                            }),
                    ),
                ),
        )
        .merge(
            Router::new()
                .route("/claims/verified-only", get(|| async { "verified" }))
                .route_layer(
                    latchkey.require(
                        AccessPolicy::everyone()
                            .and_claim("this page needs a verified email", |claims| {
                                claims.get("email_verified") == Some(&Value::Bool(true))
                            }),
                    ),
                ),
        )
        .route(
            "/claims/badge",
            get(|IdTokenClaims(claims): IdTokenClaims<Badge>| async move {
                claims.additional_claims().badge.clone()
            }),
        )
        .route(
            "/whoami/sid",
            get(|who: SignedIn| async move { who.identity().sid.clone().unwrap_or_default() }),
        )
        .route(
            "/naive/token",
            get(move |who: SignedIn| {
                let provider = provider.clone();
                async move {
                    let session = who.active_session().expect("a session");
                    let token = session
                        .tokens()
                        .refresh_token
                        .clone()
                        .expect("a refresh token");
                    match provider.refresh(&token).await {
                        Ok(_) => "refreshed",
                        Err(_) => "refused",
                    }
                }
            }),
        )
        .route_layer(latchkey.require_login())
}

/// The session id inside a response's session cookie.
fn session_id(response: &reqwest::Response) -> String {
    common::browser::session_id_set_by(response, &COOKIE_KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_for_everyone_members_and_admins() {
    let apps = Apps::start(Arc::new(latchkey::store::memory::MemoryStore::new())).await;
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Not signed in: the public page is public, a browser is sent to sign in
    // and back to exactly where it was, an API client gets 401 JSON.
    let home = anonymous.get(apps.url(0, "/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("Public page"));
    let page = anonymous
        .get(apps.url(0, "/me?tab=a%26b"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 302);
    assert_eq!(
        page.headers()[LOCATION],
        "/oauth2/start?rd=%2Fme%3Ftab%3Da%2526b"
    );
    let api = anonymous
        .get(apps.url(0, "/api/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"], "not_signed_in");

    // Two Latchkeys, one provider: discovered once.
    assert_eq!(apps.idp.knobs().discovery_requests(), 1);

    // alice (in admins) sees every page, on either app.
    let alice = browser();
    apps.sign_in(&alice).await;
    for i in 0..2 {
        let me: Value = alice
            .get(apps.url(i, "/me"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["user"], "alice");
        assert_eq!(me["groups"][0], "admins");
        let admin = alice.get(apps.url(i, "/admin")).send().await.unwrap();
        assert_eq!(admin.status(), 200);
        let home = alice.get(apps.url(i, "/")).send().await.unwrap();
        assert!(home.text().await.unwrap().contains("Hello, alice"));
        // The API calls the upstream (the provider's userinfo) with her token.
        let profile: Value = alice
            .get(apps.url(i, "/api/profile"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(profile["upstream"]["sub"], "alice");
    }

    // bob (staff only) is refused the admin page with 403, and nothing else.
    let bob = browser();
    let start = bob
        .get(apps.url(0, "/oauth2/start?rd=/admin"))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let callback = sign_in_at_idp(&bob, &authorize, "bob").await;
    assert_eq!(bob.get(callback).send().await.unwrap().status(), 302);
    let admin = bob
        .get(apps.url(0, "/admin"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 403);
    let body: Value = admin.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");
    assert_eq!(
        bob.get(apps.url(0, "/me")).send().await.unwrap().status(),
        200
    );

    // Signed out: the session is gone on both apps.
    let out = alice
        .get(apps.url(0, "/oauth2/sign_out"))
        .send()
        .await
        .unwrap();
    assert!(out.status().is_redirection() || out.status().is_success());
    for i in 0..2 {
        let me = alice.get(apps.url(i, "/me")).send().await.unwrap();
        assert_eq!(me.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latchkey_needs_a_policy_and_may_bring_its_own_pages() {
    let err = Latchkey::builder(
        "http://127.0.0.1:9",
        "app",
        "http://127.0.0.1:9/oauth2/callback",
    )
    .cookie_secret(base64::engine::general_purpose::STANDARD.encode(COOKIE_KEY))
    .build()
    .await
    .unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("setting `policy`"), "{shown}");
    assert!(shown.contains("AccessPolicy::everyone()"), "{shown}");

    // The app's own page for a refusal, with latchkey's reason to go on.
    let apps = Apps::start_with(Arc::new(latchkey::store::memory::MemoryStore::new()), |b| {
        b.error_page(|rejection| {
            let page = format!("our page: {} ({})", rejection.code(), rejection.message());
            Some((axum::http::StatusCode::UNAUTHORIZED, page).into_response())
        })
    })
    .await;
    let anonymous = reqwest::Client::new();
    let api = anonymous
        .get(apps.url(1, "/api/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(
        api.text().await.unwrap(),
        "our page: not_signed_in (Sign in first.)"
    );
}

/// One callback fired 8× at once, spread over both apps: one code exchange,
/// one session, and every callback lands signed in.
async fn one_callback_eight_times_through_the_layer(backend: TestBackend) {
    let apps = Apps::start(backend.store.clone()).await;
    let alice = browser();
    let callback = apps.to_callback(&alice, "/me").await;
    let query = callback.query().unwrap().to_owned();
    let knobs = apps.idp.knobs().clone();
    knobs.hold_token_calls(true);
    let callbacks: Vec<_> = (0..8)
        .map(|i| {
            let request = alice.get(apps.url(i, &format!("/oauth2/callback?{query}")));
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    // One callback is at the token endpoint, the seven others wait on the
    // login's record; only then does the exchange answer.
    within("one exchange", knobs.wait_token_calls(1)).await;
    apps.store.wait_for_waiters(7).await;
    knobs.hold_token_calls(false);
    let mut sessions = Vec::new();
    for callback in callbacks {
        let response = within("callback", callback).await.unwrap();
        assert_eq!(response.status(), 302, "{}", backend.name);
        assert_eq!(response.headers()[LOCATION], "/me");
        sessions.push(session_id(&response));
    }
    assert_eq!(knobs.code_grants(), 1, "{}: extra exchanges", backend.name);
    sessions.dedup();
    assert_eq!(sessions.len(), 1, "{}: several sessions", backend.name);
    let absorbed: u64 = apps
        .latchkeys
        .iter()
        .map(|l| l.metrics().duplicate_callbacks.get())
        .sum();
    assert_eq!(absorbed, 7, "{}", backend.name);
    let me: Value = alice
        .get(apps.url(1, "/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"], "alice");
}

/// 100 API requests of one session whose access token has expired, spread
/// over both apps: one refresh call at the provider, every request served
/// with its token. The negative control, refreshing inline in the handler
/// as `axum-oidc` does, sends every request to the provider.
async fn a_hundred_due_requests_make_one_refresh(backend: TestBackend) {
    let apps = Apps::start(backend.store.clone()).await;
    let alice = browser();
    apps.sign_in(&alice).await;
    let knobs = apps.idp.knobs().clone();

    // Negative control first (the token is not due: the layer leaves it).
    knobs.hold_token_calls(true);
    let before = knobs.refresh_grants();
    let calls = knobs.token_calls();
    let naive: Vec<_> = (0..20)
        .map(|i| {
            let request = alice.get(apps.url(i, "/naive/token"));
            tokio::spawn(async move { request.send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    // All twenty reach the provider at once: nothing made them wait.
    within(
        "twenty refreshes in flight",
        knobs.wait_token_calls(calls + 20),
    )
    .await;
    knobs.hold_token_calls(false);
    for request in naive {
        within("naive", request).await.unwrap();
    }
    assert_eq!(
        knobs.refresh_grants() - before,
        20,
        "the control refreshed once per request"
    );

    // The session the control used is gone with its grant (the provider saw
    // a rotated token reused); sign in afresh, then let the token expire.
    let alice = browser();
    apps.sign_in(&alice).await;
    apps.clock.advance(Duration::from_secs(301));
    knobs.hold_token_calls(true);
    let before = knobs.refresh_grants();
    let calls_before = knobs.token_calls();
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let request = alice.get(apps.url(i, "/api/profile"));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                (response.status(), response.json::<Value>().await.ok())
            })
        })
        .collect();
    within("the refresh", knobs.wait_token_calls(calls_before + 1)).await;
    apps.store.wait_for_waiters(99).await;
    knobs.hold_token_calls(false);
    for request in requests {
        let (status, body) = within("request", request).await.unwrap();
        assert_eq!(status, 200, "{}: {body:?}", backend.name);
        assert_eq!(body.unwrap()["upstream"]["sub"], "alice");
    }
    assert_eq!(
        knobs.refresh_grants() - before,
        1,
        "{}: more than one refresh",
        backend.name
    );
    assert_eq!(knobs.token_calls(), calls_before + 1);
}

/// Two apps (the example's) signing in through the injected `idp`, on one
/// store; their base URLs. The first one's callback is the redirect URL.
async fn injected_apps(
    idp: Arc<common::idp_double::ControlledIdp>,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) -> Vec<String> {
    use common::idp_double::ISSUER;
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let urls: Vec<String> = (listeners.iter())
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let callback = format!("{}/oauth2/callback", urls[0]);
    for listener in listeners {
        let latchkey = Latchkey::builder(ISSUER, "app", &callback)
            .cookie_secret(base64::engine::general_purpose::STANDARD.encode(COOKIE_KEY))
            .policy(AccessPolicy::everyone())
            .provider(idp.clone())
            .store(store.clone())
            .clock(clock.clone())
            .build()
            .await
            .unwrap();
        let api = axum_app::Api {
            url: "http://127.0.0.1:9/unused".into(),
            client: reqwest::Client::new(),
        };
        let service =
            axum_app::app(&latchkey, api).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    }
    urls
}

/// The provider injected into the builder (here the gated test double, as
/// an app would inject one set up its own way): the sign-in runs through
/// it, and eight callbacks of one login on two apps make one exchange.
async fn an_injected_provider_signs_in_through_the_layer(backend: TestBackend) {
    use common::idp_double::{ControlledIdp, ISSUER};
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(300));
    let store = ObservedStore::new(backend.store.clone());
    let urls = injected_apps(idp.clone(), store.clone(), clock.clone()).await;
    let browser = browser();
    let start = browser
        .get(format!("{}/oauth2/start?rd=/me", urls[0]))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert!(authorize.as_str().starts_with(ISSUER), "{authorize}");
    let state = query_param(&authorize, "state").unwrap();
    idp.exchange_gate.close();
    let callbacks: Vec<_> = (0..8)
        .map(|i| {
            let url = format!("{}/oauth2/callback?state={state}&code=alice", urls[i % 2]);
            let request = browser.get(url);
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    let mut arrivals = idp.exchange_gate.subscribe_arrivals();
    within("the exchange", arrivals.wait_for(|n| *n >= 1))
        .await
        .unwrap();
    store.wait_for_waiters(7).await;
    idp.exchange_gate.open();
    let mut sessions = Vec::new();
    for callback in callbacks {
        let response = within("callback", callback).await.unwrap();
        assert_eq!(response.status(), 302, "{}", backend.name);
        sessions.push(session_id(&response));
    }
    sessions.dedup();
    assert_eq!(sessions.len(), 1, "{}", backend.name);
    assert_eq!(idp.exchanges(), 1, "{}", backend.name);
    let me: Value = browser
        .get(format!("{}/me", urls[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"], "user-of-alice");
    // An authorization response from another issuer (RFC 9207) is refused
    // without an exchange, by the trait's own check.
    let again = browser
        .get(format!("{}/oauth2/start?rd=/me", urls[0]))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(again.headers()[LOCATION].to_str().unwrap()).unwrap();
    let state = query_param(&authorize, "state").unwrap();
    let forged = browser
        .get(format!(
            "{}/oauth2/callback?state={state}&code=bob&iss=https%3A%2F%2Fevil.test",
            urls[0]
        ))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert_eq!(idp.exchanges(), 1, "{}", backend.name);
}

/// `Latchkey::end_sessions` ("sign out everywhere"): both of alice's
/// sessions end at once on both apps sharing the store.
async fn ending_a_users_sessions_signs_them_out_on_every_app(backend: TestBackend) {
    use latchkey::logout::Handle;
    let apps = Apps::start(backend.store.clone()).await;
    let (laptop, phone) = (browser(), browser());
    apps.sign_in(&laptop).await;
    apps.sign_in(&phone).await;
    let me: Value = (laptop.get(apps.url(1, "/me")).send().await.unwrap())
        .json()
        .await
        .unwrap();
    let subject = me["user"].as_str().unwrap().to_owned();
    let status = async |browser: &reqwest::Client, app: usize| {
        let response = browser.get(apps.url(app, "/me")).send().await.unwrap();
        response.status().as_u16()
    };
    for browser in [&laptop, &phone] {
        for app in 0..2 {
            assert_eq!(status(browser, app).await, 200, "{}", backend.name);
        }
    }
    let ended = apps.latchkeys[0]
        .end_sessions(Handle::Subject(&subject))
        .await
        .unwrap();
    assert_eq!(ended, 2, "{}", backend.name);
    // Not signed in (401: the scripted browser does not ask for HTML).
    for browser in [&laptop, &phone] {
        for app in 0..2 {
            let answer = status(browser, app).await;
            assert_eq!(answer, 401, "{}: still signed in", backend.name);
        }
    }
    let metrics = apps.latchkeys[0].metrics().render();
    assert!(
        metrics.contains("latchkey_sessions_revoked_total 2"),
        "{metrics}"
    );
}

/// Front-channel logout: the provider's `iss` and a `sid` end that provider
/// session's sessions on both apps, and no other; the page may be framed by
/// the provider only. Hostile forms (another issuer, `sid` without `iss`,
/// a repeated or oversized or control-character `sid`) are refused and end
/// nothing.
async fn front_channel_logout_ends_that_provider_session_only(backend: TestBackend) {
    use common::idp_double::ControlledIdp;
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(300));
    idp.exchange_as_subject("alice");
    let urls = injected_apps(idp.clone(), backend.store.clone(), clock.clone()).await;
    let sign_in = async |code: &str| {
        let browser = browser();
        let start = (browser.get(format!("{}/oauth2/start?rd=/me", urls[0])))
            .send()
            .await
            .unwrap();
        let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
        let state = query_param(&authorize, "state").unwrap();
        let done = (browser.get(format!(
            "{}/oauth2/callback?state={state}&code={code}",
            urls[0]
        )))
        .send()
        .await
        .unwrap();
        assert_eq!(done.status(), 302);
        browser
    };
    let (first, second) = (sign_in("c1").await, sign_in("c2").await);
    let status = async |browser: &reqwest::Client, app: usize| {
        let response = browser
            .get(format!("{}/me", urls[app]))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    };
    let logout = async |query: &str| {
        let url = format!("{}/oauth2/frontchannel_logout?{query}", urls[1]);
        reqwest::get(url).await.unwrap()
    };
    let iss = "iss=https%3A%2F%2Fidp.test";
    let long = "s".repeat(300);
    for hostile in [
        "iss=https%3A%2F%2Fevil.test&sid=sid-of-c1".to_owned(),
        format!("{iss}&sid=sid-of-c1&sid=sid-of-c2"),
        format!("{iss}&sid={long}"),
        format!("{iss}&sid=sid-of-c1%0A"),
        format!("{iss}&sid="),
        // Front-Channel Logout 1.0 §2: both or neither.
        "sid=sid-of-c1".to_owned(),
        iss.to_owned(),
    ] {
        let refused = logout(&hostile).await;
        assert_eq!(refused.status(), 400, "{hostile}");
        assert_eq!(status(&first, 0).await, 200, "{hostile} ended a session");
    }
    let done = logout(&format!("{iss}&sid=sid-of-c1")).await;
    assert_eq!(done.status(), 200);
    let csp = done.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors https://idp.test"), "{csp}");
    assert!(!done.headers().contains_key("x-frame-options"));
    assert_eq!(done.headers()["cache-control"], "no-store, private");
    for app in 0..2 {
        assert_eq!(status(&first, app).await, 401, "{}", backend.name);
        assert_eq!(status(&second, app).await, 200, "{}", backend.name);
    }
}

/// Back-channel logout, with the development IdP signing real logout
/// tokens and POSTing them to the second app: a token naming a `sid` ends
/// that provider session's sessions on both apps and no other; one naming
/// only a `sub` ends every session of that user; a replayed token is
/// refused; a store failure is a 503 whose retry succeeds. Hostile requests (no token, wrong type, repeated, oversized;
/// tokens for another client, with a nonce, unsigned) are 400s with a JSON
/// reason, never cached, and end nothing.
async fn back_channel_logout_ends_sessions_on_every_app(backend: TestBackend) {
    let apps = Apps::start(backend.store.clone()).await;
    let (laptop, phone, bobs) = (browser(), browser(), browser());
    apps.sign_in(&laptop).await;
    apps.sign_in(&phone).await;
    apps.sign_in_as(&bobs, "bob").await;
    let status = async |browser: &reqwest::Client, app: usize| {
        let response = browser.get(apps.url(app, "/me")).send().await.unwrap();
        response.status().as_u16()
    };
    let sid_of = async |browser: &reqwest::Client| {
        let response = browser
            .get(apps.url(0, "/whoami/sid"))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    };
    let laptop_sid = sid_of(&laptop).await;
    assert!(
        !laptop_sid.is_empty(),
        "the dev IdP's ID tokens carry a sid"
    );
    assert_ne!(laptop_sid, sid_of(&phone).await, "one sid per sign-in");
    let endpoint = apps.url(1, "/oauth2/backchannel_logout");
    let post_form = async |body: String| {
        reqwest::Client::new()
            .post(&endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    };
    let token_for = |client: &str, edit: &dyn Fn(&mut Value)| {
        let mut claims = apps.idp.logout_claims(client, None, Some(&laptop_sid));
        edit(&mut claims);
        apps.idp.sign_jwt("logout+jwt", &claims)
    };
    let form = |token: &str| format!("logout_token={token}");
    let unsigned = {
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = apps.idp.logout_claims("app", None, Some(&laptop_sid));
        format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none"})),
            b64(&claims)
        )
    };
    let hostile = [
        ("an empty body", String::new()),
        ("another parameter", "token=x".to_owned()),
        (
            "the token twice",
            format!("{}&{}", form(&token_for("app", &|_| {})), form("x")),
        ),
        ("an oversized body", form(&"A".repeat(64 * 1024))),
        ("garbage", form("not-a-jwt")),
        (
            "a token for another client",
            form(&token_for("other-app", &|_| {})),
        ),
        (
            "a token with a nonce",
            form(&token_for("app", &|c| c["nonce"] = "n".into())),
        ),
        (
            "a token without the event",
            form(&token_for("app", &|c| c["events"] = serde_json::json!({}))),
        ),
        ("an unsigned token", form(&unsigned)),
    ];
    for (case, body) in hostile {
        let refused = post_form(body).await;
        assert_eq!(refused.status(), 400, "{case}");
        assert_eq!(
            refused.headers()["cache-control"],
            "no-store, private",
            "{case}"
        );
        let reason: Value = refused.json().await.unwrap();
        assert_eq!(reason["error"], "invalid_request", "{case}");
        assert_eq!(status(&laptop, 0).await, 200, "{case} ended a session");
    }
    // JSON instead of a form, and a GET: refused too.
    let json = (reqwest::Client::new().post(&endpoint))
        .json(&serde_json::json!({"logout_token": token_for("app", &|_| {})}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400);
    assert_eq!(reqwest::get(&endpoint).await.unwrap().status(), 405);
    assert_eq!(status(&laptop, 1).await, 200);

    // The IdP ends the laptop's provider session, naming its user too (as
    // most providers do): only that provider session ends.
    let delivered = (apps.idp)
        .send_backchannel_logout(Some("alice"), Some(&laptop_sid))
        .await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].status, Some(200), "{}", backend.name);
    for app in 0..2 {
        assert_eq!(status(&laptop, app).await, 401, "{}: laptop", backend.name);
        assert_eq!(status(&phone, app).await, 200, "{}: phone", backend.name);
        assert_eq!(status(&bobs, app).await, 200, "{}: bob", backend.name);
    }

    // A token naming only alice ends her every session, once.
    let everywhere = {
        let claims = apps.idp.logout_claims("app", Some("alice"), None);
        apps.idp.sign_jwt("logout+jwt", &claims)
    };
    // The store fails under the logout: a 503 that ends nothing and does
    // not use the token up, so the provider's retry goes through.
    apps.store.fail_writes("logout:", 1);
    let failed = post_form(form(&everywhere)).await;
    assert_eq!(failed.status(), 503, "{}", backend.name);
    let reason: Value = failed.json().await.unwrap();
    assert_eq!(reason["error"], "temporarily_unavailable");
    assert_eq!(status(&phone, 0).await, 200, "{}", backend.name);
    assert_eq!(post_form(form(&everywhere)).await.status(), 200);
    for app in 0..2 {
        assert_eq!(status(&phone, app).await, 401, "{}: phone", backend.name);
        assert_eq!(status(&bobs, app).await, 200, "{}: bob", backend.name);
    }
    let replayed = post_form(form(&everywhere)).await;
    assert_eq!(
        replayed.status(),
        400,
        "{}: a replay was accepted",
        backend.name
    );
    let metrics = apps.latchkeys[1].metrics().render();
    for line in [
        r#"latchkey_backchannel_logouts_total{result="accepted"} 2"#,
        r#"latchkey_backchannel_logouts_total{result="replayed"} 1"#,
        r#"latchkey_backchannel_logouts_total{result="rejected"} 10"#,
        r#"latchkey_backchannel_logouts_total{result="unavailable"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// Signing out of one app ends the provider session at the development
/// IdP too (RP-initiated logout with the ID token as hint), and the IdP
/// sends that provider session's logout token to the app registered for
/// it, which accepts it; another sign-in of the same user (another
/// provider session) stays signed in.
async fn signing_out_at_the_idp_sends_its_logout_token(backend: TestBackend) {
    let apps = Apps::start(backend.store.clone()).await;
    let (laptop, phone) = (browser(), browser());
    apps.sign_in(&laptop).await;
    apps.sign_in(&phone).await;
    let sign_out = laptop
        .get(apps.url(0, "/oauth2/sign_out"))
        .send()
        .await
        .unwrap();
    assert_eq!(sign_out.status(), 302);
    let at_idp = sign_out.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(at_idp.starts_with(apps.idp.issuer()), "{at_idp}");
    assert!(at_idp.contains("id_token_hint="), "{at_idp}");
    let signed_out = laptop.get(&at_idp).send().await.unwrap();
    assert!(signed_out.status().is_success(), "{}", signed_out.status());
    let metrics = apps.latchkeys[1].metrics().render();
    let accepted = r#"latchkey_backchannel_logouts_total{result="accepted"} 1"#;
    assert!(metrics.contains(accepted), "{}: {metrics}", backend.name);
    for app in 0..2 {
        let me = laptop.get(apps.url(app, "/me")).send().await.unwrap();
        assert_eq!(me.status(), 401, "{}", backend.name);
        let me = phone.get(apps.url(app, "/me")).send().await.unwrap();
        assert_eq!(me.status(), 200, "{}", backend.name);
    }
    // The IdP's test knob: nothing named is a 400 that sends nothing; a
    // user named sends that user's token, which the app accepts.
    let knob = format!("{}/_dev/backchannel-logout", apps.idp.issuer());
    let http = reqwest::Client::new();
    assert_eq!(http.post(&knob).send().await.unwrap().status(), 400);
    let metrics = apps.latchkeys[1].metrics().render();
    assert!(metrics.contains(accepted), "{metrics}");
    let sent: Value = (http.post(format!("{knob}?sub=alice")).send().await.unwrap())
        .json()
        .await
        .unwrap();
    assert_eq!(sent[0]["status"], 200, "{sent}");
    let me = phone.get(apps.url(0, "/me")).send().await.unwrap();
    assert_eq!(
        me.status(),
        401,
        "{}: the knob's logout ended alice's sessions",
        backend.name
    );
    // A hint the IdP did not sign sends nothing.
    let forged = format!(
        "{}/end_session?id_token_hint=eyJhbGciOiJub25lIn0.e30.",
        apps.idp.issuer()
    );
    assert!(
        laptop
            .get(forged)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let metrics = apps.latchkeys[1].metrics().render();
    let twice = r#"latchkey_backchannel_logouts_total{result="accepted"} 2"#;
    assert!(metrics.contains(twice), "{metrics}");
}

backend_tests!(
    signing_out_at_the_idp_sends_its_logout_token,
    back_channel_logout_ends_sessions_on_every_app,
    front_channel_logout_ends_that_provider_session_only,
    ending_a_users_sessions_signs_them_out_on_every_app,
    an_injected_provider_signs_in_through_the_layer,
    one_callback_eight_times_through_the_layer,
    a_hundred_due_requests_make_one_refresh,
);
