//! `latchkey serve` processes for the multi-replica tests, behind an
//! imagined load balancer (one redirect URL for all), with the development
//! IdP and a scripted browser's way through a login.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use base64::Engine;
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig};
use reqwest::header::LOCATION;
use std::time::Duration;
use url::Url;

use super::browser::sign_in_at_idp;
use super::process::KillOnDrop;

pub const CALLBACK: &str = "http://lb.test/oauth2/callback";
pub const SECRET: &str = "replica-secret";
pub const COOKIE_KEY: [u8; 32] = [42; 32];

/// One `latchkey serve` process, killed when dropped.
pub struct Replica {
    /// The process.
    pub child: KillOnDrop,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Replica {
    /// Starts one with the provider at `issuer` and the store at `store`.
    pub fn start(issuer: &str, store: &str) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .arg("serve")
            .env("LATCHKEY_LISTEN", "127.0.0.1:0")
            .env("LATCHKEY_ISSUER", issuer)
            .env("LATCHKEY_CLIENT_ID", "latchkey")
            .env("LATCHKEY_CLIENT_SECRET", SECRET)
            .env("LATCHKEY_REDIRECT_URL", CALLBACK)
            .env("LATCHKEY_STORE", store)
            .env(
                "LATCHKEY_COOKIE_SECRET",
                base64::engine::general_purpose::STANDARD.encode(COOKIE_KEY),
            )
            .env("LATCHKEY_EMAIL_DOMAINS", "*")
            .env("LATCHKEY_EXCHANGE_LEASE", "2s")
            .env("LATCHKEY_REFRESH_BEFORE_EXPIRY", "3s")
            .env("LATCHKEY_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start latchkey serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("latchkey serve exited before listening")
                .unwrap();
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "latchkey is listening" {
                break entry["fields"]["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Replica {
            child: KillOnDrop(child),
            addr,
        }
    }

    /// Its URL for `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// The value of metric `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        super::process::scrape(&self.url("/metrics"), name).await
    }
}

/// The development IdP with latchkey's client, access tokens living `access_ttl`.
pub async fn dev_idp(access_ttl: Duration) -> DevIdp {
    DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![DevClient {
            client_id: "latchkey".into(),
            client_secret: SECRET.into(),
            redirect_uris: vec![CALLBACK.into()],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
        }],
        access_ttl,
        ..DevIdpConfig::default()
    })
    .await
    .unwrap()
}

/// Starts a login at `replica` and signs in at the IdP as alice; returns the
/// callback's query string (the IdP's redirect, not yet followed).
pub async fn login_until_callback(browser: &reqwest::Client, replica: &Replica) -> String {
    let start = browser
        .get(replica.url("/oauth2/start?rd=/"))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let back = sign_in_at_idp(browser, &authorize, "alice").await;
    assert!(back.as_str().starts_with(CALLBACK));
    back.query().unwrap().to_owned()
}

/// Signs alice in at `replica`, callback included.
pub async fn sign_in_at(browser: &reqwest::Client, replica: &Replica) {
    let query = login_until_callback(browser, replica).await;
    let done = browser
        .get(replica.url(&format!("/oauth2/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
}

/// The session id inside a response's session cookie.
pub fn session_id(response: &reqwest::Response) -> String {
    super::browser::session_id_set_by(response, &COOKIE_KEY)
}
