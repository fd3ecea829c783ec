//! The `latchkey` command.

// The command's one future holds every subcommand's, the Redis Sentinel
// client's among them: deeper than the default limit lets rustc lay out.
#![recursion_limit = "256"]

use std::process::ExitCode;

#[cfg(feature = "dev-tools")]
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use latchkey::config::{LogFormat, RawSettings};
#[cfg(feature = "dev-tools")]
use latchkey::demo::{Demo, DemoPorts};
#[cfg(feature = "dev-tools")]
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig};
use latchkey::proxy::{App, Server};
use latchkey::secret::random_token;
use latchkey::store::{self, contract};

/// An OpenID Connect authentication proxy whose logins and refreshes are
/// race-free by construction.
#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy. Every setting can come from the config file, a
    /// LATCHKEY_* environment variable or a flag (flag > env > file > default).
    Serve(Box<ServeArgs>),
    /// One command, no setup: the development IdP, a sample app and the proxy
    /// on 127.0.0.1, with an embedded store.
    #[cfg(feature = "dev-tools")]
    Demo(DemoArgs),
    /// Run the store contract live against a store and report, per guarantee,
    /// what was observed. Works under a random key prefix that it removes
    /// afterwards. Exit status 0 only if every guarantee held.
    CheckStore {
        /// The store URL: memory://, sqlite://PATH, redis://HOST:PORT/DB,
        /// redis+cluster://HOST:PORT,HOST:PORT/, postgres://USER@HOST/DB.
        #[arg(long, env = "LATCHKEY_STORE")]
        store: String,
    },
    /// List or end the sessions in a store, without the identity provider
    /// (the store holds no user name in the clear: name the user).
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Run the development OpenID Provider alone (for local development of
    /// other apps and for tests; never for production).
    #[cfg(feature = "dev-tools")]
    DevIdp(DevIdpArgs),
    /// Print the latchkey TOML equivalent of an oauth2-proxy configuration:
    /// its config file and its OAUTH2_PROXY_* environment variables (which
    /// win, as in oauth2-proxy), with a comment on every option not carried
    /// over. Exit status 2 when the file cannot be read.
    #[command(name = "import-oauth2-proxy")]
    ImportOauth2Proxy {
        /// oauth2-proxy's config file (TOML); without it, only the environment.
        file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// The sessions of a user (--sub) or a provider session (--sid), with
    /// their state; without either, how many session records there are.
    List {
        /// The store URL, as for `serve`.
        #[arg(long, env = "LATCHKEY_STORE")]
        store: String,
        /// The user: the ID token's `sub`.
        #[arg(long, conflicts_with = "sid")]
        sub: Option<String>,
        /// The provider session: the ID token's `sid`.
        #[arg(long)]
        sid: Option<String>,
    },
    /// End every session of a user (--sub) or of a provider session (--sid),
    /// including those of sign-ins still completing, as a back-channel
    /// logout does; or delete every session record (--all).
    Revoke {
        /// The store URL, as for `serve`.
        #[arg(long, env = "LATCHKEY_STORE")]
        store: String,
        /// The user: the ID token's `sub`.
        #[arg(long, group = "whom")]
        sub: Option<String>,
        /// The provider session: the ID token's `sid`.
        #[arg(long, group = "whom")]
        sid: Option<String>,
        /// Every session (sign-ins completing meanwhile are not covered).
        #[arg(long, group = "whom")]
        all: bool,
        /// How long sign-ins from before now are refused: at least
        /// `exchange_lease` plus `clock_skew` of the deployment.
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        hold: std::time::Duration,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML file with the settings below (keys in snake_case).
    #[arg(long, env = "LATCHKEY_CONFIG")]
    config: Option<PathBuf>,
    /// Check the settings, discover the provider and open the store, print
    /// what would run, and exit (0: ready; 2: bad settings; 1: the store or
    /// the provider cannot be reached), without listening.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    settings: RawSettings,
}

#[cfg(feature = "dev-tools")]
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Port of the proxy (the URL to open).
    #[arg(long, default_value_t = 4180)]
    port: u16,
    /// Port of the development IdP.
    #[arg(long, default_value_t = 4181)]
    idp_port: u16,
    /// Port of the sample app.
    #[arg(long, default_value_t = 4182)]
    upstream_port: u16,
}

#[cfg(feature = "dev-tools")]
#[derive(Debug, clap::Args)]
struct DevIdpArgs {
    /// Address to listen on [default: 127.0.0.1:4181].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Issuer URL to advertise (default: http://LISTEN).
    #[arg(long)]
    issuer: Option<String>,
    /// TOML file with `users` and `clients` tables (see the README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A client as CLIENT_ID:SECRET:REDIRECT_URI (repeatable; replaces the
    /// default `latchkey` client).
    #[arg(long = "client", value_name = "ID:SECRET:REDIRECT_URI")]
    clients: Vec<String>,
    /// Enable the /_dev/* endpoints (fail or delay token calls, rotate the
    /// signing key, counters).
    #[arg(long)]
    test_knobs: bool,
    /// The ID token signing algorithm [default: RS256].
    #[arg(long, value_enum)]
    signing_alg: Option<latchkey::dev_idp::SigningAlg>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => demo(args).await,
        Command::CheckStore { store } => check_store(&store).await,
        Command::Sessions(command) => sessions(command).await,
        Command::ImportOauth2Proxy { file } => import_oauth2_proxy(file.as_deref()),
        #[cfg(feature = "dev-tools")]
        Command::DevIdp(args) => dev_idp(args).await,
    }
}

#[cfg(feature = "dev-tools")]
fn parse_client(text: &str) -> Result<DevClient, String> {
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(id), Some(secret), Some(redirect)) if !id.is_empty() && !secret.is_empty() => {
            Ok(DevClient {
                client_id: id.into(),
                client_secret: secret.into(),
                redirect_uris: vec![redirect.into()],
                post_logout_redirect_uris: Vec::new(),
                backchannel_logout_uri: None,
            })
        }
        _ => Err(format!(
            "--client {text:?}: expected CLIENT_ID:SECRET:REDIRECT_URI, \
             e.g. myapp:s3cret:http://127.0.0.1:3000/callback"
        )),
    }
}

#[cfg(feature = "dev-tools")]
fn dev_idp_config(args: DevIdpArgs) -> Result<DevIdpConfig, String> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str::<DevIdpConfig>(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => DevIdpConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.issuer.is_some() {
        config.issuer = args.issuer;
    }
    if !args.clients.is_empty() {
        config.clients = args
            .clients
            .iter()
            .map(|c| parse_client(c))
            .collect::<Result<_, _>>()?;
    }
    config.test_knobs |= args.test_knobs;
    if let Some(alg) = args.signing_alg {
        config.signing_alg = alg;
    }
    Ok(config)
}

#[cfg(feature = "dev-tools")]
async fn dev_idp(args: DevIdpArgs) -> ExitCode {
    let config = match dev_idp_config(args) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("latchkey dev-idp: {problem}");
            return ExitCode::from(2);
        }
    };
    let idp = match DevIdp::start(config.clone()).await {
        Ok(idp) => idp,
        Err(error) => {
            eprintln!("latchkey dev-idp: {error}");
            return ExitCode::from(1);
        }
    };
    println!("==============================================================");
    println!(" latchkey development IdP: DEVELOPMENT ONLY, NEVER PRODUCTION ");
    println!("==============================================================");
    println!("issuer:  {}", idp.issuer());
    for user in &config.users {
        println!("user:    {} / {}", user.username, user.password);
    }
    for client in &config.clients {
        println!(
            "client:  {} (redirect {})",
            client.client_id,
            client.redirect_uris.join(", ")
        );
    }
    if config.test_knobs {
        println!("test knobs: {}/_dev/", idp.issuer());
    }
    shutdown_signal().await;
    println!("stopping");
    idp.stop().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM (never elsewhere).
async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: never escape codes in a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// What `serve --check-config` prints: the settings that decide what runs,
/// with no secret (the store URL's password redacted).
fn what_would_run(settings: &latchkey::config::Settings) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mode = match &settings.upstream {
        Some(url) => format!("reverse proxy to {url}"),
        None => "forward-auth only (no upstream)".to_owned(),
    };
    format!(
        "configuration ok: the provider answered and the store opened\n         listen           {}\n         mode             {mode}\n         issuer           {}\n         client_id        {}\n         redirect_url     {}\n         store            {}\n         email_domains    {}\n         allowed_emails   {}\n         allowed_groups   {}\n         session_ttl      {}\n         metrics          {}\n",
        settings.listen,
        settings.issuer,
        settings.client_id,
        settings.redirect_url,
        latchkey::store::redact_url(&settings.store),
        list(&settings.email_domains),
        list(&settings.allowed_emails),
        list(&settings.allowed_groups),
        humantime::format_duration(settings.session_ttl),
        settings.metrics_address.map_or_else(
            || format!("{} (/metrics)", settings.listen),
            |a| a.to_string()
        ),
    )
}

async fn serve(args: ServeArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => match RawSettings::from_file(path) {
            Ok(file) => file,
            Err(error) => {
                eprintln!("latchkey serve: {error}");
                return ExitCode::from(2);
            }
        },
        None => RawSettings::default(),
    };
    let settings = match args
        .settings
        .split_command_line_lists()
        .and_then(|flags| flags.over(file).validate())
    {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("latchkey serve: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    let app = match App::new(settings).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("latchkey serve: {error}");
            return ExitCode::from(1);
        }
    };
    if args.check_config {
        print!("{}", what_would_run(app.settings()));
        return ExitCode::SUCCESS;
    }
    let server = match Server::bind(app).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("latchkey serve: {error}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(addr = %server.addr(), "latchkey is listening");
    if let Some(tls) = server.app().settings().listener_tls.clone() {
        tokio::spawn(reload_tls_on_hangup(tls));
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(feature = "dev-tools")]
async fn demo(args: DemoArgs) -> ExitCode {
    init_logging(LogFormat::Text);
    let ports = DemoPorts {
        proxy: args.port,
        idp: args.idp_port,
        upstream: args.upstream_port,
    };
    let demo = match Demo::start(ports).await {
        Ok(demo) => demo,
        Err(error) => {
            eprintln!("latchkey demo: {error}");
            return ExitCode::from(1);
        }
    };
    println!();
    println!(
        "  latchkey demo is running (development IdP: {})",
        demo.idp.issuer()
    );
    println!();
    println!("  open http://{}/ — sign in as alice / alice", demo.proxy);
    println!("  (or bob / bob; Ctrl-C stops everything)");
    println!();
    shutdown_signal().await;
    demo.stop().await;
    ExitCode::SUCCESS
}

/// SIGHUP re-reads the listener's certificate and key (a renewal): new
/// connections present them; if they cannot be used, the old ones stay.
async fn reload_tls_on_hangup(tls: latchkey::tls::ListenerTls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot listen for SIGHUP: the certificate is reloaded only by a restart"
            );
            return;
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("reloaded the listener's certificate"),
                Err(error) => {
                    tracing::error!(%error, "kept the previous certificate: the new one cannot be used")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

async fn shutdown_signal() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
}

fn import_oauth2_proxy(file: Option<&std::path::Path>) -> ExitCode {
    let text = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("cannot read {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
        None => String::new(),
    };
    let environment: Vec<(String, String)> = std::env::vars().collect();
    let options = match latchkey::import::options(
        &text,
        environment.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(options) => options,
        Err(error) => {
            eprintln!(
                "{}: {error}",
                file.map_or("environment".into(), |p| p.display().to_string())
            );
            return ExitCode::from(2);
        }
    };
    let imported = latchkey::import::convert(&options);
    print!("{}", imported.toml);
    if !imported.not_carried.is_empty() {
        eprintln!(
            "{} option(s) not carried over: see the comments at the top",
            imported.not_carried.len()
        );
    }
    ExitCode::SUCCESS
}

async fn check_store(url: &str) -> ExitCode {
    let shown = store::redact_url(url);
    let store = match store::connect(url).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("latchkey check-store: cannot use {shown}: {error}");
            return ExitCode::from(2);
        }
    };
    let prefix = format!("check-store:{}:", &random_token()[..12]);
    println!("Checking {shown} under the key prefix {prefix:?}\n");
    let results = contract::run_all(store.clone(), &prefix).await;
    let width = results
        .iter()
        .map(|(c, _)| c.guarantee.len())
        .max()
        .unwrap_or(0);
    let mut all_held = true;
    for (check, result) in &results {
        let (verdict, observed) = match result {
            Ok(observed) => ("holds", observed.as_str()),
            Err(broken) => {
                all_held = false;
                ("BROKEN", broken.as_str())
            }
        };
        println!("{verdict:<6}  {:<width$}  {observed}", check.guarantee);
    }
    if let Err(error) = store.purge(&prefix).await {
        eprintln!("\nwarning: could not remove the records under {prefix:?}: {error}");
    }
    let held = results.iter().filter(|(_, r)| r.is_ok()).count();
    println!("\n{held} of {} guarantees hold.", results.len());
    if all_held {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `latchkey sessions …`: exits 0 when done, 2 for an unusable store URL or
/// missing arguments, 1 when the store fails.
async fn sessions(command: SessionsCommand) -> ExitCode {
    let (SessionsCommand::List { store: url, .. } | SessionsCommand::Revoke { store: url, .. }) =
        &command;
    let shown = store::redact_url(url);
    let store = match store::connect(url).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("latchkey sessions: cannot use {shown}: {error}");
            return ExitCode::from(2);
        }
    };
    let done = match &command {
        SessionsCommand::List { sub, sid, .. } => list_sessions(&store, &shown, sub, sid).await,
        SessionsCommand::Revoke {
            sub,
            sid,
            all,
            hold,
            ..
        } => revoke_sessions(&store, sub, sid, *all, *hold).await,
    };
    done.unwrap_or_else(|error| {
        eprintln!("latchkey sessions: {shown}: {error}");
        ExitCode::FAILURE
    })
}

/// The handle `--sub` or `--sid` names.
fn handle_of<'a>(
    sub: &'a Option<String>,
    sid: &'a Option<String>,
) -> Option<latchkey::logout::Handle<'a>> {
    use latchkey::logout::Handle;
    match (sub, sid) {
        (Some(sub), _) => Some(Handle::Subject(sub)),
        (None, Some(sid)) => Some(Handle::ProviderSession(sid)),
        (None, None) => None,
    }
}

fn session_index(store: &std::sync::Arc<dyn store::Store>) -> latchkey::logout::SessionIndex {
    latchkey::logout::SessionIndex::new(
        store.clone(),
        std::sync::Arc::new(latchkey::clock::SystemClock),
    )
}

async fn list_sessions(
    store: &std::sync::Arc<dyn store::Store>,
    shown: &str,
    sub: &Option<String>,
    sid: &Option<String>,
) -> Result<ExitCode, store::StoreError> {
    let Some(handle) = handle_of(sub, sid) else {
        let n = store.count_live("session:").await?;
        println!("{n} session records in {shown} (name a user with --sub to list theirs)");
        return Ok(ExitCode::SUCCESS);
    };
    let index = session_index(store);
    let listed = index.list(handle).await?;
    println!("{:<16}  {:<8}  ends", "session", "state");
    for session in &listed {
        let state = index.state(&session.key).await?;
        let ends = std::time::UNIX_EPOCH + std::time::Duration::from_millis(session.until);
        // The key's hash names the session; the session id is never stored.
        let name = session.key.rsplit(':').next().unwrap_or_default();
        println!(
            "{:<16}  {:<8}  {}",
            &name[..name.len().min(16)],
            state.to_string(),
            humantime::format_rfc3339_seconds(ends)
        );
    }
    println!("{} sessions indexed", listed.len());
    Ok(ExitCode::SUCCESS)
}

async fn revoke_sessions(
    store: &std::sync::Arc<dyn store::Store>,
    sub: &Option<String>,
    sid: &Option<String>,
    all: bool,
    hold: std::time::Duration,
) -> Result<ExitCode, store::StoreError> {
    use latchkey::clock::{Clock, SystemClock};
    if all {
        let n = store.purge("session:").await?;
        println!("deleted {n} session records");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(handle) = handle_of(sub, sid) else {
        eprintln!("latchkey sessions revoke: name whose sessions end: --sub, --sid or --all");
        return Ok(ExitCode::from(2));
    };
    let ended = session_index(store)
        .end(handle, SystemClock.now_ms(), hold)
        .await?;
    println!("revoked {} sessions", ended.sessions_revoked);
    Ok(ExitCode::SUCCESS)
}
