//! The store contract (DESIGN §4), one test per check per backend. The checks
//! themselves live in `latchkey::store::contract` so that `check-store` runs
//! exactly the same code against a user's deployment.

mod common;

use common::backends::TestBackend;

async fn run_check(backend: TestBackend, name: &str) {
    let observed = latchkey::store::contract::run(name, backend.store.clone(), "contract:").await;
    match observed {
        Ok(what) => eprintln!("{} {name}: {what}", backend.name),
        Err(broken) => panic!("{} {name}: {broken}", backend.name),
    }
}

macro_rules! contract_checks {
    ($($name:ident),* $(,)?) => {
        $( async fn $name(backend: TestBackend) { run_check(backend, stringify!($name)).await } )*
        backend_tests!($($name),*);

        #[test]
        fn every_contract_check_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for check in latchkey::store::contract::CHECKS {
                assert!(tested.contains(&check.name), "no test runs {}", check.name);
            }
        }
    };
}

contract_checks!(
    absent_and_insert_once,
    concurrent_insert_one_winner,
    cas_bumps_version,
    concurrent_cas_one_winner,
    delete_is_final,
    ttl_expiry,
    commit_all_or_nothing,
    concurrent_commit_one_winner,
    wait_for_change_wakes,
    logout_ends_indexed_sessions,
    purge_stays_in_prefix,
);
