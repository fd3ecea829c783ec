//! Cross-replica wake-ups: a waiter in one store instance is woken by a write
//! made through another instance (another replica) by notification — Redis
//! pub/sub, PostgreSQL LISTEN/NOTIFY — not by polling: the fallback poll is
//! set to an hour here, so only a notification can end the wait in time.

use std::sync::Arc;
use std::time::Duration;

use latchkey::secret::random_token;
use latchkey::store::Store;

const NO_POLLING: Duration = Duration::from_secs(3600);
const TTL: Duration = Duration::from_secs(60);

async fn woken_by_another_instance(
    waiter: Arc<dyn Store>,
    writer: Arc<dyn Store>,
    elsewhere: Arc<dyn Store>,
) {
    waiter.insert_if_absent("k", b"v1", TTL).await.unwrap();
    let version = waiter.get("k").await.unwrap().unwrap().version;
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.wait_for_change("k", Some(version), NO_POLLING).await })
    };
    // Control: the same key written in another namespace must not wake it.
    elsewhere
        .insert_if_absent("k", b"other", TTL)
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        while !waiting.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        early.is_err(),
        "the waiter returned without a change to its key"
    );
    // The real write, through the other instance.
    assert!(
        writer
            .compare_and_swap("k", version, b"v2", TTL)
            .await
            .unwrap()
    );
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("not woken by the other instance's write")
        .unwrap()
        .unwrap();
    for store in [&waiter, &elsewhere] {
        store.purge("").await.unwrap();
    }
}

/// Runs the scenario with stores opened by `open(namespace)`.
async fn across_instances<F, Fut>(open: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let ns = format!("notify-{}:", &random_token()[..10]);
    let other = format!("notify-other-{}:", &random_token()[..10]);
    woken_by_another_instance(open(ns.clone()).await, open(ns).await, open(other).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wakes_waiters_across_instances() {
    use latchkey::store::redis::RedisStore;
    let Ok(url) = std::env::var("LATCHKEY_TEST_REDIS") else {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS to run it");
        return;
    };
    across_instances(|ns| {
        let url = url.clone();
        async move {
            let store = RedisStore::connect_with_poll(
                &latchkey::store::redis::Target::Server(url.clone()),
                &ns,
                NO_POLLING,
            )
            .await;
            Arc::new(store.unwrap()) as Arc<dyn Store>
        }
    })
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wakes_waiters_across_instances() {
    use latchkey::store::postgres::PostgresStore;
    let Ok(url) = std::env::var("LATCHKEY_TEST_POSTGRES") else {
        eprintln!("skipping: set LATCHKEY_TEST_POSTGRES to run it");
        return;
    };
    across_instances(|ns| {
        let url = url.clone();
        async move {
            let store = PostgresStore::connect_with_poll(&url, &ns, NO_POLLING).await;
            Arc::new(store.unwrap()) as Arc<dyn Store>
        }
    })
    .await;
}

/// On a Redis Cluster, each instance listens on one node, and a write's
/// message is published on the primary of the key's slot: the cluster
/// relays it to every node. The waiter listens on one seed node, the writer
/// on another, and the key lives wherever its slot is.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_wakes_waiters_across_instances_and_nodes() {
    use latchkey::store::redis::{RedisStore, Target};
    let Ok(url) = std::env::var("LATCHKEY_TEST_REDIS_CLUSTER") else {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_CLUSTER to run it");
        return;
    };
    let hosts = url
        .trim_start_matches("redis+cluster://")
        .trim_end_matches('/')
        .split(',')
        .map(|host| format!("redis://{host}"))
        .collect::<Vec<_>>();
    assert!(hosts.len() >= 2, "name two nodes or more: {url}");
    let turn = std::sync::atomic::AtomicUsize::new(0);
    across_instances(|ns| {
        // Each instance's first seed (where it subscribes) is another node.
        let mut seeds = hosts.clone();
        seeds.rotate_left(turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % hosts.len());
        async move {
            let store =
                RedisStore::connect_with_poll(&Target::Cluster(seeds), &ns, NO_POLLING).await;
            Arc::new(store.unwrap()) as Arc<dyn Store>
        }
    })
    .await;
}

/// Behind Sentinel, each instance subscribes on the master the sentinels
/// name; a write through another instance wakes the waiter with polling
/// off.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_wakes_waiters_across_instances() {
    use latchkey::store::redis::{RedisStore, SentinelTarget, Target};
    let Ok(url) = std::env::var("LATCHKEY_TEST_REDIS_SENTINEL") else {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_SENTINEL to run it");
        return;
    };
    // redis+sentinel://HOST:PORT,…/MASTER/DB, as .ci/run's set gives it.
    let rest = url.trim_start_matches("redis+sentinel://");
    let (hosts, path) = rest.split_once('/').unwrap();
    let mut path = path.split(['/', '?']);
    let sentinels = hosts
        .split(',')
        .map(|h| {
            let (host, port) = h.rsplit_once(':').unwrap();
            (host.to_owned(), port.parse().unwrap())
        })
        .collect();
    let target = Target::Sentinel(SentinelTarget {
        sentinels,
        master_name: path.next().unwrap().to_owned(),
        db: path.next().and_then(|db| db.parse().ok()).unwrap_or(0),
        username: None,
        password: None,
        sentinel_password: None,
        tls: false,
    });
    across_instances(|ns| {
        let target = target.clone();
        async move {
            let store = RedisStore::connect_with_poll(&target, &ns, NO_POLLING).await;
            Arc::new(store.unwrap()) as Arc<dyn Store>
        }
    })
    .await;
}
