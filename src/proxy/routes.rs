//! The proxy product's handlers: forward-auth, the probes and metrics, and
//! what proxies everything else to the upstream. The protected part sits
//! behind the public [`RequireLoginLayer`](crate::web::RequireLoginLayer),
//! exactly as an embedder's routes would.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};

use super::claims::{HeaderRules, IdentityHeaders};
use super::upstream::{Forwarded, Peer, Upstream};
use super::{Forwarder, Proxy};
use crate::web::cookies::UpstreamCookies;
use crate::web::pages::{self, ErrorCode, escape_html};
use crate::web::{AccessPolicy, SignedIn, SignedInUser, request_log_enabled};

type ProxyState = State<Proxy>;

/// The per-location rules of a forward-auth request, oauth2-proxy's query
/// parameters: `allowed_groups`, `allowed_emails`, `allowed_email_domains`
/// (comma-separated, each may repeat). They narrow the global policy and
/// never widen it; `None` when the query names none.
fn location_policy(uri: &Uri) -> Option<AccessPolicy> {
    let query = uri.query()?;
    let (mut groups, mut emails, mut domains) = (Vec::new(), Vec::new(), Vec::new());
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let list = match name.as_ref() {
            "allowed_groups" => &mut groups,
            "allowed_emails" => &mut emails,
            "allowed_email_domains" => &mut domains,
            other => {
                // Not a restriction latchkey knows: say so rather than let
                // a misspelt one vanish without a word.
                tracing::warn!(
                    parameter = %other.escape_debug(),
                    "forward-auth query parameter ignored: latchkey knows allowed_groups, \
                     allowed_emails and allowed_email_domains"
                );
                continue;
            }
        };
        list.extend(
            (value.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        );
    }
    if groups.is_empty() && emails.is_empty() && domains.is_empty() {
        return None;
    }
    Some(
        AccessPolicy::email_domains(domains)
            .or_emails(emails)
            .and_groups(groups),
    )
}

/// Forward-auth for nginx `auth_request`, Traefik `forwardAuth`, Caddy
/// `forward_auth`: `202` with the identity headers, `401` (never a
/// redirect: the front proxy sends the browser to sign in), `403` when the
/// global policy or the location's own rules (query parameters) refuse.
pub(super) async fn forward_auth(
    State(proxy): ProxyState,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let latchkey = &proxy.latchkey;
    let found = match latchkey.authenticate(&headers).await {
        Ok(found) => found,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(signed_in) = found.signed_in else {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        let out = response.headers_mut();
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for cookie in found.set_cookies {
            out.append(header::SET_COOKIE, cookie);
        }
        return response;
    };
    if let Err(rejection) = latchkey.authorize(&headers, &signed_in, None) {
        return rejection.into_response();
    }
    if let Some(location) = location_policy(&uri)
        && let Err(rejection) = latchkey.authorize(&headers, &signed_in, Some(&location))
    {
        return rejection.into_response();
    }
    let identity = signed_in.identity();
    let rules = &proxy.headers;
    let headers = identity_headers(&signed_in, rules);
    let mut response = StatusCode::ACCEPTED.into_response();
    let out = response.headers_mut();
    let named = [
        ("x-auth-request-user", &headers.user),
        ("x-auth-request-email", &headers.email),
        ("x-auth-request-groups", &headers.groups),
        (
            "x-auth-request-preferred-username",
            &headers.preferred_username,
        ),
        ("x-auth-request-id-token", &headers.id_token),
    ];
    for (name, value) in named {
        if let Some(value) = value {
            out.insert(name, value.clone());
        }
    }
    for (name, value) in &headers.claims {
        out.insert(name.clone(), value.clone());
    }
    if let Some(bearer) = &headers.authorization {
        out.insert(header::AUTHORIZATION, bearer.clone());
    }
    if latchkey.settings().pass_access_token
        && let Some(token) = signed_in.access_token()
        && let Ok(value) = HeaderValue::from_str(token.secret())
    {
        out.insert("x-auth-request-access-token", value);
    }
    with_user(response, &identity.subject)
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(proxy): ProxyState) -> Response {
    let report = proxy.readiness.report().await;
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = axum::Json(serde_json::json!({
        "ready": report.ready(),
        "store": word(report.store),
        "idp": word(report.idp),
    }));
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

pub(super) async fn metrics(State(proxy): ProxyState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        proxy.latchkey.metrics().render(),
    )
        .into_response()
}

/// Names `subject` on `response` for the request log.
fn with_user(mut response: Response, subject: &str) -> Response {
    if request_log_enabled() {
        response
            .extensions_mut()
            .insert(SignedInUser(subject.to_owned()));
    }
    response
}

/// The identity headers of `signed_in` under `rules`: made once per session
/// record version (see [`crate::session::ActiveSession::derived`]), or for
/// a bearer token once per request.
fn identity_headers(signed_in: &SignedIn, rules: &HeaderRules) -> Arc<IdentityHeaders> {
    match signed_in.active_session() {
        Some(session) => session.derived(|record| {
            let id_token = record.tokens.id_token.as_ref().map(|t| t.secret());
            IdentityHeaders::new(&record.identity, id_token, rules)
        }),
        None => Arc::new(IdentityHeaders::new(
            signed_in.identity(),
            signed_in.id_token(),
            rules,
        )),
    }
}

/// A `skip_auth_routes` match: forwarded with nobody signed in.
pub(super) async fn open(State(forwarder): State<Forwarder>, request: Request) -> Response {
    let upstream = forwarder.upstream.as_ref();
    let response = forward(&forwarder, upstream, request, None, None).await;
    forwarder.latchkey.restyle(response)
}

/// Behind the layer: the signed-in caller's request, to the upstream.
pub(super) async fn signed_in(
    State(forwarder): State<Forwarder>,
    mut request: Request,
) -> Response {
    // Taken rather than cloned: the handler is its last reader.
    let Some(mut signed_in) = request.extensions_mut().remove::<SignedIn>() else {
        // The layer in front puts it there; without it nobody is signed in.
        return pages::error_for(
            pages::wants_html(request.headers()),
            ErrorCode::NotSignedIn,
            "Sign in first.",
            None,
        );
    };
    let cookies = signed_in.take_upstream_cookies();
    let upstream = forwarder.upstream.as_ref();
    let mut response = forward(&forwarder, upstream, request, Some(&signed_in), cookies).await;
    // A signed-in page is not kept where the next user of the browser could
    // see it (its cache, its back button) unless the app says otherwise.
    if let Some(cache_control) = &forwarder.cache_control {
        let headers = response.headers_mut();
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, cache_control.clone());
        }
    }
    forwarder.latchkey.restyle(response)
}

async fn forward(
    forwarder: &Forwarder,
    upstream: Option<&Upstream>,
    request: Request,
    signed_in: Option<&SignedIn>,
    cookies: Option<UpstreamCookies>,
) -> Response {
    let latchkey = &forwarder.latchkey;
    let html = pages::wants_html(request.headers());
    let Some(upstream) = upstream else {
        // Forward-auth mode: nothing to proxy to.
        return match signed_in {
            Some(signed_in) if request.uri().path() == "/" => {
                let identity = signed_in.identity();
                pages::hardened(Html(latchkey.settings().pages.plain(
                    "Signed in",
                    &format!(
                        "<h1>Signed in</h1><p>You are signed in as {}.</p><p><a href=\"/oauth2/sign_out\">Sign out</a></p>",
                        escape_html(identity.email.as_deref().unwrap_or(&identity.subject))
                    ),
                )))
            }
            _ => pages::error_for(
                html,
                ErrorCode::NotFound,
                "There is no such page here.",
                None,
            ),
        };
    };
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<Peer>>().cloned() else {
        // The listener always records the peer; a request without one did
        // not come through it.
        return pages::error_for(html, ErrorCode::BadRequest, "No client address.", None);
    };
    let settings = latchkey.settings();
    let proto = if settings.secure_cookies() {
        "https"
    } else {
        "http"
    };
    let rules = &forwarder.headers;
    let identity_headers = signed_in.map(|signed_in| identity_headers(signed_in, rules));
    let who = Forwarded {
        identity: signed_in.map(SignedIn::identity),
        identity_headers,
        access_token: signed_in
            .filter(|_| settings.pass_access_token)
            .and_then(SignedIn::access_token)
            .map(|token| token.secret()),
    };
    // latchkey's own cookies never reach the upstream (the layer read them
    // already; a skip route reads them here).
    let cookies =
        cookies.unwrap_or_else(|| latchkey.cookies().sent(request.headers()).into_upstream());
    match upstream
        .forward(request.map(Body::new), who, &peer, proto, cookies)
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "upstream unavailable");
            pages::error_for(
                html,
                ErrorCode::UpstreamUnavailable,
                "The application behind this sign-in is not answering.",
                None,
            )
        }
    }
}
