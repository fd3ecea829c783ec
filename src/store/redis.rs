//! `redis://…` / `rediss://…`: a shared store for several replicas.
//!
//! A record is a hash `{v: value, ver: version}` with a Redis TTL, so expiry is
//! the server's and an expired record is simply gone. Insert, CAS and the login
//! commit are Lua scripts (run atomically by Redis; sent by `EVALSHA` with a
//! fallback to loading them). Versions are compared and written as decimal
//! strings computed here, never as Lua numbers.
//!
//! Every write also publishes the changed key on `<namespace>changes`, and
//! each store subscribes, so waiters in every replica wake at once.
//!
//! Redis Cluster (`redis+cluster://HOST:PORT,HOST:PORT…/`): the keys of one
//! login and its session share a hash tag (`{…}`; see `crate::keys`), so
//! every script touches one slot; `count_live` and `purge` scan each primary;
//! the change channel is a plain pub/sub channel, which a cluster delivers
//! on every node, so the subscriber listens on one node (the next one when
//! it goes away).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncCommands, Script};

use super::{ChangeSignal, LoginCommit, Store, StoreError, StoreResult, Versioned, redact_url};
use crate::clock::duration_ms;
use crate::secret::random_u64;

/// Other replicas' writes wake waiters through pub/sub; this poll is the
/// fallback for a message lost while the subscriber reconnects.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

// Every script publishes the key it changed on the namespace's channel (the
// last ARGV), so that waiters in every replica wake at once.

const INSERT_IF_ABSENT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ver', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1";

const COMPARE_AND_SWAP: &str = r"
if redis.call('HGET', KEYS[1], 'ver') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'ver', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], KEYS[1])
return 1";

const DELETE: &str = r"
if redis.call('DEL', KEYS[1]) == 1 then redis.call('PUBLISH', ARGV[1], KEYS[1]) end
return 1";

const COMMIT_LOGIN: &str = r"
if redis.call('HGET', KEYS[1], 'ver') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'ver', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], 'v', ARGV[5], 'ver', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PUBLISH', ARGV[8], KEYS[1])
redis.call('PUBLISH', ARGV[8], KEYS[2])
return 1";

/// A connection to one server (reconnecting) or to a cluster (following
/// its topology).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(Following),
}

/// A connection to whichever server the sentinels name as master: asked of
/// them at the first command, and again after a command found the master
/// gone or demoted (a connection error, `READONLY`). That command fails (a
/// 503 for its request); the next one goes to the new master.
struct Followed {
    sentinels: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    master: arc_swap::ArcSwapOption<redis::aio::MultiplexedConnection>,
}

/// The error of a sentinel that did not answer within [`STORE_TIMEOUT`].
fn sentinels_too_slow() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "the sentinels did not answer in time"))
}

impl Followed {
    /// The connection to the current master, asking the sentinels if there
    /// is none.
    async fn master(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        if let Some(master) = self.master.load_full() {
            return Ok((*master).clone());
        }
        let mut sentinels = self.sentinels.lock().await;
        // Another command may have asked meanwhile.
        if let Some(master) = self.master.load_full() {
            return Ok((*master).clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(STORE_TIMEOUT))
            .set_response_timeout(Some(STORE_TIMEOUT));
        let asked = sentinels.get_async_connection_with_config(&config);
        let master = tokio::time::timeout(STORE_TIMEOUT, asked)
            .await
            .map_err(|_| sentinels_too_slow())??;
        self.master.store(Some(Arc::new(master.clone())));
        Ok(master)
    }

    /// A client for the current master (for the subscriber).
    async fn master_client(&self) -> redis::RedisResult<redis::Client> {
        let mut sentinels = self.sentinels.lock().await;
        tokio::time::timeout(STORE_TIMEOUT, sentinels.async_get_client())
            .await
            .map_err(|_| sentinels_too_slow())?
    }

    /// Forgets the master after `error`, if it says the master is gone.
    fn after(&self, error: &redis::RedisError) {
        let demoted = error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if demoted
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            self.master.store(None);
        }
    }
}

/// [`Followed`], shared by the store's clones of its connection.
#[derive(Clone)]
struct Following(Arc<Followed>);

impl redis::aio::ConnectionLike for Following {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let mut master = self.0.master().await?;
            let answer = master.req_packed_command(cmd).await;
            if let Err(error) = &answer {
                self.0.after(error);
            }
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let mut master = self.0.master().await?;
            let answer = master.req_packed_commands(pipeline, offset, count).await;
            if let Err(error) = &answer {
                self.0.after(error);
            }
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.0
            .master
            .load()
            .as_ref()
            .map_or(0, |master| master.get_db())
    }
}

/// Where the subscriber listens: one of these nodes, or the sentinels'
/// master.
enum Listeners {
    Nodes(Vec<redis::Client>),
    Sentinel(Arc<Followed>),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
        }
    }
}

/// Where a store connects: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://…` / `rediss://…`, as the redis crate reads it.
    Server(String),
    /// `redis+cluster://` / `rediss+cluster://`: one `redis://HOST:PORT`
    /// (or `rediss://`) URL per seed node, credentials included.
    Cluster(Vec<String>),
    /// `redis+sentinel://`: the sentinels, and what to ask them for.
    Sentinel(SentinelTarget),
}

/// A Redis deployment watched by Sentinel.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The sentinels' addresses.
    pub sentinels: Vec<(String, u16)>,
    /// The name they know the master by.
    pub master_name: String,
    /// The database number on the master.
    pub db: i64,
    /// The user for the master (and replicas), if any.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// The sentinels' own password, if they have one.
    pub sentinel_password: Option<String>,
    /// TLS to the sentinels and to the master (`rediss+sentinel://`),
    /// verified against [`Options::tls`] or the bundled web roots.
    pub tls: bool,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The Redis backend.
pub struct RedisStore {
    connection: Connection,
    namespace: String,
    channel: String,
    insert_script: Script,
    cas_script: Script,
    delete_script: Script,
    commit_script: Script,
    changes: Arc<ChangeSignal>,
    subscriber: tokio::task::JoinHandle<()>,
    /// `wait_replicas`: writes count once this many replicas have them.
    durability: Option<Durability>,
}

/// `?wait_replicas=N[&wait_timeout=DURATION]`: a write (claim, commit,
/// refresh, sign-out) counts only once `replicas` replicas acknowledged it
/// within `timeout` (`WAIT`); short of that it is reported as the store
/// being unavailable, so no request goes on as if it had been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// How many replicas must have each write.
    pub replicas: u32,
    /// How long a write may wait for them (under the store's 2 s timeout:
    /// `WAIT` holds the shared connection meanwhile).
    pub timeout: Duration,
}

impl Durability {
    /// The longest `wait_timeout`: below the connection's response timeout.
    pub const MAX_TIMEOUT: Duration = Duration::from_millis(1500);
    /// `wait_timeout` when the URL gives none.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
}

/// How a store talks to its deployment, besides where it is.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often waiters look again when no change message came (the
    /// fallback for a message lost while the subscriber reconnects).
    pub poll_interval: Duration,
    /// `wait_replicas`: writes count once this many replicas have them.
    pub durability: Option<Durability>,
    /// The CA certificates to trust (`ca_file`) and the client certificate
    /// to present (`client_cert`, `client_key`) on a TLS connection; `None`:
    /// the bundled web roots, no client certificate.
    pub tls: Option<redis::TlsCertificates>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll_interval: POLL_INTERVAL,
            durability: None,
            tls: None,
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn unreadable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis answered something unexpected: {e}"))
}

fn ttl_ms(ttl: Duration) -> u64 {
    duration_ms(ttl).max(1)
}

fn initial_version() -> u64 {
    (random_u64() >> 16) | 1
}

/// `text` with the glob metacharacters of `SCAN MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl RedisStore {
    /// Connects (with automatic reconnection) and keys every record under
    /// `namespace`, so several deployments or test runs can share a server.
    pub async fn connect(url: &str, namespace: &str) -> StoreResult<Self> {
        Self::connect_with_poll(&Target::Server(url.to_owned()), namespace, POLL_INTERVAL).await
    }

    /// [`RedisStore::connect`] to a cluster, given the URLs of some of its
    /// nodes (`redis://HOST:PORT` each).
    pub async fn connect_cluster(nodes: &[String], namespace: &str) -> StoreResult<Self> {
        Self::connect_with_poll(&Target::Cluster(nodes.to_vec()), namespace, POLL_INTERVAL).await
    }

    /// Connects to `target` with another fallback poll interval.
    pub async fn connect_with_poll(
        target: &Target,
        namespace: &str,
        poll_interval: Duration,
    ) -> StoreResult<Self> {
        let options = Options {
            poll_interval,
            ..Options::default()
        };
        Self::open(target, namespace, options).await
    }

    /// Connects to `target` as `options` say.
    pub async fn open(target: &Target, namespace: &str, options: Options) -> StoreResult<Self> {
        let Options {
            poll_interval,
            durability,
            tls,
        } = options;
        let node_client = |url: &str| match &tls {
            Some(certificates) => redis::Client::build_with_tls(url, certificates.clone()),
            None => redis::Client::open(url),
        };
        let config_error = |url: &str, e: redis::RedisError| {
            StoreError::Config(format!("redis URL {}: {e}", redact_url(url)))
        };
        let connecting = |url: &str, e: redis::RedisError| {
            StoreError::Unavailable(format!("connecting to {}: {e}", redact_url(url)))
        };
        let (connection, subscribers) = match target {
            Target::Server(url) => {
                let client = node_client(url).map_err(|e| config_error(url, e))?;
                let config = ConnectionManagerConfig::new()
                    // Fail fast when the server is away: requests get a 503 instead of hanging.
                    .set_connection_timeout(Some(STORE_TIMEOUT))
                    .set_response_timeout(Some(STORE_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let connection = ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map_err(|e| connecting(url, e))?;
                (
                    Connection::Single(connection),
                    Listeners::Nodes(vec![client]),
                )
            }
            Target::Cluster(nodes) => {
                let first = nodes.first().map(String::as_str).unwrap_or_default();
                let mut builder =
                    redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(STORE_TIMEOUT)
                        .response_timeout(STORE_TIMEOUT)
                        .retries(2);
                if let Some(certificates) = &tls {
                    builder = builder.certs(certificates.clone());
                }
                let client = builder.build().map_err(|e| config_error(first, e))?;
                let connection = client
                    .get_async_connection()
                    .await
                    .map_err(|e| connecting(first, e))?;
                let subscribers = nodes
                    .iter()
                    .map(|url| node_client(url).map_err(|e| config_error(url, e)))
                    .collect::<StoreResult<Vec<_>>>()?;
                (
                    Connection::Cluster(connection),
                    Listeners::Nodes(subscribers),
                )
            }
            Target::Sentinel(target) => {
                let followed = follow(target, tls.as_ref())
                    .map_err(|e| StoreError::Config(format!("redis sentinels: {e}")))?;
                let followed = Arc::new(followed);
                followed.master().await.map_err(|e| {
                    StoreError::Unavailable(format!(
                        "asking the sentinels for {:?}: {e}",
                        target.master_name
                    ))
                })?;
                let listeners = Listeners::Sentinel(followed.clone());
                (Connection::Sentinel(Following(followed)), listeners)
            }
        };
        let channel = format!("{namespace}changes");
        let changes = Arc::new(ChangeSignal::new(poll_interval));
        let (at, pubsub) = subscribe(&subscribers, 0, &channel)
            .await
            .map_err(unavailable)?;
        let subscriber = tokio::spawn(relay_messages(
            subscribers,
            at,
            pubsub,
            channel.clone(),
            changes.clone(),
        ));
        Ok(Self {
            connection,
            namespace: namespace.to_owned(),
            channel,
            insert_script: Script::new(INSERT_IF_ABSENT),
            cas_script: Script::new(COMPARE_AND_SWAP),
            delete_script: Script::new(DELETE),
            commit_script: Script::new(COMMIT_LOGIN),
            changes,
            subscriber,
            durability,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    /// Runs a write script and, with `wait_replicas`, a `WAIT` right after
    /// it in one pipeline: on the one connection (the one node of a
    /// cluster) that ran the write, so the `WAIT` covers that write and
    /// nothing can come between them (a reconnect, a cluster's changed slot
    /// map would otherwise send the `WAIT` where the write is not). The
    /// script is loaded in the same pipeline (`EVALSHA` cannot fall back to
    /// loading it there). Short of the replicas asked for in time, the
    /// write is reported `Unavailable`: it may be on the primary, and it
    /// does not count. The `WAIT` runs whatever the script decided (a lost
    /// claim or a failed CAS too): the pipeline is sent before its answer
    /// is known, and with too few replicas no answer is one to act on.
    async fn write<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> StoreResult<T> {
        let mut con = self.connection.clone();
        let Some(wanted) = self.durability else {
            return invocation.invoke_async(&mut con).await.map_err(unavailable);
        };
        let (_, answer, acked): (redis::Value, T, u64) = redis::pipe()
            .load_script(script)
            .invoke_script(invocation)
            .cmd("WAIT")
            .arg(wanted.replicas)
            .arg(duration_ms(wanted.timeout))
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        if acked < u64::from(wanted.replicas) {
            return Err(StoreError::Unavailable(format!(
                "a write reached {acked} of the {} replicas wait_replicas asks for within {} ms",
                wanted.replicas,
                duration_ms(wanted.timeout)
            )));
        }
        Ok(answer)
    }

    async fn live_version(&self, key: &str) -> StoreResult<Option<u64>> {
        let mut con = self.connection.clone();
        let version: Option<u64> = con.hget(self.key(key), "ver").await.map_err(unavailable)?;
        Ok(version)
    }
}

/// How long a store command or connection attempt may take before the
/// request that needed it gets a 503.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// A subscription to `channel` on the first of `nodes` (from `start`, going
/// round) that takes it; with the index of that node.
async fn subscribe(
    listeners: &Listeners,
    start: usize,
    channel: &str,
) -> redis::RedisResult<(usize, redis::aio::PubSub)> {
    let asked;
    let nodes = match listeners {
        Listeners::Nodes(nodes) => nodes.as_slice(),
        Listeners::Sentinel(followed) => {
            asked = [followed.master_client().await?];
            &asked[..]
        }
    };
    let mut last = None;
    for offset in 0..nodes.len().max(1) {
        let at = (start + offset) % nodes.len().max(1);
        let Some(node) = nodes.get(at) else { break };
        let attempt = async {
            let mut pubsub = node.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(STORE_TIMEOUT, attempt).await {
            Ok(Ok(pubsub)) => return Ok((at, pubsub)),
            Ok(Err(error)) => last = Some(error),
            Err(_) => {
                last = Some(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "timed out subscribing",
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Client, "no node to subscribe on"))
    }))
}

/// Wakes local waiters for every published change; resubscribes after a lost
/// connection, on the next node of a cluster (polling covers the gap).
async fn relay_messages(
    nodes: Listeners,
    mut at: usize,
    mut pubsub: redis::aio::PubSub,
    channel: String,
    changes: Arc<ChangeSignal>,
) {
    loop {
        {
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                changes.notify();
            }
        }
        // The connection is gone: wake everyone to re-check, then resubscribe.
        changes.notify();
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if let Ok((now_at, fresh)) = subscribe(&nodes, at + 1, &channel).await {
                (at, pubsub) = (now_at, fresh);
                break;
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let mut invocation = self.insert_script.key(self.key(key));
        invocation
            .arg(value)
            .arg(initial_version().to_string())
            .arg(ttl_ms(ttl))
            .arg(&self.channel);
        let inserted: bool = self.write(&self.insert_script, &invocation).await?;
        if inserted {
            self.changes.notify();
        }
        Ok(inserted)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>> {
        let mut con = self.connection.clone();
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.key(key))
            .arg("v")
            .arg("ver")
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(match (value, version) {
            (Some(value), Some(version)) => Some(Versioned {
                value: value.into(),
                version,
            }),
            _ => None,
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        let mut invocation = self.cas_script.key(self.key(key));
        invocation
            .arg(expected_version.to_string())
            .arg(value)
            .arg((expected_version + 1).to_string())
            .arg(ttl_ms(ttl))
            .arg(&self.channel);
        let swapped: bool = self.write(&self.cas_script, &invocation).await?;
        if swapped {
            self.changes.notify();
        }
        Ok(swapped)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let mut invocation = self.delete_script.key(self.key(key));
        invocation.arg(&self.channel);
        let _: i64 = self.write(&self.delete_script, &invocation).await?;
        self.changes.notify();
        Ok(())
    }

    async fn commit_login(&self, c: LoginCommit<'_>) -> StoreResult<bool> {
        let mut invocation = self.commit_script.key(self.key(c.login_key));
        invocation
            .key(self.key(c.session_key))
            .arg(c.login_version.to_string())
            .arg(c.login_value)
            .arg((c.login_version + 1).to_string())
            .arg(ttl_ms(c.login_ttl))
            .arg(c.session_value)
            .arg(initial_version().to_string())
            .arg(ttl_ms(c.session_ttl))
            .arg(&self.channel);
        // Its two keys share one slot: one node runs it, one WAIT covers both.
        let committed: bool = self.write(&self.commit_script, &invocation).await?;
        if committed {
            self.changes.notify();
        }
        Ok(committed)
    }

    async fn wait_for_change(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> StoreResult<()> {
        self.changes
            .wait(seen, timeout, || self.live_version(key))
            .await
    }

    async fn count_live(&self, prefix: &str) -> StoreResult<u64> {
        Ok(self.keys_under(prefix).await?.len() as u64)
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        // Redis removes expired keys itself.
        Ok(0)
    }

    async fn purge(&self, prefix: &str) -> StoreResult<u64> {
        let keys = self.keys_under(prefix).await?;
        let mut con = self.connection.clone();
        match &self.connection {
            // One DEL per key: a cluster refuses keys of several slots in one.
            Connection::Cluster(_) => {
                for key in &keys {
                    let _: () = con.del(key).await.map_err(unavailable)?;
                }
            }
            Connection::Single(_) | Connection::Sentinel(_) => {
                for batch in keys.chunks(500) {
                    let _: () = con.del(batch).await.map_err(unavailable)?;
                }
            }
        }
        self.changes.notify();
        Ok(keys.len() as u64)
    }
}

impl RedisStore {
    /// Every key under `prefix` in this namespace (live keys only: Redis drops
    /// expired ones).
    async fn keys_under(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        // SCAN may return a key more than once.
        let mut seen = std::collections::HashSet::new();
        match &self.connection {
            one_server @ (Connection::Single(_) | Connection::Sentinel(_)) => {
                let mut con = one_server.clone();
                let mut cursor: u64 = 0;
                loop {
                    let (next, keys): (u64, Vec<String>) = scan(cursor, &pattern)
                        .query_async(&mut con)
                        .await
                        .map_err(unavailable)?;
                    seen.extend(keys);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            // A cluster's keys are spread over its primaries: each is scanned.
            Connection::Cluster(con) => {
                let mut con = con.clone();
                for (host, port) in cluster_primaries(&mut con).await? {
                    let mut cursor: u64 = 0;
                    loop {
                        let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let answer = con
                            .route_command(scan(cursor, &pattern), node)
                            .await
                            .map_err(unavailable)?;
                        let (next, keys): (u64, Vec<String>) =
                            redis::from_redis_value(answer).map_err(unreadable)?;
                        seen.extend(keys);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
        }
        Ok(seen.into_iter().collect())
    }
}

/// A sentinel client for `target`'s master, trusting and presenting
/// `certificates` over TLS.
fn follow(
    target: &SentinelTarget,
    certificates: Option<&redis::TlsCertificates>,
) -> redis::RedisResult<Followed> {
    let sentinels = (target.sentinels.iter()).map(|(host, port)| match target.tls {
        true => redis::ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: false,
            tls_params: None,
        },
        false => redis::ConnectionAddr::Tcp(host.clone(), *port),
    });
    let mut builder = redis::sentinel::SentinelClientBuilder::new(
        sentinels,
        &target.master_name,
        redis::sentinel::SentinelServerType::Master,
    )?
    .set_client_to_redis_db(target.db);
    if let Some(username) = &target.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &target.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = &target.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if target.tls {
        builder = (builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure))
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = certificates {
            builder = (builder.set_client_to_sentinel_certificates(certificates.clone()))
                .set_client_to_redis_certificates(certificates.clone());
        }
    }
    Ok(Followed {
        sentinels: tokio::sync::Mutex::new(builder.build()?),
        master: arc_swap::ArcSwapOption::empty(),
    })
}

/// `SCAN cursor MATCH pattern COUNT 1000`.
fn scan(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000);
    cmd
}

/// The address of every primary of the cluster (`CLUSTER NODES`, asked
/// of any node), failed ones left out.
async fn cluster_primaries(
    con: &mut redis::cluster_async::ClusterConnection,
) -> StoreResult<Vec<(String, u16)>> {
    let answer = con
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await
        .map_err(unavailable)?;
    let text: String = redis::from_redis_value(answer).map_err(unreadable)?;
    Ok(primaries_in(&text))
}

/// The primaries of a `CLUSTER NODES` answer: `id ip:port@cport flags …`
/// lines whose flags say `master` and not `fail`.
fn primaries_in(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let address = address.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primaries_of_a_cluster_nodes_answer() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,hostname2 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 master,fail - 1426238316232 0 6 disconnected
";
        assert_eq!(
            primaries_in(nodes),
            [
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001),
            ]
        );
    }
}
