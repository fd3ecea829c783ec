//! The reverse proxy to `upstream`: bodies stream both ways (nothing is
//! buffered whole), connections to the upstream are pooled and kept alive,
//! hop-by-hop headers are dropped, WebSocket upgrades pass through, and the
//! identity headers the upstream sees are latchkey's alone: any copies the
//! client sent are stripped first, as are latchkey's own cookies.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::cookies::Cookies;
use crate::idp::Identity;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Identity headers only latchkey may set.
const IDENTITY_HEADERS: [&str; 9] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-access-token",
];

/// Who the upstream is told the request is from.
#[derive(Debug, Default)]
pub struct Forwarded<'a> {
    /// The signed-in user, if any (skip-auth routes have none).
    pub identity: Option<&'a Identity>,
    /// The access token to pass as `Authorization: Bearer`, if configured.
    pub access_token: Option<&'a str>,
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The upstream could not be reached or broke the connection.
    #[error("upstream request failed: {0}")]
    Unreachable(String),
}

/// The upstream app.
#[derive(Clone)]
pub struct Upstream {
    origin: String,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    /// A pooled client for `base` (scheme, host and port are used).
    pub fn new(base: &url::Url) -> Self {
        let origin = base.origin().ascii_serialization();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { origin, client }
    }

    /// Forwards `request` and streams back the answer.
    pub async fn forward(
        &self,
        mut request: Request<Body>,
        who: Forwarded<'_>,
        peer: SocketAddr,
        proto: &'static str,
        cookies: &Cookies,
    ) -> Result<Response<Body>, ForwardError> {
        let upgrade = upgrade_protocol(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = format!("{}{path}", self.origin)
            .parse::<Uri>()
            .map_err(|e| ForwardError::Unreachable(format!("bad upstream URI: {e}")))?;
        let (mut parts, body) = request.into_parts();
        parts.uri = uri;
        let headers = &mut parts.headers;
        let original_host = headers.get(header::HOST).cloned();
        strip_hop_by_hop(headers);
        for name in IDENTITY_HEADERS {
            headers.remove(name);
        }
        strip_our_cookies(headers, cookies);
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        set(headers, "x-forwarded-for", &peer.ip().to_string());
        set(headers, "x-forwarded-proto", proto);
        if let Some(host) = original_host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        if let Some(identity) = who.identity {
            set(headers, "x-forwarded-user", &identity.subject);
            if let Some(email) = &identity.email {
                set(headers, "x-forwarded-email", email);
            }
            if !identity.groups.is_empty() {
                set(headers, "x-forwarded-groups", &identity.groups.join(","));
            }
        }
        if let Some(token) = who.access_token {
            set(headers, "authorization", &format!("Bearer {token}"));
        }
        let request = Request::from_parts(parts, body);
        let mut response = self
            .client
            .request(request)
            .await
            .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((client, upstream)) => {
                            let _ = tokio::io::copy_bidirectional(
                                &mut TokioIo::new(client),
                                &mut TokioIo::new(upstream),
                            )
                            .await;
                        }
                        Err(error) => tracing::debug!(%error, "upgrade failed"),
                    }
                });
            }
            return Ok(response.map(|_| Body::empty()));
        }
        strip_hop_by_hop(response.headers_mut());
        Ok(response.map(Body::new))
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// The `Upgrade` protocol when the request asks for one (WebSocket).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Drops hop-by-hop headers, including any that `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        headers.remove(name.as_str());
    }
}

/// Removes latchkey's cookies from the `Cookie` header(s), keeping the app's.
fn strip_our_cookies(headers: &mut HeaderMap, cookies: &Cookies) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| cookie::Cookie::split_parse(v.to_owned()))
        .filter_map(Result::ok)
        .filter(|c| !cookies.is_ours(c.name()))
        .map(|c| format!("{}={}", c.name(), c.value()))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}
