//! The reverse proxy to `upstream`: bodies stream both ways (nothing is
//! buffered whole), connections to the upstream are pooled and kept alive,
//! hop-by-hop headers are dropped, WebSocket upgrades pass through, and the
//! identity headers the upstream sees are latchkey's alone: any copies the
//! client sent are stripped first, as are latchkey's own cookies.

use std::net::SocketAddr;
use std::sync::Arc;

pub use super::claims::IdentityHeaders;
use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::http::uri::{self, Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use axum::serve::IncomingStream;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::idp::Identity;
use crate::web::cookies::UpstreamCookies;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
const X_FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");
const X_FORWARDED_PREFERRED_USERNAME: HeaderName =
    HeaderName::from_static("x-forwarded-preferred-username");
const X_FORWARDED_ID_TOKEN: HeaderName = HeaderName::from_static("x-forwarded-id-token");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Names (lower case, `-` between words) of the headers the upstream hears
/// from latchkey alone: those that name the user and those that say where the
/// request came from. Any header whose name folds to one of these (see
/// [`folds_to`]) is removed from the client's request on every route,
/// `skip_auth_routes` included, before latchkey sets its own.
const RESERVED_HEADERS: [&str; 11] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-forwarded-id-token",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

/// Every `X-Auth-Request-*` name is reserved too (forward-auth's answer).
const RESERVED_PREFIX: &str = "x-auth-request-";

/// Headers that make some frameworks route or dispatch a request to another
/// path or method than the one latchkey matched (Symfony's `X-Original-URL`,
/// the `X-HTTP-Method-Override` family, Spring's `X-Forwarded-Prefix`).
/// Dropped unless `pass_routing_headers` is set.
const ROUTING_OVERRIDES: [&str; 9] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether header name `name` (already lower case, as `HeaderName`s are)
/// reads as `canonical` to a server that folds `_` into `-`, as CGI, WSGI,
/// Rack and PHP do (`X_Forwarded_User` and `X-Forwarded-User` are both
/// `HTTP_X_FORWARDED_USER` there).
fn folds_to(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
}

/// Whether a client-sent header `name` must not reach the upstream:
/// reserved for latchkey, or (unless `pass_routing`) a routing override.
pub fn is_forbidden_from_client(name: &HeaderName, pass_routing: bool) -> bool {
    let name = name.as_str().as_bytes();
    // Every reserved name starts with `x` or `f`: most headers stop here.
    if !matches!(name.first(), Some(b'x' | b'f')) {
        return false;
    }
    let prefix = RESERVED_PREFIX.as_bytes();
    RESERVED_HEADERS
        .iter()
        .any(|reserved| folds_to(name, reserved.as_bytes()))
        || (name.len() > prefix.len() && folds_to(&name[..prefix.len()], prefix))
        || (!pass_routing
            && ROUTING_OVERRIDES
                .iter()
                .any(|routing| folds_to(name, routing.as_bytes())))
}

/// The client end of a connection, with the `X-Forwarded-For` value the
/// upstream is sent made once per connection rather than once per request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        let forwarded_for = HeaderValue::try_from(addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self {
            addr,
            forwarded_for,
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self::from(*stream.remote_addr())
    }
}

/// Who the upstream is told the request is from.
#[derive(Debug, Default)]
pub struct Forwarded<'a> {
    /// The signed-in user, if any (skip-auth routes have none).
    pub identity: Option<&'a Identity>,
    /// The headers that name `identity` to the upstream.
    pub identity_headers: Option<Arc<IdentityHeaders>>,
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

/// How latchkey connects to an `https://` upstream.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// CA certificates (DER) trusted besides the system's and the web roots.
    pub ca_certificates: Vec<Vec<u8>>,
    /// The client certificate chain (PEM) to present, with its key.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<std::path::PathBuf>,
}

/// An upstream URL that requests cannot be sent to.
#[derive(Debug, thiserror::Error)]
#[error("upstream {url} cannot be proxied to: {reason}")]
pub struct BadUpstream {
    url: String,
    reason: String,
}

/// The upstream app.
#[derive(Clone)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    pass_routing_headers: bool,
    /// The `claim_headers` names: latchkey's, whoever the client is.
    reserved: Arc<[HeaderName]>,
}

impl Upstream {
    /// A pooled client for `base` (scheme, host and port are used);
    /// `pass_routing_headers` lets the client's routing overrides through.
    pub fn new(base: &url::Url, pass_routing_headers: bool) -> Result<Self, BadUpstream> {
        Self::with_tls(base, pass_routing_headers, &UpstreamTls::default())
    }

    /// [`new`](Self::new), an `https://` upstream verified with `tls`'s
    /// extra CA certificates (besides the system's and the web roots) and
    /// presented `tls`'s client certificate when it asks for one.
    pub fn with_tls(
        base: &url::Url,
        pass_routing_headers: bool,
        tls: &UpstreamTls,
    ) -> Result<Self, BadUpstream> {
        let bad = |reason: String| BadUpstream {
            url: base.to_string(),
            reason,
        };
        let origin = base
            .origin()
            .ascii_serialization()
            .parse::<Uri>()
            .map_err(|e| bad(e.to_string()))?
            .into_parts();
        let (Some(scheme), Some(authority)) = (origin.scheme, origin.authority) else {
            return Err(bad("it names no scheme and host".into()));
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let identity = tls
            .client_cert_file
            .as_deref()
            .zip(tls.client_key_file.as_deref());
        let config = crate::tls::client_config(&tls.ca_certificates, identity).map_err(bad)?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            scheme,
            authority,
            client,
            pass_routing_headers,
            reserved: Arc::from(Vec::new()),
        })
    }

    /// The same upstream, with `names` (the `claim_headers`) stripped from
    /// every client request under any spelling, as latchkey's own are.
    pub fn reserving(mut self, names: Vec<HeaderName>) -> Self {
        self.reserved = Arc::from(names);
        self
    }

    /// Forwards `request` and streams back the answer.
    pub async fn forward(
        &self,
        mut request: Request<Body>,
        who: Forwarded<'_>,
        peer: &Peer,
        proto: &'static str,
        cookies: UpstreamCookies,
    ) -> Result<Response<Body>, ForwardError> {
        let upgrade = upgrade_protocol(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let mut target = uri::Parts::default();
        target.scheme = Some(self.scheme.clone());
        target.authority = Some(self.authority.clone());
        target.path_and_query = Some(
            request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let uri = Uri::from_parts(target)
            .map_err(|e| ForwardError::Unreachable(format!("bad upstream URI: {e}")))?;
        let (mut parts, body) = request.into_parts();
        parts.uri = uri;
        // Whatever the client spoke (HTTP/2 over TLS), the upstream hears
        // HTTP/1.1.
        parts.version = axum::http::Version::HTTP_11;
        let headers = &mut parts.headers;
        let original_host = headers.get(header::HOST).cloned();
        let named = connection_named(headers);
        let pass_routing = self.pass_routing_headers;
        let reserved = &self.reserved;
        remove_headers(headers, |name| {
            HOP_BY_HOP.contains(name)
                || named.contains(name)
                || is_forbidden_from_client(name, pass_routing)
                || reserved
                    .iter()
                    .any(|own| folds_to(name.as_str().as_bytes(), own.as_str().as_bytes()))
        });
        match cookies {
            UpstreamCookies::AsSent => {}
            UpstreamCookies::Removed => {
                headers.remove(header::COOKIE);
            }
            UpstreamCookies::Replaced(value) => {
                headers.insert(header::COOKIE, value);
            }
        }
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        headers.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        if let Some(identity) = &who.identity_headers {
            let named = [
                (X_FORWARDED_USER, &identity.user),
                (X_FORWARDED_EMAIL, &identity.email),
                (X_FORWARDED_GROUPS, &identity.groups),
                (X_FORWARDED_PREFERRED_USERNAME, &identity.preferred_username),
                (X_FORWARDED_ID_TOKEN, &identity.id_token),
            ];
            for (name, value) in named {
                if let Some(value) = value {
                    headers.insert(name, value.clone());
                }
            }
            for (name, value) in &identity.claims {
                headers.insert(name.clone(), value.clone());
            }
            if let Some(bearer) = &identity.authorization {
                headers.insert(header::AUTHORIZATION, bearer.clone());
            }
        }
        if let Some(token) = who.access_token {
            set(headers, header::AUTHORIZATION, &format!("Bearer {token}"));
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

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
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

/// Headers that the `Connection` header names as hop-by-hop.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Drops hop-by-hop headers, including any that `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    remove_headers(headers, |name| {
        HOP_BY_HOP.contains(name) || named.contains(name)
    });
}

/// Removes every header that `unwanted` picks, looking at each name once
/// (cheaper than one lookup per unwanted name for the usual few headers).
fn remove_headers(headers: &mut HeaderMap, unwanted: impl Fn(&HeaderName) -> bool) {
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| unwanted(n)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn identity_headers_are_latchkeys_under_every_spelling() {
        for name in [
            "x-forwarded-user",
            "x_forwarded_user",
            "X_Forwarded-Email",
            "x-forwarded_groups",
            "x_forwarded_preferred_username",
            "x-auth-request-user",
            "x_auth_request_email",
            "X-Auth-Request-Anything",
            "x_forwarded_for",
            "x-real-ip",
            "forwarded",
            "x-original-url",
            "x_rewrite_url",
            "x-http-method-override",
            "X_HTTP_METHOD",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_forbidden_from_client(&name, false), "{name}");
        }
        for name in [
            "x-request-id",
            "accept",
            "x-forwarded-users",
            "x-auth-request-",
            "from",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(!is_forbidden_from_client(&name, false), "{name}");
        }
        // Routing overrides pass when the operator says so; identity never does.
        let routing = HeaderName::from_static("x-original-url");
        assert!(!is_forbidden_from_client(&routing, true));
        let identity = HeaderName::from_static("x_forwarded_user");
        assert!(is_forbidden_from_client(&identity, true));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Internal-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-internal-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
            ("x-request-id", "42"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-request-id"]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Header names built from the words of reserved names, joined by
        /// `-` or `_`, in any case.
        fn name() -> impl Strategy<Value = String> {
            let word = prop::sample::select(vec![
                "x",
                "forwarded",
                "user",
                "email",
                "groups",
                "preferred",
                "username",
                "access",
                "token",
                "auth",
                "request",
                "for",
                "proto",
                "host",
                "real",
                "ip",
                "original",
                "url",
                "uri",
                "rewrite",
                "http",
                "method",
                "override",
                "prefix",
                "path",
                "id",
            ]);
            let joint = prop::sample::select(vec!["-", "_"]);
            (prop::collection::vec((word, joint), 1..6), any::<u64>()).prop_map(|(parts, case)| {
                let mut name = String::new();
                for (i, (word, joint)) in parts.iter().enumerate() {
                    if i > 0 {
                        name.push_str(joint);
                    }
                    name.push_str(word);
                }
                name.chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if case >> (i % 64) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            })
        }

        fn reserved(folded: &str) -> bool {
            RESERVED_HEADERS.contains(&folded)
                || (folded.starts_with(RESERVED_PREFIX) && folded.len() > RESERVED_PREFIX.len())
                || ROUTING_OVERRIDES.contains(&folded)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn no_reserved_header_survives_stripping(names in prop::collection::vec(name(), 1..8)) {
                let mut headers = HeaderMap::new();
                for name in &names {
                    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                    headers.append(name, HeaderValue::from_static("forged"));
                }
                remove_headers(&mut headers, |name| is_forbidden_from_client(name, false));
                for name in headers.keys() {
                    let folded = name.as_str().replace('_', "-");
                    prop_assert!(!reserved(&folded), "{} survived", name);
                }
                // And only reserved names were removed.
                for name in &names {
                    let folded = name.to_ascii_lowercase().replace('_', "-");
                    if !reserved(&folded) {
                        prop_assert!(headers.contains_key(name.as_str()), "{} was removed", name);
                    }
                }
            }
        }
    }
}
