//! What every request passes before any routing decision: its path is made
//! canonical (see [`super::path`]) and its `Cookie` header is bounded. A
//! request that fails either is answered here with a 400 and never reaches a
//! handler or the upstream.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::uri::{self, PathAndQuery};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};

use super::path;
use crate::web::cookies::Cookies;
use crate::web::pages::{self, ErrorCode, Link};
use crate::web::templates::Pages;

/// The largest `Cookie` header accepted; browsers send at most a few KiB.
pub(crate) const MAX_COOKIE_HEADER: usize = 16 * 1024;

/// The checks, with what they need to answer a refused request.
#[derive(Clone)]
pub(super) struct Edge {
    cookies: Cookies,
    pages: Arc<Pages>,
}

impl Edge {
    pub(super) fn new(cookies: Cookies, pages: Arc<Pages>) -> Self {
        Self { cookies, pages }
    }

    /// Lets `request` through, with its path made canonical (`None`), or
    /// answers it (`Some`).
    pub(super) fn admit(&self, request: &mut Request) -> Option<Response> {
        self.check(request)
            .err()
            .map(|refused| self.pages.restyle(refused))
    }

    #[allow(clippy::result_large_err)] // an answer, built only on refusal
    fn check(&self, request: &mut Request) -> Result<(), Response> {
        let cookie_bytes: usize = request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.len())
            .sum();
        if cookie_bytes > MAX_COOKIE_HEADER {
            return Err(self.cookie_bomb(request.headers()));
        }
        let canonical = match path::canonical(request.uri().path()) {
            Ok(path) => path,
            Err(reason) => {
                tracing::info!(%reason, "refused a request path");
                return Err(pages::error(
                    request.headers(),
                    ErrorCode::BadRequest,
                    &format!("This address cannot be served: {reason}."),
                    None,
                ));
            }
        };
        if let std::borrow::Cow::Owned(canonical) = canonical {
            let uri = with_path(request.uri(), &canonical).ok_or_else(|| {
                pages::error(
                    request.headers(),
                    ErrorCode::BadRequest,
                    "This address cannot be served.",
                    None,
                )
            })?;
            *request.uri_mut() = uri;
        }
        Ok(())
    }

    /// The answer to a `Cookie` header over [`MAX_COOKIE_HEADER`]: a 400 that
    /// also expires every login cookie of latchkey's the browser sent, so
    /// that its next request fits again (a cookie bomb cannot lock a browser
    /// out; the session cookie is kept).
    fn cookie_bomb(&self, headers: &HeaderMap) -> Response {
        tracing::info!("refused an oversized Cookie header");
        let jar = self.cookies.clear_logins(self.cookies.empty_jar(), headers);
        let page = pages::error(
            headers,
            ErrorCode::BadRequest,
            "This browser sent too many or too large cookies for this site. Its unfinished \
             sign-ins were cleared; if this page comes back, clear this site's cookies.",
            Some(Link {
                href: "/oauth2/start",
                text: "Sign in again",
            }),
        );
        (jar, page).into_response()
    }
}

/// `uri` with its path replaced by `canonical` and its query kept.
fn with_path(uri: &Uri, canonical: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{canonical}?{query}")),
        None => PathAndQuery::try_from(canonical),
    }
    .ok()?;
    let mut parts = uri::Parts::default();
    parts.scheme = uri.scheme().cloned();
    parts.authority = uri.authority().cloned();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}
