//! What a person or an API client sees when something is not simply proxied:
//! small self-contained HTML pages for browsers, JSON for everyone else, both
//! carrying a stable machine-readable error code.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

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
        }
    }

    /// The status it is answered with: 4xx for what the client did, 5xx for
    /// what the provider, a dependency or latchkey's own timing did.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotSignedIn => StatusCode::UNAUTHORIZED,
            Self::AccessDenied | Self::LoginNotBound | Self::LoginRefused => StatusCode::FORBIDDEN,
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
        }
    }

    fn title(self) -> &'static str {
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
    let status = code.status();
    let mut response = if html {
        let link = link
            .map(|l| {
                format!(
                    "<p><a href=\"{}\">{}</a></p>",
                    escape_html(l.href),
                    escape_html(l.text)
                )
            })
            .unwrap_or_default();
        Html(page(
            code.title(),
            &format!(
                "<h1>{}</h1><p>{}</p>{link}<p class=\"code\">error code: {}</p>",
                escape_html(code.title()),
                escape_html(message),
                code.as_str()
            ),
        ))
        .into_response()
    } else {
        axum::Json(serde_json::json!({ "error": code.as_str(), "message": message }))
            .into_response()
    };
    *response.status_mut() = status;
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

/// The `Content-Security-Policy` of latchkey's pages: they have no scripts,
/// no frames, no external assets and one inline style sheet.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
                        form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

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
    let framed_by_policy = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .is_some_and(|csp| {
            csp.to_str()
                .is_ok_and(|csp| csp.contains("frame-ancestors") && !csp.contains('*'))
        });
    if framed_by_policy {
        return;
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let html = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
    if html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
    }
}

/// A complete HTML page with latchkey's minimal style and no external assets.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem;color:#222;line-height:1.5}}\
         h1{{font-size:1.4rem}}a{{color:#0b57d0}}.code{{color:#777;font-size:.85rem}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.2rem .6rem;text-align:left}}\
         </style></head><body>{body}</body></html>",
        escape_html(title)
    )
}
