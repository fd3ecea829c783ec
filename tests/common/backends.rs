//! One store per test, isolated from every other test (fresh memory store,
//! fresh SQLite file, or a unique key namespace on the shared servers).

use std::sync::Arc;

use latchkey::secret::random_token;
use latchkey::store::Store;

/// A store for one test, plus whatever must live as long as it.
#[derive(Clone)]
pub struct TestBackend {
    pub store: Arc<dyn Store>,
    pub name: &'static str,
    _dir: Option<Arc<tempfile::TempDir>>,
}

pub async fn memory(_test: &str) -> Option<TestBackend> {
    Some(TestBackend {
        store: Arc::new(latchkey::store::memory::MemoryStore::new()),
        name: "memory",
        _dir: None,
    })
}

pub async fn sqlite(_test: &str) -> Option<TestBackend> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("latchkey.db");
    let store = latchkey::store::sqlite::SqliteStore::open(path.to_str().expect("utf-8 path"))
        .await
        .expect("open sqlite store");
    Some(TestBackend {
        store: Arc::new(store),
        name: "sqlite",
        _dir: Some(Arc::new(dir)),
    })
}

/// The URL in `var`, or `None` after printing why the test is skipped.
fn external_url(var: &str, feature_enabled: bool, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => {
            assert!(
                feature_enabled,
                "{var} is set but latchkey was built without that store's feature; \
                 run the tests with --all-features"
            );
            Some(url)
        }
        _ => {
            eprintln!("skipping {test}: set {var} to run it against a real server");
            None
        }
    }
}

/// A namespace no other test run uses.
fn unique_namespace(test: &str) -> String {
    format!("latchkey-test:{test}:{}:", &random_token()[..12])
}

pub async fn redis(test: &str) -> Option<TestBackend> {
    let url = external_url("LATCHKEY_TEST_REDIS", cfg!(feature = "redis"), test)?;
    #[cfg(feature = "redis")]
    {
        let store = latchkey::store::redis::RedisStore::connect(&url, &unique_namespace(test))
            .await
            .expect("connect to the Redis server named by LATCHKEY_TEST_REDIS");
        Some(TestBackend {
            store: Arc::new(store),
            name: "redis",
            _dir: None,
        })
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (url, unique_namespace(test));
        None
    }
}

/// A Redis Cluster (`LATCHKEY_TEST_REDIS_CLUSTER`, a `redis+cluster://`
/// URL; `.ci/run` starts one with `tests/redis/cluster.sh`).
pub async fn redis_cluster(test: &str) -> Option<TestBackend> {
    by_url("LATCHKEY_TEST_REDIS_CLUSTER", "redis_cluster", test).await
}

/// Redis behind Sentinel (`LATCHKEY_TEST_REDIS_SENTINEL`, a
/// `redis+sentinel://` URL; `.ci/run` starts one with
/// `tests/redis/sentinel.sh`).
pub async fn redis_sentinel(test: &str) -> Option<TestBackend> {
    by_url("LATCHKEY_TEST_REDIS_SENTINEL", "redis_sentinel", test).await
}

/// The Redis store at the URL in `var`, opened as `serve` opens it, under
/// a namespace of this test's.
async fn by_url(var: &str, name: &'static str, test: &str) -> Option<TestBackend> {
    let url = external_url(var, cfg!(feature = "redis"), test)?;
    let namespace: String =
        url::form_urlencoded::byte_serialize(unique_namespace(test).as_bytes()).collect();
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = latchkey::store::connect(&format!("{url}{separator}prefix={namespace}"))
        .await
        .unwrap_or_else(|e| panic!("connect to the store named by {var}: {e}"));
    Some(TestBackend {
        store,
        name,
        _dir: None,
    })
}

pub async fn postgres(test: &str) -> Option<TestBackend> {
    let url = external_url("LATCHKEY_TEST_POSTGRES", cfg!(feature = "postgres"), test)?;
    #[cfg(feature = "postgres")]
    {
        let store =
            latchkey::store::postgres::PostgresStore::connect(&url, &unique_namespace(test))
                .await
                .expect("connect to the PostgreSQL server named by LATCHKEY_TEST_POSTGRES");
        Some(TestBackend {
            store: Arc::new(store),
            name: "postgres",
            _dir: None,
        })
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (url, unique_namespace(test));
        None
    }
}
