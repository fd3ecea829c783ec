//! Shared test support: backends, a controllable identity provider, an
//! observing store wrapper, and the deliberately naive flows that the negative
//! controls run.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod backends;
pub mod browser;
pub mod chromium;
pub mod idp_double;
pub mod jws;
pub mod naive;
pub mod nginx;
pub mod observed_store;
pub mod process;
pub mod proxy;
pub mod recorder;
pub mod redis_servers;
pub mod replica;
pub mod schedule;
pub mod tls;

use std::future::Future;
use std::time::Duration;

/// Upper bound on any single wait in a test; a hang fails the test instead of
/// blocking CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it takes longer than [`TEST_TIMEOUT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Generates, for each named scenario `async fn name(backend: TestBackend)`,
/// one test per store backend: `memory::name`, `sqlite::name`, `redis::name`,
/// `redis_cluster::name`, `redis_sentinel::name`, `postgres::name`. The
/// Redis, Redis Cluster, Sentinel and PostgreSQL tests run when their URL
/// variables are set (CI sets them) and otherwise print why they skip.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!(@backend memory, $($name),*);
        $crate::backend_tests!(@backend sqlite, $($name),*);
        $crate::backend_tests!(@backend redis, $($name),*);
        $crate::backend_tests!(@backend redis_cluster, $($name),*);
        $crate::backend_tests!(@backend redis_sentinel, $($name),*);
        $crate::backend_tests!(@backend postgres, $($name),*);
    };
    (@backend $backend:ident, $($name:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(backend) =
                        $crate::common::backends::$backend(stringify!($name)).await
                    {
                        let kept = backend.clone();
                        super::$name(backend).await;
                        // Leave nothing behind on shared servers.
                        kept.store.purge("").await.expect("purge the test's namespace");
                    }
                }
            )*
        }
    };
}
