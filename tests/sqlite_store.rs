//! What only the SQLite backend promises beyond the shared contract: records
//! survive a restart, and expired rows are physically removed by the sweeper.

use std::sync::Arc;
use std::time::Duration;

use latchkey::store::sqlite::SqliteStore;
use latchkey::store::{Store, spawn_sweeper};
use sqlx::Connection;

#[tokio::test]
async fn records_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latchkey.db");
    let path = path.to_str().unwrap();
    {
        let store = SqliteStore::open(path).await.unwrap();
        assert!(
            store
                .insert_if_absent("k", b"kept", Duration::from_secs(600))
                .await
                .unwrap()
        );
    }
    let reopened = SqliteStore::open(path).await.unwrap();
    let record = reopened
        .get("k")
        .await
        .unwrap()
        .expect("the record survived");
    assert_eq!(record.value[..], *b"kept");
    assert!(
        !reopened
            .insert_if_absent("k", b"again", Duration::from_secs(600))
            .await
            .unwrap()
    );
}

/// Rows in the table, expired or not, read over a separate connection.
async fn raw_rows(path: &str) -> i64 {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM latchkey_kv")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sweeper_removes_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latchkey.db");
    let path = path.to_str().unwrap().to_owned();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    store
        .insert_if_absent("short", b"x", Duration::from_millis(200))
        .await
        .unwrap();
    store
        .insert_if_absent("long", b"y", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(raw_rows(&path).await, 2);
    let sweeper = spawn_sweeper(&store, Duration::from_millis(100));
    // Poll the raw table (not the store, whose reads already hide expired
    // rows) until the sweeper has deleted the expired one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while raw_rows(&path).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired row was never swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.get("long").await.unwrap().is_some());
    // The sweeper stops when the store goes away.
    drop(store);
    tokio::time::timeout(Duration::from_secs(5), sweeper)
        .await
        .expect("the sweeper ended with its store")
        .unwrap();
}
