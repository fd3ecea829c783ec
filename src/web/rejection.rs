//! Why a request was refused, and the answer it gets: the same page or JSON
//! (and status) that `serve` gives, or the app's own page through the
//! builder's `error_page` hook.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ErrorPage;
use super::pages::{self, ErrorCode, Link};
use super::redirect;

/// What kind of refusal a [`Rejection`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Nobody is signed in: browsers are sent to sign in (`302`), API
    /// clients get `401` with `{"error":"not_signed_in"}`.
    NotSignedIn,
    /// A bearer token was presented and refused (`401`).
    BearerRefused,
    /// Signed in, but the policy does not admit this identity (`403`).
    AccessDenied,
    /// Signed in with a bearer token, where a session's access token is
    /// needed ([`FreshAccessToken`](super::FreshAccessToken); `401`).
    NoAccessToken,
    /// The caller's ID token lacks what the route's claims type needs
    /// ([`IdTokenClaims`](super::IdTokenClaims); `403`).
    ClaimsUnavailable,
    /// The store could not be reached (`503`).
    StoreUnavailable,
    /// The session's token was due and the provider did not answer (`503`).
    IdpUnavailable,
}

/// A refused request: its [`Reason`], the fixed message shown, and how to
/// answer it. Implements [`IntoResponse`].
#[derive(Clone)]
pub struct Rejection {
    reason: Reason,
    message: String,
    html: bool,
    /// Where a browser signs in (`/oauth2/start?rd=…`), for `NotSignedIn`.
    sign_in: Option<String>,
    /// `Set-Cookie` values to send along (a dead session cookie's removal).
    cookies: Vec<HeaderValue>,
    error_page: Option<ErrorPage>,
    /// The signed-in user it refused, for the request log.
    user: Option<String>,
}

impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection")
            .field("reason", &self.reason)
            .field("message", &self.message)
            .field("html", &self.html)
            .finish_non_exhaustive()
    }
}

impl Rejection {
    pub(crate) fn new(reason: Reason, headers: &HeaderMap, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            html: pages::wants_html(headers),
            sign_in: None,
            cookies: Vec::new(),
            error_page: None,
            user: None,
        }
    }

    /// Not signed in; a browser signs in and comes back to `rd`.
    pub(crate) fn not_signed_in(headers: &HeaderMap, rd: &str) -> Self {
        Self {
            sign_in: Some(redirect::start_url(rd)),
            ..Self::new(Reason::NotSignedIn, headers, "Sign in first.")
        }
    }

    pub(crate) fn with_cookies(mut self, cookies: Vec<HeaderValue>) -> Self {
        self.cookies = cookies;
        self
    }

    pub(crate) fn with_user(mut self, subject: String) -> Self {
        self.user = Some(subject);
        self
    }

    pub(crate) fn with_error_page(mut self, page: Option<ErrorPage>) -> Self {
        self.error_page = page;
        self
    }

    /// What kind of refusal it is.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The message shown (fixed text: nothing of the request or of the
    /// provider's answer, beyond the signed-in user's own email).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the client asked for HTML (a browser).
    pub fn wants_html(&self) -> bool {
        self.html
    }

    /// Where a browser is sent to sign in, for [`Reason::NotSignedIn`].
    pub fn sign_in_url(&self) -> Option<&str> {
        self.sign_in.as_deref()
    }

    /// The stable error code, as in latchkey's JSON (`not_signed_in`, …).
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    fn error_code(&self) -> ErrorCode {
        match self.reason {
            Reason::NotSignedIn | Reason::BearerRefused | Reason::NoAccessToken => {
                ErrorCode::NotSignedIn
            }
            Reason::AccessDenied | Reason::ClaimsUnavailable => ErrorCode::AccessDenied,
            Reason::StoreUnavailable => ErrorCode::StoreUnavailable,
            Reason::IdpUnavailable => ErrorCode::IdpUnavailable,
        }
    }

    /// latchkey's own answer, without the hook.
    fn default_response(&self) -> Response {
        if let (true, Some(location)) = (self.html, &self.sign_in)
            && let Ok(location) = HeaderValue::from_str(location)
        {
            return (
                axum::http::StatusCode::FOUND,
                [(header::LOCATION, location)],
            )
                .into_response();
        }
        let link = match self.reason {
            Reason::AccessDenied => Some(Link {
                href: "/oauth2/sign_out",
                text: "Sign out and use another account",
            }),
            _ => None,
        };
        pages::error_for(self.html, self.error_code(), &self.message, link)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = self
            .error_page
            .as_ref()
            .and_then(|page| page(&self))
            .unwrap_or_else(|| self.default_response());
        for cookie in self.cookies {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(user) = self.user {
            super::observe_user(&mut response, user);
        }
        response
    }
}
