//! `/readyz`: whether the store and the provider answer, probed at most once
//! per [`PROBE_TTL`] however many requests ask (one probe at a time; the
//! others wait for it), so that anonymous requests cannot make latchkey
//! hammer its provider. The answer says only `ok` or `unavailable`: what
//! failed, with host names and errors, goes to the log.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::Store;
use crate::web::SignInProvider;

/// How long one probe's result is served.
pub const PROBE_TTL: Duration = Duration::from_secs(5);

/// The outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The store answered a read.
    pub store: bool,
    /// The provider's discovery document answered 2xx.
    pub idp: bool,
}

impl Report {
    /// Whether latchkey can serve logins.
    pub fn ready(self) -> bool {
        self.store && self.idp
    }
}

/// The probe and its last result.
pub struct Readiness {
    store: Arc<dyn Store>,
    provider: Arc<dyn SignInProvider>,
    last: Mutex<Option<(Instant, Report)>>,
}

/// How long the provider's probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    /// Probes `store` and `provider` (its discovery document).
    pub fn new(store: Arc<dyn Store>, provider: Arc<dyn SignInProvider>) -> Self {
        Self {
            store,
            provider,
            last: Mutex::new(None),
        }
    }

    /// The latest report, probing again when the last is older than [`PROBE_TTL`].
    pub async fn report(&self) -> Report {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = *last
            && at.elapsed() < PROBE_TTL
        {
            return report;
        }
        let report = self.probe().await;
        *last = Some((Instant::now(), report));
        report
    }

    async fn probe(&self) -> Report {
        let store = match self.store.get("readyz:probe").await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "readiness: the store is unavailable");
                false
            }
        };
        let idp = match self.provider.probe(PROBE_TIMEOUT).await {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(%reason, "readiness: the provider is unavailable");
                false
            }
        };
        Report { store, idp }
    }
}
