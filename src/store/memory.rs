//! `memory://`: a sharded in-process store, for tests and single-process use.
//!
//! It holds at most `max_records` records (`memory://?max_records=N`, default
//! [`DEFAULT_MAX_RECORDS`]), so that no flood can make it take all memory: a
//! write that needs a new record in a full shard first drops that shard's
//! expired records, and if the shard is still full it fails as
//! [`StoreError::Unavailable`] (a 503) without changing anything.
//!
//! Keys are spread over 64 shards by hash; each operation locks one shard's
//! `std::sync::Mutex` for a few map operations and never across an `.await`, so
//! there is no global lock on the hot path. Each shard has its own [`Notify`]
//! for [`Store::wait_for_change`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use foldhash::fast::RandomState;
use tokio::sync::Notify;

use super::{LoginCommit, Store, StoreError, StoreResult, Versioned};
use crate::secret::random_u64;

const SHARDS: usize = 64;

/// Records a `memory://` store holds at most unless its URL says otherwise
/// (sessions take about 1.5 KiB each: about 1.5 GiB).
pub const DEFAULT_MAX_RECORDS: usize = 1_000_000;

#[derive(Debug)]
struct Record {
    value: Bytes,
    version: u64,
    expires_at: Instant,
}

impl Record {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at > now
    }
}

/// One shard's records. Keys are derived from hashes of secrets, so a fast
/// hash seeded at random per process is enough.
type Records = HashMap<String, Record, RandomState>;

#[derive(Debug, Default)]
struct Shard {
    records: Mutex<Records>,
    changed: Notify,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Records> {
        // A panic while holding the lock cannot leave a map half-updated (each
        // critical section is a single map operation), so poisoning is ignored.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The in-memory backend. Cheap to create; state lives as long as the value.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Shard>,
    hasher: RandomState,
    /// Records one shard may hold.
    per_shard: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store of [`DEFAULT_MAX_RECORDS`].
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_MAX_RECORDS)
    }

    /// An empty store holding at most about `max_records` records (spread
    /// over its shards, each holding its share).
    pub fn with_capacity(max_records: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: RandomState::default(),
            per_shard: max_records.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn live_version(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        self.shard(key)
            .lock()
            .get(key)
            .filter(|r| r.is_live(now))
            .map(|r| r.version)
    }
}

/// A fresh first version, so that a key deleted and inserted again never reuses one.
fn initial_version() -> u64 {
    (random_u64() >> 16) | 1
}

/// The error of a write that found its shard full.
fn full() -> StoreError {
    StoreError::Unavailable(
        "the memory store is full (raise max_records in memory://?max_records=N, or use a shared store)"
            .into(),
    )
}

/// Whether `map` may take a new key under `cap`, after dropping its expired
/// records if it is full.
fn has_room(map: &mut Records, cap: usize, now: Instant) -> bool {
    if map.len() < cap {
        return true;
    }
    map.retain(|_, r| r.is_live(now));
    map.len() < cap
}

/// Inserts into `map` unless a live record holds `key`; returns whether it
/// did, or that the shard is full.
fn insert_live(
    map: &mut Records,
    cap: usize,
    key: &str,
    value: &[u8],
    ttl: Duration,
    now: Instant,
) -> StoreResult<bool> {
    if !map.contains_key(key) && !has_room(map, cap, now) {
        return Err(full());
    }
    let record = Record {
        value: Bytes::copy_from_slice(value),
        version: initial_version(),
        expires_at: now + ttl,
    };
    Ok(match map.entry(key.to_owned()) {
        Entry::Occupied(mut slot) if !slot.get().is_live(now) => {
            slot.insert(record);
            true
        }
        Entry::Occupied(_) => false,
        Entry::Vacant(slot) => {
            slot.insert(record);
            true
        }
    })
}

/// The live record under `key` if its version is `expected`.
fn live_at_version<'m>(
    map: &'m mut Records,
    key: &str,
    expected: u64,
    now: Instant,
) -> Option<&'m mut Record> {
    map.get_mut(key)
        .filter(|r| r.is_live(now) && r.version == expected)
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let shard = self.shard(key);
        let inserted = insert_live(
            &mut shard.lock(),
            self.per_shard,
            key,
            value,
            ttl,
            Instant::now(),
        )?;
        if inserted {
            shard.changed.notify_waiters();
        }
        Ok(inserted)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>> {
        let now = Instant::now();
        Ok(self
            .shard(key)
            .lock()
            .get(key)
            .filter(|r| r.is_live(now))
            .map(|r| Versioned {
                value: r.value.clone(),
                version: r.version,
            }))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        let shard = self.shard(key);
        let now = Instant::now();
        let swapped = match live_at_version(&mut shard.lock(), key, expected_version, now) {
            Some(record) => {
                record.value = Bytes::copy_from_slice(value);
                record.version = expected_version + 1;
                record.expires_at = now + ttl;
                true
            }
            None => false,
        };
        if swapped {
            shard.changed.notify_waiters();
        }
        Ok(swapped)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let shard = self.shard(key);
        if shard.lock().remove(key).is_some() {
            shard.changed.notify_waiters();
        }
        Ok(())
    }

    async fn commit_login(&self, c: LoginCommit<'_>) -> StoreResult<bool> {
        let login_shard = self.shard(c.login_key);
        let session_shard = self.shard(c.session_key);
        let now = Instant::now();
        let cap = self.per_shard;
        let committed = if std::ptr::eq(login_shard, session_shard) {
            let mut map = login_shard.lock();
            commit_in(&mut map, None, cap, &c, now)?
        } else {
            // Two shard locks, always taken in address order so that two commits
            // can never wait on each other.
            let (first, second) = if (login_shard as *const Shard) < (session_shard as *const Shard)
            {
                (login_shard, session_shard)
            } else {
                (session_shard, login_shard)
            };
            let mut first_map = first.lock();
            let mut second_map = second.lock();
            let (login_map, session_map) = if std::ptr::eq(first, login_shard) {
                (&mut *first_map, &mut *second_map)
            } else {
                (&mut *second_map, &mut *first_map)
            };
            commit_in(login_map, Some(session_map), cap, &c, now)?
        };
        if committed {
            login_shard.changed.notify_waiters();
            session_shard.changed.notify_waiters();
        }
        Ok(committed)
    }

    async fn wait_for_change(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> StoreResult<()> {
        let notified = self.shard(key).changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.live_version(key) != seen {
            return Ok(());
        }
        // Any write to the shard wakes us; expiry does not, hence the timeout.
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }

    async fn count_live(&self, prefix: &str) -> StoreResult<u64> {
        let now = Instant::now();
        let count = self
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .iter()
                    .filter(|(k, r)| k.starts_with(prefix) && r.is_live(now))
                    .count() as u64
            })
            .sum();
        Ok(count)
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let now = Instant::now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.lock();
            let before = map.len();
            map.retain(|_, r| r.is_live(now));
            removed += (before - map.len()) as u64;
        }
        Ok(removed)
    }

    async fn purge(&self, prefix: &str) -> StoreResult<u64> {
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.lock();
            let before = map.len();
            map.retain(|k, _| !k.starts_with(prefix));
            removed += (before - map.len()) as u64;
            shard.changed.notify_waiters();
        }
        Ok(removed)
    }
}

/// The commit inside held shard locks. `session_map` is `None` when both keys
/// live in the same shard.
fn commit_in(
    login_map: &mut Records,
    session_map: Option<&mut Records>,
    cap: usize,
    c: &LoginCommit<'_>,
    now: Instant,
) -> StoreResult<bool> {
    if live_at_version(login_map, c.login_key, c.login_version, now).is_none() {
        return Ok(false);
    }
    let session_map = match session_map {
        Some(map) => map,
        None => &mut *login_map,
    };
    if !insert_live(
        session_map,
        cap,
        c.session_key,
        c.session_value,
        c.session_ttl,
        now,
    )? {
        return Ok(false);
    }
    let record = live_at_version(login_map, c.login_key, c.login_version, now)
        .expect("checked above under the same lock");
    record.value = Bytes::copy_from_slice(c.login_value);
    record.version = c.login_version + 1;
    record.expires_at = now + c.login_ttl;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_store_refuses_new_records_and_keeps_the_old() {
        let store = MemoryStore::with_capacity(SHARDS * 2);
        let ttl = Duration::from_secs(60);
        let mut stored = Vec::new();
        let refused = loop {
            let key = format!("k{}", stored.len());
            match store.insert_if_absent(&key, b"v", ttl).await {
                Ok(true) => stored.push(key),
                Ok(false) => panic!("a fresh key was present"),
                Err(error) => break error,
            }
            assert!(
                stored.len() <= SHARDS * 2,
                "the store grew past its capacity"
            );
        };
        assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
        // Nothing was lost, and existing records still change.
        for key in &stored {
            let current = store.get(key).await.unwrap().unwrap();
            assert!(
                store
                    .compare_and_swap(key, current.version, b"w", ttl)
                    .await
                    .unwrap()
            );
        }
    }

    #[tokio::test]
    async fn expired_records_make_room() {
        let store = MemoryStore::with_capacity(SHARDS);
        // Far more inserts than the capacity, each dead at once: room is
        // reclaimed from the dead, so none is refused.
        for i in 0..SHARDS * 20 {
            assert!(
                store
                    .insert_if_absent(&format!("k{i}"), b"v", Duration::ZERO)
                    .await
                    .unwrap()
            );
        }
    }
}
