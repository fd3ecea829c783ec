//! The proxy product, `latchkey serve`: the reverse proxy and forward-auth
//! (`docs/DESIGN.md` §5), the probes and metrics, and the server they run on (its own
//! accept loop, connection limits and request edge).
//!
//! It is the first user of [`crate::web`]: the sign-in endpoints are
//! [`Latchkey::login_routes`], the protected app is the fallback behind
//! [`Latchkey::require_login`], and forward-auth asks
//! [`Latchkey::authenticate`] and [`Latchkey::authorize`], exactly as an
//! outside crate would. Paths and headers follow oauth2-proxy so that users
//! can switch: `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`,
//! `/oauth2/auth`, `/oauth2/userinfo`, `/healthz`, `/readyz`, `/metrics`;
//! everything else is the protected app.

pub mod claims;
mod edge;
mod listener;
mod observe;
pub mod path;
mod protected;
pub mod readiness;
mod routes;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::handler::Handler;
use axum::routing::get;
use tokio::net::TcpListener;
use tower::Layer;

use self::observe::ObserveLayer;
use self::upstream::Upstream;
use crate::config::Settings;
use crate::web::metrics::Metrics;
use crate::web::{Latchkey, SetupError, pages};

/// Why latchkey could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store, the provider or a setting.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The upstream URL cannot be proxied to.
    #[error(transparent)]
    Upstream(#[from] upstream::BadUpstream),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

impl From<crate::oidc::OidcSetupError> for StartError {
    fn from(error: crate::oidc::OidcSetupError) -> Self {
        Self::Setup(error.into())
    }
}

/// `latchkey serve`'s application: a [`Latchkey`], the upstream it guards,
/// and the probes.
pub struct App {
    latchkey: Latchkey,
    upstream: Option<Upstream>,
    readiness: Arc<readiness::Readiness>,
    headers: Arc<claims::HeaderRules>,
}

/// The router's state.
#[derive(Clone)]
pub(crate) struct Proxy(Arc<ProxyInner>);

pub(crate) struct ProxyInner {
    pub(crate) latchkey: Latchkey,
    pub(crate) readiness: Arc<readiness::Readiness>,
    pub(crate) headers: Arc<claims::HeaderRules>,
}

impl std::ops::Deref for Proxy {
    type Target = ProxyInner;

    fn deref(&self) -> &ProxyInner {
        &self.0
    }
}

/// What the forwarding handlers need (cloned per request: one `Arc`).
#[derive(Clone)]
pub(crate) struct Forwarder(Arc<ForwarderInner>);

pub(crate) struct ForwarderInner {
    pub(crate) latchkey: Latchkey,
    pub(crate) upstream: Option<Upstream>,
    pub(crate) headers: Arc<claims::HeaderRules>,
    /// `upstream_cache_control`, for signed-in responses that set none.
    pub(crate) cache_control: Option<axum::http::HeaderValue>,
}

impl std::ops::Deref for Forwarder {
    type Target = ForwarderInner;

    fn deref(&self) -> &ForwarderInner {
        &self.0
    }
}

impl App {
    /// Opens the store, discovers the provider and prepares the upstream.
    pub async fn new(settings: Settings) -> Result<Arc<Self>, StartError> {
        let upstream = settings
            .upstream
            .as_ref()
            .map(|url| {
                let tls = upstream::UpstreamTls {
                    ca_certificates: settings.upstream_ca.clone(),
                    client_cert_file: settings.upstream_client_cert_file.clone(),
                    client_key_file: settings.upstream_client_key_file.clone(),
                };
                Upstream::with_tls(url, settings.pass_routing_headers, &tls)
            })
            .transpose()?;
        let latchkey = Latchkey::from_settings(settings).await?;
        Ok(Arc::new(Self::around(latchkey, upstream)))
    }

    /// The proxy around an existing `latchkey`.
    pub fn around(latchkey: Latchkey, upstream: Option<Upstream>) -> Self {
        let readiness = Arc::new(readiness::Readiness::new(
            latchkey.store().clone(),
            latchkey.provider().clone(),
        ));
        let headers = Arc::new(claims::HeaderRules::new(latchkey.settings()));
        // Whatever upstream it is given, the claim headers are latchkey's.
        let upstream =
            upstream.map(|upstream| upstream.reserving(headers.header_names().cloned().collect()));
        Self {
            latchkey,
            upstream,
            readiness,
            headers,
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        self.latchkey.settings()
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.latchkey.metrics()
    }

    /// Its sign-in.
    pub fn latchkey(&self) -> &Latchkey {
        &self.latchkey
    }

    fn state(&self) -> Proxy {
        Proxy(Arc::new(ProxyInner {
            latchkey: self.latchkey.clone(),
            readiness: self.readiness.clone(),
            headers: self.headers.clone(),
        }))
    }

    /// The protected app: skip routes forwarded as they are, the rest behind
    /// the public layer, as an embedder would guard its routes.
    fn protected(
        &self,
    ) -> protected::Protected<impl listener::AppService + Sync, impl listener::AppService + Sync>
    {
        let forwarder = Forwarder(Arc::new(ForwarderInner {
            latchkey: self.latchkey.clone(),
            upstream: self.upstream.clone(),
            headers: self.headers.clone(),
            cache_control: (self.settings().upstream_cache_control.as_deref())
                .and_then(|value| axum::http::HeaderValue::from_str(value).ok()),
        }));
        let open = routes::open.with_state(forwarder.clone());
        let guarded = self
            .latchkey
            .require_login()
            .with_upstream_cookies()
            .layer(routes::signed_in.with_state(forwarder));
        protected::Protected::new(&self.settings().skip_auth_routes, open, guarded)
    }
}

/// The router for `app`'s client listener: the sign-in routes, forward-auth,
/// the probes (and `/metrics` unless `metrics_address` gives the metrics a
/// listener of their own), and the protected app as the fallback.
pub fn router(app: &App) -> Router {
    let mut routes = Router::new()
        .route("/oauth2/auth", get(routes::forward_auth))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz));
    // oauth2-proxy's probe paths (checked at startup to be plain and free).
    if let Some(path) = &app.settings().ping_path {
        routes = routes.route(path, get(routes::healthz));
    }
    if let Some(path) = &app.settings().ready_path {
        routes = routes.route(path, get(routes::readyz));
    }
    let routes = if app.settings().metrics_address.is_none() {
        routes.route("/metrics", get(routes::metrics))
    } else {
        routes
    };
    hardened(routes, app)
        .with_state(app.state())
        .merge(app.latchkey.login_routes().layer(
            // The sign-in rate limit is keyed by the client's address, which
            // the listener records as its own `Peer`.
            axum::middleware::map_request(|mut request: Request| async move {
                let addr = request
                    .extensions()
                    .get::<ConnectInfo<upstream::Peer>>()
                    .map(|ConnectInfo(peer)| peer.addr);
                if let Some(addr) = addr {
                    request.extensions_mut().insert(ConnectInfo(addr));
                }
                request
            }),
        ))
        .fallback_service(app.protected())
}

/// The router of the `metrics_address` listener: metrics and the probes.
pub fn ops_router(app: &App) -> Router {
    hardened(
        Router::new()
            .route("/metrics", get(routes::metrics))
            .route("/healthz", get(routes::healthz))
            .route("/readyz", get(routes::readyz)),
        app,
    )
    .with_state(app.state())
}

/// latchkey's own answers (not the app's): never cached, framed or sniffed,
/// and its pages in the configured templates.
fn hardened(routes: Router<Proxy>, app: &App) -> Router<Proxy> {
    routes.route_layer(axum::middleware::map_response_with_state(
        app.latchkey.clone(),
        |State(latchkey): State<Latchkey>, response: axum::response::Response| async move {
            pages::hardened(latchkey.restyle(response))
        },
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
        let limits = app.settings().listener;
        let mut listeners = Vec::new();
        let mut metrics_addr = None;
        if let Some(address) = app.settings().metrics_address {
            let ops = std::net::TcpListener::bind(address)?;
            ops.set_nonblocking(true)?;
            let ops = TcpListener::from_std(ops)?;
            metrics_addr = Some(ops.local_addr()?);
            let service = ops_router(&app).into_service();
            // The metrics listener stays plain http (scraped on a private address).
            listeners.push(listener::Running::spawn(
                ops,
                service,
                limits,
                app.metrics().clone(),
                None,
            ));
        }
        // The observe layer wraps the router once rather than each route (a
        // per-route layer costs every request another boxed service).
        let edge = edge::Edge::new(app.latchkey.cookies().clone(), app.settings().pages.clone());
        let observed = ObserveLayer::new(app.metrics().clone(), edge).layer(router(&app));
        listeners.push(listener::Running::spawn(
            listener,
            observed,
            limits,
            app.metrics().clone(),
            app.settings().listener_tls.clone(),
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
        let addr = app.settings().listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let metrics = app.settings().metrics_address.unwrap_or(addr);
        Self::start(listener, app).map_err(|source| StartError::Listen {
            addr: metrics,
            source,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads `tls_cert_file` and `tls_key_file` again (a renewed
    /// certificate, on SIGHUP): connections accepted from now on present
    /// it. `Ok(false)`: the listener has no TLS; on `Err` the previous
    /// certificate stays.
    pub fn reload_tls(&self) -> Result<bool, String> {
        match &self.app.settings().listener_tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
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
