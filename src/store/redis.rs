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
//! Redis Cluster: the keys of one login and its session share a hash tag
//! (`{…}`; see `crate::keys`), so the login commit's script
//! touches one slot; only single-node Redis is tested so far.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
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

/// The Redis backend.
pub struct RedisStore {
    connection: ConnectionManager,
    namespace: String,
    channel: String,
    insert_script: Script,
    cas_script: Script,
    delete_script: Script,
    commit_script: Script,
    changes: Arc<ChangeSignal>,
    subscriber: tokio::task::JoinHandle<()>,
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
        Self::connect_with_poll(url, namespace, POLL_INTERVAL).await
    }

    /// [`RedisStore::connect`] with another fallback poll interval.
    pub async fn connect_with_poll(
        url: &str,
        namespace: &str,
        poll_interval: Duration,
    ) -> StoreResult<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Config(format!("redis URL {}: {e}", redact_url(url))))?;
        let config = ConnectionManagerConfig::new()
            // Fail fast when the server is away: requests get a 503 instead of hanging.
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("connecting to {}: {e}", redact_url(url)))
            })?;
        let channel = format!("{namespace}changes");
        let changes = Arc::new(ChangeSignal::new(poll_interval));
        let mut pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub.subscribe(&channel).await.map_err(unavailable)?;
        let subscriber = tokio::spawn(relay_messages(
            client,
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
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    async fn live_version(&self, key: &str) -> StoreResult<Option<u64>> {
        let mut con = self.connection.clone();
        let version: Option<u64> = con.hget(self.key(key), "ver").await.map_err(unavailable)?;
        Ok(version)
    }
}

/// Wakes local waiters for every published change; resubscribes after a lost
/// connection (polling covers the gap).
async fn relay_messages(
    client: redis::Client,
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
            let Ok(mut fresh) = client.get_async_pubsub().await else {
                continue;
            };
            if fresh.subscribe(&channel).await.is_ok() {
                pubsub = fresh;
                break;
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let mut con = self.connection.clone();
        let inserted: bool = self
            .insert_script
            .key(self.key(key))
            .arg(value)
            .arg(initial_version().to_string())
            .arg(ttl_ms(ttl))
            .arg(&self.channel)
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
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
        let mut con = self.connection.clone();
        let swapped: bool = self
            .cas_script
            .key(self.key(key))
            .arg(expected_version.to_string())
            .arg(value)
            .arg((expected_version + 1).to_string())
            .arg(ttl_ms(ttl))
            .arg(&self.channel)
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        if swapped {
            self.changes.notify();
        }
        Ok(swapped)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let mut con = self.connection.clone();
        let _: i64 = self
            .delete_script
            .key(self.key(key))
            .arg(&self.channel)
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        self.changes.notify();
        Ok(())
    }

    async fn commit_login(&self, c: LoginCommit<'_>) -> StoreResult<bool> {
        let mut con = self.connection.clone();
        let committed: bool = self
            .commit_script
            .key(self.key(c.login_key))
            .key(self.key(c.session_key))
            .arg(c.login_version.to_string())
            .arg(c.login_value)
            .arg((c.login_version + 1).to_string())
            .arg(ttl_ms(c.login_ttl))
            .arg(c.session_value)
            .arg(initial_version().to_string())
            .arg(ttl_ms(c.session_ttl))
            .arg(&self.channel)
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
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
        for batch in keys.chunks(500) {
            let _: () = con.del(batch).await.map_err(unavailable)?;
        }
        self.changes.notify();
        Ok(keys.len() as u64)
    }
}

impl RedisStore {
    /// Every key under `prefix` in this namespace (live keys only: Redis drops
    /// expired ones).
    async fn keys_under(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let mut con = self.connection.clone();
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let mut cursor: u64 = 0;
        // SCAN may return a key more than once.
        let mut seen = std::collections::HashSet::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .map_err(unavailable)?;
            seen.extend(keys);
            if next == 0 {
                return Ok(seen.into_iter().collect());
            }
            cursor = next;
        }
    }
}
