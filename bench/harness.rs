//! The engine of `bench/run.sh`: starts the servers on 127.0.0.1, drives them,
//! and prints (and, for a full run, writes `bench/RESULTS.md`) a Markdown
//! report with ratios measured side by side in the same run.
//!
//! Modes: `run [--quick]` (the benchmark), `upstream` and `bare-proxy` (the
//! reference servers, started by `run` as child processes).

#[path = "browser.rs"]
mod browser;
#[path = "procs.rs"]
mod procs;
#[path = "rounds.rs"]
mod rounds;
#[path = "servers.rs"]
mod servers;
#[path = "wrk.rs"]
mod wrk;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use browser::Browser;
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig, SigningAlg};
use procs::Proc;
use reqwest::header::ACCEPT;

/// The core the servers run on.
fn server_cpu() -> String {
    "0".into()
}

/// The core `wrk` runs on: another one where the machine has it.
fn load_cpu() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 { "1".into() } else { "0".into() }
}

const SECRET: &str = "bench-secret";
const COOKIE_KEY: [u8; 32] = [7; 32];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    match args.first().map(String::as_str) {
        Some("upstream") => runtime.block_on(servers::upstream(
            arg(&args, "--listen").unwrap().parse().unwrap(),
        )),
        Some("bare-proxy") => runtime.block_on(servers::bare_proxy(
            arg(&args, "--listen").unwrap().parse().unwrap(),
            arg(&args, "--upstream").unwrap().parse().unwrap(),
            args.iter().any(|a| a == "--forwarding-headers"),
        )),
        Some("run") => {
            let quick = args.iter().any(|a| a == "--quick");
            runtime.block_on(run(Options::new(quick)));
        }
        _ => {
            eprintln!(
                "usage: bench run [--quick] | upstream --listen ADDR | bare-proxy --listen ADDR --upstream ADDR [--forwarding-headers]"
            );
            std::process::exit(2);
        }
    }
}

struct Options {
    quick: bool,
    /// The steady-state rounds: how many, and each one's window.
    rounds: usize,
    window: Duration,
    connections: u32,
    logins: usize,
    duplicate_logins: usize,
    storm: usize,
    due_sessions: usize,
    memory_sessions: usize,
    /// Sessions stored beforehand in the large SQLite store (0: no such row).
    sqlite_sessions_large: usize,
    /// Sessions stored beforehand in the default SQLite store.
    sqlite_sessions: usize,
}

impl Options {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 2,
                window: Duration::from_secs(1),
                connections: 16,
                logins: 16,
                duplicate_logins: 4,
                storm: 100,
                due_sessions: 20,
                memory_sessions: 10_000,
                sqlite_sessions_large: 0,
                sqlite_sessions: 1_000,
            }
        } else {
            Self {
                quick,
                rounds: 5,
                window: Duration::from_secs(3),
                connections: 64,
                logins: 400,
                duplicate_logins: 50,
                storm: 1000,
                due_sessions: 200,
                memory_sessions: 100_000,
                sqlite_sessions_large: 1_000_000,
                sqlite_sessions: 1_000,
            }
        }
    }
}

/// One row of the steady-state table: its rounds.
struct Row {
    name: String,
    samples: Vec<rounds::Sample>,
    peak_rss_kib: Option<u64>,
}

/// What a login storm and a duplicate-callback storm showed for one relying party.
struct Logins {
    name: String,
    per_second: f64,
    /// The relying party's own CPU time per complete login (its processes
    /// only: not the IdP's, not the clients').
    cpu_ms_per_login: f64,
    failed: usize,
    token_calls_per_login: f64,
    successes_per_login: f64,
    sessions_per_login: f64,
}

struct Bench {
    opts: Options,
    exe: PathBuf,
    latchkey: PathBuf,
    idp: DevIdp,
    upstream: SocketAddr,
    ports: Vec<u16>,
    apache_port: u16,
    _tmp: tempfile::TempDir,
}

impl Bench {
    fn url(addr: SocketAddr, path: &str) -> String {
        format!("http://{addr}{path}")
    }

    /// `latchkey serve` on `port` with `store`, optionally in front of the upstream.
    fn latchkey(&self, port: u16, store: &str, upstream: bool, extra: &[(&str, String)]) -> Proc {
        let mut envs = vec![
            ("LATCHKEY_LISTEN", format!("127.0.0.1:{port}")),
            ("LATCHKEY_ISSUER", self.idp.issuer().to_owned()),
            ("LATCHKEY_CLIENT_ID", "latchkey".to_owned()),
            ("LATCHKEY_CLIENT_SECRET", SECRET.to_owned()),
            (
                "LATCHKEY_REDIRECT_URL",
                format!("http://127.0.0.1:{port}/oauth2/callback"),
            ),
            ("LATCHKEY_STORE", store.to_owned()),
            (
                "LATCHKEY_COOKIE_SECRET",
                base64::engine::general_purpose::STANDARD.encode(COOKIE_KEY),
            ),
            ("LATCHKEY_LOG_FORMAT", "json".to_owned()),
            ("LATCHKEY_EMAIL_DOMAINS", "*".to_owned()),
            // The login storms come from one address.
            ("LATCHKEY_LOGIN_RATE_PER_MINUTE", "0".to_owned()),
            // Request logs off for every row (nginx and Apache log nothing either).
            (
                "LATCHKEY_LOG",
                "latchkey=info,latchkey::request=warn".to_owned(),
            ),
        ];
        if upstream {
            envs.push(("LATCHKEY_UPSTREAM", format!("http://{}", self.upstream)));
        }
        envs.extend(extra.iter().cloned());
        procs::start(
            self.latchkey.to_str().unwrap(),
            &["serve"],
            &envs,
            procs::latchkey_listening,
        )
    }

    /// Signs in through `entry` and returns the browser holding the session.
    async fn signed_in(&self, entry: &str, callback: &str) -> Browser {
        let browser = Browser::new();
        let status = browser.login(entry, callback).await;
        assert_eq!(status, 200, "login through {entry} ended with {status}");
        browser
    }

    /// N complete logins from 32 concurrent clients, then the duplicate-callback
    /// storm: each login's callback sent 4× at once.
    async fn logins(
        &self,
        name: &str,
        entry: &str,
        callback: &str,
        session_cookie: &str,
        pids: &[u32],
    ) -> Logins {
        let rp_cpu = || -> Duration {
            (procs::descendants_and(pids).into_iter())
                .map(procs::cpu_time)
                .sum()
        };
        let cpu_before = rp_cpu();
        let started = Instant::now();
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(32));
        let mut tasks = Vec::new();
        for _ in 0..self.opts.logins {
            let (gate, failed) = (gate.clone(), failed.clone());
            let (entry, callback) = (entry.to_owned(), callback.to_owned());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let browser = Browser::new();
                let back = browser.until_callback(&entry, &callback).await;
                if browser.follow(&back).await != 200 {
                    failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let per_second = self.opts.logins as f64 / started.elapsed().as_secs_f64();
        let cpu_ms_per_login =
            rp_cpu().saturating_sub(cpu_before).as_secs_f64() * 1e3 / self.opts.logins as f64;

        let token_calls_before = self.idp.knobs().code_grants();
        let (mut successes, mut sessions) = (0usize, 0usize);
        for _ in 0..self.opts.duplicate_logins {
            let browser = Browser::new();
            let back = browser.until_callback(entry, callback).await;
            let sends = (0..4).map(|_| {
                browser
                    .client
                    .get(back.clone())
                    .header(ACCEPT, "text/html")
                    .send()
            });
            let responses = futures_util::future::join_all(sends).await;
            let mut distinct = std::collections::HashSet::new();
            for response in responses.into_iter().flatten() {
                let ok = response.status().is_redirection() || response.status().is_success();
                if ok && let Some(value) = session_value(&response, session_cookie) {
                    successes += 1;
                    distinct.insert(value);
                }
            }
            sessions += distinct.len();
        }
        let n = self.opts.duplicate_logins as f64;
        Logins {
            name: name.to_owned(),
            per_second,
            cpu_ms_per_login,
            failed: failed.load(std::sync::atomic::Ordering::SeqCst),
            token_calls_per_login: (self.idp.knobs().code_grants() - token_calls_before) as f64 / n,
            successes_per_login: successes as f64 / n,
            sessions_per_login: sessions as f64 / n,
        }
    }
}

/// The session a response establishes: latchkey's session id (decrypted with
/// the bench's cookie key, since each encryption differs), or another relying
/// party's session cookie value.
fn session_value(response: &reqwest::Response, cookie_name: &str) -> Option<String> {
    let cookie = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| cookie::Cookie::parse_encoded(v.to_str().ok()?.to_owned()).ok())
        .find(|c| c.name() == cookie_name && !c.value().is_empty())?;
    if cookie_name == "_latchkey" {
        let key = axum_extra::extract::cookie::Key::derive_from(&COOKIE_KEY);
        let mut jar = cookie::CookieJar::new();
        jar.add_original(cookie);
        Some(jar.private(&key).get(cookie_name)?.value().to_owned())
    } else {
        Some(cookie.value().to_owned())
    }
}

/// 1,000 (quick: 100) concurrent requests on one session whose access token is
/// due, with the provider's refresh held until every other request has been
/// answered: returns (refresh calls, requests answered while the refresh was
/// in flight, failures).
async fn refresh_storm(bench: &Bench, proxy: SocketAddr, browser: &Browser) -> (u64, usize, usize) {
    let url = Bench::url(proxy, "/");
    let cookie = browser.cookie_header(&url);
    let before = bench.idp.knobs().refresh_grants();
    let calls_before = bench.idp.knobs().token_calls();
    bench.idp.knobs().hold_token_calls(true);
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..bench.opts.storm)
        .map(|_| {
            tokio::spawn(
                client
                    .get(&url)
                    .header(reqwest::header::COOKIE, &cookie)
                    .send(),
            )
        })
        .collect();
    bench.idp.knobs().wait_token_calls(calls_before + 1).await;
    // Everyone but the refreshing request is served with the still-valid token.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tasks.iter().filter(|t| t.is_finished()).count() < bench.opts.storm - 1
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answered_during = tasks.iter().filter(|t| t.is_finished()).count();
    bench.idp.knobs().hold_token_calls(false);
    let mut failures = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) if r.status() == 200 => {}
            _ => failures += 1,
        }
    }
    (
        bench.idp.knobs().refresh_grants() - before,
        answered_during,
        failures,
    )
}

/// One run of the due-sessions scenario.
struct DueRun {
    /// The ID token signing algorithm of the provider.
    alg: &'static str,
    wall: Duration,
    refreshes: u64,
    /// CPU time latchkey spent during the run.
    latchkey_cpu: Duration,
    /// CPU time of this process during the run: the provider (signing) and
    /// the clients.
    provider_cpu: Duration,
}

/// `sessions` sessions due at once, each refresh taking 100 ms at `idp`.
async fn due_sessions(
    alg: &'static str,
    idp: &DevIdp,
    proxy: &Proc,
    sessions: &[Browser],
) -> DueRun {
    let url = Bench::url(proxy.addr.unwrap(), "/");
    idp.knobs().delay_token_calls(Duration::from_millis(100));
    let before = idp.knobs().refresh_grants();
    let cpu_before = (
        procs::cpu_time(proxy.child.id()),
        procs::cpu_time(std::process::id()),
    );
    let started = Instant::now();
    let requests = sessions.iter().map(|b| {
        let request = b.client.get(&url).header(ACCEPT, "text/html").send();
        async move { request.await.map(|r| r.status().as_u16()).unwrap_or(0) }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let wall = started.elapsed();
    let latchkey_cpu = procs::cpu_time(proxy.child.id()).saturating_sub(cpu_before.0);
    let provider_cpu = procs::cpu_time(std::process::id()).saturating_sub(cpu_before.1);
    idp.knobs().delay_token_calls(Duration::ZERO);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    DueRun {
        alg,
        wall,
        refreshes: idp.knobs().refresh_grants() - before,
        latchkey_cpu,
        provider_cpu,
    }
}

/// The index in `Bench::ports` of the large SQLite store's latchkey.
const LARGE_SQLITE_PORT: usize = 8;

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Stores `n` realistic session records through the store API of `store`
/// (as logins would have written them); returns how long it took.
async fn store_sessions(store: &dyn latchkey::store::Store, n: usize) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let (key, value) = realistic_session(i);
        store
            .insert_if_absent(&key, &value, Duration::from_secs(86400))
            .await
            .unwrap();
    }
    started.elapsed()
}

/// The store key and sealed value of a realistic session record of user `i`.
fn realistic_session(i: usize) -> (String, Vec<u8>) {
    use latchkey::idp::{Identity, TokenSet};
    use latchkey::session::{SessionRecord, session_key};
    let id = latchkey::secret::random_token();
    let record = SessionRecord::new(
        Identity {
            issuer: "https://idp.example.com/realms/main".into(),
            subject: format!("user-{i}"),
            email: Some(format!("user-{i}@example.com")),
            groups: vec!["staff".into(), "engineering".into()],
            sid: Some(latchkey::secret::random_token()),
            issued_at: Some(1_700_000_000_000),
            userinfo_claims: Default::default(),
        },
        TokenSet {
            access_token: latchkey::secret::random_token().into(),
            access_expires_at: 0,
            refresh_token: Some(latchkey::secret::random_token().into()),
            // A typical RS256 ID token is 800–1,000 bytes.
            id_token: Some("x".repeat(900).into()),
        },
        0,
        Duration::from_secs(86400),
    );
    let value = record.seal(&latchkey::seal::RecordSeal::process_default(), &id);
    (session_key(&id), value)
}

/// Bytes per session in the memory store: RSS growth of this process while
/// `n` realistic session records are created through the store API.
async fn session_memory(n: usize) -> f64 {
    let store = latchkey::store::memory::MemoryStore::new();
    let pid = std::process::id();
    let before = procs::rss_kib(pid).unwrap_or(0);
    store_sessions(&store, n).await;
    let after = procs::rss_kib(pid).unwrap_or(0);
    drop(store);
    (after.saturating_sub(before) as f64 * 1024.0) / n as f64
}

fn version(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "not installed".into())
}

/// The name of the row every ratio is taken against.
const BARE_PROXY: &str = "bare proxy (hyper, no auth)";

async fn run(opts: Options) {
    let exe = std::env::current_exe().unwrap();
    let latchkey = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("latchkey"))
        .filter(|p| p.exists())
        .expect("build the latchkey binary first (bench/run.sh does)");
    let ports: Vec<u16> = (0..9).map(|_| procs::free_port()).collect();
    let apache_port = procs::free_port();
    let mut redirects: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/oauth2/callback"))
        .collect();
    redirects.dedup();
    let idp = DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![
            DevClient {
                client_id: "latchkey".into(),
                client_secret: SECRET.into(),
                redirect_uris: redirects.clone(),
                post_logout_redirect_uris: vec![],
                backchannel_logout_uri: None,
            },
            DevClient {
                client_id: "apache".into(),
                client_secret: SECRET.into(),
                redirect_uris: vec![format!("http://127.0.0.1:{apache_port}/redirect_uri")],
                post_logout_redirect_uris: vec![],
                backchannel_logout_uri: None,
            },
        ],
        ..DevIdpConfig::default()
    })
    .await
    .unwrap();
    let upstream_proc = procs::start(
        exe.to_str().unwrap(),
        &["upstream", "--listen", "127.0.0.1:0"],
        &[],
        procs::plain_listening,
    );
    let upstream = upstream_proc.addr.unwrap();
    let bench = Bench {
        opts,
        exe: exe.clone(),
        latchkey,
        idp,
        upstream,
        ports,
        apache_port,
        _tmp: tempfile::tempdir().unwrap(),
    };
    let mut logins = Vec::new();
    let mut extra_notes = Vec::new();
    // Every steady-state setup is started first and kept running, so that
    // the rounds can interleave them.
    let mut targets = vec![rounds::Target {
        name: "direct (upstream alone)".into(),
        url: Bench::url(upstream, "/"),
        cookie: None,
        pids: vec![upstream_proc.child.id()],
    }];
    let mut running: Vec<Proc> = Vec::new();
    let bare_rows = [
        (BARE_PROXY, None),
        (
            "bare proxy adding latchkey's six forwarding headers (no auth)",
            Some("--forwarding-headers"),
        ),
    ];
    for (name, flag) in bare_rows {
        let upstream = upstream.to_string();
        let mut args = vec![
            "bare-proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
        ];
        args.extend(flag);
        let bare = procs::start(
            bench.exe.to_str().unwrap(),
            &args,
            &[],
            procs::plain_listening,
        );
        targets.push(rounds::Target {
            name: name.into(),
            url: Bench::url(bare.addr.unwrap(), "/"),
            cookie: None,
            pids: vec![bare.child.id()],
        });
        running.push(bare);
    }
    if !bench.opts.quick {
        match nginx_proxy_setup(&bench) {
            Ok((proc, target)) => {
                targets.push(target);
                running.push(proc);
            }
            Err(e) => extra_notes.push(format!("nginx reverse-proxy row skipped: {e}")),
        }
    }

    let unique = &latchkey::secret::random_token()[..8];
    let sqlite_url = |file: &str| format!("sqlite://{}", bench._tmp.path().join(file).display());
    // (name, store URL, port index), each store with the sessions it holds
    // beforehand.
    let mut stores = vec![
        ("memory".to_owned(), "memory://".to_owned(), 0),
        ("sqlite".to_owned(), sqlite_url("bench.db"), 1),
    ];
    let mut filled = vec![(sqlite_url("bench.db"), bench.opts.sqlite_sessions)];
    if bench.opts.sqlite_sessions_large > 0 {
        let name = format!(
            "sqlite, {} sessions",
            thousands(bench.opts.sqlite_sessions_large)
        );
        stores.push((name, sqlite_url("large.db"), LARGE_SQLITE_PORT));
        filled.push((sqlite_url("large.db"), bench.opts.sqlite_sessions_large));
    }
    for (url, n) in filled {
        let store = latchkey::store::connect(&url)
            .await
            .expect("open the SQLite store");
        let took = store_sessions(store.as_ref(), n).await;
        eprintln!("{url}: {n} sessions stored in {:.1} s", took.as_secs_f64());
    }
    if !bench.opts.quick {
        let redis = std::env::var("LATCHKEY_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let postgres = std::env::var("LATCHKEY_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        stores.push(("redis".into(), format!("{redis}?prefix=bench-{unique}"), 2));
        stores.push((
            "postgres".into(),
            format!("{postgres}?prefix=bench-{unique}"),
            3,
        ));
    }
    // (name, entry, callback, session cookie, processes) of each relying party.
    let mut relying_parties: Vec<(String, String, String, &str, Vec<u32>)> = Vec::new();
    for (name, store, port_index) in &stores {
        let port = bench.ports[*port_index];
        let proc = bench.latchkey(port, store, true, &[]);
        let entry = format!("http://127.0.0.1:{port}/");
        let callback = format!("http://127.0.0.1:{port}/oauth2/callback");
        let browser = bench.signed_in(&entry, &callback).await;
        targets.push(rounds::Target {
            name: format!("latchkey, {name} store"),
            url: entry.clone(),
            cookie: Some(browser.cookie_header(&entry)),
            pids: vec![proc.child.id()],
        });
        // The large store's row measures requests only.
        if *port_index != LARGE_SQLITE_PORT {
            relying_parties.push((
                format!("latchkey, {name} store"),
                entry,
                callback,
                "_latchkey",
                vec![proc.child.id()],
            ));
        }
        running.push(proc);
    }
    if !bench.opts.quick {
        match forward_auth_setup(&bench).await {
            Ok((procs, target)) => {
                targets.push(target);
                running.extend(procs);
            }
            Err(e) => extra_notes.push(format!("nginx forward-auth row skipped: {e}")),
        }
        match apache_setup(&bench).await {
            Ok((proc, target, callback)) => {
                relying_parties.push((
                    "Apache + mod_auth_openidc".into(),
                    target.url.clone(),
                    callback,
                    "mod_auth_openidc_session",
                    target.pids.clone(),
                ));
                targets.push(target);
                running.push(proc);
            }
            Err(e) => extra_notes.push(format!("mod_auth_openidc rows skipped: {e}")),
        }
    }

    let plan = rounds::Plan {
        rounds: bench.opts.rounds,
        window: bench.opts.window,
        warm_up: Duration::from_secs(1),
        connections: bench.opts.connections,
    };
    let samples = rounds::measure(&targets, &plan);
    let rows: Vec<Row> = (targets.iter().zip(samples))
        .map(|(target, samples)| Row {
            name: target.name.clone(),
            samples,
            peak_rss_kib: Some(
                (procs::descendants_and(&target.pids).into_iter())
                    .filter_map(procs::peak_rss_kib)
                    .sum(),
            )
            .filter(|kib| *kib > 0 && !target.name.starts_with("direct")),
        })
        .collect();

    // The login storms, on the same servers, one relying party at a time.
    for (name, entry, callback, cookie, pids) in &relying_parties {
        logins.push(bench.logins(name, entry, callback, cookie, pids).await);
    }
    drop(running);
    for (name, store, _) in &stores {
        let shared = name.starts_with("redis") || name.starts_with("postgres");
        if shared && let Ok(shared) = latchkey::store::connect(store).await {
            let _ = shared.purge("").await;
        }
    }

    // Refresh scenarios on a latchkey whose tokens are always due.
    let port = bench.ports[6];
    let refresh_proc = bench.latchkey(
        port,
        "memory://",
        true,
        &[("LATCHKEY_REFRESH_BEFORE_EXPIRY", "1h".to_owned())],
    );
    let entry = format!("http://127.0.0.1:{port}/");
    let callback = format!("http://127.0.0.1:{port}/oauth2/callback");
    let storm_browser = bench.signed_in(&entry, &callback).await;
    let storm = refresh_storm(&bench, refresh_proc.addr.unwrap(), &storm_browser).await;
    let mut due = Vec::new();
    for _ in 0..bench.opts.due_sessions {
        due.push(bench.signed_in(&entry, &callback).await);
    }
    let rs256 = due_sessions("RS256", &bench.idp, &refresh_proc, &due).await;
    drop(refresh_proc);
    // The same with a provider that signs with Ed25519: on one machine, a
    // provider's RSA signing (a millisecond or more per token) competes with
    // latchkey for the CPU; EdDSA takes that cost out of the measurement.
    let eddsa_idp = DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        signing_alg: SigningAlg::EdDsa,
        clients: vec![DevClient {
            client_id: "latchkey".into(),
            client_secret: SECRET.into(),
            redirect_uris: redirects.clone(),
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
        }],
        ..DevIdpConfig::default()
    })
    .await
    .unwrap();
    let eddsa_proc = bench.latchkey(
        port,
        "memory://",
        true,
        &[
            ("LATCHKEY_REFRESH_BEFORE_EXPIRY", "1h".to_owned()),
            ("LATCHKEY_ISSUER", eddsa_idp.issuer().to_owned()),
            ("LATCHKEY_ALLOWED_ALGS", "EdDSA".to_owned()),
        ],
    );
    let mut due = Vec::new();
    for _ in 0..bench.opts.due_sessions {
        due.push(bench.signed_in(&entry, &callback).await);
    }
    let eddsa = due_sessions("EdDSA", &eddsa_idp, &eddsa_proc, &due).await;
    drop(eddsa_proc);
    let bytes_per_session = session_memory(bench.opts.memory_sessions).await;

    let report = render(
        &bench,
        &rows,
        &logins,
        storm,
        &[rs256, eddsa],
        bytes_per_session,
        &extra_notes,
    );
    println!("{report}");
    if !bench.opts.quick {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        // Keep the hand-written analysis below the generated part.
        let analysis = existing
            .split_once("<!-- analysis -->")
            .map(|(_, rest)| format!("<!-- analysis -->{rest}"))
            .unwrap_or_else(|| "<!-- analysis -->\n".into());
        std::fs::write(&path, format!("{report}\n{analysis}")).unwrap();
        eprintln!("wrote {}", path.display());
    }
    drop(upstream_proc);
    bench.idp.stop().await;
}

fn render(
    bench: &Bench,
    rows: &[Row],
    logins: &[Logins],
    storm: (u64, usize, usize),
    due: &[DueRun],
    bytes_per_session: f64,
    notes: &[String],
) -> String {
    let o = &bench.opts;
    let bare = rows.iter().find(|r| r.name == BARE_PROXY);
    let modauth = rows.iter().find(|r| r.name.contains("mod_auth_openidc"));
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let _ = writeln!(out, "# latchkey benchmark results\n");
    let _ = writeln!(
        out,
        "{} run, {}; {} cores ({cpu}); servers pinned to core {}, wrk to core {}; {} connections; steady state in {} interleaved rounds of {} s per setup.\n",
        if o.quick { "Quick (smoke)" } else { "Full" },
        version("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        server_cpu(),
        load_cpu(),
        o.connections,
        o.rounds,
        o.window.as_secs()
    );
    let _ = writeln!(
        out,
        "Versions: latchkey {}; {}; {}; {}; mod_auth_openidc {}.\n",
        env!("CARGO_PKG_VERSION"),
        version("wrk", &["--version"])
            .split(" Copyright")
            .next()
            .unwrap_or(""),
        version("nginx", &["-v"]),
        version("apache2", &["-v"]),
        version(
            "dpkg-query",
            &["-W", "-f=${Version}", "libapache2-mod-auth-openidc"]
        ),
    );
    let _ = writeln!(out, "## Authenticated GET, steady state\n");
    let _ = writeln!(
        out,
        "Every setup runs the same {0} rounds of {1} s, interleaved (each round loads every setup in turn), after a warm-up. Each figure is the median over the rounds; each ratio is taken within a round and shown as its median (min–max over the rounds). CPU is the setup's own processes (the proxy; nginx and latchkey for forward-auth; all of Apache's), from /proc over the window, per request served: not the upstream's, not a store server's.\n",
        o.rounds,
        o.window.as_secs()
    );
    let _ = writeln!(
        out,
        "| setup | req/s | req/s vs bare proxy | p99 ms | p99 vs bare proxy | CPU µs per request | CPU per request vs bare proxy | req/s vs mod_auth_openidc | p99 vs mod_auth_openidc | errors | peak RSS MiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    let rps = |s: &rounds::Sample| s.load.rps;
    let p99 = |s: &rounds::Sample| s.load.p99_ms;
    let versus = |row: &Row, base: Option<&Row>, value: &dyn Fn(&rounds::Sample) -> f64| {
        base.map_or("–".into(), |base| {
            rounds::Ratio::of(&row.samples, &base.samples, value).show()
        })
    };
    for r in rows {
        let median = |value: &dyn Fn(&rounds::Sample) -> f64| {
            rounds::median(&r.samples.iter().map(value).collect::<Vec<_>>())
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {:.2} | {} | {:.1} | {} | {} | {} | {} | {} |",
            r.name,
            median(&rps),
            versus(r, bare, &rps),
            median(&p99),
            versus(r, bare, &p99),
            median(&rounds::Sample::cpu_us_per_request),
            versus(r, bare, &rounds::Sample::cpu_us_per_request),
            versus(r, modauth, &rps),
            versus(r, modauth, &p99),
            r.samples.iter().map(|s| s.load.errors).sum::<u64>(),
            r.peak_rss_kib
                .map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        );
    }
    let _ = writeln!(out, "\n## Logins\n");
    let _ = writeln!(
        out,
        "{} complete logins (start → IdP → callback) from 32 concurrent clients; then {} logins whose callback is sent 4× at once.\n",
        o.logins, o.duplicate_logins
    );
    let _ = writeln!(
        out,
        "| relying party | logins/s | its CPU ms per login | failed logins | token calls per login | successful callbacks per login (of 4) | distinct sessions per login |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for l in logins {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2} | {} | {:.2} | {:.2} | {:.2} |",
            l.name,
            l.per_second,
            l.cpu_ms_per_login,
            l.failed,
            l.token_calls_per_login,
            l.successes_per_login,
            l.sessions_per_login
        );
    }
    let _ = writeln!(out, "\n## Refresh\n");
    let _ = writeln!(
        out,
        "- {} concurrent requests on one session whose access token is due (latchkey, memory store): **{} refresh call(s)** at the provider; {} requests were answered with the still-valid token while the refresh was held; {} failed.",
        o.storm, storm.0, storm.1, storm.2
    );
    for run in due {
        let _ = writeln!(
            out,
            "- {} sessions due at once, each refresh taking 100 ms at a provider signing {}: all served in **{} ms** ({:.1}× one refresh), {} refresh calls; CPU meanwhile: latchkey {} ms, provider and clients {} ms.",
            o.due_sessions,
            run.alg,
            run.wall.as_millis(),
            run.wall.as_secs_f64() / 0.1,
            run.refreshes,
            run.latchkey_cpu.as_millis(),
            run.provider_cpu.as_millis(),
        );
    }
    let sqlite = rows.iter().find(|r| r.name == "latchkey, sqlite store");
    let large = rows
        .iter()
        .find(|r| r.name.starts_with("latchkey, sqlite, "));
    if let (Some(sqlite), Some(large)) = (sqlite, large) {
        let p50 = |s: &rounds::Sample| s.load.p50_ms;
        let ratio = |value: &dyn Fn(&rounds::Sample) -> f64| {
            rounds::Ratio::of(&large.samples, &sqlite.samples, value).show()
        };
        let _ = writeln!(out, "\n## A large SQLite store\n");
        let _ = writeln!(
            out,
            "- The SQLite store holding {} sessions against the same with {} (round by round): p50 latency **{}**, p99 {}, CPU per request {}, req/s {}.",
            thousands(o.sqlite_sessions_large),
            thousands(o.sqlite_sessions),
            ratio(&p50),
            ratio(&p99),
            ratio(&rounds::Sample::cpu_us_per_request),
            ratio(&rps),
        );
    }
    let _ = writeln!(out, "\n## Session memory\n");
    let _ = writeln!(
        out,
        "- {} sessions created through the store API in the memory store: **{:.0} bytes per session** (RSS growth, records with a 900-byte ID token).",
        o.memory_sessions, bytes_per_session
    );
    for note in notes {
        let _ = writeln!(out, "\nNote: {note}");
    }
    out
}

/// nginx as a plain reverse proxy in front of the upstream (`proxy_pass`
/// with upstream keep-alive, no auth): the C reference for what a proxy
/// costs here, next to the bare Rust proxy.
fn nginx_proxy_setup(bench: &Bench) -> Result<(Proc, rounds::Target), String> {
    if version("nginx", &["-v"]) == "not installed" {
        return Err("nginx is not installed".into());
    }
    let port = bench.ports[7];
    let dir = bench._tmp.path().join("nginx-proxy");
    let server = format!(
        r#"  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"#
    );
    let proc = start_nginx(&dir, bench.upstream, &server, port)?;
    let target = rounds::Target {
        name: "nginx reverse proxy (proxy_pass, upstream keep-alive, no auth)".into(),
        url: format!("http://127.0.0.1:{port}/"),
        cookie: None,
        pids: vec![proc.child.id()],
    };
    Ok((proc, target))
}

/// nginx with one worker, the upstream `app` (keep-alive 64) and `servers`
/// (its `server` blocks, which may add upstreams of their own), in `dir`;
/// running once `port` accepts connections.
fn start_nginx(
    dir: &std::path::Path,
    upstream: SocketAddr,
    servers: &str,
    port: u16,
) -> Result<Proc, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream app {{ server {upstream}; keepalive 64; }}
{servers}}}
"#,
        dir = dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    Ok(procs::start_quiet(
        "nginx",
        &["-c", conf_path.to_str().unwrap()],
        port,
    ))
}

/// latchkey in forward-auth mode behind nginx `auth_request`.
async fn forward_auth_setup(bench: &Bench) -> Result<(Vec<Proc>, rounds::Target), String> {
    if version("nginx", &["-v"]) == "not installed" {
        return Err("nginx is not installed".into());
    }
    let nginx_port = bench.ports[5];
    let lk_port = bench.ports[4];
    // The callback comes back through nginx, so latchkey's redirect_url is nginx's.
    let lk = bench.latchkey(
        lk_port,
        "memory://",
        false,
        &[(
            "LATCHKEY_REDIRECT_URL",
            format!("http://127.0.0.1:{nginx_port}/oauth2/callback"),
        )],
    );
    let dir = bench._tmp.path().join("nginx");
    let servers = format!(
        r#"  upstream latchkey {{ server 127.0.0.1:{lk_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location /oauth2/ {{
      proxy_pass http://latchkey;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
    location = /oauth2/auth {{
      internal;
      proxy_pass http://latchkey;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }}
    location / {{
      auth_request /oauth2/auth;
      error_page 401 = @sign_in;
      auth_request_set $user $upstream_http_x_auth_request_user;
      proxy_set_header X-Forwarded-User $user;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location @sign_in {{ return 302 /oauth2/start?rd=$request_uri; }}
  }}
"#
    );
    let nginx = start_nginx(&dir, bench.upstream, &servers, nginx_port)?;
    let entry = format!("http://127.0.0.1:{nginx_port}/");
    let browser = bench
        .signed_in(
            &entry,
            &format!("http://127.0.0.1:{nginx_port}/oauth2/callback"),
        )
        .await;
    let target = rounds::Target {
        name: "latchkey forward-auth behind nginx auth_request (memory store)".into(),
        cookie: Some(browser.cookie_header(&entry)),
        url: entry,
        pids: vec![nginx.child.id(), lk.child.id()],
    };
    Ok((vec![nginx, lk], target))
}

/// Apache with mod_auth_openidc, server-side session cache, against the same
/// IdP and upstream, signed in; with its callback URL.
async fn apache_setup(bench: &Bench) -> Result<(Proc, rounds::Target, String), String> {
    let module = "/usr/lib/apache2/modules/mod_auth_openidc.so";
    if !std::path::Path::new(module).exists() {
        return Err("libapache2-mod-auth-openidc is not installed".into());
    }
    let port = bench.apache_port;
    let dir = bench._tmp.path().join("apache");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _ = std::process::Command::new("chown")
        .args(["-R", "www-data:www-data", dir.to_str().unwrap()])
        .status();
    let m = "/usr/lib/apache2/modules";
    let conf = format!(
        r#"ServerName 127.0.0.1
ServerRoot {dir}
PidFile {dir}/httpd.pid
ErrorLog {dir}/error.log
LogLevel warn
Listen 127.0.0.1:{port}
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authz_user_module {m}/mod_authz_user.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule auth_openidc_module {module}
LoadModule proxy_module {m}/mod_proxy.so
LoadModule proxy_http_module {m}/mod_proxy_http.so
User www-data
Group www-data
ServerLimit 4
ThreadsPerChild 64
MaxRequestWorkers 256
OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID apache
OIDCClientSecret {secret}
OIDCRedirectURI http://127.0.0.1:{port}/redirect_uri
OIDCCryptoPassphrase bench-passphrase-bench-passphrase
OIDCScope "openid email profile"
OIDCPKCEMethod S256
OIDCSSLValidateServer Off
OIDCCacheType shm
OIDCSessionType server-cache
OIDCProviderTokenEndpointAuth client_secret_basic
ProxyPass /redirect_uri !
ProxyPass / http://{up}/
<Location />
  AuthType openid-connect
  Require valid-user
</Location>
"#,
        dir = dir.display(),
        issuer = bench.idp.issuer(),
        secret = SECRET,
        up = bench.upstream,
    );
    let conf_path = dir.join("httpd.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let apache = procs::start_quiet(
        "apache2",
        &["-f", conf_path.to_str().unwrap(), "-DFOREGROUND"],
        port,
    );
    let entry = format!("http://127.0.0.1:{port}/");
    let callback = format!("http://127.0.0.1:{port}/redirect_uri");
    let browser = bench.signed_in(&entry, &callback).await;
    let target = rounds::Target {
        name: "Apache + mod_auth_openidc (server-side cache)".into(),
        cookie: Some(browser.cookie_header(&entry)),
        url: entry,
        pids: vec![apache.child.id()],
    };
    Ok((apache, target, callback))
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
