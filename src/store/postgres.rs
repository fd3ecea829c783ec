//! `postgres://…`: a shared store for several replicas.
//!
//! One table `latchkey_kv(key, value, version, expires_at)`, created on first
//! start under an advisory lock (two replicas starting at once do not race).
//! Expiry is judged by the server's clock, so replicas agree on it. Every
//! contract operation is one statement (`INSERT … ON CONFLICT … WHERE expired`,
//! `UPDATE … WHERE version = $n`), and the login commit is one transaction. The
//! sweep deletes in small batches with `SKIP LOCKED`, never locking the table.
//! A trigger announces every changed key with `NOTIFY`, and each store LISTENs,
//! so waiters in every replica wake as soon as a record changes.

use std::time::Duration;

use async_trait::async_trait;
use std::sync::Arc;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use super::{ChangeSignal, LoginCommit, Store, StoreError, StoreResult, Versioned, redact_url};
use crate::clock::duration_ms;
use crate::secret::random_u64;

/// Other replicas' writes wake waiters through LISTEN/NOTIFY; this poll is
/// the fallback for a notification lost while the listener reconnects.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The notification channel; the payload is the changed key.
const CHANNEL: &str = "latchkey_changes";

/// The PostgreSQL backend.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    namespace: String,
    changes: Arc<ChangeSignal>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

/// How long one store operation may take, waiting for a pooled connection
/// included: a server that stops answering (a partition can leave the socket
/// open) fails the request with a 503 instead of hanging it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection pool's size.
const MAX_CONNECTIONS: u32 = 10;

/// Whether `e` says the connection is gone (the network dropped it, or the
/// server ended it: a restart or an administrator's `pg_terminate_backend`).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        // Class 08 (connection exception), 57P01..57P03 (shutdown, crash).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

/// Runs `operation` within [`OPERATION_TIMEOUT`].
async fn bounded<T>(
    operation: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> StoreResult<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable(format!(
            "postgres: no answer within {} s",
            OPERATION_TIMEOUT.as_secs()
        ))),
    }
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(duration_ms(ttl)).unwrap_or(i64::MAX)
}

fn initial_version() -> i64 {
    ((random_u64() >> 16) | 1) as i64
}

const INSERT_IF_ABSENT: &str = "INSERT INTO latchkey_kv (key, value, version, expires_at)
     VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
     ON CONFLICT (key) DO UPDATE SET
         value = EXCLUDED.value, version = EXCLUDED.version, expires_at = EXCLUDED.expires_at
     WHERE latchkey_kv.expires_at <= now()";

const COMPARE_AND_SWAP: &str = "UPDATE latchkey_kv
     SET value = $1, version = version + 1, expires_at = now() + $2 * interval '1 millisecond'
     WHERE key = $3 AND version = $4 AND expires_at > now()";

impl PostgresStore {
    /// Connects, creates the schema if needed, and keys every record under
    /// `namespace` (so several deployments or test runs can share a database).
    pub async fn connect(url: &str, namespace: &str) -> StoreResult<Self> {
        Self::connect_with_poll(url, namespace, POLL_INTERVAL).await
    }

    /// [`PostgresStore::connect`] with another fallback poll interval.
    pub async fn connect_with_poll(
        url: &str,
        namespace: &str,
        poll_interval: Duration,
    ) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // Fail fast when the server is away: requests get a 503 instead of hanging.
            .acquire_timeout(Duration::from_secs(2))
            // No ping before each query (a second round trip per request); a
            // connection the server dropped fails its query instead, and reads
            // retry once on a fresh connection.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("connecting to {}: {e}", redact_url(url)))
            })?;
        let mut tx = pool.begin().await.map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock(7355608)")
            .await
            .map_err(unavailable)?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS latchkey_kv (
                key TEXT PRIMARY KEY,
                value BYTEA NOT NULL,
                version BIGINT NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL
            )",
        )
        .await
        .map_err(unavailable)?;
        tx.execute("CREATE INDEX IF NOT EXISTS latchkey_kv_expires ON latchkey_kv (expires_at)")
            .await
            .map_err(unavailable)?;
        // Every change announces its key, so waiters in other replicas wake
        // at once (a trigger: no extra round trip per write).
        tx.execute(
            "CREATE OR REPLACE FUNCTION latchkey_notify() RETURNS trigger AS $$
             BEGIN
                 PERFORM pg_notify('latchkey_changes', COALESCE(NEW.key, OLD.key));
                 RETURN NULL;
             END $$ LANGUAGE plpgsql",
        )
        .await
        .map_err(unavailable)?;
        tx.execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'latchkey_kv_notify') THEN
                     CREATE TRIGGER latchkey_kv_notify AFTER INSERT OR UPDATE OR DELETE
                     ON latchkey_kv FOR EACH ROW EXECUTE FUNCTION latchkey_notify();
                 END IF;
             END $$",
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let changes = Arc::new(ChangeSignal::new(poll_interval));
        let mut listener = PgListener::connect_with(&pool).await.map_err(unavailable)?;
        listener.listen(CHANNEL).await.map_err(unavailable)?;
        let listener = tokio::spawn(relay_notifications(
            listener,
            namespace.to_owned(),
            changes.clone(),
        ));
        Ok(Self {
            pool,
            namespace: namespace.to_owned(),
            changes,
            listener,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    async fn live_version(&self, key: &str) -> StoreResult<Option<u64>> {
        Ok(self.get(key).await?.map(|v| v.version))
    }
}

/// Wakes local waiters for every change to a key of `namespace`. The listener
/// reconnects by itself after a lost connection; polling covers the gap.
async fn relay_notifications(
    mut listener: PgListener,
    namespace: String,
    changes: Arc<ChangeSignal>,
) {
    loop {
        match listener.recv().await {
            Ok(notification) => {
                if notification.payload().starts_with(&namespace) {
                    changes.notify();
                }
            }
            Err(error) => {
                tracing::debug!(%error, "LISTEN connection lost; polling until it is back");
                changes.notify();
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let done = bounded(
            sqlx::query(INSERT_IF_ABSENT)
                .bind(self.key(key))
                .bind(value)
                .bind(initial_version())
                .bind(millis(ttl))
                .execute(&self.pool),
        )
        .await?;
        let inserted = done.rows_affected() == 1;
        if inserted {
            self.changes.notify();
        }
        Ok(inserted)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>> {
        let key = self.key(key);
        let read = || {
            sqlx::query(
                "SELECT value, version FROM latchkey_kv WHERE key = $1 AND expires_at > now()",
            )
            .bind(&key)
            .fetch_optional(&self.pool)
        };
        let row = bounded(async {
            // A read is safe to repeat: on another connection when the pooled
            // one turns out to be dead (connections are not pinged first, and
            // after a server restart every idle one is).
            let mut attempts = 1;
            loop {
                match read().await {
                    Err(e) if connection_lost(&e) && attempts <= MAX_CONNECTIONS => attempts += 1,
                    result => break result,
                }
            }
        })
        .await?;
        Ok(row.map(|row| Versioned {
            value: row.get::<Vec<u8>, _>(0).into(),
            version: row.get::<i64, _>(1) as u64,
        }))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        let done = bounded(
            sqlx::query(COMPARE_AND_SWAP)
                .bind(value)
                .bind(millis(ttl))
                .bind(self.key(key))
                .bind(expected_version as i64)
                .execute(&self.pool),
        )
        .await?;
        let swapped = done.rows_affected() == 1;
        if swapped {
            self.changes.notify();
        }
        Ok(swapped)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        bounded(
            sqlx::query("DELETE FROM latchkey_kv WHERE key = $1")
                .bind(self.key(key))
                .execute(&self.pool),
        )
        .await?;
        self.changes.notify();
        Ok(())
    }

    async fn commit_login(&self, c: LoginCommit<'_>) -> StoreResult<bool> {
        let committed = bounded(self.commit_login_tx(c)).await?;
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
        let row = sqlx::query(
            "SELECT COUNT(*) FROM latchkey_kv WHERE starts_with(key, $1) AND expires_at > now()",
        )
        .bind(self.key(prefix))
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let mut removed = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM latchkey_kv WHERE ctid IN (
                     SELECT ctid FROM latchkey_kv
                     WHERE starts_with(key, $1) AND expires_at <= now()
                     LIMIT 1000 FOR UPDATE SKIP LOCKED)",
            )
            .bind(&self.namespace)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            removed += done.rows_affected();
            if done.rows_affected() < 1000 {
                return Ok(removed);
            }
        }
    }

    async fn purge(&self, prefix: &str) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM latchkey_kv WHERE starts_with(key, $1)")
            .bind(self.key(prefix))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        self.changes.notify();
        Ok(done.rows_affected())
    }
}

impl PostgresStore {
    /// The login commit as one transaction (see [`Store::commit_login`]).
    async fn commit_login_tx(&self, c: LoginCommit<'_>) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let swapped = sqlx::query(COMPARE_AND_SWAP)
            .bind(c.login_value)
            .bind(millis(c.login_ttl))
            .bind(self.key(c.login_key))
            .bind(c.login_version as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !swapped {
            tx.rollback().await?;
            return Ok(false);
        }
        let inserted = sqlx::query(INSERT_IF_ABSENT)
            .bind(self.key(c.session_key))
            .bind(c.session_value)
            .bind(initial_version())
            .bind(millis(c.session_ttl))
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !inserted {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}
