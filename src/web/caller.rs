//! Who makes a request: the session cookie first (its session loaded, and
//! refreshed single-flight when due), then, when bearer tokens are on, an ID
//! token in `Authorization: Bearer`.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};

use super::cookies::SentCookies;
use super::extract::SignedIn;
use super::{Latchkey, Reason, Rejection};
use crate::idp::Identity;
use crate::session::SessionError;

/// Who made a request, as [`Latchkey::authenticate`] found out.
#[derive(Debug)]
#[non_exhaustive]
pub struct Authentication {
    /// The caller, if signed in.
    pub signed_in: Option<SignedIn>,
    /// `Set-Cookie` values for the answer: a dead session cookie's removal
    /// (anonymous), or the session cookie encrypted again with the current
    /// secret when only a previous one decrypted it.
    pub set_cookies: Vec<HeaderValue>,
}

/// `value` for a log line, with control characters escaped so that text it
/// quotes (a claim, a provider's message) cannot forge log lines.
pub(crate) fn escaped(value: &impl std::fmt::Display) -> String {
    value.to_string().escape_debug().to_string()
}

/// Resolves the caller of a request with these headers.
pub(crate) async fn authenticate(
    latchkey: &Latchkey,
    headers: &HeaderMap,
) -> Result<Authentication, Rejection> {
    authenticate_with(latchkey, headers, &latchkey.inner.cookies.sent(headers)).await
}

/// Resolves the caller from `cookies` (the request's, already read) and `headers`.
pub(crate) async fn authenticate_with(
    latchkey: &Latchkey,
    headers: &HeaderMap,
    cookies: &SentCookies<'_>,
) -> Result<Authentication, Rejection> {
    let reject =
        |rejection: Rejection| rejection.with_error_page(latchkey.inner.error_page.clone());
    if let Some(cookie) = latchkey.inner.cookies.session_cookie(cookies) {
        match latchkey.inner.sessions.load(&cookie.id).await {
            Ok(session) => {
                // A session cookie that only a previous secret decrypts is
                // set again with the current one, so that the previous
                // secret can be retired.
                let set_cookies = if cookie.stale {
                    latchkey.inner.cookies.session_setting(&cookie.id)
                } else {
                    Vec::new()
                };
                return Ok(Authentication {
                    signed_in: Some(SignedIn::session(session)),
                    set_cookies,
                });
            }
            Err(SessionError::NotFound | SessionError::Ended(_)) => {}
            Err(SessionError::Corrupt(reason)) => {
                tracing::error!(%reason, "unreadable session record; treating as signed out");
            }
            Err(SessionError::Store(error)) => {
                tracing::warn!(%error, "store unavailable");
                return Err(reject(Rejection::new(
                    Reason::StoreUnavailable,
                    headers,
                    "Sessions cannot be checked right now. Please try again shortly.",
                )));
            }
            Err(error @ (SessionError::RefreshUnavailable(_) | SessionError::RefreshTimedOut)) => {
                tracing::warn!(%error, "session refresh failed");
                return Err(reject(Rejection::new(
                    Reason::IdpUnavailable,
                    headers,
                    "Your session could not be renewed because the identity provider is not \
                     answering. Please try again shortly.",
                )));
            }
        }
    }
    let bearer = latchkey
        .inner
        .settings
        .skip_jwt_bearer_tokens
        .then(|| bearer_token(headers))
        .flatten();
    if let Some(token) = bearer {
        return match latchkey.inner.provider.validate_bearer(token).await {
            Ok(validated) => bearer_caller(latchkey, headers, token, validated)
                .await
                .map(|signed_in| Authentication {
                    signed_in: Some(signed_in),
                    set_cookies: Vec::new(),
                })
                .map_err(reject),
            Err(error) => {
                // The reason may quote the token's own claims: logged
                // escaped, never shown.
                tracing::info!(error = %escaped(&error), "bearer token rejected");
                Err(reject(Rejection::new(
                    Reason::BearerRefused,
                    headers,
                    "The bearer token was not accepted.",
                )))
            }
        };
    }
    // A session cookie that did not decrypt, or names no live session, is
    // removed.
    let set_cookies = if cookies.has_session_cookie() {
        latchkey.inner.cookies.session_removal()
    } else {
        Vec::new()
    };
    Ok(Authentication {
        signed_in: None,
        set_cookies,
    })
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.split('.').count() == 3).then_some(token)
}

/// An API client with a valid ID token, unless its user signed out here after
/// the token was issued.
async fn bearer_caller(
    latchkey: &Latchkey,
    headers: &HeaderMap,
    token: &str,
    validated: super::BearerToken,
) -> Result<SignedIn, Rejection> {
    let identity: Identity = validated.identity;
    let issued = validated.issued_at;
    match latchkey
        .inner
        .sessions
        .signed_out_at(&identity.issuer, &identity.subject)
        .await
    {
        Ok(Some(signed_out)) if issued <= signed_out => {
            tracing::info!("bearer token refused: its user signed out after it was issued");
            Err(Rejection::new(
                Reason::BearerRefused,
                headers,
                "The bearer token was not accepted.",
            ))
        }
        Ok(_) => Ok(SignedIn::bearer(identity, Arc::from(token))),
        Err(error) => {
            tracing::warn!(%error, "store unavailable");
            Err(Rejection::new(
                Reason::StoreUnavailable,
                headers,
                "Sign-ins cannot be checked right now. Please try again shortly.",
            ))
        }
    }
}
