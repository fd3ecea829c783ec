//! The `latchkey` binary's commands, run as a user would run them.

mod common;

use std::process::Command;
use std::time::Duration;

fn latchkey(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env_remove("LATCHKEY_STORE")
        .output()
        .expect("run latchkey");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_store_reports_every_guarantee_on_a_healthy_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("check.db").display());
    every_guarantee_holds_on(&url);
}

/// The same on a Redis Cluster, whose rules (one slot per script, a scan per
/// primary) the checks obey as the engine does.
#[test]
fn check_store_holds_on_a_redis_cluster() {
    let Ok(url) = std::env::var("LATCHKEY_TEST_REDIS_CLUSTER") else {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_CLUSTER to run it");
        return;
    };
    every_guarantee_holds_on(&url);
}

/// And on Redis behind Sentinel.
#[test]
fn check_store_holds_behind_redis_sentinel() {
    let Ok(url) = std::env::var("LATCHKEY_TEST_REDIS_SENTINEL") else {
        eprintln!("skipping: set LATCHKEY_TEST_REDIS_SENTINEL to run it");
        return;
    };
    every_guarantee_holds_on(&url);
}

fn every_guarantee_holds_on(url: &str) {
    let (code, stdout, stderr) = latchkey(&["check-store", "--store", url]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let checks = latchkey::store::contract::CHECKS;
    for check in checks {
        assert!(stdout.contains(check.guarantee), "missing {}", check.name);
    }
    assert!(stdout.contains(&format!("{0} of {0} guarantees hold.", checks.len())));
    assert!(!stdout.contains("BROKEN"));
}

#[test]
fn check_store_explains_an_unusable_store_and_hides_passwords() {
    let (code, _, stderr) = latchkey(&["check-store", "--store", "mysql://u:hunter2@db/x"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unsupported store URL scheme"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn serve_explains_a_missing_cookie_secret() {
    let (code, _, stderr) = latchkey(&[
        "serve",
        "--issuer",
        "http://127.0.0.1:9",
        "--client-id",
        "app",
        "--redirect-url",
        "http://127.0.0.1:4180/oauth2/callback",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cookie_secret"), "{stderr}");
    assert!(stderr.contains("openssl rand -base64 32"), "{stderr}");
}

#[test]
fn serve_refuses_to_admit_everyone_without_being_told() {
    let (code, _, stderr) = latchkey(&[
        "serve",
        "--issuer",
        "http://127.0.0.1:9",
        "--client-id",
        "app",
        "--redirect-url",
        "http://127.0.0.1:4180/oauth2/callback",
        "--cookie-secret",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("email_domains") && stderr.contains("email_domains = [\"*\"]"),
        "{stderr}"
    );
}

#[test]
fn serve_reads_env_and_file_with_flags_winning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latchkey.toml");
    std::fs::write(
        &file,
        "issuer = \"http://127.0.0.1:9\"\nclient_id = \"app\"\n\
         redirect_url = \"http://127.0.0.1:4180/oauth2/callback\"\n\
         cookie_secret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n\
         email_domains = [\"*\"]\n\
         session_ttl = \"soon\"\n",
    )
    .unwrap();
    // The file's bad session_ttl is reported...
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("session_ttl") && stderr.contains("7d"),
        "{stderr}"
    );
    // ... unless the environment overrides it, and a flag overrides that; the
    // next problem is then discovery (nothing listens on port 9).
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args([
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--session-ttl",
            "1h",
        ])
        .env("LATCHKEY_SESSION_TTL", "also bad")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("http://127.0.0.1:9/.well-known/openid-configuration"),
        "{stderr}"
    );
    // A typo in the file is named.
    std::fs::write(&file, "isuer = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("isuer"), "{stderr}");
}

#[test]
fn serve_help_documents_every_setting() {
    let (code, stdout, _) = latchkey(&["serve", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--issuer",
        "--client-id",
        "--client-secret",
        "--client-secret-file",
        "--redirect-url",
        "--upstream",
        "--store",
        "--cookie-secret",
        "--cookie-name",
        "--scopes",
        "--email-domains",
        "--allowed-emails",
        "--allowed-groups",
        "--groups-claim",
        "--skip-auth-routes",
        "--pass-access-token",
        "--session-ttl",
        "--login-ttl",
        "--refresh-before-expiry",
        "--post-logout-redirect-url",
        "--pass-routing-headers",
        "--header-read-timeout",
        "--idle-timeout",
        "--max-connections",
        "--max-header-bytes",
        "--metrics-address",
        "--insecure-allow-unverified-email",
        "LATCHKEY_ISSUER",
    ] {
        assert!(stdout.contains(flag), "{flag} missing from serve --help");
    }
}

#[test]
fn demo_names_a_taken_port_and_the_flag_to_change_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, stderr) = latchkey(&[
        "demo",
        "--port",
        &port,
        "--idp-port",
        "0",
        "--upstream-port",
        "0",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&port) && stderr.contains("--port"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_all_problems_then_checks_the_provider_and_store() {
    // Bad settings: every problem at once, exit 2, nothing listens.
    let (code, stdout, stderr) = latchkey(&[
        "serve",
        "--check-config",
        "--issuer",
        "http://127.0.0.1:9",
        "--client-id",
        "app",
        "--redirect-url",
        "http://127.0.0.1:4180/wrong",
        "--session-ttl",
        "soon",
    ]);
    assert_eq!(code, 2, "{stderr}");
    for setting in [
        "redirect_url",
        "cookie_secret",
        "email_domains",
        "session_ttl",
    ] {
        assert!(
            stderr.contains(&format!("setting `{setting}`")),
            "{setting}: {stderr}"
        );
    }
    assert!(stdout.is_empty(), "{stdout}");
    // Good settings, no provider: exit 1, naming the discovery URL.
    let good = |issuer: &str, store: &str| {
        vec![
            "serve".to_owned(),
            "--check-config".into(),
            "--issuer".into(),
            issuer.into(),
            "--client-id".into(),
            "latchkey".into(),
            "--client-secret".into(),
            "s".into(),
            "--redirect-url".into(),
            "http://127.0.0.1:4180/oauth2/callback".into(),
            "--cookie-secret".into(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            "--email-domains".into(),
            "example.com".into(),
            "--store".into(),
            store.into(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        latchkey(&args)
    };
    let (code, _, stderr) = run(good("http://127.0.0.1:9", "memory://"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("http://127.0.0.1:9/.well-known/openid-configuration"),
        "{stderr}"
    );
    // A provider that answers: exit 0, what would run, no secret.
    let idp = latchkey::dev_idp::DevIdp::start(latchkey::dev_idp::DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..latchkey::dev_idp::DevIdpConfig::default()
    })
    .await
    .unwrap();
    let issuer = idp.issuer().to_owned();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(good(&issuer, "postgres://app:hunter2@127.0.0.1:9/x"))
    })
    .await
    .unwrap();
    // The store does not answer: exit 1, its password never shown.
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "{stderr}"
    );
    let issuer = idp.issuer().to_owned();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || run(good(&issuer, "memory://")))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(stdout.contains(idp.issuer()), "{stdout}");
    assert!(stdout.contains("forward-auth only"), "{stdout}");
    assert!(stdout.contains("example.com"), "{stdout}");
    assert!(!stdout.contains("AAAAAAAA"), "{stdout}");
}

/// `sessions list` and `sessions revoke` on a store that a login flow wrote:
/// the operator ends one user's sessions (without the provider) and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_revoke_ends_every_session_of_that_user_and_no_other() {
    use latchkey::clock::ManualClock;
    use latchkey::login::{LoginFlow, LoginSettings};
    use latchkey::secret::SessionId;
    use latchkey::session::{SessionError, SessionSettings, Sessions};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sessions.db").display());
    let store = latchkey::store::connect(&url).await.unwrap();
    let clock = std::sync::Arc::new(ManualClock::starting_now());
    let idp = common::idp_double::ControlledIdp::new(clock.clone(), Duration::from_secs(3600));
    let flow = LoginFlow::new(
        store.clone(),
        idp.clone(),
        clock.clone(),
        LoginSettings::default(),
    );
    let sessions = Sessions::new(
        store.clone(),
        idp.clone(),
        clock,
        SessionSettings::default(),
    );
    let sign_in = async |subject: &str, code: &str| {
        idp.exchange_as_subject(subject);
        common::naive::sign_in(&flow, code).await
    };
    let alice = [sign_in("alice", "a1").await, sign_in("alice", "a2").await];
    let bob = sign_in("bob", "b1").await;
    let usable = async |id: &SessionId| match sessions.load(id).await {
        Ok(_) => true,
        Err(SessionError::NotFound) => false,
        Err(other) => panic!("{other}"),
    };

    let run = |args: &[&str]| latchkey(&[&["sessions"], args].concat());
    let (code, stdout, stderr) = run(&["list", "--store", &url, "--sub", "alice"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches(" live ").count(), 2, "{stdout}");
    assert!(stdout.contains("2 sessions indexed"), "{stdout}");
    let (code, stdout, _) = run(&["list", "--store", &url]);
    assert_eq!(code, 0);
    assert!(stdout.contains("3 session records"), "{stdout}");

    let (code, stdout, stderr) = run(&["revoke", "--store", &url, "--sub", "alice"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("revoked 2 sessions"), "{stdout}");
    for id in &alice {
        assert!(!usable(id).await, "alice is still signed in");
    }
    assert!(usable(&bob).await, "bob was signed out too");
    let (_, stdout, _) = run(&["list", "--store", &url, "--sub", "alice"]);
    assert!(stdout.contains("0 sessions indexed"), "{stdout}");
    // --all: every session record goes, bob's too.
    let (code, stdout, stderr) = run(&["revoke", "--store", &url, "--all"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("deleted"), "{stdout}");
    assert!(!usable(&bob).await, "bob is still signed in after --all");

    // Asked for nobody, or with a broken URL: a usage error, no secret shown.
    let (code, _, stderr) = run(&["revoke", "--store", &url]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--sub, --sid or --all"), "{stderr}");
    let (code, _, stderr) = run(&["list", "--store", "mysql://u:hunter2@db/x", "--sub", "a"]);
    assert_eq!(code, 2);
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
