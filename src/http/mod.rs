//! The HTTP front: `latchkey serve`'s endpoints (DESIGN §5), the reverse proxy
//! and forward-auth, pages, metrics and request logs.
//!
//! Paths and headers follow oauth2-proxy so that users can switch:
//! `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`, `/oauth2/auth`,
//! `/oauth2/userinfo`, `/healthz`, `/readyz`, `/metrics`; everything else is
//! the protected app.

pub mod authz;
pub mod cookies;
mod edge;
mod listener;
pub mod metrics;
mod observe;
pub mod pages;
pub mod path;
pub mod proxy;
pub mod rate_limit;
pub mod readiness;
pub mod redirect;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use axum_extra::extract::cookie::Key;
use tokio::net::TcpListener;
use tower::Layer;

use self::cookies::Cookies;
use self::metrics::{MeteredIdp, MeteredStore, Metrics};
use self::observe::ObserveLayer;
use self::proxy::Upstream;
use crate::clock::SystemClock;
use crate::config::Settings;
use crate::login::{LoginFlow, LoginSettings};
use crate::oidc::{OidcProvider, OidcSettings};
use crate::seal::RecordSeal;
use crate::secret::ClientSecret;
use crate::session::{SessionSettings, Sessions};
use crate::store::{self, Store};

/// Everything a request handler needs.
pub struct App {
    settings: Settings,
    login: LoginFlow,
    sessions: Sessions,
    provider: Arc<OidcProvider>,
    cookies: Cookies,
    upstream: Option<Upstream>,
    metrics: Arc<Metrics>,
    readiness: readiness::Readiness,
    login_limiter: Option<rate_limit::RateLimiter>,
}

/// The router's state: the shared [`App`].
#[derive(Clone)]
pub struct Shared(pub Arc<App>);

impl std::ops::Deref for Shared {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl FromRef<Shared> for Key {
    fn from_ref(app: &Shared) -> Key {
        app.cookies.key().clone()
    }
}

/// Why latchkey could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    /// The upstream URL cannot be proxied to.
    #[error(transparent)]
    Upstream(#[from] proxy::BadUpstream),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

impl App {
    /// Opens the store and discovers the provider.
    pub async fn new(settings: Settings) -> Result<Arc<Self>, StartError> {
        let metrics = Arc::new(Metrics::default());
        let raw_store = store::open(&settings.store)
            .await
            .map_err(|source| StartError::Store {
                url: store::redact_url(&settings.store),
                source,
            })?;
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(raw_store, metrics.clone()));
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
        if settings.insecure_allow_unverified_email {
            tracing::warn!(
                "insecure_allow_unverified_email is set: emails the provider has not verified \
                 are trusted; where users can set their own email, anyone can claim any address"
            );
        }
        let provider = Arc::new(OidcProvider::discover(&oidc).await?);
        let idp = Arc::new(MeteredIdp::new(provider.clone(), metrics.clone()));
        let clock = Arc::new(SystemClock);
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
        let sessions = Sessions::new(
            store.clone(),
            idp,
            clock,
            SessionSettings {
                refresh_before_expiry: settings.refresh_before_expiry,
                refresh_lease: settings.exchange_lease,
                seal,
                ..SessionSettings::default()
            },
        );
        Ok(Arc::new(Self {
            cookies: Cookies::new(&settings),
            upstream: settings
                .upstream
                .as_ref()
                .map(|url| Upstream::new(url, settings.pass_routing_headers))
                .transpose()?,
            readiness: readiness::Readiness::new(store.clone(), provider.issuer()),
            login_limiter: rate_limit::RateLimiter::per_minute(settings.login_rate_per_minute),
            settings,
            login,
            sessions,
            provider,
            metrics,
        }))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// The router for `app`'s client listener. `/metrics` is on it unless
/// `metrics_address` gives the metrics a listener of their own.
pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route("/oauth2/start", get(routes::start))
        .route("/oauth2/callback", get(routes::callback))
        .route(
            "/oauth2/sign_out",
            get(routes::sign_out).post(routes::sign_out),
        )
        .route("/oauth2/auth", get(routes::forward_auth))
        .route("/oauth2/userinfo", get(routes::userinfo))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz));
    let routes = if app.settings.metrics_address.is_none() {
        routes.route("/metrics", get(routes::metrics))
    } else {
        routes
    };
    hardened(routes)
        .fallback(routes::protected)
        .with_state(Shared(app))
}

/// The router of the `metrics_address` listener: metrics and the probes.
pub fn ops_router(app: Arc<App>) -> Router {
    hardened(
        Router::new()
            .route("/metrics", get(routes::metrics))
            .route("/healthz", get(routes::healthz))
            .route("/readyz", get(routes::readyz)),
    )
    .with_state(Shared(app))
}

/// latchkey's own answers (not the app's): never cached, framed or sniffed.
fn hardened(routes: Router<Shared>) -> Router<Shared> {
    routes.route_layer(axum::middleware::map_response(
        |response: axum::response::Response| async move { pages::hardened(response) },
    ))
}

/// A running server: the client listener, and the metrics listener when
/// `metrics_address` is set.
pub struct Server {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    app: Arc<App>,
    listeners: Vec<listener::Running>,
}

impl Server {
    /// Serves `app` on `listener` (and binds `metrics_address` if set) until
    /// [`Server::shutdown`]. Must be called within a Tokio runtime.
    pub fn start(listener: TcpListener, app: Arc<App>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let limits = app.settings.listener;
        let mut listeners = Vec::new();
        let mut metrics_addr = None;
        if let Some(address) = app.settings.metrics_address {
            let ops = std::net::TcpListener::bind(address)?;
            ops.set_nonblocking(true)?;
            let ops = TcpListener::from_std(ops)?;
            metrics_addr = Some(ops.local_addr()?);
            let service = ops_router(app.clone()).into_service();
            listeners.push(listener::Running::spawn(
                ops,
                service,
                limits,
                app.metrics.clone(),
            ));
        }
        // The observe layer wraps the router once rather than each route (a
        // per-route layer costs every request another boxed service).
        let edge = edge::Edge::new(app.cookies.clone());
        let observed = ObserveLayer::new(app.metrics.clone(), edge).layer(router(app.clone()));
        listeners.push(listener::Running::spawn(
            listener,
            observed,
            limits,
            app.metrics.clone(),
        ));
        Ok(Self {
            addr,
            metrics_addr,
            app,
            listeners,
        })
    }

    /// Binds `settings.listen` and serves.
    pub async fn bind(app: Arc<App>) -> Result<Self, StartError> {
        let addr = app.settings.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let metrics = app.settings.metrics_address.unwrap_or(addr);
        Self::start(listener, app).map_err(|source| StartError::Listen {
            addr: metrics,
            source,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the metrics listener, when `metrics_address` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The application state (for metrics in tests).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops accepting, lets in-flight requests finish, then returns.
    pub async fn shutdown(self) {
        let stopping: Vec<_> = self
            .listeners
            .into_iter()
            .map(listener::Running::shutdown)
            .collect();
        for listener in stopping {
            listener.await;
        }
    }
}
