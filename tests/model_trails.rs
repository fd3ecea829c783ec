//! The model's counterexamples, replayed on the code (issue 17, item 5).
//!
//! For each mutant of `model/login.pml` and `model/refresh.pml`, Spin finds
//! a counterexample trail; a simulation of that trail prints its events
//! (store calls, provider calls, crashes, clock ticks), and
//! `common::schedule` makes the real `LoginFlow` or `Sessions` — one per
//! callback or request, as on separate replicas, over one memory store — go
//! through the same events in the same order. Each trail is replayed twice:
//!
//! - on a store that departs from the contract the way the mutant departs
//!   from the code (a commit without its fence, a claim that always wins, a
//!   refresh lease never written, session writes without their fence):
//!   the replay must follow the trail to its end and break a property —
//!   the trail is a scenario the code's checks catch;
//! - on the honest store: no property may break (the replay leaves the
//!   trail where the code refuses what the mutant did).
//!
//! If the model and the code drift apart, one of the two stops holding.
//! Needs `spin` and `gcc` (CI installs both); without them the tests say
//! why they skip, unless `CI` is set, when they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::idp_double::{ControlledIdp, identity};
use common::naive::{Begun, LoginDriver};
use common::schedule::{
    Call, Event, Mutation, Schedule, ScheduledIdp, ScheduledStore, parse_events, processes,
};
use common::within;
use latchkey::clock::{Clock, ManualClock};
use latchkey::login::{LoginFlow, LoginSettings};
use latchkey::secret::random_token;
use latchkey::session::{SessionRecord, SessionSettings, Sessions, session_key};
use latchkey::store::Store;
use latchkey::store::memory::MemoryStore;

/// One model clock tick on the code's clock.
const TICK: Duration = Duration::from_secs(10);
/// The bounds of `model/check.sh`: the clock 0..4, the lease 2 ticks.
const BOUNDS: [&str; 2] = ["-DMAXT=4", "-DLEASE=2"];
// (The logout model's skew is 1 tick, its default.)
const LEASE_TICKS: u32 = 2;

fn tools_available() -> bool {
    let found = |tool: &str| {
        Command::new(tool)
            .arg(if tool == "spin" { "-V" } else { "--version" })
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found("spin") && found("gcc") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have spin and gcc (apt-get install spin gcc)"
    );
    eprintln!("skipping: spin or gcc not found (apt-get install spin gcc)");
    false
}

/// The events of the counterexample Spin finds for `model` with `defines`.
fn counterexample(model: &str, defines: &[&str]) -> Vec<Event> {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let source: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("model")
        .join(model);
    std::fs::copy(&source, dir.join(model)).unwrap();
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let mut spin_args: Vec<&str> = vec!["-a"];
    spin_args.extend(BOUNDS);
    spin_args.extend(defines);
    spin_args.push(model);
    assert!(run("spin", &spin_args).0, "spin -a failed");
    assert!(run("gcc", &["-O2", "-w", "-DSAFETY", "-o", "pan", "pan.c"]).0);
    let (_, report) = run("./pan", &["-m200000"]);
    assert!(
        report.contains("assertion violated"),
        "{model} {defines:?}: no counterexample\n{report}"
    );
    let mut replay_args: Vec<&str> = vec!["-t"];
    replay_args.extend(BOUNDS);
    replay_args.extend(defines);
    replay_args.push(model);
    let (_, simulation) = run("spin", &replay_args);
    let events = parse_events(&simulation);
    assert!(
        !events.is_empty(),
        "the trail printed no events:\n{simulation}"
    );
    events
}

/// What one replay came to.
#[derive(Debug)]
struct Replay {
    /// Properties the run broke, in words.
    broken: Vec<String>,
    /// Whether every event of the trail was replayed.
    completed: bool,
    diverged: Option<String>,
    /// Each callback's answer (`None`: crashed or dropped), for the messages.
    #[allow(dead_code, reason = "read through Debug, in failure messages")]
    results: Vec<(usize, Option<Result<String, String>>)>,
}

/// Runs the trail's callbacks through `LoginFlow`s over one memory store,
/// wrapped with `mutation`, following `events`.
async fn replay(events: &[Event], mutation: Mutation) -> Replay {
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let settings = LoginSettings {
        exchange_lease: TICK * LEASE_TICKS,
        wait_timeout: Duration::from_secs(30),
        ..LoginSettings::default()
    };
    let schedule = Schedule::new(events.to_vec(), clock.clone(), TICK);
    let phases = Arc::new(Mutex::new(Vec::new()));
    // The browser's login cookie, from a start that writes nothing.
    let starter = LoginFlow::new(shared.clone(), idp.clone(), clock.clone(), settings.clone());
    let begun: Begun = LoginDriver::begin(&starter).await;

    let mut tasks = Vec::new();
    for p in processes(events) {
        let store = Arc::new(ScheduledStore {
            process: p,
            schedule: schedule.clone(),
            inner: shared.clone(),
            mutation,
            gated: "login:",
            also_gated: None,
            gate_commits: true,
            gate_gets: true,
            session_id: None,
            phases: phases.clone(),
        });
        let provider = Arc::new(ScheduledIdp {
            process: p,
            schedule: schedule.clone(),
            idp: idp.clone(),
            on_exchange: None,
        });
        let flow = Arc::new(LoginFlow::new(
            store,
            provider,
            clock.clone(),
            settings.clone(),
        ));
        let (begun, schedule_p) = (begun.clone(), schedule.clone());
        schedule.register(p);
        let task = tokio::spawn(async move {
            let result = flow.callback(&begun).await;
            schedule_p.finished(p);
            result
        });
        schedule.started(p, task.abort_handle());
        tasks.push((p, task));
    }
    let (results, completed, diverged) = play(&schedule, tasks, LEASE_TICKS).await;
    let sessions = shared.count_live("session:").await.unwrap();
    let phases = phases.lock().unwrap().clone();
    Replay {
        broken: broken_properties(idp.exchanges(), sessions, &phases, &results),
        completed,
        diverged,
        results,
    }
}

/// A process's task: its answer, or why it has none.
type Task = tokio::task::JoinHandle<Result<String, String>>;

/// Plays the trail over the started `tasks` (leases get `lease_ticks` to
/// run out after it); each process's answer (`None`: crashed or dropped),
/// whether the trail was followed to its end, and where it was left.
async fn play(
    schedule: &Schedule,
    tasks: Vec<(usize, Task)>,
    lease_ticks: u32,
) -> (
    Vec<(usize, Option<Result<String, String>>)>,
    bool,
    Option<String>,
) {
    let conducted = tokio::time::timeout(common::TEST_TIMEOUT, schedule.conduct(lease_ticks)).await;
    assert!(conducted.is_ok(), "the replay hung: {}", schedule.report());
    let mut results = Vec::new();
    for (p, task) in tasks {
        let result = within("a process", task).await.ok();
        results.push((p, result));
    }
    (results, schedule.completed(), schedule.diverged())
}

/// The model's properties, judged on what the code did.
fn broken_properties(
    exchanges: usize,
    sessions: u64,
    phases: &[String],
    results: &[(usize, Option<Result<String, String>>)],
) -> Vec<String> {
    let mut broken = Vec::new();
    if exchanges > 1 {
        broken.push(format!("I1: {exchanges} code exchanges"));
    }
    let signed_in: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref()?.as_ref().ok())
        .collect();
    if signed_in.windows(2).any(|pair| pair[0] != pair[1]) {
        broken.push("I2: callbacks answered with different sessions".into());
    }
    if let Some(failed) = phases.iter().position(|p| p == "Failed")
        && failed + 1 < phases.len()
    {
        broken.push(format!(
            "fence: {:?} written after Failed",
            &phases[failed + 1..]
        ));
    }
    let last = phases.last().map(String::as_str);
    if sessions > 1 || (sessions == 1 && last != Some("Completed")) {
        broken.push(format!("I3: {sessions} sessions, the login ended {last:?}"));
    }
    broken
}

/// The trail of `defines` breaks a property on the code mutated by
/// `mutation`, following the trail to its end, and none on the code.
async fn caught_and_refused(model: &str, defines: &[&str], mutation: Mutation) {
    if !tools_available() {
        return;
    }
    let events = &counterexample(model, defines);
    let run = |mutation| async move {
        match model {
            "login.pml" => replay(events, mutation).await,
            "refresh.pml" => replay_refresh(events, mutation).await,
            _ => replay_logout(events, mutation).await,
        }
    };
    let mutated = run(mutation).await;
    eprintln!("{defines:?} on the {mutation:?} store: {mutated:?}");
    assert!(
        mutated.completed,
        "the code left the trail of {defines:?}: {:?}\n{events:?}",
        mutated.diverged
    );
    assert!(
        !mutated.broken.is_empty(),
        "the trail of {defines:?} broke nothing on the {mutation:?} store: {mutated:?}"
    );
    let honest = run(Mutation::Honest).await;
    eprintln!("{defines:?} on the honest store: {honest:?}");
    assert!(
        honest.broken.is_empty(),
        "the code breaks {:?} on the trail of {defines:?}",
        honest.broken
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_fence_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "login.pml",
        &["-DNO_FENCE", "-DONLY_FENCE"],
        Mutation::CommitUnfenced,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ignored_claim_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "login.pml",
        &["-DCLAIM_IGNORED", "-DONLY_I1"],
        Mutation::ClaimAlwaysWon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_sessions_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "login.pml",
        &["-DCLAIM_IGNORED", "-DONLY_I2"],
        Mutation::ClaimAlwaysWon,
    )
    .await;
}

/// The trail's sign-out is process 9 (`model/refresh.pml`).
const SIGN_OUT: usize = 9;

/// Runs the trail's requests through `Sessions`, and its sign-out, over one
/// memory store holding a session whose access token has expired (so that
/// a request waits for a refresh it does not make), following `events`.
async fn replay_refresh(events: &[Event], mutation: Mutation) -> Replay {
    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let settings = SessionSettings {
        refresh_lease: TICK * LEASE_TICKS,
        refresh_wait: Duration::from_secs(30),
        ..SessionSettings::default()
    };
    let session_id = random_token();
    let mut tokens = idp.issue_tokens();
    tokens.access_expires_at = clock.now_ms() - 1;
    let record = SessionRecord::new(
        identity("alice"),
        tokens,
        clock.now_ms(),
        Duration::from_secs(86400),
    );
    let stored = (shared)
        .insert_if_absent(
            &session_key(&session_id),
            &record.seal(&settings.seal, &session_id),
            Duration::from_secs(86400),
        )
        .await;
    assert!(stored.unwrap());
    let schedule = Schedule::new(events.to_vec(), clock.clone(), TICK);
    let signed_out = Arc::new(Mutex::new(false));
    let mut tasks = Vec::new();
    for p in processes(events) {
        let store = Arc::new(ScheduledStore {
            process: p,
            schedule: schedule.clone(),
            inner: shared.clone(),
            mutation,
            gated: "session:",
            also_gated: None,
            gate_commits: false,
            // The sign-out reads before it deletes; the model's is one step.
            gate_gets: p != SIGN_OUT,
            session_id: Some(session_id.clone()),
            phases: Arc::new(Mutex::new(Vec::new())),
        });
        let provider = Arc::new(ScheduledIdp {
            process: p,
            schedule: schedule.clone(),
            idp: idp.clone(),
            on_exchange: None,
        });
        let sessions = Sessions::new(store, provider, clock.clone(), settings.clone());
        let (id, schedule_p, signed_out) =
            (session_id.clone(), schedule.clone(), signed_out.clone());
        schedule.register(p);
        let task = tokio::spawn(async move {
            let id = id.into();
            let result = if p == SIGN_OUT {
                let done = sessions.sign_out(&id).await;
                *signed_out.lock().unwrap() = done.is_ok();
                done.map(|_| "signed out".to_owned())
                    .map_err(|e| e.to_string())
            } else {
                (sessions.load(&id).await)
                    .map(|s| s.tokens().access_token.secret().to_owned())
                    .map_err(|e| e.to_string())
            };
            schedule_p.finished(p);
            result
        });
        schedule.started(p, task.abort_handle());
        tasks.push((p, task));
    }
    let (results, completed, diverged) = play(&schedule, tasks, LEASE_TICKS).await;
    let mut broken = Vec::new();
    let presented = idp.presented_refresh_tokens();
    let distinct: std::collections::HashSet<_> = presented.iter().collect();
    if distinct.len() != presented.len() {
        broken.push(format!(
            "I5: a refresh token presented twice: {presented:?}"
        ));
    }
    if idp.most_refreshes_in_flight() > 1 {
        broken.push("I5: two refreshes in flight at once".into());
    }
    let live = shared.count_live("session:").await.unwrap();
    if *signed_out.lock().unwrap() && live > 0 {
        broken.push("sign-out is final: the signed-out session is back".into());
    }
    Replay {
        broken,
        completed,
        diverged,
        results,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_without_lease_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "refresh.pml",
        &["-DNO_LEASE", "-DONLY_I5"],
        Mutation::LeaseNotWritten,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfenced_refresh_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "refresh.pml",
        &["-DNO_FENCE", "-DONLY_SIGNOUT"],
        Mutation::SessionWritesUnfenced,
    )
    .await;
}

/// The trail's processes in `model/logout.pml`: logins 0 and 1, the
/// refresh 2, the logout 3.
const REFRESH: usize = 2;
const LOGOUT: usize = 3;
/// The model's clock skew, in ticks.
const SKEW_TICKS: u32 = 1;

/// Runs the trail's logins (`LoginFlow`s, each its own login of alice),
/// the refresh of alice's earlier session `S` (`Sessions`) and the logout
/// of alice (`SessionIndex::end`, retried when it fails, as a provider
/// does), over one memory store, following `events`.
async fn replay_logout(events: &[Event], mutation: Mutation) -> Replay {
    use latchkey::clock::UnixMillis;
    use latchkey::logout::{Handle, REVOKED_MARKER, SessionIndex};
    use std::sync::atomic::{AtomicBool, Ordering};

    let clock = Arc::new(ManualClock::starting_now());
    let idp = ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    idp.exchange_as_subject("alice");
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let login_settings = LoginSettings {
        exchange_lease: TICK * LEASE_TICKS,
        wait_timeout: Duration::from_secs(30),
        ..LoginSettings::default()
    };
    let session_settings = SessionSettings {
        refresh_lease: TICK * LEASE_TICKS,
        refresh_wait: Duration::from_secs(30),
        ..SessionSettings::default()
    };
    let subject_key = Handle::Subject("alice").key();
    // S: alice signed in at 0, listed in her index, her access token expired.
    let s_id = random_token();
    let mut tokens = idp.issue_tokens();
    tokens.access_expires_at = clock.now_ms() - 1;
    let alice = latchkey::idp::Identity {
        issued_at: Some(clock.now_ms()),
        ..identity("alice")
    };
    let record = SessionRecord::new(
        alice.clone(),
        tokens,
        clock.now_ms(),
        Duration::from_secs(86400),
    );
    let s_key = session_key(&s_id);
    let day = Duration::from_secs(86400);
    let sealed = record.seal(&session_settings.seal, &s_id);
    assert!(shared.insert_if_absent(&s_key, &sealed, day).await.unwrap());
    let index = SessionIndex::new(shared.clone(), clock.clone());
    index
        .register(&s_key, &alice, clock.now_ms() + 86_400_000)
        .await
        .unwrap();

    let schedule = Schedule::new(events.to_vec(), clock.clone(), TICK);
    let ended = Arc::new(AtomicBool::new(false));
    let logged_out_at: Arc<Mutex<Option<UnixMillis>>> = Arc::new(Mutex::new(None));
    // Logins whose exchange was answered after the logout was accepted,
    // and when (a sign-in in the logout token's very tick counts as
    // covered, as in the model).
    let after: Arc<Mutex<Vec<(usize, UnixMillis)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for p in processes(events) {
        let store = Arc::new(ScheduledStore {
            process: p,
            schedule: schedule.clone(),
            inner: shared.clone(),
            mutation,
            gated: "session:",
            also_gated: Some(subject_key.clone()),
            gate_commits: true,
            gate_gets: true,
            session_id: None,
            phases: Arc::new(Mutex::new(Vec::new())),
        });
        let noted = {
            let (ended, after, clock) = (ended.clone(), after.clone(), clock.clone());
            Arc::new(move |p: usize| {
                if ended.load(Ordering::SeqCst) {
                    after.lock().unwrap().push((p, clock.now_ms()));
                }
            }) as Arc<dyn Fn(usize) + Send + Sync>
        };
        let provider = Arc::new(ScheduledIdp {
            process: p,
            schedule: schedule.clone(),
            idp: idp.clone(),
            on_exchange: Some(noted),
        });
        let schedule_p = schedule.clone();
        schedule.register(p);
        let task = match p {
            LOGOUT => {
                let index = SessionIndex::new(store, clock.clone());
                let (clock, ended, logged_out_at) =
                    (clock.clone(), ended.clone(), logged_out_at.clone());
                let tombstone = match mutation {
                    Mutation::ShortTombstone => TICK * SKEW_TICKS,
                    _ => TICK * (LEASE_TICKS + SKEW_TICKS),
                };
                tokio::spawn(async move {
                    drop(schedule_p.turn(p, Call::Start).await);
                    // The logout token's iat; its retries carry the same.
                    let iat = clock.now_ms();
                    *logged_out_at.lock().unwrap() = Some(iat);
                    let mut result = Err("never tried".to_owned());
                    for _ in 0..3 {
                        let ended_now = index.end(Handle::Subject("alice"), iat, tombstone).await;
                        result = ended_now
                            .map(|e| format!("{} revoked", e.sessions_revoked))
                            .map_err(|e| e.to_string());
                        if result.is_ok() {
                            ended.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                    schedule_p.finished(p);
                    result
                })
            }
            REFRESH => {
                let sessions =
                    Sessions::new(store, provider, clock.clone(), session_settings.clone());
                let id = s_id.clone();
                tokio::spawn(async move {
                    let result = (sessions.load(&id.into()).await)
                        .map(|s| s.tokens().access_token.secret().to_owned())
                        .map_err(|e| e.to_string());
                    schedule_p.finished(p);
                    result
                })
            }
            _ => {
                let flow = LoginFlow::new(store, provider, clock.clone(), login_settings.clone());
                tokio::spawn(async move {
                    drop(schedule_p.turn(p, Call::Start).await);
                    let begun = LoginDriver::begin(&flow).await;
                    let result = flow.callback(&begun).await;
                    schedule_p.finished(p);
                    result
                })
            }
        };
        schedule.started(p, task.abort_handle());
        tasks.push((p, task));
    }
    let (results, completed, diverged) = play(&schedule, tasks, LEASE_TICKS + SKEW_TICKS).await;

    // I8: once the logout is accepted, no session of a sign-in it covers
    // is live; a sign-in exchanged after it is signed in.
    let mut broken = Vec::new();
    let lo_at = *logged_out_at.lock().unwrap();
    let seal = SessionSettings::default().seal;
    let live_iat = |id: String| {
        let (shared, seal) = (shared.clone(), seal.clone());
        async move {
            let value = shared.get(&session_key(&id)).await.unwrap()?.value;
            if value.as_ref() == REVOKED_MARKER {
                return None;
            }
            let record = SessionRecord::open(&seal, &id, &value).ok()?;
            Some(record.identity.issued_at)
        }
    };
    if ended.load(Ordering::SeqCst) {
        let lo_at = lo_at.expect("an accepted logout has its iat");
        let mut ids = vec![(REFRESH, s_id.clone())];
        for (p, result) in &results {
            if *p < REFRESH
                && let Some(Ok(id)) = result
            {
                ids.push((*p, id.clone()));
            }
        }
        for (p, id) in ids {
            if let Some(iat) = live_iat(id).await
                && iat.is_none_or(|iat| iat <= lo_at)
            {
                broken.push(format!("I8: process {p}'s session, signed in at {iat:?}, is live after the logout of {lo_at}"));
            }
        }
        let later = after.lock().unwrap().clone();
        for (p, _) in later.into_iter().filter(|(_, at)| *at > lo_at) {
            let signed_in = results
                .iter()
                .find(|(q, _)| *q == p)
                .and_then(|(_, r)| r.clone());
            match signed_in {
                Some(Ok(id)) if live_iat(id.clone()).await.is_some() => {}
                other => broken.push(format!(
                    "a later sign-in works: process {p} ended {other:?}"
                )),
            }
        }
    }
    Replay {
        broken,
        completed,
        diverged,
        results,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logout_without_tombstone_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "logout.pml",
        &["-DDELETE_ONLY", "-DONLY_I8"],
        Mutation::TombstoneDropped,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logout_without_marker_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "logout.pml",
        &["-DNO_MARKER", "-DONLY_I8"],
        Mutation::MarkerDeletes,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_tombstone_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "logout.pml",
        &["-DSHORT_TOMBSTONE", "-DONLY_I8"],
        Mutation::ShortTombstone,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_across_a_logout_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "logout.pml",
        &["-DREFRESH_UNFENCED", "-DONLY_I8"],
        Mutation::SessionWritesUnfenced,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tombstone_ignoring_iat_trail_is_caught_and_the_code_refuses_it() {
    caught_and_refused(
        "logout.pml",
        &["-DIGNORE_IAT", "-DONLY_LATER"],
        Mutation::TombstoneCoversAll,
    )
    .await;
}
