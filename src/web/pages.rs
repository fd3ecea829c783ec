//! What a person or an API client sees when something is not simply proxied:
//! small self-contained HTML pages for browsers, JSON for everyone else, both
//! carrying a stable machine-readable error code.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::templates::{Page, Pages, page_csp};

/// `text` safe to place in HTML text or a double-quoted attribute.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The stable error codes (also in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No session; sign in.
    NotSignedIn,
    /// Signed in but not allowed by `email_domains` / `allowed_emails` / `allowed_groups`.
    AccessDenied,
    /// The login is unknown or expired; start again.
    LoginExpired,
    /// The callback came from another browser than the one that started the login.
    LoginNotBound,
    /// The provider's answer to the login failed validation.
    LoginFailed,
    /// The provider answered the authorization request with an error (the
    /// user declined, or may not use this app at the provider).
    LoginRefused,
    /// The token endpoint refused the code (`invalid_grant`); start again.
    LoginCodeRejected,
    /// This login had already failed (a replay of its callback).
    LoginAlreadyFailed,
    /// The login was cut short on latchkey's side (a replica stopped or took
    /// too long); start again.
    LoginInterrupted,
    /// Another request is still completing this login.
    LoginInProgress,
    /// The request is malformed (missing parameters, oversized cookies).
    BadRequest,
    /// The store cannot be reached.
    StoreUnavailable,
    /// The identity provider cannot be reached.
    IdpUnavailable,
    /// The upstream app cannot be reached.
    UpstreamUnavailable,
    /// No such page (forward-auth mode has no upstream).
    NotFound,
    /// This client made too many sign-in requests; try again later.
    TooManyRequests,
    /// A sign-out sent from another site while `sign_out_post_only` is set.
    CrossSiteRequest,
    /// A method the endpoint does not take (`GET /oauth2/sign_out` from an
    /// API client while `sign_out_post_only` is set).
    MethodNotAllowed,
}

impl ErrorCode {
    /// The code as it appears in JSON and on pages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSignedIn => "not_signed_in",
            Self::AccessDenied => "access_denied",
            Self::LoginExpired => "login_expired",
            Self::LoginNotBound => "login_not_bound",
            Self::LoginFailed => "login_failed",
            Self::LoginRefused => "login_refused",
            Self::LoginCodeRejected => "login_code_rejected",
            Self::LoginAlreadyFailed => "login_already_failed",
            Self::LoginInterrupted => "login_interrupted",
            Self::LoginInProgress => "login_in_progress",
            Self::BadRequest => "bad_request",
            Self::StoreUnavailable => "store_unavailable",
            Self::IdpUnavailable => "idp_unavailable",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::NotFound => "not_found",
            Self::TooManyRequests => "too_many_requests",
            Self::CrossSiteRequest => "cross_site_request",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// The status it is answered with: 4xx for what the client did, 5xx for
    /// what the provider, a dependency or latchkey's own timing did.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotSignedIn => StatusCode::UNAUTHORIZED,
            Self::AccessDenied
            | Self::LoginNotBound
            | Self::LoginRefused
            | Self::CrossSiteRequest => StatusCode::FORBIDDEN,
            Self::LoginExpired
            | Self::BadRequest
            | Self::LoginCodeRejected
            | Self::LoginAlreadyFailed => StatusCode::BAD_REQUEST,
            Self::LoginFailed => StatusCode::BAD_GATEWAY,
            Self::LoginInProgress
            | Self::LoginInterrupted
            | Self::StoreUnavailable
            | Self::IdpUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The page's heading.
    pub fn title(self) -> &'static str {
        match self {
            Self::NotSignedIn => "Sign-in required",
            Self::AccessDenied => "Access denied",
            Self::LoginExpired => "Sign-in expired",
            Self::LoginNotBound => "Sign-in started elsewhere",
            Self::LoginFailed => "Sign-in failed",
            Self::LoginRefused => "Sign-in refused",
            Self::LoginCodeRejected | Self::LoginAlreadyFailed | Self::LoginInterrupted => {
                "Sign-in did not complete"
            }
            Self::LoginInProgress => "Sign-in in progress",
            Self::BadRequest => "Bad request",
            Self::StoreUnavailable => "Temporarily unavailable",
            Self::IdpUnavailable => "Sign-in service unavailable",
            Self::UpstreamUnavailable => "Application unavailable",
            Self::NotFound => "Not found",
            Self::TooManyRequests => "Too many sign-in attempts",
            Self::CrossSiteRequest => "Request from another site",
            Self::MethodNotAllowed => "Method not allowed",
        }
    }
}

/// Whether the client wants a page (a browser) rather than JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// A link on an error page.
pub struct Link<'a> {
    /// Where it goes (a local path).
    pub href: &'a str,
    /// What it says.
    pub text: &'a str,
}

/// An error response: a page for browsers, JSON otherwise.
pub fn error(
    headers: &HeaderMap,
    code: ErrorCode,
    message: &str,
    link: Option<Link<'_>>,
) -> Response {
    error_for(wants_html(headers), code, message, link)
}

/// An error response: a page when `html`, JSON otherwise.
pub fn error_for(html: bool, code: ErrorCode, message: &str, link: Option<Link<'_>>) -> Response {
    let mut response = if html {
        Pages::built_in().render(Page::Error {
            code,
            message: message.to_owned(),
            link: link.map(|l| (l.href.to_owned(), l.text.to_owned())),
        })
    } else {
        let mut json =
            axum::Json(serde_json::json!({ "error": code.as_str(), "message": message }))
                .into_response();
        *json.status_mut() = code.status();
        json
    };
    harden(&mut response);
    response
}

/// The `Content-Security-Policy` of the front-channel logout page, which
/// only `origin` (the provider's) may frame.
pub(crate) fn framed_page_csp(origin: &str) -> String {
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors {origin}; base-uri 'none'"
    )
}

/// `response` with the headers of [`harden`].
pub fn hardened(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    harden(&mut response);
    response
}

/// Adds to `response` the headers every answer of latchkey's own carries:
/// never cached (`no-store, private`), never framed, never sniffed, no
/// referrer; and on HTML, a strict CSP.
pub fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, private"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A page that names who may frame it (front-channel logout: the
    // provider) keeps its own policy; every other answer is never framed.
    let csp = headers.get(header::CONTENT_SECURITY_POLICY);
    let framed_by_policy = csp.is_some_and(|csp| {
        csp.to_str().is_ok_and(|csp| {
            csp.contains("frame-ancestors")
                && !csp.contains("frame-ancestors 'none'")
                && !csp.contains('*')
        })
    });
    if !framed_by_policy {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    let html = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
    if html && !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, page_csp(None));
    }
}

/// A complete HTML page in latchkey's built-in layout (no external assets)
/// around `body`, which must be HTML made safe by the caller.
pub fn page(title: &str, body: &str) -> String {
    Pages::built_in().plain(title, body)
}
