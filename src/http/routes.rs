//! The request handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::cookie::PrivateCookieJar;
use serde::Deserialize;

use super::cookies::{LoginCookie, SentCookies, UpstreamCookies};
use super::observe::{User, request_log_enabled};
use super::pages::{self, ErrorCode, Link};
use super::proxy::{Forwarded, IdentityHeaders, Peer};
use super::{App, Shared};
use super::{authz, redirect};
use crate::idp::Identity;
use crate::login::{Callback, FailureReason, LoginError, idp_error_code};
use crate::secret::RefreshToken;
use crate::session::{ActiveSession, SessionError};

type AppState = State<Shared>;

/// `value` for a log line, with control characters escaped so that text it
/// quotes (a claim, a provider's message) cannot forge log lines.
pub(super) fn escaped(value: &impl std::fmt::Display) -> String {
    value.to_string().escape_debug().to_string()
}

/// A `302 Found` to `location`.
fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::FOUND, [(header::LOCATION, value)]).into_response(),
        // Every location latchkey makes is checked first; should one slip
        // through, it is a bad request, not a server error.
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Attaches the user to `response` for the request log (when it is written).
fn with_user(mut response: Response, identity: &Identity) -> Response {
    if request_log_enabled() {
        response
            .extensions_mut()
            .insert(User(identity.subject.clone()));
    }
    response
}

/// Who is making a request.
enum Caller {
    /// A browser with a session cookie.
    Session(ActiveSession),
    /// An API client with a valid bearer token.
    Bearer(Identity),
    /// Nobody; `clear_cookie` when a stale or invalid session cookie was sent.
    Anonymous { clear_cookie: bool },
}

impl Caller {
    fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Session(s) => Some(s.identity()),
            Caller::Bearer(identity) => Some(identity),
            Caller::Anonymous { .. } => None,
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.split('.').count() == 3).then_some(token)
}

/// Resolves the caller: session cookie first, then a bearer JWT.
async fn caller(
    app: &App,
    headers: &HeaderMap,
    cookies: &SentCookies<'_>,
) -> Result<Caller, Response> {
    if let Some(id) = app.cookies.session_id(cookies) {
        match app.sessions.load(&id).await {
            Ok(session) => return Ok(Caller::Session(session)),
            Err(SessionError::NotFound | SessionError::Ended(_)) => {}
            Err(SessionError::Corrupt(reason)) => {
                tracing::error!(%reason, "unreadable session record; treating as signed out");
            }
            Err(SessionError::Store(error)) => {
                tracing::warn!(%error, "store unavailable");
                return Err(pages::error(
                    headers,
                    ErrorCode::StoreUnavailable,
                    "Sessions cannot be checked right now. Please try again shortly.",
                    None,
                ));
            }
            Err(error @ (SessionError::RefreshUnavailable(_) | SessionError::RefreshTimedOut)) => {
                tracing::warn!(%error, "session refresh failed");
                return Err(pages::error(
                    headers,
                    ErrorCode::IdpUnavailable,
                    "Your session could not be renewed because the identity provider is not answering. Please try again shortly.",
                    None,
                ));
            }
        }
    }
    let bearer = app
        .settings
        .skip_jwt_bearer_tokens
        .then(|| bearer_token(headers))
        .flatten();
    if let Some(token) = bearer {
        return match app.provider.validate_bearer(token).await {
            Ok(validated) => bearer_caller(app, headers, validated).await,
            Err(error) => {
                // The reason may quote the token's own claims: logged
                // escaped, never shown.
                tracing::info!(error = %escaped(&error), "bearer token rejected");
                Err(pages::error(
                    headers,
                    ErrorCode::NotSignedIn,
                    "The bearer token was not accepted.",
                    None,
                ))
            }
        };
    }
    // A session cookie that did not decrypt, or names no live session.
    Ok(Caller::Anonymous {
        clear_cookie: cookies.has_session_cookie(),
    })
}

/// An API client with a valid ID token, unless its user signed out here after
/// the token was issued.
async fn bearer_caller(
    app: &App,
    headers: &HeaderMap,
    validated: crate::oidc::id_token::ValidatedIdToken,
) -> Result<Caller, Response> {
    let identity = validated.identity;
    let issued = u64::try_from(validated.claims.issue_time().timestamp_millis()).unwrap_or(0);
    match app
        .sessions
        .signed_out_at(&identity.issuer, &identity.subject)
        .await
    {
        Ok(Some(signed_out)) if issued <= signed_out => {
            tracing::info!("bearer token refused: its user signed out after it was issued");
            Err(pages::error(
                headers,
                ErrorCode::NotSignedIn,
                "The bearer token was not accepted.",
                None,
            ))
        }
        Ok(_) => Ok(Caller::Bearer(identity)),
        Err(error) => {
            tracing::warn!(%error, "store unavailable");
            Err(pages::error(
                headers,
                ErrorCode::StoreUnavailable,
                "Sign-ins cannot be checked right now. Please try again shortly.",
                None,
            ))
        }
    }
}

/// The path and query of the request, for `rd`.
fn destination(request: &Request) -> String {
    request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into())
}

fn start_url(rd: &str) -> String {
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    url.append_pair("rd", rd);
    format!("/oauth2/start?{}", url.finish())
}

/// Not signed in: browsers go to sign-in, API clients get 401 JSON.
fn sign_in_required(
    app: &App,
    jar: PrivateCookieJar,
    headers: &HeaderMap,
    rd: &str,
    clear_cookie: bool,
) -> Response {
    let jar = if clear_cookie {
        app.cookies.clear_session(jar)
    } else {
        jar
    };
    let response = if pages::wants_html(headers) {
        found(&start_url(&redirect::local_path(Some(rd))))
    } else {
        pages::error(headers, ErrorCode::NotSignedIn, "Sign in first.", None)
    };
    (jar, response).into_response()
}

fn denied(headers: &HeaderMap, identity: &Identity, reason: &str) -> Response {
    let who = identity.email.as_deref().unwrap_or(&identity.subject);
    with_user(
        pages::error(
            headers,
            ErrorCode::AccessDenied,
            &format!("You are signed in as {who}, but {reason}."),
            Some(Link {
                href: "/oauth2/sign_out",
                text: "Sign out and use another account",
            }),
        ),
        identity,
    )
}

/// Says so in the log when a login starts on another host than `redirect_url`
/// names: the login cookie would then not come back with the callback. Only a
/// warning, since a front proxy may legitimately rewrite `Host`.
fn warn_on_host_mismatch(app: &App, headers: &HeaderMap) {
    let configured = &app.settings.redirect_url;
    let expected = match (configured.host_str(), configured.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return,
    };
    let seen = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(seen) = seen.filter(|seen| !seen.eq_ignore_ascii_case(&expected)) {
        tracing::warn!(
            host = seen,
            redirect_url_host = %expected,
            "a login started on a host other than redirect_url's; its cookie will not reach \
             the callback unless a front proxy rewrites Host: set redirect_url to this host"
        );
    }
}

/// The query parameters, or a 400 of latchkey's own (a fixed message) when
/// they do not parse: a parameter given twice, or not UTF-8.
#[allow(clippy::result_large_err)] // the answer, built only on refusal
fn parameters<T>(
    headers: &HeaderMap,
    query: Result<Query<T>, QueryRejection>,
) -> Result<T, Response> {
    query.map(|Query(query)| query).map_err(|rejection| {
        tracing::info!(reason = %escaped(&rejection.body_text()), "refused query parameters");
        pages::error(
            headers,
            ErrorCode::BadRequest,
            "The request's parameters cannot be read (one is repeated or malformed).",
            None,
        )
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct StartQuery {
    rd: Option<String>,
}

/// `Some` 429 when `peer` has used up its sign-in requests for now.
fn rate_limited(app: &App, peer: &Peer, headers: &HeaderMap) -> Option<Response> {
    let wait = app.login_limiter.as_ref()?.check(peer.addr.ip()).err()?;
    tracing::info!(peer = %peer.addr.ip(), "sign-in requests rate-limited");
    let mut response = pages::error(
        headers,
        ErrorCode::TooManyRequests,
        "Too many sign-in attempts from here. Please wait a moment and try again.",
        None,
    );
    let seconds = wait.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Some(response)
}

pub(super) async fn start(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<Peer>,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    query: Result<Query<StartQuery>, QueryRejection>,
) -> Response {
    if let Some(limited) = rate_limited(&app, &peer, &headers) {
        return limited;
    }
    let query = match parameters(&headers, query) {
        Ok(query) => query,
        Err(response) => return response,
    };
    warn_on_host_mismatch(&app, &headers);
    if query
        .rd
        .as_ref()
        .is_some_and(|rd| rd.len() > redirect::MAX_RD)
    {
        return pages::error(
            &headers,
            ErrorCode::BadRequest,
            "The address to return to after sign-in is too long.",
            Some(Link {
                href: "/oauth2/start",
                text: "Sign in",
            }),
        );
    }
    let return_to = redirect::local_path(query.rd.as_deref());
    match app.login.begin(&return_to).await {
        Ok(started) => {
            app.metrics.logins_started.inc();
            let login = LoginCookie {
                binding: started.binding.clone(),
                pending: started.pending.clone(),
            };
            let jar = app.cookies.add_login(jar, &started.state, &login);
            (jar, found(&started.authorization_url)).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "could not start a login");
            pages::error(
                &headers,
                ErrorCode::StoreUnavailable,
                "Sign-in cannot start right now. Please try again shortly.",
                None,
            )
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

pub(super) async fn callback(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<Peer>,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    if let Some(limited) = rate_limited(&app, &peer, &headers) {
        return limited;
    }
    let query = match parameters(&headers, query) {
        Ok(query) => query,
        Err(response) => return response,
    };
    let Some(state) = query.state.as_deref().filter(|s| !s.is_empty()) else {
        return pages::error(
            &headers,
            ErrorCode::BadRequest,
            "The sign-in response has no state parameter.",
            Some(Link {
                href: "/oauth2/start",
                text: "Sign in",
            }),
        );
    };
    let login_cookie = app.cookies.login(&jar, &headers, state);
    let binding = login_cookie.as_ref().map(|l| l.binding.secret());
    let pending = login_cookie.as_ref().map(|l| &l.pending);
    let return_to = pending
        .map(|p| p.return_to.clone())
        .unwrap_or_else(|| "/".into());
    let start_again = start_url(&return_to);
    let again = || {
        Some(Link {
            href: &start_again,
            text: "Start again",
        })
    };

    // An error response, or one from another issuer (RFC 9207), ends the
    // login. Nothing of the response's text is shown or kept but a checked
    // error code: the rest is whatever the sender of the link wrote.
    let refusal = match (
        &query.error,
        app.provider.check_response_issuer(query.iss.as_deref()),
    ) {
        (Some(error), _) => Some(FailureReason::Refused {
            error: idp_error_code(error),
        }),
        (None, Err(_)) => Some(FailureReason::WrongIssuer),
        (None, Ok(())) => None,
    };
    if let Some(reason) = refusal {
        let error = match app.login.abort(state, binding, pending, reason).await {
            Ok(reason) => LoginError::Failed(reason),
            Err(error) => error,
        };
        return login_failure(&app, &headers, &error, again());
    }
    let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
        return pages::error(
            &headers,
            ErrorCode::BadRequest,
            "The sign-in response has no code parameter.",
            again(),
        );
    };
    match app
        .login
        .complete(Callback {
            state,
            code,
            binding,
            pending,
        })
        .await
    {
        Ok(done) => {
            if done.exchanged_here {
                app.metrics.logins_completed.inc();
            } else {
                app.metrics.duplicate_callbacks.inc();
            }
            let jar = app.cookies.set_session(jar, &done.session_id);
            // This login's cookie has done its job.
            let jar = app.cookies.clear_login(jar, state);
            (jar, found(&redirect::local_path(Some(&done.return_to)))).into_response()
        }
        Err(error) => login_failure(&app, &headers, &error, again()),
    }
}

/// What a browser is told when a callback produced no session: the code and
/// status say whose doing it was (the README's table), and the message is
/// fixed text: nothing of the request or of the provider's answer.
fn login_problem(error: &LoginError) -> (ErrorCode, &'static str) {
    use FailureReason as Why;
    match error {
        LoginError::UnknownLogin => (
            ErrorCode::LoginExpired,
            "This sign-in has expired or was already used up. Start again.",
        ),
        LoginError::BindingMismatch => (
            ErrorCode::LoginNotBound,
            "This sign-in was started in another browser (or its cookie was lost). Start again here.",
        ),
        LoginError::AlreadyFailed(_) => (
            ErrorCode::LoginAlreadyFailed,
            "This sign-in had already failed. Start again.",
        ),
        LoginError::AlreadyCompleted => {
            (ErrorCode::BadRequest, "This sign-in has already completed.")
        }
        LoginError::Failed(Why::Refused { .. }) => (
            ErrorCode::LoginRefused,
            "The identity provider did not sign you in.",
        ),
        LoginError::Failed(Why::WrongIssuer) => (
            ErrorCode::BadRequest,
            "The sign-in response names another identity provider than this app's.",
        ),
        LoginError::Failed(Why::CodeRejected(_)) => (
            ErrorCode::LoginCodeRejected,
            "The identity provider no longer accepts this sign-in (it was used or has expired). Start again.",
        ),
        LoginError::Failed(Why::Invalid(_)) => (
            ErrorCode::LoginFailed,
            "The identity provider's answer could not be verified, so you were not signed in.",
        ),
        LoginError::Failed(Why::Unavailable(_)) => (
            ErrorCode::IdpUnavailable,
            "The identity provider is not answering. Please try again shortly.",
        ),
        LoginError::Failed(Why::LeaseExpired | Why::Cancelled) | LoginError::LeaseLost => (
            ErrorCode::LoginInterrupted,
            "Sign-in was interrupted before it completed. Start again.",
        ),
        LoginError::StillInProgress => (
            ErrorCode::LoginInProgress,
            "This sign-in is still being completed. Reload the page in a moment.",
        ),
        LoginError::Store(_) | LoginError::Corrupt(_) => (
            ErrorCode::StoreUnavailable,
            "Sign-in cannot complete right now. Please try again shortly.",
        ),
    }
}

fn login_failure(
    app: &App,
    headers: &HeaderMap,
    error: &LoginError,
    link: Option<Link<'_>>,
) -> Response {
    let (code, message) = login_problem(error);
    if matches!(error, LoginError::Failed(_)) {
        app.metrics.logins_failed.inc();
    }
    tracing::info!(error = %escaped(error), code = code.as_str(), "callback failed");
    let message = match error {
        LoginError::Failed(FailureReason::Refused { error }) => {
            // The checked code alone, so the user can tell an administrator.
            format!("{message} (the provider said: {error})")
        }
        _ => message.to_owned(),
    };
    pages::error(headers, code, &message, link)
}

pub(super) async fn sign_out(
    State(app): AppState,
    jar: PrivateCookieJar,
    headers: HeaderMap,
) -> Response {
    let mut id_token = None;
    if let Some(id) = app.cookies.session_id_in(&headers) {
        match app.sessions.sign_out(&id).await {
            Ok(record) => {
                let tokens = record.map(|r| r.tokens);
                if let Some(refresh_token) = tokens.as_ref().and_then(|t| t.refresh_token.clone()) {
                    revoke_in_background(&app, refresh_token);
                }
                id_token = tokens.and_then(|t| t.id_token);
            }
            Err(error) => {
                tracing::warn!(%error, "sign-out could not reach the store");
                return pages::error(
                    &headers,
                    ErrorCode::StoreUnavailable,
                    "You could not be signed out right now. Please try again shortly.",
                    None,
                );
            }
        }
    }
    let jar = app.cookies.clear_all(jar, &headers);
    let after = app.settings.post_logout_redirect_url.as_deref();
    let response = match app.provider.end_session_url(id_token.as_ref(), after) {
        Some(url) => found(&url),
        None => match after {
            Some(url) => found(url),
            None => Html(pages::page(
                "Signed out",
                "<h1>Signed out</h1><p>You are signed out.</p><p><a href=\"/oauth2/start\">Sign in again</a></p>",
            ))
            .into_response(),
        },
    };
    (jar, response).into_response()
}

/// Revokes a signed-out session's refresh token at the provider (RFC 7009),
/// best effort and off the request: the sign-out never waits for it.
fn revoke_in_background(app: &App, refresh_token: RefreshToken) {
    let provider = app.provider.clone();
    tokio::spawn(async move {
        match provider.revoke_refresh_token(&refresh_token).await {
            Ok(true) => tracing::debug!("revoked the signed-out session's refresh token"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(error = %escaped(&error), "could not revoke a refresh token at sign-out")
            }
        }
    });
}

/// Forward-auth for nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`.
pub(super) async fn forward_auth(State(app): AppState, headers: HeaderMap) -> Response {
    let caller = match caller(&app, &headers, &app.cookies.sent(&headers)).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let Some(identity) = caller.identity() else {
        let clear = matches!(caller, Caller::Anonymous { clear_cookie: true });
        let jar = app.cookies.empty_jar();
        let jar = if clear {
            app.cookies.clear_session(jar)
        } else {
            jar
        };
        let mut response = (StatusCode::UNAUTHORIZED, jar).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    };
    if let Err(reason) = authz::check(&app.settings, identity) {
        return denied(&headers, identity, &reason);
    }
    let mut response = StatusCode::ACCEPTED.into_response();
    let out = response.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(name, value);
        }
    };
    put("x-auth-request-user", &identity.subject);
    if let Some(email) = &identity.email {
        put("x-auth-request-email", email);
    }
    if !identity.groups.is_empty() {
        put("x-auth-request-groups", &identity.groups.join(","));
    }
    if app.settings.pass_access_token
        && let Caller::Session(session) = &caller
    {
        put(
            "x-auth-request-access-token",
            session.tokens().access_token.secret(),
        );
    }
    with_user(response, identity)
}

pub(super) async fn userinfo(State(app): AppState, headers: HeaderMap) -> Response {
    let caller = match caller(&app, &headers, &app.cookies.sent(&headers)).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    match caller.identity() {
        Some(identity) => with_user(
            axum::Json(serde_json::json!({
                "user": identity.subject,
                "email": identity.email,
                "groups": identity.groups,
                "issuer": identity.issuer,
            }))
            .into_response(),
            identity,
        ),
        None => pages::error(
            &HeaderMap::new(),
            ErrorCode::NotSignedIn,
            "Sign in first.",
            None,
        ),
    }
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(app): AppState) -> Response {
    let report = app.readiness.report().await;
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

pub(super) async fn metrics(State(app): AppState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Everything else: the protected app.
pub(super) async fn protected(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let skip = app
        .settings
        .skip_auth_routes
        .iter()
        .any(|r| r.matches(request.method().as_str(), request.uri().path()));
    let cookies = app.cookies.sent(request.headers());
    if skip {
        let upstream_cookies = cookies.into_upstream();
        return forward(&app, request, Forwarded::default(), &peer, upstream_cookies).await;
    }
    let caller = match caller(&app, request.headers(), &cookies).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let upstream_cookies = cookies.into_upstream();
    let Some(identity) = caller.identity() else {
        let clear = matches!(caller, Caller::Anonymous { clear_cookie: true });
        let rd = destination(&request);
        let jar = app.cookies.empty_jar();
        return sign_in_required(&app, jar, request.headers(), &rd, clear);
    };
    if let Err(reason) = authz::check(&app.settings, identity) {
        return denied(request.headers(), identity, &reason);
    }
    let access_token = match (&caller, app.settings.pass_access_token) {
        (Caller::Session(session), true) => Some(session.tokens().access_token.secret()),
        _ => None,
    };
    let identity_headers = match &caller {
        Caller::Session(session) => {
            session.derived(|record| IdentityHeaders::new(&record.identity))
        }
        _ => Arc::new(IdentityHeaders::new(identity)),
    };
    let who = Forwarded {
        identity: Some(identity),
        identity_headers: Some(identity_headers),
        access_token,
    };
    // A session cookie that only a previous secret decrypts is set again with
    // the current one, so that the previous secret can be retired.
    let reissue = match &caller {
        Caller::Session(_) if app.cookies.has_previous_keys() => app
            .cookies
            .session_cookie(&app.cookies.sent(request.headers()))
            .filter(|cookie| cookie.stale),
        _ => None,
    };
    let response = forward(&app, request, who, &peer, upstream_cookies).await;
    let response = match reissue {
        Some(cookie) => {
            let jar = app.cookies.set_session(app.cookies.empty_jar(), &cookie.id);
            (jar, response).into_response()
        }
        None => response,
    };
    with_user(response, identity)
}

async fn forward(
    app: &App,
    request: Request,
    who: Forwarded<'_>,
    peer: &Peer,
    cookies: UpstreamCookies,
) -> Response {
    let html = pages::wants_html(request.headers());
    let Some(upstream) = &app.upstream else {
        // Forward-auth mode: nothing to proxy to.
        return match who.identity {
            Some(identity) if request.uri().path() == "/" => pages::hardened(Html(pages::page(
                "Signed in",
                &format!(
                    "<h1>Signed in</h1><p>You are signed in as {}.</p><p><a href=\"/oauth2/sign_out\">Sign out</a></p>",
                    crate::dev_idp::escape_html(
                        identity.email.as_deref().unwrap_or(&identity.subject)
                    )
                ),
            ))),
            _ => pages::error_for(
                html,
                ErrorCode::NotFound,
                "There is no such page here.",
                None,
            ),
        };
    };
    let proto = if app.settings.secure_cookies() {
        "https"
    } else {
        "http"
    };
    match upstream
        .forward(request.map(Body::new), who, peer, proto, cookies)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn query() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "state",
            "code",
            "error",
            "iss",
            "error_description",
            "=",
            "=",
            "&",
            "&",
            "%",
            "%FF",
            "%26",
            "%3D",
            "+",
            "a",
            "access_denied",
            "%0A",
            "x",
        ]);
        prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Any callback query parses or is refused, and what the page may
        /// show of it is a checked error code.
        #[test]
        fn callback_queries_never_panic_and_show_only_checked_codes(q in query()) {
            let Ok(uri) = format!("/oauth2/callback?{q}").parse::<axum::http::Uri>() else {
                return Ok(());
            };
            if let Ok(Query(parsed)) = Query::<CallbackQuery>::try_from_uri(&uri)
                && let Some(error) = parsed.error
            {
                let shown = idp_error_code(&error);
                prop_assert!(shown.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            }
        }
    }
}
