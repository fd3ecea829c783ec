//! The randomized stress run of DESIGN §8: many logins, each with a random
//! number of concurrent callbacks spread over two flows ("replicas") sharing
//! one store, random exchange failures; at the end it counts exchanges,
//! sessions and leftover leases. The seed is printed (and can be set with
//! LATCHKEY_STRESS_SEED) so that a failure can be replayed.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::backends::TestBackend;
use common::idp_double::ControlledIdp;
use common::within;
use latchkey::clock::SystemClock;
use latchkey::idp::IdpError;
use latchkey::login::{Callback, LoginError, LoginFlow, LoginSettings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LOGINS: usize = 40;

fn seed() -> u64 {
    std::env::var("LATCHKEY_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen())
}

async fn duplicate_callbacks_across_replicas(backend: TestBackend) {
    let seed = seed();
    eprintln!(
        "{} stress seed: {seed} (LATCHKEY_STRESS_SEED={seed} replays it)",
        backend.name
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let idp = ControlledIdp::new(Arc::new(SystemClock), Duration::from_secs(3600));
    let settings = LoginSettings {
        exchange_lease: Duration::from_secs(60),
        wait_timeout: Duration::from_secs(60),
        ..LoginSettings::default()
    };
    let replicas: Vec<Arc<LoginFlow>> = (0..2)
        .map(|_| {
            Arc::new(LoginFlow::new(
                backend.store.clone(),
                idp.clone(),
                Arc::new(SystemClock),
                settings.clone(),
            ))
        })
        .collect();

    let mut logins = Vec::new();
    for _ in 0..LOGINS {
        let started = replicas[0].begin("/").await.unwrap();
        let callbacks = rng.gen_range(1..=6);
        let fails = rng.gen_bool(0.15);
        let spread: Vec<usize> = (0..callbacks).map(|_| rng.gen_range(0..2)).collect();
        logins.push((started, spread, fails));
    }
    let failures_planned = logins.iter().filter(|(_, _, f)| *f).count();
    for _ in 0..failures_planned {
        idp.fail_next_exchange(IdpError::InvalidGrant("stress".into()));
    }

    // Every callback of every login at once.
    let mut tasks = Vec::new();
    for (i, (started, spread, _)) in logins.iter().enumerate() {
        for replica in spread {
            let flow = replicas[*replica].clone();
            let (state, binding) = (started.state.clone(), started.binding.clone());
            let pending = started.pending.clone();
            tasks.push(tokio::spawn(async move {
                let result = flow
                    .complete(Callback {
                        state: state.secret(),
                        code: "code",
                        binding: Some(binding.secret()),
                        pending: Some(&pending),
                    })
                    .await
                    .map(|done| done.session_id.secret().to_owned())
                    // A callback that came after the failure is told it is a
                    // replay; the outcome (the reason) is the same.
                    .map_err(|e| match e {
                        LoginError::Failed(reason) | LoginError::AlreadyFailed(reason) => {
                            reason.to_string()
                        }
                        other => other.to_string(),
                    });
                (i, result)
            }));
        }
    }
    let mut outcomes: Vec<Vec<Result<String, String>>> = vec![Vec::new(); LOGINS];
    for task in tasks {
        let (i, result) = within("stress callback", task).await.unwrap();
        outcomes[i].push(result);
    }

    // One exchange per login; every caller of a login saw the same outcome.
    assert_eq!(idp.exchanges(), LOGINS, "seed {seed}");
    let mut sessions = HashSet::new();
    let mut failed = 0;
    for (i, results) in outcomes.iter().enumerate() {
        let first = &results[0];
        assert!(
            results.iter().all(|r| r == first),
            "seed {seed}, login {i}: {results:?}"
        );
        match first {
            Ok(id) => {
                assert!(
                    sessions.insert(id.clone()),
                    "seed {seed}: a session id repeated"
                );
            }
            Err(_) => failed += 1,
        }
    }
    assert_eq!(failed, failures_planned, "seed {seed}");
    let stored = backend.store.count_live("session:").await.unwrap() as usize;
    assert_eq!(stored, sessions.len(), "seed {seed}: sessions in the store");

    // No lease is left behind: a late duplicate of every login is answered
    // at once (replay or terminal failure), never "still in progress".
    let impatient = LoginFlow::new(
        backend.store.clone(),
        idp.clone(),
        Arc::new(SystemClock),
        LoginSettings {
            wait_timeout: Duration::ZERO,
            ..settings
        },
    );
    for (started, _, _) in &logins {
        let late = impatient
            .complete(Callback {
                state: started.state.secret(),
                code: "code",
                binding: Some(started.binding.secret()),
                pending: Some(&started.pending),
            })
            .await;
        assert!(
            !matches!(late, Err(LoginError::StillInProgress)),
            "seed {seed}: a login was left exchanging"
        );
    }
    assert_eq!(
        idp.exchanges(),
        LOGINS,
        "seed {seed}: a late duplicate exchanged"
    );
}

backend_tests!(duplicate_callbacks_across_replicas);
