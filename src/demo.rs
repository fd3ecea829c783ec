//! `latchkey demo`: the development IdP, a sample upstream that shows the
//! identity headers it receives, and the proxy in front of it, all on
//! 127.0.0.1 with an embedded store. One command, no setup.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use tokio::net::TcpListener;

use crate::config::RawSettings;
use crate::dev_idp::{DevClient, DevIdp, DevIdpConfig};
use crate::proxy::{App, Server};
use crate::secret::random_token;
use crate::web::pages::escape_html;

/// Where the demo's three servers listen.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    /// The proxy (the URL to open).
    pub proxy: u16,
    /// The development IdP.
    pub idp: u16,
    /// The sample upstream.
    pub upstream: u16,
}

impl Default for DemoPorts {
    fn default() -> Self {
        Self {
            proxy: 4180,
            idp: 4181,
            upstream: 4182,
        }
    }
}

/// The running demo.
pub struct Demo {
    /// The proxy's address.
    pub proxy: SocketAddr,
    /// The development IdP.
    pub idp: DevIdp,
    server: Server,
    upstream: tokio::task::JoinHandle<()>,
    _store_dir: tempfile::TempDir,
}

async fn bind(port: u16, what: &str, flag: &str) -> Result<TcpListener, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} for the {what}: {e}; choose another port with {flag}")
    })
}

impl Demo {
    /// Starts all three.
    pub async fn start(ports: DemoPorts) -> Result<Self, String> {
        let proxy_listener = bind(ports.proxy, "proxy", "--port").await?;
        let upstream_listener = bind(ports.upstream, "sample app", "--upstream-port").await?;
        let proxy = proxy_listener.local_addr().map_err(|e| e.to_string())?;
        let upstream_addr = upstream_listener.local_addr().map_err(|e| e.to_string())?;
        let secret = random_token();
        let idp = DevIdp::start(DevIdpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], ports.idp)),
            clients: vec![DevClient {
                client_id: "latchkey".into(),
                client_secret: secret.clone(),
                redirect_uris: vec![format!("http://{proxy}/oauth2/callback")],
                post_logout_redirect_uris: vec![format!("http://{proxy}/oauth2/signed_out")],
                backchannel_logout_uri: Some(format!("http://{proxy}/oauth2/backchannel_logout")),
            }],
            ..DevIdpConfig::default()
        })
        .await
        .map_err(|e| format!("{e}; choose another port with --idp-port"))?;
        let upstream = tokio::spawn(async move {
            let _ = axum::serve(upstream_listener, sample_app()).await;
        });
        let store_dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let store = format!("sqlite://{}", store_dir.path().join("demo.db").display());
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| e.to_string())?;
        let settings = RawSettings {
            listen: Some(proxy.to_string()),
            issuer: Some(idp.issuer().to_owned()),
            client_id: Some("latchkey".into()),
            client_secret: Some(secret.into()),
            redirect_url: Some(format!("http://{proxy}/oauth2/callback")),
            upstream: Some(format!("http://{upstream_addr}")),
            store: Some(store.into()),
            cookie_secret: Some(base64::engine::general_purpose::STANDARD.encode(key).into()),
            post_logout_redirect_url: Some(format!("http://{proxy}/oauth2/signed_out")),
            // The development IdP's users, all of them.
            email_domains: Some(vec!["example.com".into()]),
            ..RawSettings::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let app: Arc<App> = App::new(settings).await.map_err(|e| e.to_string())?;
        let server = Server::start(proxy_listener, app).map_err(|e| e.to_string())?;
        Ok(Self {
            proxy,
            idp,
            server,
            upstream,
            _store_dir: store_dir,
        })
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.server.shutdown().await;
        self.upstream.abort();
        self.idp.stop().await;
    }
}

/// The sample upstream: a page showing what latchkey told it about the user;
/// with `Accept: application/json`, every request header it received as JSON.
pub fn sample_app() -> Router {
    Router::new().fallback(show_headers)
}

async fn show_headers(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        let map: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::Value::String(v.to_str().unwrap_or("?").to_owned()),
                )
            })
            .collect();
        return axum::Json(serde_json::json!({ "path": uri.path(), "headers": map }))
            .into_response();
    }
    let identity: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n.starts_with("x-forwarded-") || n == "authorization"
        })
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let rows: String = identity
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><td>{}</td><td>{}</td></tr>",
                escape_html(k),
                escape_html(v)
            )
        })
        .collect();
    Html(crate::web::pages::page(
        "latchkey demo app",
        &format!(
            "<h1>Hello from the app behind latchkey</h1>\
             <p>You asked for <code>{}</code>. latchkey sent these headers:</p>\
             <table><tr><th>header</th><th>value</th></tr>{rows}</table>\
             <p><a href=\"/oauth2/sign_out\">Sign out</a></p>",
            escape_html(uri.path())
        ),
    ))
    .into_response()
}
