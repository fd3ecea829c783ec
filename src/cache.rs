//! A bounded, sharded map for per-process caches of values that are costly to
//! compute and cheap to clone (decoded session records, decrypted cookies).
//!
//! Each shard holds at most a fixed number of entries and drops an arbitrary
//! one to make room; every operation locks one shard for one map operation.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

// foldhash rather than SipHash: keys are long (cookie values, session ids) and
// looked up on every request. It is seeded at random per map, and only
// values that passed authentication are ever inserted.
use foldhash::fast::RandomState;

const SHARDS: usize = 16;

/// A map of at most about `capacity` entries, keyed by string.
pub(crate) struct BoundedCache<V> {
    shards: Vec<Mutex<HashMap<String, V, RandomState>>>,
    hasher: RandomState,
    per_shard: usize,
}

/// Shows the size only: keys and values may be secrets.
impl<V> std::fmt::Debug for BoundedCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedCache")
            .field("capacity", &(self.per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

impl<V: Clone> BoundedCache<V> {
    /// A cache of at most about `capacity` entries (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, V, RandomState>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // Each critical section is one map operation: a panic cannot leave a
        // shard half-updated, so poisoning is ignored.
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value cached under `key`.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        self.shard(key).get(key).cloned()
    }

    /// Caches `value` under `key`, replacing an older one.
    pub(crate) fn put(&self, key: &str, value: V) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(key);
        if let Some(slot) = shard.get_mut(key) {
            *slot = value;
            return;
        }
        if shard.len() >= self.per_shard
            && let Some(victim) = shard.keys().next().cloned()
        {
            shard.remove(&victim);
        }
        shard.insert(key.to_owned(), value);
    }

    /// Forgets `key`.
    pub(crate) fn remove(&self, key: &str) {
        self.shard(key).remove(key);
    }

    /// How many entries are cached.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_capacity() {
        let cache = BoundedCache::new(64);
        for i in 0..10_000 {
            cache.put(&format!("key-{i}"), i);
        }
        assert!(cache.len() <= 64, "{} entries", cache.len());
        assert!(cache.len() >= 32, "evicted too eagerly: {}", cache.len());
    }

    #[test]
    fn replaces_and_forgets() {
        let cache = BoundedCache::new(64);
        cache.put("k", 1);
        cache.put("k", 2);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("k"), Some(2));
        cache.remove("k");
        assert_eq!(cache.get("k"), None);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = BoundedCache::new(0);
        cache.put("k", 1);
        assert_eq!(cache.get("k"), None);
        assert_eq!(cache.len(), 0);
    }
}
