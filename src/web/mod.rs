//! The embeddable auth surface: sign-in for any axum (or tower) app, with
//! the same race-free logins and single-flight refreshes that `latchkey
//! serve` has, because `serve` is built on exactly this API.
//!
//! - [`Latchkey`]: the handle (cheap to clone), made by [`Latchkey::builder`];
//! - [`Latchkey::login_routes`]: `/oauth2/start`, `/oauth2/callback`,
//!   `/oauth2/sign_out` and `/oauth2/userinfo`, a `Router` without a
//!   fallback, to merge into the app's own;
//! - [`RequireLoginLayer`]: a tower layer for `route_layer` that lets signed-in
//!   callers through (browsers that are not get a `302` to sign in, API
//!   clients a `401` JSON), optionally under an [`AccessPolicy`];
//! - extractors: [`SignedIn`] (also as `Option<SignedIn>`) and
//!   [`FreshAccessToken`], whose token was refreshed (once, for all requests
//!   of the session at once) when it was due;
//! - [`Rejection`]: why a request was refused, as a response (and a hook for
//!   the app's own error pages).
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use latchkey::web::{AccessPolicy, Latchkey, SignedIn};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = Latchkey::builder(
//!     "https://login.example.com/realms/main",
//!     "my-app",
//!     "https://app.example.com/oauth2/callback",
//! )
//! .client_secret(std::env::var("CLIENT_SECRET")?)
//! .cookie_secret(&std::fs::read("/run/secrets/cookie")?)
//! .policy(AccessPolicy::email_domains(["example.com"]))
//! .build()
//! .await?;
//!
//! let app = Router::new()
//!     .route("/me", get(|who: SignedIn| async move { who.identity().subject.clone() }))
//!     .route_layer(auth.require_login())
//!     .route("/", get(|| async { "public" }))
//!     .merge(auth.login_routes());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

mod caller;
pub mod cookies;
mod extract;
mod layer;
pub mod metrics;
pub mod pages;
mod policy;
mod provider;
pub mod rate_limit;
pub mod redirect;
mod rejection;
mod routes;
pub mod templates;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::routing::get;
use axum_extra::extract::cookie::Key;

pub use self::caller::Authentication;
use self::cookies::Cookies;
pub use self::extract::{FreshAccessToken, IdTokenClaims, SignedIn};
pub use self::layer::{RequireLogin, RequireLoginLayer, ResponseFuture};
use self::metrics::{MeteredIdp, MeteredStore, Metrics};
pub use self::policy::{AccessPolicy, Claims};
pub use self::provider::{BearerToken, SignInProvider};
pub use self::rejection::{Reason, Rejection};
use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, RawSettings, Settings, StoreUrl};
use crate::login::{LoginFlow, LoginSettings};
use crate::logout::{Handle, SessionIndex};
use crate::oidc::{OidcProvider, OidcSettings};
use crate::seal::RecordSeal;
use crate::secret::ClientSecret;
use crate::session::{SessionSettings, Sessions};
use crate::store::{self, Store};
/// The marker trait of an app's own claims type for [`IdTokenClaims`].
pub use openidconnect::AdditionalClaims;

/// A hook that renders the app's own page for a [`Rejection`]; `None` keeps
/// latchkey's page.
pub type ErrorPage =
    Arc<dyn Fn(&Rejection) -> Option<axum::response::Response> + Send + Sync + 'static>;

/// Why a [`Latchkey`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("store {url}: {source}")]
    Store {
        /// The store URL, password redacted.
        url: String,
        /// What failed.
        source: store::StoreError,
    },
    /// Discovery or client setup failed.
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcSetupError),
}

/// Sign-in for an app: the login state machine, the sessions, the cookies
/// and the policy, over one store and one provider. Cheap to clone; every
/// clone is the same instance.
#[derive(Clone)]
pub struct Latchkey {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Latchkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latchkey")
            .field("issuer", &self.inner.settings.issuer)
            .field("client_id", &self.inner.settings.client_id)
            .finish_non_exhaustive()
    }
}

/// What the handlers share.
pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) login: LoginFlow,
    pub(crate) sessions: Sessions,
    pub(crate) provider: Arc<dyn SignInProvider>,
    pub(crate) cookies: Cookies,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) login_limiter: Option<rate_limit::RateLimiter>,
    pub(crate) policy: AccessPolicy,
    pub(crate) error_page: Option<ErrorPage>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) index: SessionIndex,
    pub(crate) clock: Arc<dyn Clock>,
    /// Where `rd` may send the browser (`whitelist_domains`).
    pub(crate) destinations: redirect::Destinations,
}

impl FromRef<Latchkey> for Key {
    fn from_ref(latchkey: &Latchkey) -> Key {
        latchkey.inner.cookies.key().clone()
    }
}

/// Builds a [`Latchkey`]: the provider, the client, the cookie secret and who
/// may sign in; everything else has `serve`'s defaults and can be changed.
#[must_use]
pub struct LatchkeyBuilder {
    raw: RawSettings,
    store: Option<Arc<dyn Store>>,
    clock: Option<Arc<dyn Clock>>,
    http_client: Option<reqwest::Client>,
    provider: Option<Arc<dyn SignInProvider>>,
    policy: Option<AccessPolicy>,
    error_page: Option<ErrorPage>,
}

impl LatchkeyBuilder {
    /// The client secret (confidential clients).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.raw.client_secret = Some(ClientSecret::new(secret));
        self
    }

    /// The secret that encrypts cookies and seals session records, the
    /// same on every replica. Required. Either 16, 24 or 32 random bytes, or
    /// text in any form the `cookie_secret` setting takes (base64, as
    /// `openssl rand -base64 32` prints it; surrounding whitespace ignored).
    pub fn cookie_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        use base64::Engine;
        let bytes = secret.as_ref();
        // Text (base64, or a 16/24/32-character secret) goes to the setting
        // as it is; raw bytes are written as base64 for it.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text.trim().to_owned(),
            Err(_) => base64::engine::general_purpose::STANDARD.encode(bytes),
        };
        self.raw.cookie_secret = Some(text.into());
        self
    }

    /// Requested scopes (default `openid email profile`).
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.raw.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Who may sign in: required (use [`AccessPolicy::everyone`] to admit
    /// every account the provider signs in). Routes can narrow it with
    /// [`Latchkey::require`].
    pub fn policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The store of logins and sessions (default: an in-process memory
    /// store, for one replica). Share a Redis or PostgreSQL store between
    /// replicas to keep the guarantees across them.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The store by URL, as `serve`'s `store` setting.
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.raw.store = Some(StoreUrl(url.into()));
        self
    }

    /// The clock of the login and session state machines (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The HTTP client for every call to the provider, e.g. with a private
    /// CA or a proxy. Build it with `redirect(Policy::none())`: latchkey
    /// still bounds every call by its own timeouts.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// The identity provider, ready: an [`OidcProvider`] discovered with
    /// settings of your own (or shared by several Latchkeys), or any other
    /// [`SignInProvider`]. No discovery at build then, and the builder's
    /// HTTP client and clock do not apply to it.
    pub fn provider(mut self, provider: Arc<dyn SignInProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// The app's own pages for refusals: return `Some(response)` to replace
    /// latchkey's page or JSON.
    pub fn error_page(
        mut self,
        page: impl Fn(&Rejection) -> Option<axum::response::Response> + Send + Sync + 'static,
    ) -> Self {
        self.error_page = Some(Arc::new(page));
        self
    }

    /// Any other setting, by its `serve` name (see the README's table).
    pub fn settings(mut self, change: impl FnOnce(&mut RawSettings)) -> Self {
        change(&mut self.raw);
        self
    }

    /// Checks the settings, opens the store and discovers the provider.
    pub async fn build(self) -> Result<Latchkey, SetupError> {
        let Some(policy) = self.policy else {
            return Err(SetupError::Config(ConfigError::new(
                "policy",
                "no access policy is set: every account at the provider would be admitted",
                "call .policy(AccessPolicy::email_domains([\"example.com\"])), or \
                 .policy(AccessPolicy::everyone()) to admit every account",
            )));
        };
        let mut raw = self.raw;
        // The policy is given in code; the settings' allowlist check is met by it.
        raw.email_domains.get_or_insert_with(|| vec!["*".into()]);
        raw.store.get_or_insert_with(|| "memory://".into());
        let settings = raw.validate()?;
        let parts = Parts {
            store: self.store,
            clock: self.clock,
            http_client: self.http_client,
            provider: self.provider,
            policy,
            error_page: self.error_page,
        };
        Latchkey::assemble(settings, parts).await
    }
}

/// What a builder may inject.
struct Parts {
    store: Option<Arc<dyn Store>>,
    clock: Option<Arc<dyn Clock>>,
    http_client: Option<reqwest::Client>,
    provider: Option<Arc<dyn SignInProvider>>,
    policy: AccessPolicy,
    error_page: Option<ErrorPage>,
}

impl Latchkey {
    /// Starts a builder for the provider at `issuer` (discovered from
    /// `{issuer}/.well-known/openid-configuration`), the client `client_id`,
    /// and the callback URL registered there (path `/oauth2/callback`).
    pub fn builder(issuer: &str, client_id: &str, redirect_url: &str) -> LatchkeyBuilder {
        LatchkeyBuilder {
            raw: RawSettings {
                issuer: Some(issuer.into()),
                client_id: Some(client_id.into()),
                redirect_url: Some(redirect_url.into()),
                ..RawSettings::default()
            },
            store: None,
            clock: None,
            http_client: None,
            provider: None,
            policy: None,
            error_page: None,
        }
    }

    /// A Latchkey for `serve`'s validated settings: the store by URL, the
    /// policy from `email_domains`, `allowed_emails` and `allowed_groups`.
    pub async fn from_settings(settings: Settings) -> Result<Self, SetupError> {
        let policy = AccessPolicy::email_domains(settings.email_domains.iter().cloned())
            .or_emails(settings.allowed_emails.iter().cloned())
            .and_groups(settings.allowed_groups.iter().cloned());
        let parts = Parts {
            store: None,
            clock: None,
            http_client: None,
            provider: None,
            policy,
            error_page: None,
        };
        Self::assemble(settings, parts).await
    }

    async fn assemble(settings: Settings, parts: Parts) -> Result<Self, SetupError> {
        let metrics = Arc::new(Metrics::default());
        let raw_store = match parts.store {
            Some(store) => store,
            None => store::open(&settings.store)
                .await
                .map_err(|source| SetupError::Store {
                    url: store::redact_url(&settings.store),
                    source,
                })?,
        };
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(raw_store, metrics.clone()));
        let clock = parts.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let provider: Arc<dyn SignInProvider> = match parts.provider {
            Some(provider) => provider,
            None => Arc::new(
                OidcProvider::discover(&oidc_settings(&settings, parts.http_client))
                    .await?
                    .with_clock(clock.clone()),
            ),
        };
        if settings.insecure_allow_unverified_email {
            tracing::warn!(
                "insecure_allow_unverified_email is set: emails the provider has not verified \
                 are trusted; where users can set their own email, anyone can claim any address"
            );
        }
        let idp = Arc::new(MeteredIdp::new(provider.clone(), metrics.clone()));
        // Session records are sealed with a key from the cookie secret (and
        // opened with the previous ones too): see `crate::seal`.
        let previous: Vec<Vec<u8>> = (settings.previous_cookie_secrets.iter())
            .map(|key| key.secret().to_vec())
            .collect();
        let seal = RecordSeal::new(settings.cookie_secret.secret(), &previous);
        let login = LoginFlow::new(
            store.clone(),
            idp.clone(),
            clock.clone(),
            LoginSettings {
                login_ttl: settings.login_ttl,
                session_ttl: settings.session_ttl,
                exchange_lease: settings.exchange_lease,
                wait_timeout: settings.exchange_lease,
                seal: seal.clone(),
            },
        );
        let index = SessionIndex::new(store.clone(), clock.clone());
        let sessions = Sessions::new(
            store.clone(),
            idp,
            clock.clone(),
            SessionSettings {
                refresh_before_expiry: settings.refresh_before_expiry,
                refresh_lease: settings.exchange_lease,
                seal,
                ..SessionSettings::default()
            },
        );
        // Validated with the settings; should one slip through, local paths only.
        let destinations =
            redirect::Destinations::new(&settings.whitelist_domains).unwrap_or_default();
        Ok(Self {
            inner: Arc::new(Inner {
                destinations,
                cookies: Cookies::new(&settings),
                login_limiter: rate_limit::RateLimiter::per_minute(settings.login_rate_per_minute),
                settings,
                login,
                sessions,
                provider,
                metrics,
                policy: parts.policy,
                error_page: parts.error_page,
                store,
                index,
                clock,
            }),
        })
    }

    /// Ends every session of `handle` (a user's `sub`, or one provider
    /// session's `sid`): "sign out everywhere", or an administrator
    /// disabling a user. It takes effect at once on every app and replica
    /// sharing the store, including sign-ins still completing, which are
    /// refused for `exchange_lease` + `clock_skew` (invariant I8); for a
    /// user, their bearer ID tokens issued until now are refused too.
    /// Returns how many sessions were indexed for it.
    pub async fn end_sessions(&self, handle: Handle<'_>) -> Result<usize, store::StoreError> {
        self.end_sessions_as_of(handle, self.inner.clock.now_ms())
            .await
    }

    /// [`end_sessions`](Self::end_sessions) for a logout that happened at
    /// `logged_out_at` (a logout token's `iat`): sign-ins whose ID token
    /// was issued later are not refused.
    pub(crate) async fn end_sessions_as_of(
        &self,
        handle: Handle<'_>,
        logged_out_at: crate::clock::UnixMillis,
    ) -> Result<usize, store::StoreError> {
        let inner = &self.inner;
        let hold = inner.settings.exchange_lease + inner.settings.clock_skew;
        let ended = (inner.index).end(handle, logged_out_at, hold).await?;
        if let Handle::Subject(subject) = handle {
            (inner.sessions)
                .remember_sign_out_of(inner.provider.issuer(), subject)
                .await
                .map_err(|error| match error {
                    crate::session::SessionError::Store(error) => error,
                    other => store::StoreError::Unavailable(other.to_string()),
                })?;
        }
        inner
            .metrics
            .sessions_revoked
            .inc_by(ended.sessions_revoked as u64);
        tracing::info!(
            sessions = ended.sessions_revoked,
            by = match handle {
                Handle::Subject(_) => "sub",
                Handle::ProviderSession(_) => "sid",
            },
            "sessions ended for a user or provider session"
        );
        Ok(ended.sessions_revoked)
    }

    /// The sign-in endpoints, to merge into the app's router (no fallback,
    /// so `merge` never conflicts): `/oauth2/start?rd=PATH`, `/oauth2/sign_in`,
    /// `/oauth2/callback`, `/oauth2/sign_out` (GET and POST), the page it
    /// lands on (`/oauth2/signed_out`) and `/oauth2/userinfo`. Their answers
    /// are never cached, framed or sniffed, and their pages use the
    /// configured templates and branding.
    ///
    /// Rate limiting of start and callback per client address needs
    /// `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`); without it
    /// every request is admitted.
    pub fn login_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/oauth2/start", get(routes::start))
            .route("/oauth2/sign_in", get(routes::sign_in))
            .route("/oauth2/callback", get(routes::callback))
            .route(
                "/oauth2/sign_out",
                get(routes::sign_out_by_get).post(routes::sign_out_by_post),
            )
            .route("/oauth2/userinfo", get(routes::userinfo))
            .route(routes::SIGNED_OUT, get(routes::signed_out))
            .route(
                routes::FORGET_SIGNED_IN_PAGES,
                get(routes::forget_signed_in_pages),
            )
            .route(
                "/oauth2/frontchannel_logout",
                get(routes::frontchannel_logout),
            )
            .route(
                "/oauth2/backchannel_logout",
                axum::routing::post(routes::backchannel_logout).layer(
                    axum::extract::DefaultBodyLimit::max(routes::MAX_LOGOUT_REQUEST),
                ),
            )
            .route_layer(axum::middleware::map_response_with_state(
                self.clone(),
                |State(latchkey): State<Latchkey>, response: axum::response::Response| async move {
                    pages::hardened(latchkey.restyle(response))
                },
            ))
            .with_state(self.clone())
    }

    /// `response` with latchkey's page in it (if it is one) rendered with
    /// the configured templates and branding.
    pub(crate) fn restyle(&self, response: axum::response::Response) -> axum::response::Response {
        self.inner.settings.pages.restyle(response)
    }

    /// A layer that admits callers who are signed in and pass this
    /// Latchkey's policy.
    pub fn require_login(&self) -> RequireLoginLayer {
        RequireLoginLayer::new(self.clone())
    }

    /// A layer that admits callers who are signed in and pass `policy`
    /// (instead of this Latchkey's policy).
    pub fn require(&self, policy: AccessPolicy) -> RequireLoginLayer {
        RequireLoginLayer::new(self.clone()).with_policy(policy)
    }

    /// A layer that lets everyone through and tells the handlers who is
    /// signed in (`Option<SignedIn>`), for pages that look different then.
    pub fn optional_login(&self) -> RequireLoginLayer {
        RequireLoginLayer::new(self.clone()).optional()
    }

    /// Who makes the request with these headers: `signed_in` is `None` for
    /// nobody (no session cookie, or one that names no live session). A
    /// session's access token is refreshed first when it is due.
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Authentication, Rejection> {
        caller::authenticate(self, headers).await
    }

    /// Whether `signed_in` passes `policy` (`None`: this Latchkey's own);
    /// the refusal says why, with the app's error page if one is set.
    pub fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
        signed_in: &SignedIn,
        policy: Option<&AccessPolicy>,
    ) -> Result<(), Rejection> {
        let policy = policy.unwrap_or(&self.inner.policy);
        let identity = signed_in.identity();
        policy.check_signed_in(signed_in).map_err(|reason| {
            let who = identity.email.as_deref().unwrap_or(&identity.subject);
            Rejection::new(
                Reason::AccessDenied,
                headers,
                format!("You are signed in as {who}, but {reason}."),
            )
            .with_user(identity.subject.clone())
            .with_error_page(self.inner.error_page.clone())
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Its metrics (Prometheus text via [`Metrics::render`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The store it uses.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The provider it signs in with.
    pub fn provider(&self) -> &Arc<dyn SignInProvider> {
        &self.inner.provider
    }

    /// Its cookies: names, keys and attributes (to read the request's
    /// cookies the way the layer does, e.g. the ones an upstream may see).
    pub fn cookies(&self) -> &Cookies {
        &self.inner.cookies
    }

    /// Its policy.
    pub fn policy(&self) -> &AccessPolicy {
        &self.inner.policy
    }
}

/// The signed-in user's subject, attached to a response for a request log
/// (`serve`'s `latchkey::request` lines read it).
#[derive(Clone, Debug)]
pub struct SignedInUser(pub String);

/// The log target of `serve`'s per-request lines, so that operators can turn
/// them off on their own (`LATCHKEY_LOG=info,latchkey::request=warn`).
pub const REQUEST_LOG: &str = "latchkey::request";

/// Whether the request log is on (its fields are built only then).
pub fn request_log_enabled() -> bool {
    tracing::enabled!(target: REQUEST_LOG, tracing::Level::INFO)
}

/// Names the signed-in user on `response` for the request log, when it is on.
pub(crate) fn observe_user(response: &mut axum::response::Response, subject: String) {
    if request_log_enabled() {
        response.extensions_mut().insert(SignedInUser(subject));
    }
}

fn oidc_settings(settings: &Settings, http_client: Option<reqwest::Client>) -> OidcSettings {
    let mut oidc = OidcSettings::new(
        &settings.issuer,
        &settings.client_id,
        settings.client_secret.as_ref().map(ClientSecret::secret),
        settings.redirect_url.as_str(),
    );
    oidc.scopes = settings.scopes.clone();
    oidc.allowed_algs = settings.allowed_algs.clone();
    oidc.clock_skew = settings.clock_skew;
    oidc.groups_claim = settings.groups_claim.clone();
    oidc.allow_unverified_email = settings.insecure_allow_unverified_email;
    oidc.extra_jwt_audiences = settings.extra_jwt_audiences.clone();
    oidc.extra_jwt_issuers = settings.extra_jwt_issuers.clone();
    oidc.extra_auth_params = settings.extra_auth_params.clone();
    oidc.http_client = http_client;
    oidc.ca_certificates = settings.provider_ca.clone();
    // The claims headers are made of, from userinfo when the ID token lacks them.
    oidc.userinfo_claims = (settings.claim_headers.iter())
        .filter_map(|header| header.path.first().cloned())
        .chain([
            "preferred_username".to_owned(),
            settings.user_id_claim.clone(),
        ])
        .filter(|name| name != "sub" && name != "email")
        .collect();
    oidc
}
