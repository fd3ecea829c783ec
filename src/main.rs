//! The `latchkey` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Run the store contract live against a store and report, per guarantee,
    /// what was observed. Works under a random key prefix that it removes
    /// afterwards. Exit status 0 only if every guarantee held.
    CheckStore {
        /// The store URL: memory://, sqlite://PATH, redis://HOST:PORT/DB,
        /// postgres://USER@HOST/DB.
        #[arg(long, env = "LATCHKEY_STORE")]
        store: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckStore { store } => check_store(&store).await,
    }
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
