//! Prometheus metrics (`GET /metrics`), collected without touching the engine:
//! the identity provider and the store are wrapped in decorators that count
//! and time their calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::idp::{AuthorizationRequest, CodeExchange, Grant, IdentityProvider, IdpError};
use crate::store::{LoginCommit, Store, StoreResult, Versioned};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// All of latchkey's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Logins started.
    pub logins_started: Counter,
    /// Logins that produced a session.
    pub logins_completed: Counter,
    /// Logins that ended in failure.
    pub logins_failed: Counter,
    /// Duplicate callbacks answered with the winner's session, without an exchange.
    pub duplicate_callbacks: Counter,
    /// Sessions ended by a logout for their user or provider session.
    pub sessions_revoked: Counter,
    backchannel_logouts: Family<ResultLabels, Counter>,
    /// Client connections closed at accept because `max_connections` were open.
    pub connections_refused: Counter,
    exchanges: Counter,
    refreshes: Counter,
    refresh_waits: Counter,
    login_waits: Counter,
    store_latency: Family<OperationLabels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("latchkey");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let logins_started = counter(&mut registry, "logins_started", "Logins started");
        let logins_completed = counter(
            &mut registry,
            "logins_completed",
            "Logins that created a session",
        );
        let logins_failed = counter(&mut registry, "logins_failed", "Logins that failed");
        let duplicate_callbacks = counter(
            &mut registry,
            "duplicate_callbacks_absorbed",
            "Callbacks answered with another callback's session, without a code exchange",
        );
        let sessions_revoked = counter(
            &mut registry,
            "sessions_revoked",
            "Sessions ended by a logout for their user or provider session",
        );
        let backchannel_logouts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "backchannel_logouts",
            "Back-channel logout requests by result (accepted, rejected, replayed, unavailable)",
            backchannel_logouts.clone(),
        );
        let connections_refused = counter(
            &mut registry,
            "connections_refused",
            "Client connections closed at accept because max_connections were open",
        );
        let exchanges = counter(
            &mut registry,
            "code_exchanges",
            "Authorization code exchanges",
        );
        let refreshes = counter(&mut registry, "token_refreshes", "Refresh token grants");
        let refresh_waits = counter(
            &mut registry,
            "refresh_waits",
            "Times a request waited for another request's refresh",
        );
        let login_waits = counter(
            &mut registry,
            "login_waits",
            "Times a duplicate callback waited for the callback exchanging its code",
        );
        let store_latency = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ])
        });
        registry.register(
            "store_operation_seconds",
            "Store operation latency",
            store_latency.clone(),
        );
        Self {
            registry,
            requests,
            logins_started,
            logins_completed,
            logins_failed,
            duplicate_callbacks,
            sessions_revoked,
            backchannel_logouts,
            connections_refused,
            exchanges,
            refreshes,
            refresh_waits,
            login_waits,
            store_latency,
        }
    }
}

impl Metrics {
    /// Counts one back-channel logout request: `accepted`, `rejected`,
    /// `replayed` or `unavailable`.
    pub fn backchannel_logout(&self, result: &'static str) {
        self.backchannel_logouts
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts one HTTP request.
    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// An identity provider that counts exchanges and refreshes.
pub struct MeteredIdp {
    inner: Arc<dyn IdentityProvider>,
    metrics: Arc<Metrics>,
}

impl MeteredIdp {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn IdentityProvider>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl IdentityProvider for MeteredIdp {
    fn authorization_url(&self, request: &AuthorizationRequest) -> String {
        self.inner.authorization_url(request)
    }

    async fn exchange_code(&self, exchange: CodeExchange) -> Result<Grant, IdpError> {
        self.metrics.exchanges.inc();
        self.inner.exchange_code(exchange).await
    }

    async fn refresh(
        &self,
        refresh_token: &crate::secret::RefreshToken,
    ) -> Result<Grant, IdpError> {
        self.metrics.refreshes.inc();
        self.inner.refresh(refresh_token).await
    }
}

/// Awaits `f`, recording how long it took in `series`.
async fn timed_in<T>(series: &Histogram, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    series.observe(started.elapsed().as_secs_f64());
    out
}

/// A store that times every operation.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// The series of `get`, resolved once: every request reads its session.
    get_latency: Histogram,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        let get_latency = metrics
            .store_latency
            .get_or_create(&OperationLabels { operation: "get" })
            .clone();
        Self {
            inner,
            metrics,
            get_latency,
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        f: impl std::future::Future<Output = T>,
    ) -> T {
        let series = self
            .metrics
            .store_latency
            .get_or_create(&OperationLabels { operation })
            .clone();
        timed_in(&series, f).await
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        self.timed(
            "insert_if_absent",
            self.inner.insert_if_absent(key, value, ttl),
        )
        .await
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>> {
        timed_in(&self.get_latency, self.inner.get(key)).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.timed(
            "compare_and_swap",
            self.inner
                .compare_and_swap(key, expected_version, value, ttl),
        )
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.timed("delete", self.inner.delete(key)).await
    }

    async fn commit_login(&self, commit: LoginCommit<'_>) -> StoreResult<bool> {
        self.timed("commit_login", self.inner.commit_login(commit))
            .await
    }

    async fn wait_for_change(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> StoreResult<()> {
        if key.starts_with("session:") {
            self.metrics.refresh_waits.inc();
        } else if key.starts_with("login:") {
            self.metrics.login_waits.inc();
        }
        self.inner.wait_for_change(key, seen, timeout).await
    }

    async fn count_live(&self, prefix: &str) -> StoreResult<u64> {
        self.inner.count_live(prefix).await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        self.timed("sweep_expired", self.inner.sweep_expired())
            .await
    }

    async fn purge(&self, prefix: &str) -> StoreResult<u64> {
        self.inner.purge(prefix).await
    }
}
