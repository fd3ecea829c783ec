//! `sqlite://PATH`: the embedded default store. Survives restarts; one file.
//!
//! One table `latchkey_kv(key, value, version, expires_at)`; `expires_at` is in
//! Unix milliseconds and a row past it counts as absent everywhere. The database
//! runs in WAL mode so readers never block the writer. Every contract operation
//! is a single SQL statement except the login commit, which is one transaction
//! that writes first (so it takes the write lock at once and cannot deadlock on
//! a read-to-write upgrade).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Executor, Row};

use super::{ChangeSignal, LoginCommit, Store, StoreError, StoreResult, Versioned};
use crate::clock::{Clock, SystemClock, duration_ms};
use crate::secret::random_u64;

/// Other processes' writes to the same file are noticed within this interval.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The SQLite backend.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    changes: ChangeSignal,
    readers: Readers,
}

/// The read path: a few read-only connections to the same file, each
/// behind a lock, used in place by `get` (a read in WAL mode never waits on
/// a writer, and takes microseconds); sqlx's path when every reader is
/// busy, or when the database is not a plain file.
struct Readers(Vec<std::sync::Mutex<rusqlite::Connection>>);

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Readers({})", self.0.len())
    }
}

const GET: &str = "SELECT value, version FROM latchkey_kv WHERE key = ?1 AND expires_at > ?2";

/// What a reader found: the record, or that it could not read (busy,
/// or an error sqlx's path will report as it should).
enum Read {
    Found(Option<Versioned>),
    Unread,
}

impl Readers {
    /// One read-only connection per core to the file at `path` (none for a
    /// path with options or an in-memory database: those stay on sqlx).
    fn open(path: &str) -> Self {
        let plain_file = !path.starts_with(':') && !path.contains('?') && !path.contains("mode=");
        if !plain_file {
            return Self(Vec::new());
        }
        let count = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let readers = (0..count)
            .filter_map(|_| {
                let connection = rusqlite::Connection::open_with_flags(path, flags).ok()?;
                // Never wait in place: a busy file falls back to sqlx's path.
                connection.busy_timeout(Duration::ZERO).ok()?;
                connection.prepare_cached(GET).ok()?;
                Some(std::sync::Mutex::new(connection))
            })
            .collect();
        Self(readers)
    }

    /// `key`'s live record, read by the first free reader.
    fn get(&self, key: &str, now: i64) -> Read {
        for reader in &self.0 {
            let Ok(connection) = reader.try_lock() else {
                continue;
            };
            let found = connection.prepare_cached(GET).and_then(|mut statement| {
                let mut rows = statement.query(rusqlite::params![key, now])?;
                match rows.next()? {
                    None => Ok(None),
                    Some(row) => Ok(Some(Versioned {
                        value: row.get::<_, Vec<u8>>(0)?.into(),
                        version: row.get::<_, i64>(1)? as u64,
                    })),
                }
            });
            return match found {
                Ok(found) => Read::Found(found),
                Err(_) => Read::Unread,
            };
        }
        Read::Unread
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its table.
    pub async fn open(path: &str) -> StoreResult<Self> {
        if path.is_empty() {
            return Err(StoreError::Config(
                "sqlite:// needs a file path, e.g. sqlite://latchkey.db".into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|e| StoreError::Config(format!("sqlite path {path:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            // A file connection does not go stale; no ping before each query.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening sqlite {path:?}: {e}")))?;
        pool.execute(
            "CREATE TABLE IF NOT EXISTS latchkey_kv (
                key TEXT PRIMARY KEY NOT NULL,
                value BLOB NOT NULL,
                version INTEGER NOT NULL,
                expires_at INTEGER NOT NULL
            ) WITHOUT ROWID",
        )
        .await
        .map_err(unavailable)?;
        pool.execute("CREATE INDEX IF NOT EXISTS latchkey_kv_expires ON latchkey_kv (expires_at)")
            .await
            .map_err(unavailable)?;
        Ok(Self {
            pool,
            changes: ChangeSignal::new(POLL_INTERVAL),
            readers: Readers::open(path),
        })
    }

    async fn live_version(&self, key: &str) -> StoreResult<Option<u64>> {
        Ok(self.get(key).await?.map(|v| v.version))
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

fn now_ms() -> i64 {
    to_sql(SystemClock.now_ms())
}

fn expiry(ttl: Duration) -> i64 {
    now_ms().saturating_add(to_sql(duration_ms(ttl)))
}

fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A fresh first version (random, so a re-inserted key never reuses one).
fn initial_version() -> i64 {
    to_sql((random_u64() >> 16) | 1)
}

const INSERT_IF_ABSENT: &str = "INSERT INTO latchkey_kv (key, value, version, expires_at)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
         value = excluded.value, version = excluded.version, expires_at = excluded.expires_at
     WHERE latchkey_kv.expires_at <= ?5";

const COMPARE_AND_SWAP: &str = "UPDATE latchkey_kv
     SET value = ?1, version = version + 1, expires_at = ?2
     WHERE key = ?3 AND version = ?4 AND expires_at > ?5";

#[async_trait]
impl Store for SqliteStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let done = sqlx::query(INSERT_IF_ABSENT)
            .bind(key)
            .bind(value)
            .bind(initial_version())
            .bind(expiry(ttl))
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        let inserted = done.rows_affected() == 1;
        if inserted {
            self.changes.notify();
        }
        Ok(inserted)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>> {
        if let Read::Found(found) = self.readers.get(key, now_ms()) {
            return Ok(found);
        }
        let row = sqlx::query(GET)
            .bind(key)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
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
        let done = sqlx::query(COMPARE_AND_SWAP)
            .bind(value)
            .bind(expiry(ttl))
            .bind(key)
            .bind(to_sql(expected_version))
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        let swapped = done.rows_affected() == 1;
        if swapped {
            self.changes.notify();
        }
        Ok(swapped)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM latchkey_kv WHERE key = ?1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        self.changes.notify();
        Ok(())
    }

    async fn commit_login(&self, c: LoginCommit<'_>) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let swapped = sqlx::query(COMPARE_AND_SWAP)
            .bind(c.login_value)
            .bind(expiry(c.login_ttl))
            .bind(c.login_key)
            .bind(to_sql(c.login_version))
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected()
            == 1;
        if !swapped {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(false);
        }
        let inserted = sqlx::query(INSERT_IF_ABSENT)
            .bind(c.session_key)
            .bind(c.session_value)
            .bind(initial_version())
            .bind(expiry(c.session_ttl))
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected()
            == 1;
        if !inserted {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(false);
        }
        tx.commit().await.map_err(unavailable)?;
        self.changes.notify();
        Ok(true)
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
            "SELECT COUNT(*) FROM latchkey_kv WHERE substr(key, 1, length(?1)) = ?1 AND expires_at > ?2",
        )
        .bind(prefix)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM latchkey_kv WHERE expires_at <= ?1")
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn purge(&self, prefix: &str) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM latchkey_kv WHERE substr(key, 1, length(?1)) = ?1")
            .bind(prefix)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        self.changes.notify();
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read path reads the file itself: what a writer (this store's
    /// sqlx pool, or another process's store on the same file) committed is
    /// what it returns, with the version; and it reads while a writer holds
    /// the write lock (WAL: readers never wait on it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_every_committed_write_and_never_wait_on_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read.db");
        let path = path.to_str().unwrap();
        let store = SqliteStore::open(path).await.unwrap();
        let other = SqliteStore::open(path).await.unwrap();
        assert!(store.readers.0.len() >= 2, "{:?}", store.readers);
        let ttl = Duration::from_secs(60);
        assert!(store.insert_if_absent("k", b"one", ttl).await.unwrap());
        let Read::Found(Some(first)) = store.readers.get("k", now_ms()) else {
            panic!("the reader did not find the record");
        };
        assert_eq!(&first.value[..], b"one");
        assert!(
            other
                .compare_and_swap("k", first.version, b"two", ttl)
                .await
                .unwrap()
        );
        let Read::Found(Some(second)) = store.readers.get("k", now_ms()) else {
            panic!("the reader did not find the record");
        };
        assert_eq!(
            (&second.value[..], second.version),
            (&b"two"[..], first.version + 1)
        );
        // A writer holds the write lock; the reader still answers at once.
        let writer = rusqlite::Connection::open(path).unwrap();
        writer
            .execute_batch("BEGIN IMMEDIATE; DELETE FROM latchkey_kv;")
            .unwrap();
        let Read::Found(Some(during)) = store.readers.get("k", now_ms()) else {
            panic!("the reader waited on or failed under a writer");
        };
        assert_eq!(during.version, second.version, "saw an uncommitted delete");
        writer.execute_batch("COMMIT").unwrap();
        assert!(matches!(
            store.readers.get("k", now_ms()),
            Read::Found(None)
        ));
        // Each read ends its read transaction: nothing pins an old snapshot,
        // so a checkpoint can take the whole WAL back into the file.
        assert!(matches!(
            store.readers.get("k", now_ms()),
            Read::Found(None)
        ));
        let (busy, _, _): (i64, i64, i64) = writer
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0, "a reader still holds a snapshot");
        // Expired is absent.
        assert!(
            store
                .insert_if_absent("e", b"v", Duration::from_millis(1))
                .await
                .unwrap()
        );
        assert!(matches!(
            store.readers.get("e", now_ms() + 10),
            Read::Found(None)
        ));
    }

    #[tokio::test]
    async fn a_database_that_is_not_a_plain_file_stays_on_sqlx() {
        let store = SqliteStore::open(":memory:").await.unwrap();
        assert!(store.readers.0.is_empty());
        assert!(matches!(store.readers.get("k", now_ms()), Read::Unread));
        assert!(store.get("k").await.unwrap().is_none());
    }
}
