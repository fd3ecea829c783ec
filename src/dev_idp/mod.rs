//! The development OpenID Provider (`latchkey dev-idp`): small and honest, for
//! the demo, the end-to-end tests and local development of other apps. **Never
//! for production**: passwords are plain text in its configuration and its
//! state lives in memory.
//!
//! It serves discovery, a JWKS (an RS256 or EdDSA key generated at start), `/authorize`
//! with a login form listing the test users, `/token` (authorization code with
//! PKCE S256; refresh tokens rotated with reuse detection: presenting a rotated
//! refresh token revokes its whole grant family, and so does replaying a code),
//! `/userinfo` and `/end_session`. ID tokens carry a `sid` per sign-in. Test
//! knobs (off by default) make the next token calls fail or slow, rotate the
//! signing key, count calls, and send back-channel logout tokens to the
//! clients that registered a `backchannel_logout_uri`.

mod keys;
mod logout;
mod pages;
mod token;

pub use logout::Delivery;

pub use pages::escape as escape_html;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use self::keys::SigningAlg;
use self::keys::SigningKeys;
use crate::clock::{Clock, SystemClock, UnixMillis, duration_ms};
use crate::secret::random_token;

/// A test user.
#[derive(Debug, Clone, Deserialize)]
pub struct DevUser {
    /// Login name; also the `sub`.
    pub username: String,
    /// Plain-text password (development only).
    pub password: String,
    /// The `email` claim.
    pub email: String,
    /// The `email_verified` claim [default: true].
    #[serde(default = "verified")]
    pub email_verified: bool,
    /// The `groups` claim.
    #[serde(default)]
    pub groups: Vec<String>,
    /// More claims for the ID token and `/userinfo` (any JSON), e.g.
    /// `claims = { department = "R&D", org = { name = "Acme" } }`.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Claims only `/userinfo` tells (as many providers keep profile
    /// claims out of the ID token).
    #[serde(default)]
    pub userinfo_claims: serde_json::Map<String, serde_json::Value>,
}

fn verified() -> bool {
    true
}

/// A registered client.
#[derive(Debug, Clone, Deserialize)]
pub struct DevClient {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// Allowed `redirect_uri`s (exact match).
    pub redirect_uris: Vec<String>,
    /// Allowed `post_logout_redirect_uri`s (exact match).
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Where to POST back-channel logout tokens (Back-Channel Logout 1.0),
    /// e.g. `http://127.0.0.1:4180/oauth2/backchannel_logout`.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
}

/// The development IdP's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DevIdpConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The issuer URL; default `http://{listen address}`.
    pub issuer: Option<String>,
    /// Test users.
    pub users: Vec<DevUser>,
    /// Registered clients.
    pub clients: Vec<DevClient>,
    /// Lifetime of authorization codes.
    #[serde(with = "humantime_serde_compat")]
    pub code_ttl: Duration,
    /// Lifetime of access and ID tokens.
    #[serde(with = "humantime_serde_compat")]
    pub access_ttl: Duration,
    /// Enables `/_dev/*` (fail, delay, rotate-key, counters).
    pub test_knobs: bool,
    /// The ID token signing algorithm: `RS256` (default) or `EdDSA`.
    pub signing_alg: SigningAlg,
    /// Whether ID tokens carry `groups` [default: true]; without, only
    /// `/userinfo` tells them (as many providers do).
    pub groups_in_id_token: bool,
    /// Serve https with this certificate chain (PEM) and `tls_key_file`;
    /// the issuer is then `https://…` [default: plain http].
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<std::path::PathBuf>,
}

/// Durations in the dev IdP's TOML as whole seconds.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

impl Default for DevIdpConfig {
    fn default() -> Self {
        let user = |name: &str, groups: &[&str]| DevUser {
            username: name.into(),
            password: name.into(),
            email: format!("{name}@example.com"),
            email_verified: true,
            groups: groups.iter().map(|g| (*g).into()).collect(),
            claims: serde_json::Map::new(),
            userinfo_claims: serde_json::Map::new(),
        };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4181)),
            issuer: None,
            users: vec![user("alice", &["admins", "staff"]), user("bob", &["staff"])],
            clients: vec![DevClient {
                client_id: "latchkey".into(),
                client_secret: "latchkey-dev-secret".into(),
                redirect_uris: vec!["http://127.0.0.1:4180/oauth2/callback".into()],
                post_logout_redirect_uris: vec![
                    "http://127.0.0.1:4180/".into(),
                    "http://127.0.0.1:4180/oauth2/signed_out".into(),
                ],
                backchannel_logout_uri: Some(
                    "http://127.0.0.1:4180/oauth2/backchannel_logout".into(),
                ),
            }],
            code_ttl: Duration::from_secs(60),
            access_ttl: Duration::from_secs(300),
            test_knobs: false,
            signing_alg: SigningAlg::default(),
            groups_in_id_token: true,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// Counters and fault injection, shared by the server and whoever runs it.
#[derive(Debug, Default)]
pub struct Knobs {
    discovery_requests: AtomicU64,
    revocations: tokio::sync::watch::Sender<u64>,
    token_calls: AtomicU64,
    code_grants: AtomicU64,
    refresh_grants: AtomicU64,
    code_replays: AtomicU64,
    refresh_token_reuses: AtomicU64,
    failing_token_calls: AtomicU32,
    token_delay_ms: AtomicU64,
    userinfo_subject: Mutex<Option<String>>,
    held: HoldGate,
}

/// Holds token calls until released, counting arrivals (for tests that must
/// know a call is in flight).
#[derive(Debug)]
struct HoldGate {
    holding: tokio::sync::watch::Sender<bool>,
    /// Token calls are answered here as usual (a code redeemed, a refresh
    /// token rotated) but their answers wait: a provider whose answer is
    /// lost to a caller that gave up.
    holding_answers: tokio::sync::watch::Sender<bool>,
    arrived: tokio::sync::watch::Sender<u64>,
}

impl Default for HoldGate {
    fn default() -> Self {
        Self {
            holding: tokio::sync::watch::Sender::new(false),
            holding_answers: tokio::sync::watch::Sender::new(false),
            arrived: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Knobs {
    /// Every request for the discovery document.
    pub fn discovery_requests(&self) -> u64 {
        self.discovery_requests.load(Ordering::SeqCst)
    }

    /// Refresh tokens revoked through `/revoke` (unknown tokens not counted).
    pub fn revocations(&self) -> u64 {
        *self.revocations.borrow()
    }

    /// Waits until at least `n` revocations have been accepted in all.
    pub async fn wait_revocations(&self, n: u64) {
        let mut seen = self.revocations.subscribe();
        let _ = seen.wait_for(|r| *r >= n).await;
    }

    /// Every call to `/token`.
    pub fn token_calls(&self) -> u64 {
        self.token_calls.load(Ordering::SeqCst)
    }

    /// `authorization_code` grants requested.
    pub fn code_grants(&self) -> u64 {
        self.code_grants.load(Ordering::SeqCst)
    }

    /// `refresh_token` grants requested.
    pub fn refresh_grants(&self) -> u64 {
        self.refresh_grants.load(Ordering::SeqCst)
    }

    /// Authorization codes presented again after they were redeemed (each
    /// revokes what the code produced): a relying party that exchanged a
    /// login twice.
    pub fn code_replays(&self) -> u64 {
        self.code_replays.load(Ordering::SeqCst)
    }

    /// Rotated refresh tokens presented again (each revokes its grant): a
    /// relying party that used a refresh token twice.
    pub fn refresh_token_reuses(&self) -> u64 {
        self.refresh_token_reuses.load(Ordering::SeqCst)
    }

    /// The next `n` token calls answer 503.
    pub fn fail_next_token_calls(&self, n: u32) {
        self.failing_token_calls.store(n, Ordering::SeqCst);
    }

    /// Makes `/userinfo` answer with this `sub` instead of the user's (to test
    /// that relying parties check it); `None` restores honest answers.
    pub fn misreport_userinfo_subject(&self, subject: Option<&str>) {
        *self
            .userinfo_subject
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = subject.map(str::to_owned);
    }

    /// While `true`, token calls wait (after being counted) until it is set
    /// back to `false`.
    pub fn hold_token_calls(&self, hold: bool) {
        self.held.holding.send_replace(hold);
    }

    /// While `true`, token calls are carried out at once (the code redeemed,
    /// the refresh token rotated) but their answers wait until it is set
    /// back to `false`: what a caller that gives up meanwhile loses.
    pub fn hold_token_answers(&self, hold: bool) {
        self.held.holding_answers.send_replace(hold);
    }

    /// Waits until at least `n` token calls have arrived in all.
    pub async fn wait_token_calls(&self, n: u64) {
        let mut arrived = self.held.arrived.subscribe();
        let _ = arrived.wait_for(|a| *a >= n).await;
    }

    /// Every token call waits this long first.
    pub fn delay_token_calls(&self, delay: Duration) {
        self.token_delay_ms
            .store(duration_ms(delay), Ordering::SeqCst);
    }
}

/// An authorization code awaiting redemption.
#[derive(Debug, Clone)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    username: String,
    nonce: Option<String>,
    code_challenge: String,
    expires_at: UnixMillis,
    /// Set once redeemed: the family of tokens it produced (revoked on replay).
    redeemed_family: Option<String>,
}

#[derive(Debug, Clone)]
struct AccessGrant {
    username: String,
    family: String,
    expires_at: UnixMillis,
}

#[derive(Debug, Clone)]
struct RefreshGrant {
    username: String,
    client_id: String,
    family: String,
    used: bool,
}

#[derive(Default)]
struct Grants {
    codes: HashMap<String, CodeGrant>,
    access: HashMap<String, AccessGrant>,
    refresh: HashMap<String, RefreshGrant>,
    revoked_families: HashSet<String>,
}

struct Idp {
    issuer: String,
    config: DevIdpConfig,
    keys: Mutex<SigningKeys>,
    grants: Mutex<Grants>,
    knobs: Arc<Knobs>,
    clock: SystemClock,
}

impl Idp {
    fn grants(&self) -> MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keys(&self) -> MutexGuard<'_, SigningKeys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client(&self, client_id: &str) -> Option<&DevClient> {
        self.config
            .clients
            .iter()
            .find(|c| c.client_id == client_id)
    }

    fn user(&self, username: &str) -> Option<&DevUser> {
        self.config.users.iter().find(|u| u.username == username)
    }

    fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }
}

/// A running development IdP.
pub struct DevIdp {
    addr: SocketAddr,
    idp: Arc<Idp>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl DevIdp {
    /// Binds and starts serving.
    pub async fn start(config: DevIdpConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let addr = listener.local_addr()?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(
                crate::tls::server_config(cert, key, &[b"http/1.1"])
                    .map(tokio_rustls::TlsAcceptor::from)
                    .map_err(std::io::Error::other)?,
            ),
            (None, None) => None,
            _ => {
                return Err(std::io::Error::other(
                    "tls_cert_file and tls_key_file go together",
                ));
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer = config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"))
            .trim_end_matches('/')
            .to_owned();
        let alg = config.signing_alg;
        let idp = Arc::new(Idp {
            issuer,
            keys: Mutex::new(
                tokio::task::spawn_blocking(move || SigningKeys::generate(alg)).await?,
            ),
            grants: Mutex::new(Grants::default()),
            knobs: Arc::new(Knobs::default()),
            clock: SystemClock,
            config,
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let app = router(idp.clone());
        let server = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop.await;
                    })
                    .await;
            }),
            Some(acceptor) => tokio::spawn(crate::tls::serve_tls(listener, acceptor, app, async {
                let _ = stop.await;
            })),
        };
        Ok(Self {
            addr,
            idp,
            shutdown: Some(shutdown),
            server,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its issuer URL.
    pub fn issuer(&self) -> &str {
        &self.idp.issuer
    }

    /// Counters and fault injection.
    pub fn knobs(&self) -> &Arc<Knobs> {
        &self.idp.knobs
    }

    /// Sends a back-channel logout token naming `subject` and/or `sid`
    /// (Back-Channel Logout 1.0) to every client with a
    /// `backchannel_logout_uri`, as a real provider does when the user
    /// signs out there or an administrator ends their sessions.
    pub async fn send_backchannel_logout(
        &self,
        subject: Option<&str>,
        sid: Option<&str>,
    ) -> Vec<Delivery> {
        logout::send(&self.idp, subject, sid).await
    }

    /// The claims of a logout token for `client_id` naming `subject` and/or
    /// `sid`, issued now with a fresh `jti` (for tests that alter them).
    pub fn logout_claims(
        &self,
        client_id: &str,
        subject: Option<&str>,
        sid: Option<&str>,
    ) -> serde_json::Value {
        logout::logout_claims(&self.idp, client_id, subject, sid)
    }

    /// Signs any `claims` as a JWT typed `typ` with the IdP's current key,
    /// as a provider that misbehaves would (for hostile tests).
    pub fn sign_jwt(&self, typ: &str, claims: &serde_json::Value) -> String {
        logout::sign(&self.idp, typ, claims)
    }

    /// Signs new tokens with a fresh key (the previous key stays published).
    pub async fn rotate_signing_key(&self) {
        let alg = self.idp.config.signing_alg;
        let fresh = tokio::task::spawn_blocking(move || SigningKeys::generate(alg))
            .await
            .expect("key generation task");
        let mut keys = self.idp.keys();
        let old = std::mem::replace(&mut *keys, fresh);
        keys.adopt_previous(old);
    }

    /// Stops serving and waits for in-flight requests.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.server).await;
    }

    /// Serves until the process is stopped.
    pub async fn wait(self) {
        let _ = self.server.await;
    }
}

/// The provider session (`sid`) of the ID tokens of grant `family`: one
/// per sign-in at the IdP, the same across refreshes.
fn sid_of(family: &str) -> String {
    format!("dev-{}", &crate::secret::hash_token(family)[..16])
}

fn router(idp: Arc<Idp>) -> Router {
    let mut router = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize_form).post(authorize_submit))
        .route("/token", post(token::token))
        .route("/revoke", post(token::revoke))
        .route("/userinfo", get(userinfo).post(userinfo))
        .route("/end_session", get(end_session));
    if idp.config.test_knobs {
        router = router
            .route("/_dev/counters", get(knob_counters))
            .route("/_dev/fail-token", post(knob_fail))
            .route("/_dev/delay-token", post(knob_delay))
            .route("/_dev/rotate-key", post(knob_rotate))
            .route("/_dev/backchannel-logout", post(logout::knob));
    }
    router.with_state(idp)
}

type Shared = State<Arc<Idp>>;

async fn discovery(State(idp): Shared) -> Response {
    idp.knobs.discovery_requests.fetch_add(1, Ordering::SeqCst);
    let i = &idp.issuer;
    axum::Json(serde_json::json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "jwks_uri": format!("{i}/jwks"),
        "end_session_endpoint": format!("{i}/end_session"),
        "revocation_endpoint": format!("{i}/revoke"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [idp.config.signing_alg.name()],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "email", "email_verified", "preferred_username", "groups"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

async fn jwks(State(idp): Shared) -> Response {
    axum::Json(idp.keys().jwks()).into_response()
}

/// The parameters of an authorization request.
#[derive(Debug, Clone, Default, Deserialize)]
struct AuthorizeParams {
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
}

fn bad_request(title: &str, text: &str) -> Response {
    (StatusCode::BAD_REQUEST, Html(pages::message(title, text))).into_response()
}

/// The response to give instead of handling the request, if it is invalid
/// (never a redirect to an unregistered URI).
fn rejection(idp: &Idp, p: &AuthorizeParams) -> Option<Response> {
    let Some(client) = idp.client(&p.client_id) else {
        return Some(bad_request(
            "Unknown client",
            "The client_id is not registered here.",
        ));
    };
    if !client.redirect_uris.contains(&p.redirect_uri) {
        return Some(bad_request(
            "Unregistered redirect_uri",
            "The redirect_uri is not registered for this client.",
        ));
    }
    let problem = if p.response_type != "code" {
        Some((
            "unsupported_response_type",
            "only response_type=code is supported",
        ))
    } else if !p.scope.split(' ').any(|s| s == "openid") {
        Some(("invalid_scope", "the openid scope is required"))
    } else if p.code_challenge.is_empty() || p.code_challenge_method != "S256" {
        Some((
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required",
        ))
    } else {
        None
    };
    problem.map(|(error, description)| redirect_error(idp, p, error, description))
}

fn redirect_error(idp: &Idp, p: &AuthorizeParams, error: &str, description: &str) -> Response {
    let mut url = url::Url::parse(&p.redirect_uri).expect("registered redirect URIs are URLs");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", error);
        q.append_pair("error_description", description);
        if let Some(state) = &p.state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", &idp.issuer);
    }
    Redirect::to(url.as_str()).into_response()
}

fn hidden_fields(p: &AuthorizeParams) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("response_type", p.response_type.clone()),
        ("client_id", p.client_id.clone()),
        ("redirect_uri", p.redirect_uri.clone()),
        ("scope", p.scope.clone()),
        ("code_challenge", p.code_challenge.clone()),
        ("code_challenge_method", p.code_challenge_method.clone()),
    ];
    if let Some(state) = &p.state {
        fields.push(("state", state.clone()));
    }
    if let Some(nonce) = &p.nonce {
        fields.push(("nonce", nonce.clone()));
    }
    fields
}

fn login_page(idp: &Idp, p: &AuthorizeParams, error: Option<&str>) -> String {
    let fields = hidden_fields(p);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pages::login(&p.client_id, &idp.config.users, &fields, error)
}

async fn authorize_form(State(idp): Shared, Query(p): Query<AuthorizeParams>) -> Response {
    if let Some(response) = rejection(&idp, &p) {
        return response;
    }
    Html(login_page(&idp, &p, None)).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(flatten)]
    params: AuthorizeParams,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    action: String,
}

async fn authorize_submit(State(idp): Shared, Form(form): Form<LoginForm>) -> Response {
    let p = form.params;
    if let Some(response) = rejection(&idp, &p) {
        return response;
    }
    if form.action == "cancel" {
        return redirect_error(&idp, &p, "access_denied", "the user cancelled the sign-in");
    }
    let valid = idp
        .user(&form.username)
        .is_some_and(|u| u.password == form.password);
    if !valid {
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_page(
                &idp,
                &p,
                Some("Unknown user or wrong password."),
            )),
        )
            .into_response();
    }
    let code = random_token();
    idp.grants().codes.insert(
        code.clone(),
        CodeGrant {
            client_id: p.client_id.clone(),
            redirect_uri: p.redirect_uri.clone(),
            username: form.username,
            nonce: p.nonce.clone(),
            code_challenge: p.code_challenge.clone(),
            expires_at: idp.now() + duration_ms(idp.config.code_ttl),
            redeemed_family: None,
        },
    );
    let mut url = url::Url::parse(&p.redirect_uri).expect("registered redirect URIs are URLs");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(state) = &p.state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", &idp.issuer);
    }
    Redirect::to(url.as_str()).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn userinfo(State(idp): Shared, headers: HeaderMap) -> Response {
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response()
    };
    let Some(token) = bearer(&headers) else {
        return unauthorized();
    };
    let grant = {
        let grants = idp.grants();
        grants
            .access
            .get(token)
            .filter(|g| g.expires_at > idp.now() && !grants.revoked_families.contains(&g.family))
            .cloned()
    };
    let Some(user) = grant.and_then(|g| idp.user(&g.username).cloned()) else {
        return unauthorized();
    };
    let subject = idp
        .knobs
        .userinfo_subject
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| user.username.clone());
    let mut answer = user.claims.clone();
    answer.extend(user.userinfo_claims.clone());
    answer.extend(
        serde_json::json!({
            "sub": subject,
            "email": user.email,
            "email_verified": user.email_verified,
            "preferred_username": user.username,
            "groups": user.groups,
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    axum::Json(answer).into_response()
}

#[derive(Debug, Deserialize)]
struct EndSessionParams {
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    id_token_hint: Option<String>,
}

/// RP-initiated logout. With an `id_token_hint` this IdP signed, the
/// provider session it names ends: its logout token goes to every client
/// with a `backchannel_logout_uri` before the browser is sent on, as
/// oidc-provider does.
async fn end_session(State(idp): Shared, Query(p): Query<EndSessionParams>) -> Response {
    if let Some((subject, Some(sid))) = p
        .id_token_hint
        .as_deref()
        .and_then(|hint| logout::hinted_session(&idp, hint))
    {
        logout::send(&idp, Some(&subject), Some(&sid)).await;
    }
    let registered = p.post_logout_redirect_uri.as_ref().filter(|uri| {
        idp.config.clients.iter().any(|c| {
            p.client_id.as_deref().is_none_or(|id| id == c.client_id)
                && c.post_logout_redirect_uris.contains(uri)
        })
    });
    match registered {
        Some(uri) => {
            let mut url = url::Url::parse(uri).expect("registered URIs are URLs");
            if let Some(state) = &p.state {
                url.query_pairs_mut().append_pair("state", state);
            }
            Redirect::to(url.as_str()).into_response()
        }
        None => Html(pages::message(
            "Signed out",
            "You are signed out of the development IdP.",
        ))
        .into_response(),
    }
}

async fn knob_counters(State(idp): Shared) -> Response {
    let k = &idp.knobs;
    axum::Json(serde_json::json!({
        "token_calls": k.token_calls(),
        "code_grants": k.code_grants(),
        "refresh_grants": k.refresh_grants(),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct CountParam {
    count: u32,
}

async fn knob_fail(State(idp): Shared, Query(q): Query<CountParam>) -> StatusCode {
    idp.knobs.fail_next_token_calls(q.count);
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct DelayParam {
    ms: u64,
}

async fn knob_delay(State(idp): Shared, Query(q): Query<DelayParam>) -> StatusCode {
    idp.knobs.delay_token_calls(Duration::from_millis(q.ms));
    StatusCode::NO_CONTENT
}

async fn knob_rotate(State(idp): Shared) -> StatusCode {
    let alg = idp.config.signing_alg;
    let Ok(fresh) = tokio::task::spawn_blocking(move || SigningKeys::generate(alg)).await else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let mut keys = idp.keys();
    let old = std::mem::replace(&mut *keys, fresh);
    keys.adopt_previous(old);
    StatusCode::NO_CONTENT
}
