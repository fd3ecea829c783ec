//! A store wrapper that lets a test see and steer where callers are:
//! - `hold_reads(prefix, n)`: the next `n` reads of keys under `prefix` each
//!   return only once all `n` have read, so `n` callers are forced to observe
//!   the same state before any of them acts on it;
//! - it records which tasks are parked in `wait_for_change`;
//! - `commit_gate` holds login commits until the test opens it;
//! - `fail_writes(prefix, n)` makes writes fail as if the store were down.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey::store::{LoginCommit, Store, StoreError, StoreResult, Versioned};
use tokio::sync::{Barrier, watch};

use super::idp_double::Gate;
use super::within;

struct ReadHold {
    prefix: String,
    remaining: usize,
    barrier: Arc<Barrier>,
}

pub struct ObservedStore {
    inner: Arc<dyn Store>,
    hold: Mutex<Option<ReadHold>>,
    waiting_tasks: Mutex<HashSet<tokio::task::Id>>,
    waiters: watch::Sender<usize>,
    /// Every `commit_login` passes it first (open unless a test closes it).
    pub commit_gate: Gate,
    failing_writes: Mutex<Option<(String, usize)>>,
}

impl ObservedStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            hold: Mutex::new(None),
            waiting_tasks: Mutex::new(HashSet::new()),
            waiters: watch::Sender::new(0),
            commit_gate: Gate::new(true),
            failing_writes: Mutex::new(None),
        })
    }

    /// Makes the next `n` reads of keys starting with `prefix` rendezvous.
    pub fn hold_reads(&self, prefix: &str, n: usize) {
        *self.hold.lock().unwrap() = Some(ReadHold {
            prefix: prefix.into(),
            remaining: n,
            barrier: Arc::new(Barrier::new(n)),
        });
    }

    /// How many distinct tasks have called `wait_for_change` so far.
    pub fn distinct_waiters(&self) -> usize {
        *self.waiters.borrow()
    }

    pub fn subscribe_waiters(&self) -> watch::Receiver<usize> {
        self.waiters.subscribe()
    }

    /// Waits until at least `n` distinct tasks have parked in `wait_for_change`.
    pub async fn wait_for_waiters(&self, n: usize) {
        let mut waiters = self.waiters.subscribe();
        within(&format!("{n} waiting tasks"), waiters.wait_for(|w| *w >= n))
            .await
            .expect("store dropped");
    }

    /// Makes the next `n` writes (insert or CAS) of keys under `prefix`
    /// fail as if the store had gone away, writing nothing.
    pub fn fail_writes(&self, prefix: &str, n: usize) {
        *self.failing_writes.lock().unwrap() = Some((prefix.into(), n));
    }

    fn refuse_write(&self, key: &str) -> StoreResult<()> {
        let mut failing = self.failing_writes.lock().unwrap();
        match failing.as_mut() {
            Some((prefix, n)) if *n > 0 && key.starts_with(prefix.as_str()) => {
                *n -= 1;
                Err(StoreError::Unavailable(
                    "the test made this write fail".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    fn take_hold(&self, key: &str) -> Option<Arc<Barrier>> {
        let mut hold = self.hold.lock().unwrap();
        let h = hold.as_mut()?;
        if h.remaining == 0 || !key.starts_with(&h.prefix) {
            return None;
        }
        h.remaining -= 1;
        Some(h.barrier.clone())
    }
}

#[async_trait]
impl Store for ObservedStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        self.refuse_write(key)?;
        self.inner.insert_if_absent(key, value, ttl).await
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>> {
        let hold = self.take_hold(key);
        let read = self.inner.get(key).await;
        if let Some(barrier) = hold {
            barrier.wait().await;
        }
        read
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.refuse_write(key)?;
        self.inner
            .compare_and_swap(key, expected_version, value, ttl)
            .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    async fn commit_login(&self, commit: LoginCommit<'_>) -> StoreResult<bool> {
        self.commit_gate.pass().await;
        self.inner.commit_login(commit).await
    }

    async fn wait_for_change(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> StoreResult<()> {
        if let Some(task) = tokio::task::try_id() {
            let mut tasks = self.waiting_tasks.lock().unwrap();
            if tasks.insert(task) {
                self.waiters.send_replace(tasks.len());
            }
        }
        self.inner.wait_for_change(key, seen, timeout).await
    }

    async fn count_live(&self, prefix: &str) -> StoreResult<u64> {
        self.inner.count_live(prefix).await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        self.inner.sweep_expired().await
    }

    async fn purge(&self, prefix: &str) -> StoreResult<u64> {
        self.inner.purge(prefix).await
    }
}
