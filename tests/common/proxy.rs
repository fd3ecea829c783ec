//! `latchkey serve` in front of an upstream, over real sockets, with the
//! development IdP: the harness the end-to-end suites share.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use latchkey::config::RawSettings;
use latchkey::demo::sample_app;
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig, DevUser};
use latchkey::proxy::{App, Server};
use reqwest::header::ACCEPT;
use serde_json::Value;
use tokio::net::TcpListener;
use url::Url;

use super::browser::{location, sign_in_at_idp};

/// The harness's `cookie_secret` (tests may seal cookies with it).
pub const COOKIE_SECRET: [u8; 32] = [9u8; 32];
pub const HTML: &str = "text/html, application/json";
pub const SECRET: &str = "proxy-e2e-secret";

pub struct Harness {
    pub proxy: SocketAddr,
    pub idp: DevIdp,
    pub server: Server,
    pub store_dir: tempfile::TempDir,
    /// The settings it runs with.
    pub settings: RawSettings,
}

impl Harness {
    pub async fn start(customize: impl FnOnce(&mut RawSettings)) -> Self {
        Self::start_with(true, customize).await
    }

    pub async fn start_with(with_upstream: bool, customize: impl FnOnce(&mut RawSettings)) -> Self {
        let upstream = serve_sample_app().await;
        Self::start_in_front_of(with_upstream.then_some(upstream), customize).await
    }

    /// latchkey in front of whatever listens at `upstream`.
    pub async fn start_in_front_of(
        upstream: Option<SocketAddr>,
        customize: impl FnOnce(&mut RawSettings),
    ) -> Self {
        Self::start_with_idp(upstream, |_| {}, customize).await
    }

    /// latchkey in front of `upstream`, with these users at the dev IdP.
    pub async fn start_with_users(
        upstream: Option<SocketAddr>,
        users: Vec<DevUser>,
        customize: impl FnOnce(&mut RawSettings),
    ) -> Self {
        Self::start_with_idp(upstream, |idp| idp.users = users, customize).await
    }

    /// latchkey in front of `upstream`, with the dev IdP configured by `idp`.
    pub async fn start_with_idp(
        upstream: Option<SocketAddr>,
        configure_idp: impl FnOnce(&mut DevIdpConfig),
        customize: impl FnOnce(&mut RawSettings),
    ) -> Self {
        Self::start_named(None, upstream, configure_idp, customize).await
    }

    /// [`start_with_idp`](Self::start_with_idp), with latchkey's URLs
    /// (`redirect_url`, those registered at the IdP) on `host` instead of
    /// 127.0.0.1 (a name the test's clients resolve to 127.0.0.1).
    pub async fn start_named(
        host: Option<&str>,
        upstream: Option<SocketAddr>,
        configure_idp: impl FnOnce(&mut DevIdpConfig),
        customize: impl FnOnce(&mut RawSettings),
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = match host {
            Some(host) => format!("{host}:{}", addr.port()),
            None => addr.to_string(),
        };
        let mut idp_config = DevIdpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            clients: vec![DevClient {
                client_id: "latchkey".into(),
                client_secret: SECRET.into(),
                redirect_uris: vec![format!("http://{proxy}/oauth2/callback")],
                post_logout_redirect_uris: vec![format!("http://{proxy}/")],
                backchannel_logout_uri: Some(format!("http://{proxy}/oauth2/backchannel_logout")),
            }],
            ..DevIdpConfig::default()
        };
        configure_idp(&mut idp_config);
        let idp = DevIdp::start(idp_config).await.unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut raw = RawSettings {
            issuer: Some(idp.issuer().into()),
            client_id: Some("latchkey".into()),
            client_secret: Some(SECRET.into()),
            redirect_url: Some(format!("http://{proxy}/oauth2/callback")),
            upstream: upstream.map(|u| format!("http://{u}")),
            store: Some(format!("sqlite://{}", store.path().join("s.db").display()).into()),
            cookie_secret: Some(
                base64::engine::general_purpose::STANDARD
                    .encode(COOKIE_SECRET)
                    .into(),
            ),
            post_logout_redirect_url: Some(format!("http://{proxy}/")),
            email_domains: Some(vec!["*".into()]),
            ..RawSettings::default()
        };
        customize(&mut raw);
        let app: Arc<App> = App::new(raw.clone().validate().unwrap()).await.unwrap();
        let server = Server::start(listener, app).unwrap();
        Self {
            proxy: addr,
            idp,
            server,
            store_dir: store,
            settings: raw,
        }
    }

    /// Another latchkey over the same store, provider and upstream, with its
    /// settings changed by `customize` (a replica, or the next deployment).
    /// Cookies are per host, not per port: a browser signed in at the first
    /// sends its cookies to this one too.
    pub async fn another(&self, customize: impl FnOnce(&mut RawSettings)) -> (String, Server) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut raw = self.settings.clone();
        customize(&mut raw);
        let app: Arc<App> = App::new(raw.validate().unwrap()).await.unwrap();
        (
            format!("http://{addr}"),
            Server::start(listener, app).unwrap(),
        )
    }

    /// The `Cookie` header `sent` with every latchkey login cookie in it
    /// made `age` older (re-sealed with the harness's cookie secret): what a
    /// browser holds that long after it started those logins, without
    /// waiting.
    pub fn aged_login_cookies(&self, sent: &str, age: std::time::Duration) -> String {
        use axum_extra::extract::cookie::{Cookie, Key};
        let key = Key::derive_from(&COOKIE_SECRET);
        sent.split("; ")
            .map(|pair| {
                let Some((name, _)) = pair.split_once('=') else {
                    return pair.to_owned();
                };
                if !name.starts_with("latchkey-login-") {
                    return pair.to_owned();
                }
                let mut jar = cookie::CookieJar::new();
                let sealed = Cookie::parse_encoded(pair.to_owned()).unwrap();
                let plain = jar.private(&key).decrypt(sealed).unwrap();
                let mut login: Value = serde_json::from_str(plain.value()).unwrap();
                let started = login["pending"]["started"].as_u64().unwrap();
                let aged = started - u64::try_from(age.as_millis()).unwrap();
                login["pending"]["started"] = aged.into();
                jar.private_mut(&key)
                    .add(Cookie::new(name.to_owned(), login.to_string()));
                jar.get(name).unwrap().encoded().to_string()
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub async fn metric(&self, name: &str) -> f64 {
        super::process::scrape(&self.url("/metrics"), name).await
    }
}

/// The sample app on a port of its own.
pub async fn serve_sample_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, sample_app()).await.unwrap() });
    app
}

/// Follows redirects from `url`, signing in at the dev IdP as `user` when its
/// form appears, until the callback redirect; returns the callback URL.
pub async fn to_callback(browser: &reqwest::Client, url: &str, user: &str) -> Url {
    let mut next = Url::parse(url).unwrap();
    for _ in 0..8 {
        if next.path() == "/oauth2/callback" {
            return next;
        }
        let response = browser
            .get(next.clone())
            .header(ACCEPT, HTML)
            .send()
            .await
            .unwrap();
        if response.status() == 200 && next.path() == "/authorize" {
            next = sign_in_at_idp(browser, &next, user).await;
        } else {
            next = location(&response, &next);
        }
    }
    panic!("never reached the callback");
}

/// Signs `user` in from the sign-in URL `start` (any host or scheme):
/// follows it to the IdP and back, completes the callback, and returns
/// where latchkey sent the browser (its `Location`), checking it was a 302.
pub async fn complete_sign_in(browser: &reqwest::Client, start: &str, user: &str) -> String {
    let callback = to_callback(browser, start, user).await;
    let done = browser
        .get(callback)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302, "the callback did not redirect");
    done.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Signs `user` in starting from `path`; returns where the callback sent the browser.
pub async fn sign_in(h: &Harness, browser: &reqwest::Client, path: &str, user: &str) -> Url {
    let callback = to_callback(browser, &h.url(path), user).await;
    let done = browser
        .get(callback.clone())
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    location(&done, &callback)
}

pub async fn upstream_json(
    browser: &reqwest::Client,
    url: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = browser.get(url).header(ACCEPT, HTML);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
