//! The store contract and its backends.
//!
//! Every guarantee latchkey makes rests on the handful of atomic operations in
//! [`Store`]. Each backend implements them with the primitive its server offers
//! (a sharded map, an SQL `INSERT … ON CONFLICT` / `UPDATE … WHERE version = ?`,
//! a Lua script), and one contract suite ([`contract`]) checks every backend the
//! same way.
//!
//! Records are opaque bytes with a **version**. A record's version changes on
//! every successful write and never takes a value the key had before, so a
//! writer holding an old version can never overwrite newer state (a fenced
//! write). An expired record is absent for every operation.

pub mod contract;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
mod redis_url;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

/// A record as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes (shared, so that a backend holding them in memory
    /// hands them out without copying).
    pub value: Bytes,
    /// The record's current version; pass it to [`Store::compare_and_swap`].
    pub version: u64,
}

/// The atomic step that ends a successful login: swap the login record (only if
/// it still has the version the exchanging task claimed) **and** insert the new
/// session record, both or neither.
#[derive(Debug, Clone)]
pub struct LoginCommit<'a> {
    /// Key of the login record.
    pub login_key: &'a str,
    /// The login record's version when the exchange was claimed.
    pub login_version: u64,
    /// The login record's new value (the `Completed` state).
    pub login_value: &'a [u8],
    /// How long the completed login record is kept (for idempotent replays).
    pub login_ttl: Duration,
    /// Key of the new session record; it must not exist yet.
    pub session_key: &'a str,
    /// The new session record.
    pub session_value: &'a [u8],
    /// How long the session lives.
    pub session_ttl: Duration,
}

/// What a store operation can fail with. No variant ever carries a stored value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the operation; nothing is known
    /// to have been written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store URL or options are wrong.
    #[error("invalid store configuration: {0}")]
    Config(String),
}

/// Shorthand for results of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The store contract (`docs/DESIGN.md` §4). Every method is atomic on its own.
///
/// Keys are logical (`login:…`, `session:…`); a backend may prefix them with its
/// namespace. TTLs are relative to the backend's own notion of now.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts `value` under `key` if no live record exists there. Returns whether
    /// it inserted. An expired record counts as absent and is replaced.
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool>;

    /// Reads the live record under `key`; an expired record is `None`.
    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>>;

    /// Replaces the record under `key` if it is live and its version is
    /// `expected_version`; the new version is then `expected_version + 1`.
    /// Returns whether it replaced.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool>;

    /// Removes the record under `key` (absent is fine). No later CAS can revive it.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Applies a [`LoginCommit`] all-or-nothing. Returns `false`, having written
    /// nothing, when the login record's version moved on or the session key is
    /// already taken. Its two keys carry one Redis Cluster hash tag
    /// (`{…}`), as the engine's login and session keys do, so that a
    /// sharded store can write them in one place.
    async fn commit_login(&self, commit: LoginCommit<'_>) -> StoreResult<bool>;

    /// Waits until the record under `key` may no longer have version `seen`
    /// (`None`: absent), or until `timeout` passes. Spurious returns are allowed;
    /// callers re-read. Backends wake waiters by notification where they can and
    /// poll otherwise.
    async fn wait_for_change(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> StoreResult<()>;

    /// Counts live records whose key starts with `prefix`. Diagnostic (tests,
    /// `check-store`): it scans, so keep it off request paths.
    async fn count_live(&self, prefix: &str) -> StoreResult<u64>;

    /// Deletes expired records of this store's namespace; returns how many
    /// (backends whose server expires records itself return 0). [`open`] runs
    /// it in the background.
    async fn sweep_expired(&self) -> StoreResult<u64>;

    /// Deletes every record, live or not, whose key starts with `prefix`;
    /// returns how many. For cleaning up after `check-store` and tests.
    async fn purge(&self, prefix: &str) -> StoreResult<u64>;
}

/// How often [`open`]'s background task sweeps expired records.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Sweeps `store` every `every` until the store is dropped. Errors are logged
/// and retried at the next tick: a failed sweep only delays reclaiming space.
pub fn spawn_sweeper(store: &Arc<dyn Store>, every: Duration) -> tokio::task::JoinHandle<()> {
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(store) = store.upgrade() else { return };
            match store.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "swept expired records"),
                Err(error) => tracing::warn!(%error, "sweeping expired records failed"),
            }
        }
    })
}

/// Opens the store named by a URL — `memory://`, `sqlite://PATH`, and, when
/// built with their features, `redis://…` / `rediss://…` and `postgres://…` —
/// and starts its background sweep. Must be called within a Tokio runtime.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    let store = connect(url).await?;
    spawn_sweeper(&store, SWEEP_INTERVAL);
    Ok(store)
}

/// Opens the store named by a URL without a background sweep.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url == "memory://" || url == "memory:" {
        return Ok(Arc::new(memory::MemoryStore::new()));
    }
    if let Some(query) = url.strip_prefix("memory://?") {
        let max = query
            .strip_prefix("max_records=")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                StoreError::Config(format!(
                    "{url:?}: the memory store takes one option, max_records=N (N > 0)"
                ))
            })?;
        return Ok(Arc::new(memory::MemoryStore::with_capacity(max)));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(sqlite::SqliteStore::open(path).await?));
    }
    #[cfg(feature = "redis")]
    if redis_url::is_redis(url) {
        let redis_url::RedisUrl {
            target,
            prefix,
            options,
        } = redis_url::parse(url)?;
        return Ok(Arc::new(
            redis::RedisStore::open(&target, &prefix, options).await?,
        ));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (url, prefix) = split_prefix(url)?;
        return Ok(Arc::new(
            postgres::PostgresStore::connect(&url, &prefix).await?,
        ));
    }
    Err(StoreError::Config(format!(
        "unsupported store URL scheme in {:?}: use memory://, sqlite://PATH{}{}",
        redact_url(url),
        if cfg!(feature = "redis") {
            ", redis://HOST:PORT/DB, redis+cluster://HOST:PORT,HOST:PORT/, redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB"
        } else {
            " (redis:// needs the `redis` feature)"
        },
        if cfg!(feature = "postgres") {
            ", postgres://USER@HOST/DB"
        } else {
            " (postgres:// needs the `postgres` feature)"
        },
    )))
}

/// The key prefix of a shared store: the URL's `prefix` query parameter
/// (default `latchkey:`), so that several deployments can share one server.
/// Returns the URL without that parameter, for the driver.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn split_prefix(url: &str) -> StoreResult<(String, String)> {
    let mut parsed = ::url::Url::parse(url)
        .map_err(|e| StoreError::Config(format!("store URL {}: {e}", redact_url(url))))?;
    let mut prefix = None;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, v)| {
            if k == "prefix" {
                prefix = Some(v.to_string());
                false
            } else {
                true
            }
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), namespace(prefix)))
}

/// The key namespace of a `prefix` option: `latchkey:` without one, and
/// always ending in `:`.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn namespace(prefix: Option<String>) -> String {
    let prefix = prefix.unwrap_or_else(|| "latchkey".into());
    if prefix.ends_with(':') {
        prefix
    } else {
        format!("{prefix}:")
    }
}

/// A URL with its secrets replaced by `***`, fit for error messages and logs:
/// the password, and the values of query parameters that name a password,
/// secret or token. A URL that does not parse but has an `@` loses everything
/// between `://` and its last `@` (a password with `/`, `?` or `#` in it
/// makes a URL unparseable, and must not leak then either).
pub fn redact_url(url: &str) -> String {
    let secret_key = |key: &str| {
        let key = key.to_ascii_lowercase();
        ["pass", "secret", "token", "key"]
            .iter()
            .any(|word| key.contains(word))
    };
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query_pairs().any(|(k, _)| secret_key(&k)) {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret_key(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => match (url.split_once("://"), url.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
            (None, Some(_)) => "[a URL that does not parse]".to_owned(),
            _ => url.to_owned(),
        },
    }
}

/// In-process change notification with a polling fallback, for backends whose
/// records other processes may also change.
///
/// Writes made through this process call [`ChangeSignal::notify`], which wakes
/// waiters at once; writes by other processes are seen at the next poll.
#[derive(Debug)]
pub(crate) struct ChangeSignal {
    notify: Notify,
    poll_interval: Duration,
}

impl ChangeSignal {
    pub(crate) fn new(poll_interval: Duration) -> Self {
        Self {
            notify: Notify::new(),
            poll_interval,
        }
    }

    /// Wakes every current waiter.
    pub(crate) fn notify(&self) {
        self.notify.notify_waiters();
    }

    /// Waits until `current_version` returns something other than `seen`, or
    /// `timeout` passes.
    pub(crate) async fn wait<F, Fut>(
        &self,
        seen: Option<u64>,
        timeout: Duration,
        mut current_version: F,
    ) -> StoreResult<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<Option<u64>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if current_version().await? != seen {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let step = self.poll_interval.min(deadline - now);
            // Either a local write woke us or the poll interval passed; re-check.
            let _ = tokio::time::timeout(step, notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_url("redis://u@h/0"), "redis://u@h/0");
        assert_eq!(redact_url("memory://"), "memory://");
        assert_eq!(redact_url("sqlite://latchkey.db"), "sqlite://latchkey.db");
    }

    #[test]
    fn passwords_with_delimiters_never_leak() {
        for (url, secret) in [
            ("redis://:pa/ss@h:6379/0", "pa/ss"),
            ("postgres://u:p#ss@db/x", "p#ss"),
            ("postgres://u:p?ss@db/x", "p?ss"),
            ("postgres://u:p@ss@db/x", "p@ss"),
            ("postgres://u:p%2Fss@db/x", "p%2Fss"),
            ("redis://u:pa:ss@h/0", "pa:ss"),
            (
                "postgres://u@db/x?password=hunter2&sslmode=require",
                "hunter2",
            ),
            ("rediss://h/0?auth_token=t0ken", "t0ken"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            let host = if url.contains("db") { "db" } else { "h" };
            assert!(shown.contains(host), "{url} -> {shown}");
        }
        assert!(
            redact_url("postgres://u@db/x?password=a&sslmode=require").contains("sslmode=require")
        );
    }
}
