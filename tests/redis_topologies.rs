//! What a Redis deployment of several servers adds to the one-server store:
//! Sentinel's database number honoured, a Sentinel failover and a killed
//! cluster primary followed by a running store without a restart, and
//! `wait_replicas` refusing to count a write no replica has. (The store contract and every
//! interleaving suite run on Cluster and Sentinel too: the `redis_cluster`
//! and `redis_sentinel` backends of `backend_tests!`.)

#![cfg(feature = "redis")]

mod common;

use common::redis_servers::{OwnServers, master_named_by};

use std::time::{Duration, Instant};

use latchkey::store::StoreError;

const TTL: Duration = Duration::from_secs(60);

/// The first sentinel of a `redis+sentinel://` URL.
fn first_sentinel(url: &str) -> String {
    let hosts = url.trim_start_matches("redis+sentinel://");
    hosts.split([',', '/']).next().unwrap().to_owned()
}

/// Whether `key` exists in database `db` of the server at `server`.
async fn exists(server: &str, db: i64, key: &str) -> bool {
    let client = redis::Client::open(format!("{server}/{db}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut con)
        .await
        .unwrap()
        == 1
}

/// oauth2-proxy's Sentinel mode ignores the database (its issue #2052):
/// latchkey's writes land in the one the URL names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_honours_the_database_number() {
    let Ok(url) = std::env::var("LATCHKEY_TEST_REDIS_SENTINEL") else {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_SENTINEL to run it");
        return;
    };
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let prefix = format!("db-test-{}", &latchkey::secret::random_token()[..8]);
    let store = latchkey::store::connect(&format!("{base}/5?prefix={prefix}"))
        .await
        .unwrap();
    assert!(store.insert_if_absent("k", b"v", TTL).await.unwrap());
    let master = master_named_by(&first_sentinel(&url)).await;
    let key = format!("{prefix}:k");
    assert!(exists(&master, 5, &key).await, "not in database 5");
    assert!(!exists(&master, 0, &key).await, "in database 0");
    store.purge("").await.unwrap();
}

/// The sentinels promote the replica (`SENTINEL FAILOVER`, the old master
/// demoted to a replica): a store opened before it follows the new master
/// by itself. Until it has, a command fails fast as unavailable (a 503),
/// never hangs, never succeeds against the demoted master; what was
/// written (and replicated) before is there after. (Seen while writing
/// this test: a write between the promotion and the old master's demotion
/// succeeded on the old master and was gone after the failover.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_without_a_restart() {
    if std::env::var("LATCHKEY_TEST_REDIS_SENTINEL").is_err() {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_SENTINEL to run it (it starts its own set)");
        return;
    }
    let own = OwnServers::start("sentinel.sh", 5);
    let store = latchkey::store::connect(&format!("{}?prefix=failover", own.url))
        .await
        .unwrap();
    assert!(store.insert_if_absent("before", b"v", TTL).await.unwrap());
    let sentinel = first_sentinel(&own.url);
    let old_master = master_named_by(&sentinel).await;
    // Replicated before the failover (WAIT on the master).
    {
        let client = redis::Client::open(old_master.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(acked, 1, "the replica did not take the write");
    }
    let client = redis::Client::open(format!("redis://{sentinel}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("latchkey")
        .query_async(&mut con)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while master_named_by(&sentinel).await == old_master {
        assert!(Instant::now() < deadline, "the sentinels never failed over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_master = master_named_by(&sentinel).await;
    // Until the old master has been told it is a replica, it still takes
    // writes that the failover then drops: that window is what a failover
    // can lose without waiting for replicas (the README's Stores section).
    // Past it:
    let role = async |server: &str| {
        let client = redis::Client::open(server).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut con)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("role:"))
            .unwrap_or_default()
            .to_owned()
    };
    while role(&old_master).await != "slave" {
        assert!(
            Instant::now() < deadline,
            "the old master was never demoted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The store follows: each try either succeeds on the new master or
    // fails fast as unavailable.
    let mut failures = 0;
    let written = loop {
        let started = Instant::now();
        match store.insert_if_absent("after", b"v", TTL).await {
            Ok(written) => break written,
            Err(StoreError::Unavailable(_)) => failures += 1,
            Err(other) => panic!("not an outage: {other}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a try hung");
        assert!(
            Instant::now() < deadline,
            "the store never followed the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(written);
    assert!(failures <= 3, "{failures} failed tries after the failover");
    assert!(
        exists(&new_master, 0, "failover:after").await,
        "not on the new master"
    );
    assert!(
        store.get("before").await.unwrap().is_some(),
        "a replicated write was lost"
    );
    store.purge("").await.unwrap();
}

/// `wait_replicas=1`: a write counts once the replica has it. With the
/// replica frozen (SIGSTOP), a write is reported unavailable within its
/// `wait_timeout` instead of counting, while a store without the option
/// goes on as if nothing were wrong (the write a failover then loses);
/// with the replica back, writes count again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_refuses_to_count_a_write_no_replica_has() {
    if std::env::var("LATCHKEY_TEST_REDIS_SENTINEL").is_err() {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_SENTINEL to run it (it starts its own set)");
        return;
    }
    let own = OwnServers::start("sentinel.sh", 5);
    let durable = latchkey::store::connect(&format!(
        "{}?prefix=durable&wait_replicas=1&wait_timeout=200ms",
        own.url
    ))
    .await
    .unwrap();
    let hopeful = latchkey::store::connect(&format!("{}?prefix=hopeful", own.url))
        .await
        .unwrap();
    assert!(durable.insert_if_absent("a", b"v", TTL).await.unwrap());
    own.signal(own.first_port + 1, "STOP");
    let started = Instant::now();
    let refused = durable.insert_if_absent("b", b"v", TTL).await;
    let waited = started.elapsed();
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    // The negative control: without the option the same write counts.
    assert!(hopeful.insert_if_absent("b", b"v", TTL).await.unwrap());
    own.signal(own.first_port + 1, "CONT");
    // WAIT undoes nothing: the refused write is on the master, and counts
    // as whatever a retry finds there.
    assert!(durable.get("b").await.unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        match durable
            .insert_if_absent(&format!("c{attempt}"), b"v", TTL)
            .await
        {
            Ok(written) => {
                assert!(written);
                break;
            }
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(other) => panic!("the replica is back, yet: {other}"),
        }
    }
}

/// A connection to a node of a cluster URL that answers (the first may
/// be the one a test killed).
async fn a_node(url: &str) -> redis::aio::MultiplexedConnection {
    let hosts = url.trim_start_matches("redis+cluster://");
    let hosts = hosts.split('/').next().unwrap();
    for host in hosts.split(',') {
        let client = redis::Client::open(format!("redis://{host}")).unwrap();
        if let Ok(con) = client.get_multiplexed_async_connection().await {
            return con;
        }
    }
    panic!("no node of {url} answers");
}

/// The port of the primary serving `key`'s slot, as a node sees it (none
/// while that node has not yet heard of a failover's new primary).
async fn primary_of(url: &str, key: &str) -> Option<u16> {
    let mut con = a_node(url).await;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut con)
        .await
        .unwrap();
    nodes
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let serving = fields.get(8..)?.iter().any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(f), Ok(t)) if (f..=t).contains(&slot))
                });
                let primary = fields.get(2)?.contains("master") && !fields[2].contains("fail");
                (serving && primary).then(|| {
                    let address = fields[1].split('@').next().unwrap();
                    address.rsplit_once(':').unwrap().1.parse().unwrap()
                })
            })
}

/// The primary of a record's slot is SIGKILLed: until its replica takes
/// over, the store's commands for that slot fail fast as unavailable (a
/// 503, never a hang); then the running store follows the new topology.
/// With `wait_replicas=1`, what was written before is there, and what was
/// deleted before (a sign-out) stays deleted. (Following the topology is
/// the redis crate's cluster client's work; this proves latchkey's use of
/// it holds up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_killed_is_followed_and_loses_nothing_waited_for() {
    if std::env::var("LATCHKEY_TEST_REDIS_CLUSTER").is_err() {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_CLUSTER to run it (it starts its own)");
        return;
    }
    let own = OwnServers::start("cluster.sh", 6);
    let store = latchkey::store::connect(&format!("{}?prefix=fo&wait_replicas=1", own.url))
        .await
        .unwrap();
    // One hash tag: both records in one slot, on one primary.
    assert!(store.insert_if_absent("{t}kept", b"v", TTL).await.unwrap());
    assert!(
        store
            .insert_if_absent("{t}signed-out", b"v", TTL)
            .await
            .unwrap()
    );
    store.delete("{t}signed-out").await.unwrap();
    let primary = (primary_of(&own.url, "fo:{t}kept").await).expect("a primary serves the slot");
    own.signal(primary, "KILL");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut outages = 0;
    let kept = loop {
        let started = Instant::now();
        match store.get("{t}kept").await {
            Ok(found) => break found,
            Err(StoreError::Unavailable(_)) => outages += 1,
            Err(other) => panic!("not an outage: {other}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a command hung");
        assert!(
            Instant::now() < deadline,
            "the store never followed the failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kept = kept.expect("a record its replica had was lost");
    // The node asked may hear of the new primary after the store did.
    loop {
        match primary_of(&own.url, "fo:{t}kept").await {
            Some(new) if new != primary => break,
            _ => assert!(Instant::now() < deadline, "no new primary"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store.get("{t}signed-out").await.unwrap().is_none(),
        "a deletion was undone"
    );
    // A write now goes to the new primary, which has no replica (its own
    // primary is dead, and no other primary has one to spare): it cannot
    // count, and is refused as unavailable rather than acknowledged.
    let written = (store.compare_and_swap("{t}kept", kept.version, b"w", TTL)).await;
    assert!(
        matches!(written, Err(StoreError::Unavailable(_))),
        "a write no replica has was counted: {written:?}"
    );
    // The control: a store without wait_replicas has the same write counted.
    let hopeful = latchkey::store::connect(&format!("{}?prefix=fo", own.url))
        .await
        .unwrap();
    let now = hopeful.get("{t}kept").await.unwrap().expect("still there");
    assert!(
        hopeful
            .compare_and_swap("{t}kept", now.version, b"w", TTL)
            .await
            .unwrap()
    );
    eprintln!("{outages} commands failed fast while the slot had no primary");
}
