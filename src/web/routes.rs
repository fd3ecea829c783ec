//! The sign-in endpoints of [`Latchkey::login_routes`]: start, sign-in page,
//! callback, sign-out, userinfo, and the provider's logout channels.

use std::net::SocketAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::cookie::PrivateCookieJar;
use serde::Deserialize;

use super::caller::{self, escaped};
use super::cookies::LoginCookie;
use super::pages::{self, ErrorCode, Link};
use super::templates::Page;
use super::{Latchkey, Reason, Rejection, observe_user, redirect};
use crate::login::{Callback, CompletedLogin, FailureReason, LoginError, idp_error_code};
use crate::logout::Handle;
use crate::oidc::logout_token::LogoutTokenError;
use crate::secret::RefreshToken;

type AppState = State<Latchkey>;

/// The client's address, when the server records it
/// (`ConnectInfo<SocketAddr>`): what the sign-in rate limit is keyed by.
pub(crate) struct ClientAddr(Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Self(addr.map(|ConnectInfo(addr)| *addr)))
    }
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

/// Says so in the log when a login starts on another host than `redirect_url`
/// names: the login cookie would then not come back with the callback. Only a
/// warning, since a front proxy may legitimately rewrite `Host`.
fn warn_on_host_mismatch(app: &Latchkey, headers: &HeaderMap) {
    let configured = &app.inner.settings.redirect_url;
    let expected = match (configured.host_str(), configured.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return,
    };
    let seen = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    // With cookie_domain, every host in that domain shares the cookies.
    let in_cookie_domain = |seen: &str| {
        let host = seen
            .rsplit_once(':')
            .map_or(seen, |(host, _)| host)
            .to_ascii_lowercase();
        app.inner
            .settings
            .cookie_domain
            .as_ref()
            .is_some_and(|domain| host == *domain || host.ends_with(&format!(".{domain}")))
    };
    if let Some(seen) =
        seen.filter(|seen| !seen.eq_ignore_ascii_case(&expected) && !in_cookie_domain(seen))
    {
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
pub(crate) struct SignInQuery {
    rd: Option<String>,
}

/// The header nginx configurations written for oauth2-proxy set to the
/// original request URI on `/oauth2/sign_in` (`error_page 401`).
const AUTH_REQUEST_REDIRECT: &str = "x-auth-request-redirect";

/// oauth2-proxy's sign-in page (`error_page 401 = /oauth2/sign_in` in nginx
/// configurations): a page with a button that starts the login, or, with
/// `skip_provider_button`, a redirect that starts it at once. The
/// destination is `rd`, else `X-Auth-Request-Redirect`, checked as
/// `/oauth2/start` checks `rd`.
pub(crate) async fn sign_in(
    State(app): AppState,
    headers: HeaderMap,
    query: Result<Query<SignInQuery>, QueryRejection>,
) -> Response {
    let query = match parameters(&headers, query) {
        Ok(query) => query,
        Err(refused) => return refused,
    };
    let header = headers
        .get(AUTH_REQUEST_REDIRECT)
        .and_then(|value| value.to_str().ok());
    let start = (app.inner.destinations).start_url(query.rd.as_deref().or(header).unwrap_or("/"));
    if app.inner.settings.skip_provider_button {
        return found(&start);
    }
    app.inner
        .settings
        .pages
        .render(Page::SignIn { sign_in_url: start })
}

/// The landing after sign-out when nothing else is configured: "you are
/// signed out", with a link that signs in again.
pub(crate) async fn signed_out(State(app): AppState) -> Response {
    let sign_in_url = app.inner.destinations.start_url("/");
    app.inner
        .settings
        .pages
        .render(Page::SignedOut { sign_in_url })
}

/// The signed-out page's hidden image, loaded once that page is shown.
pub(crate) const FORGET_SIGNED_IN_PAGES: &str = "/oauth2/signed_out/forget";

/// Ends the sign-out's mark (see [`Cookies::mark_signed_out`]): a cookie
/// change that comes after the signed-in pages went into the browser's
/// back/forward cache, which makes Chromium drop them, so that the back
/// button asks again (and is sent to sign in) instead of showing a
/// signed-out user's page from memory. Changes nothing else; a browser
/// without the mark gets an empty answer.
///
/// [`Cookies::mark_signed_out`]: super::cookies::Cookies::mark_signed_out
pub(crate) async fn forget_signed_in_pages(
    State(app): AppState,
    jar: PrivateCookieJar,
    headers: HeaderMap,
) -> Response {
    let jar = app.inner.cookies.clear_signed_out_mark(jar, &headers);
    (jar, StatusCode::NO_CONTENT).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct StartQuery {
    rd: Option<String>,
    login_hint: Option<String>,
    domain_hint: Option<String>,
    prompt: Option<String>,
    ui_locales: Option<String>,
}

/// The longest value of a parameter passed on to the provider.
const MAX_PASSED_PARAM: usize = 256;

impl StartQuery {
    /// The parameters `pass_auth_params` lets through, in a fixed order;
    /// `Err` names one that is too long or holds a control character.
    fn passed(&self, allowed: &[String]) -> Result<Vec<(String, String)>, &'static str> {
        let present = [
            ("login_hint", &self.login_hint),
            ("domain_hint", &self.domain_hint),
            ("prompt", &self.prompt),
            ("ui_locales", &self.ui_locales),
        ];
        let mut passed = Vec::new();
        for (name, value) in present {
            let Some(value) = value.as_ref().filter(|_| allowed.iter().any(|a| a == name)) else {
                continue;
            };
            if value.len() > MAX_PASSED_PARAM || value.chars().any(char::is_control) {
                return Err(name);
            }
            passed.push((name.to_owned(), value.clone()));
        }
        Ok(passed)
    }
}

/// `Some` 429 when `peer` has used up its sign-in requests for now.
fn rate_limited(app: &Latchkey, peer: &ClientAddr, headers: &HeaderMap) -> Option<Response> {
    let ip = peer.0?.ip();
    let wait = app.inner.login_limiter.as_ref()?.check(ip).err()?;
    tracing::info!(peer = %ip, "sign-in requests rate-limited");
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

pub(crate) async fn start(
    State(app): AppState,
    peer: ClientAddr,
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
    let return_to = app.inner.destinations.checked(query.rd.as_deref());
    let passed = match query.passed(&app.inner.settings.pass_auth_params) {
        Ok(passed) => passed,
        Err(name) => {
            tracing::info!(parameter = name, "refused a sign-in parameter");
            return pages::error(
                &headers,
                ErrorCode::BadRequest,
                "A sign-in parameter is too long or malformed.",
                None,
            );
        }
    };
    match app.inner.login.begin_with(&return_to, passed).await {
        Ok(started) => {
            app.inner.metrics.logins_started.inc();
            let login = LoginCookie {
                binding: started.binding.clone(),
                pending: started.pending.clone(),
            };
            let jar = app.inner.cookies.add_login(jar, &started.state, &login);
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
pub(crate) struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

pub(crate) async fn callback(
    State(app): AppState,
    peer: ClientAddr,
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
    let login_cookie = app.inner.cookies.login(&jar, &headers, state);
    let callback = |code| Callback {
        state,
        code,
        binding: login_cookie.as_ref().map(|l| l.binding.secret()),
        pending: login_cookie.as_ref().map(|l| &l.pending),
    };
    let start_again = app.inner.destinations.start_url(
        login_cookie
            .as_ref()
            .map_or("/", |l| l.pending.return_to.as_str()),
    );
    let again = Link {
        href: &start_again,
        text: "Start again",
    };
    if let Some(reason) = refusal(&app, &query) {
        let Callback {
            binding, pending, ..
        } = callback("");
        let error = match app.inner.login.abort(state, binding, pending, reason).await {
            Ok(reason) => LoginError::Failed(reason),
            Err(error) => error,
        };
        return login_failure(&app, &headers, &error, Some(again));
    }
    let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
        return pages::error(
            &headers,
            ErrorCode::BadRequest,
            "The sign-in response has no code parameter.",
            Some(again),
        );
    };
    let completed = complete_detached(&app, state, code, login_cookie.clone()).await;
    match completed {
        Ok(done) => signed_in(&app, jar, state, &done),
        Err(LoginError::BindingMismatch) if login_cookie.is_none() => {
            match replayed_by_its_session(&app, &headers, state).await {
                Some(return_to) => found(&app.inner.destinations.checked(Some(&return_to))),
                None => login_failure(&app, &headers, &LoginError::BindingMismatch, Some(again)),
            }
        }
        Err(error) => login_failure(&app, &headers, &error, Some(again)),
    }
}

/// Completes the login in a task of its own, so that a browser that gives
/// up on a slow callback (a reload, a double click, a closed tab) does not
/// cancel the exchange: hyper drops a request's handler when its connection
/// closes, and a dropped exchange marks the login `Cancelled`, which would
/// turn the browser's next try of the same callback into an error page. The
/// task runs to its outcome, and that next try joins it (I2).
async fn complete_detached(
    app: &Latchkey,
    state: &str,
    code: &str,
    login_cookie: Option<LoginCookie>,
) -> Result<CompletedLogin, LoginError> {
    let app = app.clone();
    let (state, code) = (state.to_owned(), code.to_owned());
    let task = tokio::spawn(async move {
        let callback = Callback {
            state: &state,
            code: &code,
            binding: login_cookie.as_ref().map(|l| l.binding.secret()),
            pending: login_cookie.as_ref().map(|l| &l.pending),
        };
        app.inner.login.complete(callback).await
    });
    task.await.unwrap_or_else(|error| {
        tracing::error!(%error, "a login's completion task failed");
        Err(LoginError::Failed(FailureReason::Cancelled))
    })
}

/// Where a used callback goes when it comes again from the browser its login
/// signed in (see [`LoginFlow::replayed_by_its_session`]): `None` for any
/// other browser, which then sees `login_not_bound` as before.
///
/// [`LoginFlow::replayed_by_its_session`]: crate::login::LoginFlow::replayed_by_its_session
async fn replayed_by_its_session(
    app: &Latchkey,
    headers: &HeaderMap,
    state: &str,
) -> Option<String> {
    let session_id = app.inner.cookies.session_id_in(headers)?;
    match app
        .inner
        .login
        .replayed_by_its_session(state, &session_id)
        .await
    {
        Ok(return_to) => return_to,
        Err(error) => {
            tracing::warn!(%error, "could not look up a replayed callback's login");
            None
        }
    }
}

/// Whether the authorization response ends the login without an exchange:
/// an error response, or one from another issuer (RFC 9207). Nothing of the
/// response's text is shown or kept but a checked error code: the rest is
/// whatever the sender of the link wrote.
fn refusal(app: &Latchkey, query: &CallbackQuery) -> Option<FailureReason> {
    let issuer = app
        .inner
        .provider
        .check_response_issuer(query.iss.as_deref());
    match (&query.error, issuer) {
        (Some(error), _) => Some(FailureReason::Refused {
            error: idp_error_code(error),
        }),
        (None, Err(_)) => Some(FailureReason::WrongIssuer),
        (None, Ok(())) => None,
    }
}

/// The answer to a callback that signed the browser in: the session
/// cookie, this login's cookie removed, and the way back.
fn signed_in(
    app: &Latchkey,
    jar: PrivateCookieJar,
    state: &str,
    done: &crate::login::CompletedLogin,
) -> Response {
    if done.exchanged_here {
        app.inner.metrics.logins_completed.inc();
    } else {
        app.inner.metrics.duplicate_callbacks.inc();
    }
    let jar = app.inner.cookies.set_session(jar, &done.session_id);
    // This login's cookie has done its job.
    let jar = app.inner.cookies.clear_login(jar, state);
    (
        jar,
        found(&app.inner.destinations.checked(Some(&done.return_to))),
    )
        .into_response()
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
        LoginError::Failed(Why::LoggedOut) => (
            ErrorCode::LoginRefused,
            "The identity provider signed you out while this sign-in was completing. Start again.",
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
    app: &Latchkey,
    headers: &HeaderMap,
    error: &LoginError,
    link: Option<Link<'_>>,
) -> Response {
    let (code, message) = login_problem(error);
    if matches!(error, LoginError::Failed(_)) {
        app.inner.metrics.logins_failed.inc();
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

/// `rd` of a sign-out: where to go instead of the provider's logout.
#[derive(Debug, Deserialize)]
pub(crate) struct SignOutQuery {
    rd: Option<String>,
}

/// `GET /oauth2/sign_out`: signs out, as oauth2-proxy does, unless
/// `sign_out_post_only` is set: a browser is then asked first (a button
/// that posts the sign-out, `rd` kept) and an API client is told to POST,
/// so that a link on another site cannot sign anyone out.
pub(crate) async fn sign_out_by_get(
    state: AppState,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    query: Result<Query<SignOutQuery>, QueryRejection>,
) -> Response {
    let State(app) = &state;
    if !app.inner.settings.sign_out_post_only {
        return sign_out(state, jar, headers, query).await;
    }
    let query = match parameters(&headers, query) {
        Ok(query) => query,
        Err(refused) => return refused,
    };
    if !pages::wants_html(&headers) {
        let mut refused = pages::error(
            &headers,
            ErrorCode::MethodNotAllowed,
            "Sign out with POST.",
            None,
        );
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return refused;
    }
    let sign_out_url = match &query.rd {
        Some(rd) => {
            let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
            format!("{SIGN_OUT}?rd={rd}")
        }
        None => SIGN_OUT.to_owned(),
    };
    app.inner
        .settings
        .pages
        .render(Page::SignOut { sign_out_url })
}

/// `POST /oauth2/sign_out`: signs out; with `sign_out_post_only`, not when
/// the browser says another site sent it (a cross-site form carries no
/// `SameSite=Lax` session cookie anyway; this refuses it outright).
pub(crate) async fn sign_out_by_post(
    state: AppState,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    query: Result<Query<SignOutQuery>, QueryRejection>,
) -> Response {
    let State(app) = &state;
    if app.inner.settings.sign_out_post_only && sent_by_another_site(&headers) {
        tracing::info!("refused a sign-out sent from another site");
        return pages::error(
            &headers,
            ErrorCode::CrossSiteRequest,
            "This sign-out came from another site, so you are still signed in. Sign out from the app itself.",
            None,
        );
    }
    sign_out(state, jar, headers, query).await
}

/// The sign-out endpoint.
pub(crate) const SIGN_OUT: &str = "/oauth2/sign_out";

/// Whether the browser says another site sent this request: `Sec-Fetch-Site:
/// cross-site`, or, from a browser that sends no `Sec-Fetch-Site`, an
/// `Origin` that is not the request's own host.
fn sent_by_another_site(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return site.eq_ignore_ascii_case("cross-site");
    }
    match text(header::ORIGIN) {
        None => false,
        Some(origin) => {
            let host = url::Url::parse(origin).ok().and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            });
            host.is_none_or(|host| {
                text(header::HOST).is_none_or(|own| !own.eq_ignore_ascii_case(&host))
            })
        }
    }
}

pub(crate) async fn sign_out(
    State(app): AppState,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    query: Result<Query<SignOutQuery>, QueryRejection>,
) -> Response {
    let query = match parameters(&headers, query) {
        Ok(query) => query,
        Err(refused) => return refused,
    };
    // oauth2-proxy's `rd`: a local path or a whitelisted URL (often the
    // provider's own logout URL); anything else is as if it were absent.
    let rd = query.rd.as_deref().and_then(|rd| {
        let checked = app.inner.destinations.checked(Some(rd));
        (checked != "/" || rd == "/").then_some(checked)
    });
    let mut id_token = None;
    if let Some(id) = app.inner.cookies.session_id_in(&headers) {
        match app.inner.sessions.sign_out(&id).await {
            Ok(record) => {
                let tokens = record.map(|r| r.tokens);
                if let Some(refresh_token) = tokens.as_ref().and_then(|t| t.refresh_token.clone()) {
                    revoke_in_background(&app, refresh_token);
                }
                id_token = tokens.and_then(|t| t.id_token);
            }
            Err(error) => {
                tracing::warn!(%error, "sign-out could not reach the store");
                return sign_out_unavailable(&headers);
            }
        }
    }
    let jar = app.inner.cookies.clear_all(jar, &headers);
    let jar = app.inner.cookies.mark_signed_out(jar);
    let after = app.inner.settings.post_logout_redirect_url.as_deref();
    let response = match (
        rd,
        app.inner.provider.end_session_url(id_token.as_ref(), after),
    ) {
        (Some(rd), _) => found(&rd),
        (None, Some(url)) => found(&url),
        (None, None) => found(after.unwrap_or(SIGNED_OUT)),
    };
    (jar, response).into_response()
}

/// latchkey's signed-out page.
pub(crate) const SIGNED_OUT: &str = "/oauth2/signed_out";

/// Revokes a signed-out session's refresh token at the provider (RFC 7009),
/// best effort and off the request: the sign-out never waits for it.
fn revoke_in_background(app: &Latchkey, refresh_token: RefreshToken) {
    let provider = app.inner.provider.clone();
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

/// The answer when a sign-out cannot reach the store: nothing was ended.
fn sign_out_unavailable(headers: &HeaderMap) -> Response {
    pages::error(
        headers,
        ErrorCode::StoreUnavailable,
        "You could not be signed out right now. Please try again shortly.",
        None,
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct FrontChannelQuery {
    iss: Option<String>,
    sid: Option<String>,
}

/// The longest `sid` accepted from the front channel.
const MAX_SID: usize = 256;

/// OpenID Connect Front-Channel Logout 1.0: the provider frames this URL
/// (with its `iss` and the `sid` of the provider session that ended) when
/// the user signs out there. Every session of that `sid` ends, on every
/// replica (I8); without a `sid`, the session of the browser's own cookie,
/// if it sent one. The answer is a small page only the provider may frame.
pub(crate) async fn frontchannel_logout(
    State(app): AppState,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    query: Result<Query<FrontChannelQuery>, QueryRejection>,
) -> Response {
    let query = match parameters(&headers, query) {
        Ok(query) => query,
        Err(refused) => return refused,
    };
    let issuer = app.inner.provider.issuer();
    // Front-Channel Logout 1.0 §2: `iss` and `sid` come together or not at all.
    let iss_ok = match (&query.iss, &query.sid) {
        (Some(iss), Some(_)) => iss == issuer,
        (None, None) => true,
        _ => false,
    };
    if !iss_ok {
        tracing::info!("front-channel logout refused: another issuer, or iss without sid");
        return pages::error(
            &headers,
            ErrorCode::BadRequest,
            "This logout request names another identity provider than this app's, or names it without a session.",
            None,
        );
    }
    let ended = match query.sid.as_deref() {
        Some(sid) if sid.is_empty() || sid.len() > MAX_SID || sid.chars().any(char::is_control) => {
            return pages::error(
                &headers,
                ErrorCode::BadRequest,
                "This logout request's session identifier cannot be used.",
                None,
            );
        }
        Some(sid) => app
            .end_sessions(Handle::ProviderSession(sid))
            .await
            .map(|_| ()),
        None => match app.inner.cookies.session_id_in(&headers) {
            Some(id) => app
                .inner
                .sessions
                .sign_out(&id)
                .await
                .map(|_| ())
                .map_err(|e| crate::store::StoreError::Unavailable(e.to_string())),
            None => Ok(()),
        },
    };
    if let Err(error) = ended {
        tracing::warn!(%error, "front-channel logout could not reach the store");
        return sign_out_unavailable(&headers);
    }
    let origin = url::Url::parse(issuer)
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_else(|_| "'none'".into());
    let mut response = (
        app.inner.cookies.clear_all(jar, &headers),
        Html(pages::page(
            "Signed out",
            "<h1>Signed out</h1><p>You are signed out of this app.</p>",
        )),
    )
        .into_response();
    if let Ok(csp) = HeaderValue::from_str(&pages::framed_page_csp(&origin)) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

#[derive(Debug, Deserialize)]
pub(crate) struct BackChannelForm {
    logout_token: String,
}

/// The largest back-channel logout request body read (a logout token is
/// well under 4 KiB).
pub(crate) const MAX_LOGOUT_REQUEST: usize = 16 * 1024;

/// A back-channel logout answer: `200` with no body, or an OAuth-style
/// JSON error (never cached: every answer of the login routes is `no-store`).
fn backchannel_answer(status: StatusCode, error: Option<(&str, &str)>) -> Response {
    match error {
        None => status.into_response(),
        Some((code, description)) => (
            status,
            axum::Json(serde_json::json!({
                "error": code,
                "error_description": description,
            })),
        )
            .into_response(),
    }
}

/// The store is down: nothing was ended, and the provider may retry.
fn backchannel_unavailable() -> Response {
    backchannel_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        Some((
            "temporarily_unavailable",
            "the session store is unavailable",
        )),
    )
}

/// OpenID Connect Back-Channel Logout 1.0: the provider POSTs a signed
/// `logout_token` naming a provider session (`sid`) and/or a user (`sub`).
/// A valid token that was not seen before ends every session of that
/// `sid` (or, with only a `sub`, of that user) on every replica sharing
/// the store, and tombstones it against logins still exchanging (I8).
pub(crate) async fn backchannel_logout(
    State(app): AppState,
    form: Result<axum::Form<BackChannelForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let metrics = &app.inner.metrics;
    let form = match form {
        Ok(axum::Form(form)) => form,
        Err(rejection) => {
            tracing::info!(reason = %escaped(&rejection.body_text()), "back-channel logout refused: unreadable request");
            metrics.backchannel_logout("rejected");
            return backchannel_answer(
                StatusCode::BAD_REQUEST,
                Some((
                    "invalid_request",
                    "expected an application/x-www-form-urlencoded body with one logout_token",
                )),
            );
        }
    };
    let provider = &app.inner.provider;
    let token = match provider.validate_logout_token(&form.logout_token).await {
        Ok(token) => token,
        // Not the token's fault: the provider can try again.
        Err(error @ LogoutTokenError::KeySetUnavailable(_)) => {
            tracing::warn!(reason = %escaped(&error.to_string()), "back-channel logout could not be checked");
            metrics.backchannel_logout("unavailable");
            return backchannel_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some((
                    "temporarily_unavailable",
                    "the provider's signing keys cannot be fetched",
                )),
            );
        }
        Err(error) => {
            tracing::info!(reason = %escaped(&error.to_string()), "back-channel logout refused");
            metrics.backchannel_logout("rejected");
            return backchannel_answer(
                StatusCode::BAD_REQUEST,
                Some(("invalid_request", "the logout token is not valid")),
            );
        }
    };
    let issuer = provider.issuer();
    let index = &app.inner.index;
    let skew = app.inner.settings.clock_skew;
    let remember = crate::oidc::logout_token::MAX_LOGOUT_TOKEN_AGE + skew + skew;
    match index
        .first_use_of_logout_token(issuer, &token.jti, remember)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!("back-channel logout refused: the logout token was used before");
            metrics.backchannel_logout("replayed");
            return backchannel_answer(
                StatusCode::BAD_REQUEST,
                Some(("invalid_request", "the logout token was used before")),
            );
        }
        Err(error) => {
            tracing::warn!(%error, "back-channel logout could not reach the store");
            metrics.backchannel_logout("unavailable");
            return backchannel_unavailable();
        }
    }
    // Back-Channel Logout 1.0 §2.7: the provider session when named, else
    // every session of the user.
    let handle = match (&token.sid, &token.subject) {
        (Some(sid), _) => Handle::ProviderSession(sid),
        (None, Some(sub)) => Handle::Subject(sub),
        (None, None) => {
            metrics.backchannel_logout("rejected");
            return backchannel_answer(
                StatusCode::BAD_REQUEST,
                Some(("invalid_request", "the logout token names no session")),
            );
        }
    };
    if let Err(error) = app.end_sessions_as_of(handle, token.issued_at).await {
        tracing::warn!(%error, "back-channel logout could not reach the store");
        // Not a replay when the provider tries again.
        if let Err(error) = index.forget_logout_token(issuer, &token.jti).await {
            tracing::warn!(%error, "could not forget a failed logout token's jti; its retry will be refused");
        }
        metrics.backchannel_logout("unavailable");
        return backchannel_unavailable();
    }
    metrics.backchannel_logout("accepted");
    backchannel_answer(StatusCode::OK, None)
}

pub(crate) async fn userinfo(State(app): AppState, headers: HeaderMap) -> Response {
    let found = match caller::authenticate(&app, &headers).await {
        Ok(found) => found,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(signed_in) = found.signed_in else {
        // Always JSON: this endpoint is for scripts.
        return Rejection::new(Reason::NotSignedIn, &HeaderMap::new(), "Sign in first.")
            .into_response();
    };
    let identity = signed_in.identity();
    let mut response = axum::Json(serde_json::json!({
        "user": identity.subject,
        "email": identity.email,
        "groups": identity.groups,
        "issuer": identity.issuer,
    }))
    .into_response();
    observe_user(&mut response, identity.subject.clone());
    response
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_sign_out_from_another_site_is_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            headers
        };
        let host = ("host", "app.example.com");
        for (sent, cross) in [
            (headers(&[host, ("sec-fetch-site", "cross-site")]), true),
            (headers(&[host, ("sec-fetch-site", "CROSS-SITE")]), true),
            (headers(&[host, ("sec-fetch-site", "same-origin")]), false),
            (headers(&[host, ("sec-fetch-site", "same-site")]), false),
            // Browsers without Sec-Fetch-Site: the Origin decides.
            (headers(&[host, ("origin", "https://evil.example")]), true),
            (headers(&[host, ("origin", "null")]), true),
            (
                headers(&[host, ("origin", "https://app.example.com:8443")]),
                true,
            ),
            (
                headers(&[host, ("origin", "https://app.example.com")]),
                false,
            ),
            (
                headers(&[host, ("origin", "https://APP.example.com")]),
                false,
            ),
            (headers(&[("origin", "https://app.example.com")]), true),
            // Neither header (curl, a server): not a browser's cross-site form.
            (headers(&[host]), false),
        ] {
            assert_eq!(sent_by_another_site(&sent), cross, "{sent:?}");
        }
    }

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
