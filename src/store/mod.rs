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
    if url.starts_with("redis+sentinel://") {
        let (target, prefix, durability) = sentinel_target(url)?;
        let target = redis::Target::Sentinel(target);
        let store =
            redis::RedisStore::connect_with_poll(&target, &prefix, redis::POLL_INTERVAL).await?;
        return Ok(Arc::new(store.with_durability(durability)));
    }
    #[cfg(feature = "redis")]
    if url.starts_with("rediss+sentinel://") {
        return Err(StoreError::Config(format!(
            "store URL {}: Sentinel over TLS is not supported yet; use redis+sentinel:// on a private network, or rediss:// to the master",
            redact_url(url)
        )));
    }
    #[cfg(feature = "redis")]
    if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
        let (nodes, prefix, durability) = cluster_nodes(url)?;
        let store = redis::RedisStore::connect_cluster(&nodes, &prefix).await?;
        return Ok(Arc::new(store.with_durability(durability)));
    }
    #[cfg(feature = "redis")]
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let (url, durability) = take_durability(url)?;
        let (url, prefix) = split_prefix(&url)?;
        let store = redis::RedisStore::connect(&url, &prefix).await?;
        return Ok(Arc::new(store.with_durability(durability)));
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

/// `redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/[?prefix=…]`
/// (`rediss+cluster://` for TLS): one `redis://` URL per seed node, with the
/// credentials on each, and the key prefix. A cluster has no databases, so
/// a path is refused, as is any option but `prefix`.
#[cfg(feature = "redis")]
fn cluster_nodes(url: &str) -> StoreResult<(Vec<String>, String, Option<redis::Durability>)> {
    let wrong = |problem: &str| {
        StoreError::Config(format!(
            "store URL {}: {problem} (write redis+cluster://HOST:PORT,HOST:PORT/?prefix=NAME)",
            redact_url(url)
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| wrong("no scheme"))?;
    let node_scheme = scheme.strip_suffix("+cluster").unwrap_or(scheme);
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    if !path.is_empty() && path != "/" {
        return Err(wrong("a cluster has no databases, so no path"));
    }
    let mut prefix = None;
    let mut waits = WaitOptions::default();
    for (key, value) in ::url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "prefix" if prefix.is_none() => prefix = Some(value.into_owned()),
            _ if waits.take(&key, &value) => {}
            _ => return Err(wrong(&format!("unknown or repeated option {key:?}"))),
        }
    }
    let durability = waits.durability().map_err(|problem| wrong(&problem))?;
    let nodes = hosts
        .split(',')
        .map(|host| {
            let node = match credentials {
                Some(credentials) => format!("{node_scheme}://{credentials}@{host}"),
                None => format!("{node_scheme}://{host}"),
            };
            match ::url::Url::parse(&node) {
                Ok(parsed)
                    if parsed.host_str().is_some_and(|h| !h.is_empty())
                        && parsed.port().is_some()
                        && parsed.path().is_empty() =>
                {
                    Ok(node)
                }
                _ => Err(wrong(&format!("{host:?} is not HOST:PORT"))),
            }
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let prefix = prefix.unwrap_or_else(|| "latchkey".into());
    let prefix = if prefix.ends_with(':') {
        prefix
    } else {
        format!("{prefix}:")
    };
    Ok((nodes, prefix, durability))
}

/// `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB][?prefix=…&sentinel_password=…]`:
/// the sentinels, the name they watch the master under, its database
/// (default 0: the number is honoured, unlike some other proxies), the
/// master's credentials (in the URL's user part) and the sentinels' own
/// password.
#[cfg(feature = "redis")]
fn sentinel_target(
    url: &str,
) -> StoreResult<(redis::SentinelTarget, String, Option<redis::Durability>)> {
    let wrong = |problem: &str| {
        StoreError::Config(format!(
            "store URL {}: {problem} (write redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME/DB)",
            redact_url(url)
        ))
    };
    let rest = url
        .strip_prefix("redis+sentinel://")
        .ok_or_else(|| wrong("not redis+sentinel://"))?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, authority),
    };
    let decode = |text: &str| {
        ::percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|t| t.into_owned())
            .map_err(|_| wrong("the user or password is not UTF-8"))
    };
    let (username, password) = match credentials {
        None => (None, None),
        Some(credentials) => {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            let user = Some(decode(user)?).filter(|u| !u.is_empty());
            let password = Some(decode(password)?).filter(|p| !p.is_empty());
            (user, password)
        }
    };
    let sentinels = hosts
        .split(',')
        .map(|host| {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| wrong(&format!("{host:?} is not HOST:PORT")))?;
            let port = port.parse::<u16>().ok().filter(|p| *p > 0);
            match port {
                Some(port) if !name.is_empty() => Ok((name.to_owned(), port)),
                _ => Err(wrong(&format!("{host:?} is not HOST:PORT"))),
            }
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut parts = path.trim_start_matches('/').split('/');
    let master_name = parts
        .next()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| wrong("no master name"))?;
    let db = match parts.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| wrong(&format!("{db:?} is not a database number")))?,
    };
    if parts.next().is_some_and(|extra| !extra.is_empty()) {
        return Err(wrong("more after the database number"));
    }
    let (mut prefix, mut sentinel_password) = (None, None);
    let mut waits = WaitOptions::default();
    for (key, value) in ::url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            _ if waits.take(&key, &value) => {}
            "prefix" if prefix.is_none() => prefix = Some(value.into_owned()),
            "sentinel_password" if sentinel_password.is_none() => {
                sentinel_password = Some(value.into_owned())
            }
            _ => return Err(wrong(&format!("unknown or repeated option {key:?}"))),
        }
    }
    let prefix = prefix.unwrap_or_else(|| "latchkey".into());
    let prefix = if prefix.ends_with(':') {
        prefix
    } else {
        format!("{prefix}:")
    };
    let target = redis::SentinelTarget {
        sentinels,
        master_name: decode(master_name)?,
        db,
        username,
        password,
        sentinel_password,
    };
    let durability = waits.durability().map_err(|problem| wrong(&problem))?;
    Ok((target, prefix, durability))
}

/// `wait_replicas=N` and `wait_timeout=DURATION` of a Redis store URL.
#[cfg(feature = "redis")]
#[derive(Default)]
struct WaitOptions {
    replicas: Option<String>,
    timeout: Option<String>,
}

#[cfg(feature = "redis")]
impl WaitOptions {
    /// Takes `key=value` if it is one of these (and not repeated).
    fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "wait_replicas" => &mut self.replicas,
            "wait_timeout" => &mut self.timeout,
            _ => return false,
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(value.to_owned());
        true
    }

    /// What they ask for; `Err` says what is wrong.
    fn durability(self) -> Result<Option<redis::Durability>, String> {
        let Some(replicas) = self.replicas else {
            return match self.timeout {
                Some(_) => Err("wait_timeout without wait_replicas".into()),
                None => Ok(None),
            };
        };
        let replicas = (replicas.parse::<u32>().ok())
            .filter(|n| (1..=16).contains(n))
            .ok_or_else(|| {
                format!("wait_replicas={replicas:?} is not a number of replicas from 1 to 16")
            })?;
        let max = redis::Durability::MAX_TIMEOUT;
        let timeout = match self.timeout {
            None => redis::Durability::DEFAULT_TIMEOUT,
            Some(text) => humantime::parse_duration(&text)
                .ok()
                .filter(|t| !t.is_zero() && *t <= max)
                .ok_or_else(|| {
                    format!(
                        "wait_timeout={text:?} is not a duration from 1ms to {}ms",
                        max.as_millis()
                    )
                })?,
        };
        Ok(Some(redis::Durability { replicas, timeout }))
    }
}

/// `url` without its `wait_replicas`/`wait_timeout` options, and what they
/// ask for (`redis://` and `rediss://`, whose other options are the
/// driver's).
#[cfg(feature = "redis")]
fn take_durability(url: &str) -> StoreResult<(String, Option<redis::Durability>)> {
    let wrong =
        |problem: String| StoreError::Config(format!("store URL {}: {problem}", redact_url(url)));
    let mut parsed = ::url::Url::parse(url).map_err(|e| wrong(e.to_string()))?;
    let mut waits = WaitOptions::default();
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if !waits.take(&key, &value) {
            if key == "wait_replicas" || key == "wait_timeout" {
                return Err(wrong(format!("{key} is given twice")));
            }
            kept.push((key.into_owned(), value.into_owned()));
        }
    }
    let durability = waits.durability().map_err(wrong)?;
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), durability))
}

/// The key prefix of a shared store: the URL's `prefix` query parameter
/// (default `latchkey:`), so that several deployments can share one server.
/// Returns the URL without that parameter, for the driver.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn split_prefix(url: &str) -> StoreResult<(String, String)> {
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
    let prefix = prefix.unwrap_or_else(|| "latchkey".into());
    let prefix = if prefix.ends_with(':') {
        prefix
    } else {
        format!("{prefix}:")
    };
    Ok((parsed.to_string(), prefix))
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

    #[cfg(feature = "redis")]
    #[test]
    fn wait_replicas_is_read_from_every_redis_url_and_checked() {
        use super::redis::Durability;
        use super::{cluster_nodes, sentinel_target, take_durability};
        use std::time::Duration;
        let two = Some(Durability {
            replicas: 2,
            timeout: Duration::from_millis(250),
        });
        let (url, durability) =
            take_durability("redis://:pw@h:6379/0?wait_replicas=2&prefix=p&wait_timeout=250ms")
                .unwrap();
        assert_eq!(
            (url.as_str(), durability),
            ("redis://:pw@h:6379/0?prefix=p", two)
        );
        let (_, _, durability) = cluster_nodes("redis+cluster://h:1/?wait_replicas=1").unwrap();
        assert_eq!(durability.unwrap().timeout, Durability::DEFAULT_TIMEOUT);
        let (_, _, durability) =
            sentinel_target("redis+sentinel://h:1/m/0?wait_timeout=250ms&wait_replicas=2").unwrap();
        assert_eq!(durability, two);
        for bad in [
            "redis://:pw@h/0?wait_replicas=0",
            "redis://:pw@h/0?wait_replicas=many",
            "redis://:pw@h/0?wait_replicas=1&wait_timeout=5s",
            "redis://:pw@h/0?wait_replicas=1&wait_timeout=0s",
            "redis://:pw@h/0?wait_timeout=1s",
            "redis://:pw@h/0?wait_replicas=1&wait_replicas=2",
        ] {
            let error = take_durability(bad).unwrap_err().to_string();
            assert!(!error.contains("pw"), "{error}");
            assert!(error.contains("wait_"), "{bad}: {error}");
        }
        let error = cluster_nodes("redis+cluster://h:1/?wait_replicas=1&wait_replicas=1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("repeated"), "{error}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_its_database() {
        use super::sentinel_target;
        let (target, prefix, _) = sentinel_target(
            "redis+sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2:26380/mymaster/3?prefix=x&sentinel_password=sp",
        )
        .unwrap();
        assert_eq!(
            target.sentinels,
            [
                ("10.0.0.1".to_owned(), 26379),
                ("10.0.0.2".to_owned(), 26380)
            ]
        );
        assert_eq!(target.master_name, "mymaster");
        assert_eq!(target.db, 3, "the database is honoured");
        assert_eq!(target.username.as_deref(), Some("app"));
        assert_eq!(target.password.as_deref(), Some("p@ss"));
        assert_eq!(target.sentinel_password.as_deref(), Some("sp"));
        assert_eq!(prefix, "x:");
        assert!(
            !format!("{target:?}").contains("p@ss"),
            "Debug hides passwords"
        );
        let (plain, _, _) = sentinel_target("redis+sentinel://h:26379/m").unwrap();
        assert_eq!((plain.db, plain.password), (0, None));
        for bad in [
            "redis+sentinel://:pw@h:26379/",
            "redis+sentinel://:pw@h:26379/m/-1",
            "redis+sentinel://:pw@h:26379/m/x",
            "redis+sentinel://:pw@h:26379/m/0/more",
            "redis+sentinel://:pw@h/m/0",
            "redis+sentinel://:pw@h:26379/m/0?db=2",
            "redis+sentinel://:pw@h:26379/m/0?sentinel_password=a&sentinel_password=b",
        ] {
            let error = sentinel_target(bad).unwrap_err().to_string();
            assert!(!error.contains("pw"), "{error}");
            assert!(
                error.contains("redis+sentinel://HOST:PORT"),
                "{bad}: {error}"
            );
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_cluster_url_names_its_seed_nodes_and_nothing_else() {
        use super::cluster_nodes;
        assert_eq!(
            cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/?prefix=app").unwrap(),
            (
                vec![
                    "redis://10.0.0.1:7000".into(),
                    "redis://10.0.0.2:7001".into()
                ],
                "app:".into(),
                None
            )
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://:s3cret@h:6380").unwrap(),
            (
                vec!["rediss://:s3cret@h:6380".into()],
                "latchkey:".into(),
                None
            )
        );
        for bad in [
            "redis+cluster://h:7000/0",
            "redis+cluster://h:7000,/",
            "redis+cluster://h/",
            "redis+cluster://:pw@h:7000/?prefix=a&prefix=b",
            "redis+cluster://:pw@h:7000/?db=1",
            "redis+cluster://:pw@h:70000/",
        ] {
            let error = cluster_nodes(bad).unwrap_err().to_string();
            assert!(!error.contains("pw"), "{error}");
            assert!(
                error.contains("redis+cluster://HOST:PORT"),
                "{bad}: {error}"
            );
        }
        assert!(!redact_url("redis+cluster://u:pw@h:1,h:2/").contains("pw"));
    }

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
