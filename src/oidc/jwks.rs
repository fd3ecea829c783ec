//! The provider's signing keys, cached.
//!
//! The key set is fetched at discovery and kept in an [`ArcSwap`], so every
//! validation reads it without a lock. A token signed with a key the cache does
//! not know triggers a re-fetch (key rotation is picked up without a restart),
//! with two limits:
//! - **single flight**: concurrent validations that miss wait for one fetch,
//!   which runs in its own task; nobody holds a lock across the network call;
//! - **rate limit**: at most one re-fetch per `min_refetch_interval`, so a flood
//!   of tokens with made-up key ids cannot make latchkey hammer the provider.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use openidconnect::JsonWebKeySetUrl;
use openidconnect::core::CoreJsonWebKeySet;
use tokio::sync::watch;
use tokio::time::Instant;

use super::http::IdpHttp;

/// One version of the key set.
#[derive(Debug)]
pub struct KeySnapshot {
    /// The keys.
    pub keys: CoreJsonWebKeySet,
    /// Increases with every successful fetch.
    pub generation: u64,
}

/// Why no newer key set is available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefetchError {
    /// A re-fetch ran less than `min_refetch_interval` ago.
    #[error("the key set was re-fetched recently; not fetching again yet")]
    RateLimited,
    /// The fetch failed.
    #[error("fetching the key set from {url} failed: {reason}")]
    Failed {
        /// The JWKS URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

#[derive(Debug, Default)]
struct RefetchState {
    in_flight: bool,
    last_started: Option<Instant>,
    last_error: Option<RefetchError>,
}

/// The cache. Create it with [`JwksCache::new`] and share it in an `Arc`.
#[derive(Debug)]
pub struct JwksCache {
    url: JsonWebKeySetUrl,
    http: IdpHttp,
    min_refetch_interval: Duration,
    current: ArcSwap<KeySnapshot>,
    state: Mutex<RefetchState>,
    /// Counts finished re-fetch attempts; waiters watch it.
    finished: watch::Sender<u64>,
    fetches: AtomicU64,
}

impl JwksCache {
    /// A cache seeded with `initial` (the key set fetched at discovery).
    pub fn new(
        url: JsonWebKeySetUrl,
        http: IdpHttp,
        initial: CoreJsonWebKeySet,
        min_refetch_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            url,
            http,
            min_refetch_interval,
            current: ArcSwap::from_pointee(KeySnapshot {
                keys: initial,
                generation: 0,
            }),
            state: Mutex::new(RefetchState::default()),
            finished: watch::Sender::new(0),
            fetches: AtomicU64::new(0),
        })
    }

    /// The key set as it is now.
    pub fn snapshot(&self) -> Arc<KeySnapshot> {
        self.current.load_full()
    }

    /// How many re-fetches this cache has started.
    pub fn refetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// A key set newer than generation `seen`: the one another caller already
    /// fetched, or one fetched now (at most one fetch at a time, at most one per
    /// `min_refetch_interval`).
    pub async fn newer_than(self: &Arc<Self>, seen: u64) -> Result<Arc<KeySnapshot>, RefetchError> {
        let mut finished = self.finished.subscribe();
        let before = *finished.borrow_and_update();
        let current = self.snapshot();
        if current.generation > seen {
            return Ok(current);
        }
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // A fetch that finished since the check above has stored its keys
            // before clearing `in_flight`.
            let current = self.snapshot();
            if current.generation > seen {
                return Ok(current);
            }
            if !state.in_flight {
                let recently = state
                    .last_started
                    .is_some_and(|t| t.elapsed() < self.min_refetch_interval);
                if recently {
                    return Err(state
                        .last_error
                        .clone()
                        .unwrap_or(RefetchError::RateLimited));
                }
                state.in_flight = true;
                state.last_started = Some(Instant::now());
                self.fetches.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(Arc::clone(self).refetch());
            }
        }
        // Wait for the in-flight fetch (ours or another caller's) to finish.
        let _ = finished.wait_for(|n| *n > before).await;
        let current = self.snapshot();
        if current.generation > seen {
            return Ok(current);
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Err(state
            .last_error
            .clone()
            .unwrap_or(RefetchError::RateLimited))
    }

    async fn refetch(self: Arc<Self>) {
        let fetched =
            CoreJsonWebKeySet::fetch_async(&self.url, &self.http.for_openidconnect()).await;
        let error = match fetched {
            Ok(keys) => {
                let generation = self.snapshot().generation + 1;
                self.current
                    .store(Arc::new(KeySnapshot { keys, generation }));
                None
            }
            Err(e) => Some(RefetchError::Failed {
                url: self.url.to_string(),
                reason: e.to_string(),
            }),
        };
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.in_flight = false;
            state.last_error = error;
        }
        self.finished.send_modify(|n| *n += 1);
    }
}
