//! Two `latchkey serve` replicas on Redis behind Sentinel, under a steady
//! stream of logins and authenticated requests, while the master is
//! SIGKILLed and the sentinels promote its replica: what reaches the
//! provider is counted there (the development IdP counts every code
//! presented again and every rotated refresh token presented again).
//!
//! The failover is made to lose writes for certain: replication is cut
//! (the replica frozen with SIGSTOP and its link closed by `CLIENT KILL`)
//! just before a login's callback and a due session's request arrive, and
//! the master is killed while their exchange and refresh are held at the
//! IdP. With `wait_replicas=1` neither write counts, so neither reaches the
//! IdP, and after the failover each happens once: no code exchanged twice,
//! no refresh token presented twice, nothing acknowledged lost. Without it
//! (the negative control) both writes are acknowledged and lost, and the IdP
//! sees the code and the refresh token twice. In both, no request is served
//! for a session signed out before, requests answer fast while there is no
//! master, and both replicas follow the new master without a restart.
//!
//! Runs when LATCHKEY_TEST_REDIS_SENTINEL is set (CI sets it); each test
//! starts a Sentinel set of its own.

#![cfg(feature = "redis")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::browser;
use common::browser::sign_in_at_idp;
use common::redis_servers::{OwnServers, master_named_by};
use common::replica::{Replica, dev_idp, login_until_callback, sign_in_at};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

/// What the stream saw: each answer's status by kind of request, and how
/// long the slowest took.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<(&'static str, u16), usize>,
    slowest: BTreeMap<&'static str, Duration>,
}

impl Seen {
    fn record(&mut self, kind: &'static str, status: u16, took: Duration) {
        *self.statuses.entry((kind, status)).or_default() += 1;
        let slowest = self.slowest.entry(kind).or_default();
        *slowest = (*slowest).max(took);
    }

    fn count(&self, kind: &str, status: u16) -> usize {
        (self.statuses.iter())
            .filter(|((k, s), _)| *k == kind && *s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The steady stream: users signing in, making requests on both replicas
/// and signing out (every [`REQUESTS_PER_SESSION`] requests), and the
/// cookies of the sessions signed out replayed on both: the one signed out
/// before it all (kind `signed-out`), and each the stream signed out
/// (`signed-out-in-stream`). Each step holds `gate` for reading, so the
/// test can pause the stream (take it for writing) while it cuts
/// replication.
struct Stream {
    gate: Arc<tokio::sync::RwLock<()>>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How many requests a stream user makes before signing out.
const REQUESTS_PER_SESSION: usize = 150;

impl Stream {
    fn start(replicas: &Arc<[Replica; 2]>, signed_out_cookie: &str, users: usize) -> Self {
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        // The cookies of sessions the stream signed out.
        let ended = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        for user in 0..users {
            let (gate, stop, seen, replicas, ended) = (
                gate.clone(),
                stop.clone(),
                seen.clone(),
                replicas.clone(),
                ended.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut browser = browser();
                let mut signed_in: Option<String> = None;
                let mut requests = 0;
                let mut callback: Option<String> = None;
                for step in 0usize.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let _step = gate.read().await;
                    let replica = &replicas[(step + user) % 2];
                    if signed_in.is_none() && callback.is_none() {
                        browser = common::browser::browser();
                        let started = Instant::now();
                        let start = browser.get(replica.url("/oauth2/start?rd=/")).send();
                        let start = start.await.unwrap();
                        let status = start.status().as_u16();
                        seen.lock()
                            .unwrap()
                            .record("start", status, started.elapsed());
                        if status == 302 {
                            let authorize = start.headers()[LOCATION].to_str().unwrap();
                            let authorize = url::Url::parse(authorize).unwrap();
                            let back = sign_in_at_idp(&browser, &authorize, "alice").await;
                            callback = Some(back.query().unwrap().to_owned());
                        }
                        continue;
                    }
                    let started = Instant::now();
                    if let Some(query) = &callback {
                        let url = replica.url(&format!("/oauth2/callback?{query}"));
                        let answer = browser.get(url).send().await.unwrap();
                        let status = answer.status().as_u16();
                        seen.lock()
                            .unwrap()
                            .record("callback", status, started.elapsed());
                        match status {
                            302 => {
                                signed_in = Some(session_cookie(&answer));
                                (requests, callback) = (0, None);
                            }
                            503 => {} // the user tries the same link again
                            _ => callback = None,
                        }
                    } else if requests == REQUESTS_PER_SESSION {
                        let url = replica.url("/oauth2/sign_out");
                        let status = browser.get(url).send().await.unwrap().status().as_u16();
                        seen.lock()
                            .unwrap()
                            .record("sign-out", status, started.elapsed());
                        if status == 302 {
                            ended.lock().unwrap().extend(signed_in.take());
                        }
                    } else {
                        requests += 1;
                        let url = replica.url("/oauth2/auth");
                        let status = browser.get(url).send().await.unwrap().status().as_u16();
                        seen.lock()
                            .unwrap()
                            .record("auth", status, started.elapsed());
                        if status == 401 {
                            signed_in = None;
                        }
                    }
                    drop(_step);
                    // A steady rate, not a busy loop (two cores run it all).
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        let (gate_r, stop_r, seen_r, replicas_r) =
            (gate.clone(), stop.clone(), seen.clone(), replicas.clone());
        let cookie = signed_out_cookie.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for step in 0usize.. {
                if stop_r.load(Ordering::SeqCst) {
                    break;
                }
                {
                    let _step = gate_r.read().await;
                    let started = Instant::now();
                    let url = replicas_r[step % 2].url("/oauth2/auth");
                    let sent = client.get(&url).header(COOKIE, &cookie).send().await;
                    let status = sent.unwrap().status().as_u16();
                    seen_r
                        .lock()
                        .unwrap()
                        .record("signed-out", status, started.elapsed());
                    let in_stream = ended.lock().unwrap().clone();
                    for cookie in in_stream {
                        let started = Instant::now();
                        let sent = client.get(&url).header(COOKIE, cookie).send().await;
                        let status = sent.unwrap().status().as_u16();
                        let took = started.elapsed();
                        seen_r
                            .lock()
                            .unwrap()
                            .record("signed-out-in-stream", status, took);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
        Self {
            gate,
            stop,
            seen,
            tasks,
        }
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            common::within("the stream to end", task).await.unwrap();
        }
        Arc::into_inner(self.seen).unwrap().into_inner().unwrap()
    }
}

/// The port of the master the sentinels name.
async fn master_port(own: &OwnServers) -> u16 {
    let sentinel = format!("127.0.0.1:{}", own.first_port + 2);
    let master = master_named_by(&sentinel).await;
    master.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Cuts replication for certain: the replica frozen, and its link closed
/// by the master, so nothing written from now on reaches it (SIGSTOP alone
/// would not do: the kernel would keep buffering the stream for it).
async fn cut_replication(own: &OwnServers, master: u16, replica: u16) {
    own.signal(replica, "STOP");
    let client = redis::Client::open(format!("redis://127.0.0.1:{master}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let closed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(closed, 1, "the replica's link was not closed");
}

/// The session cookie (`name=value`) a response sets.
fn session_cookie(response: &reqwest::Response) -> String {
    (response.headers().get_all(SET_COOKIE).iter())
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("_latchkey="))
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// What one run across a failover came to.
struct Outcome {
    code_replays: u64,
    refresh_token_reuses: u64,
    seen: Seen,
    /// The held login's callback, before the failover and after it.
    login: (u16, u16),
    /// The due session's request, before the failover and after it.
    refresh: (u16, u16),
}

/// Signs users in on two replicas over a Sentinel set of the test's own
/// (`options` added to its URL), runs the stream, cuts replication, sends a
/// login's callback and a due session's request, kills the master while
/// their provider calls (if any) are held, and lets the sentinels promote
/// the replica; then the old master rejoins as a replica, both replicas are
/// seen to follow, and the provider is released.
async fn across_a_failover(options: &str) -> Outcome {
    let own = OwnServers::start("sentinel.sh", 5);
    let (master, replica) = (own.first_port, own.first_port + 1);
    let store = match options {
        "" => format!("{}?prefix=failover", own.url),
        options => format!("{}?prefix=failover&{options}", own.url),
    };
    // Access tokens live 5 s and are due 3 s before: a session is due 2 s
    // after it signed in.
    let idp = dev_idp(Duration::from_secs(5)).await;
    let replicas = Arc::new([
        Replica::start(idp.issuer(), &store),
        Replica::start(idp.issuer(), &store),
    ]);
    let [a, b] = &*replicas;

    // A session signed out before it all; its cookie is replayed throughout.
    let signed_out = browser();
    let query = login_until_callback(&signed_out, a).await;
    let done = (signed_out.get(a.url(&format!("/oauth2/callback?{query}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
    let cookie = session_cookie(&done);
    let out = signed_out.get(b.url("/oauth2/sign_out")).send().await;
    assert_eq!(out.unwrap().status(), 302);

    let refreshing = browser();
    sign_in_at(&refreshing, a).await;
    let due_at = Instant::now() + Duration::from_millis(2100);
    let stream = Stream::start(&replicas, &cookie, 2);
    // Time has to pass for the token to fall due (no interleaving hangs
    // on it); meanwhile the stream signs users in and serves them.
    tokio::time::sleep_until(due_at.into()).await;
    let logging_in = browser();
    let query = login_until_callback(&logging_in, a).await;

    // The stream paused, the provider's answers held (each call is carried
    // out, its answer waits), replication cut: the callback and the due
    // request. Each gives up on its held answer within its lease.
    let paused = stream.gate.write().await;
    idp.knobs().hold_token_answers(true);
    let calls_before = idp.knobs().token_calls();
    cut_replication(&own, master, replica).await;
    let callback =
        tokio::spawn((logging_in.get(b.url(&format!("/oauth2/callback?{query}")))).send());
    let request = tokio::spawn(refreshing.get(a.url("/oauth2/auth")).send());
    // Either both were answered (their writes not counted) or both are at
    // the provider.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(callback.is_finished() && request.is_finished())
        && idp.knobs().token_calls() < calls_before + 2
    {
        assert!(Instant::now() < deadline, "neither answered nor at the IdP");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(paused);

    // The master dies; the replica, back, is promoted.
    own.signal(master, "KILL");
    own.signal(replica, "CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while master_port(&own).await != replica {
        assert!(Instant::now() < deadline, "the sentinels never failed over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    own.rejoin(master);
    // Both replicas follow without a restart: each answers the signed-out
    // cookie from the store again (401, not 503).
    let probe = reqwest::Client::new();
    for replica in [a, b] {
        loop {
            let sent = probe
                .get(replica.url("/oauth2/auth"))
                .header(COOKIE, &cookie);
            if sent.send().await.unwrap().status() == 401 {
                break;
            }
            assert!(Instant::now() < deadline, "a replica never followed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    idp.knobs().hold_token_answers(false);
    let login_before = callback.await.unwrap().unwrap().status().as_u16();
    let refresh_before = request.await.unwrap().unwrap().status().as_u16();
    // The user clicks the link again; the due session's next request.
    let login_after = (logging_in.get(a.url(&format!("/oauth2/callback?{query}"))))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let refresh_after = (refreshing.get(b.url("/oauth2/auth")).send())
        .await
        .unwrap()
        .status()
        .as_u16();
    let seen = stream.finish().await;
    eprintln!(
        "{options:?}: login {login_before} then {login_after}, refresh {refresh_before} then {refresh_after}, stream {:?}, slowest {:?}",
        seen.statuses, seen.slowest
    );
    Outcome {
        code_replays: idp.knobs().code_replays(),
        refresh_token_reuses: idp.knobs().refresh_token_reuses(),
        seen,
        login: (login_before, login_after),
        refresh: (refresh_before, refresh_after),
    }
}

/// What holds across any failover, with or without `wait_replicas`: a
/// session signed out before is never served; while there is no master,
/// requests fail fast (503) rather than hang; every answer is one the
/// client can act on.
fn holds_in_any_failover(seen: &Seen) {
    assert_eq!(
        seen.count("signed-out", 202),
        0,
        "a session signed out before was served"
    );
    assert!(
        seen.count("signed-out", 503) > 0,
        "the stream never saw the outage"
    );
    assert!(
        seen.slowest["signed-out"] < Duration::from_secs(5),
        "a request hung while there was no master: {:?}",
        seen.slowest
    );
    for (kind, status) in seen.statuses.keys() {
        let expected: &[u16] = match *kind {
            "callback" => &[302, 400, 503],
            "auth" => &[202, 401, 503],
            "sign-out" => &[302, 503],
            // Within the sign-in rate limit (120 a minute from one address).
            "start" => &[302],
            // A sign-out a failover lost (no wait_replicas) revives it.
            "signed-out-in-stream" => &[202, 401, 503],
            _ => &[401, 503],
        };
        assert!(expected.contains(status), "{kind} answered {status}");
    }
    assert!(seen.count("callback", 302) > 2, "the stream signed few in");
    assert!(
        seen.count("sign-out", 302) > 0,
        "the stream signed nobody out"
    );
}

fn sentinel_available() -> bool {
    let set = std::env::var("LATCHKEY_TEST_REDIS_SENTINEL").is_ok();
    if !set {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_SENTINEL to run it (it starts its own set)");
    }
    set
}

/// With `wait_replicas=1`, a failover loses nothing that counted: the
/// callback and the due request are refused (503) before they reach the
/// provider, and afterwards the login completes and the session refreshes,
/// each once. No code is exchanged twice, no refresh token presented twice,
/// and no session of the stream is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_failover_exchanges_no_code_and_presents_no_token_twice() {
    if !sentinel_available() {
        return;
    }
    let outcome = across_a_failover("wait_replicas=1&wait_timeout=300ms").await;
    holds_in_any_failover(&outcome.seen);
    assert_eq!(outcome.code_replays, 0, "a code was exchanged twice");
    assert_eq!(
        outcome.refresh_token_reuses, 0,
        "a refresh token was presented twice"
    );
    assert_eq!(outcome.login, (503, 302), "login: refused, then done once");
    assert_eq!(
        outcome.refresh,
        (503, 202),
        "refresh: refused, then done once"
    );
    assert_eq!(
        outcome.seen.count("auth", 401),
        0,
        "a session that counted was lost"
    );
    assert_eq!(
        outcome.seen.count("signed-out-in-stream", 202),
        0,
        "a sign-out that counted was lost"
    );
}

/// The negative control: the same failover without `wait_replicas`. The
/// login's claim and the session's refresh lease are acknowledged by the
/// master alone and lost with it, so after the failover the same code is
/// exchanged again and the rotated refresh token presented again — what the
/// README says a failover can lose. (The signed-out session stays signed
/// out here because its deletion had replicated long before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_replicas_a_failover_can_replay_a_code_and_a_refresh_token() {
    if !sentinel_available() {
        return;
    }
    let outcome = across_a_failover("").await;
    holds_in_any_failover(&outcome.seen);
    assert!(outcome.code_replays >= 1, "no code was exchanged twice");
    assert!(
        outcome.refresh_token_reuses >= 1,
        "no refresh token was presented twice"
    );
}
