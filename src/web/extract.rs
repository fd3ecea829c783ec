//! The extractors a handler behind [`RequireLoginLayer`](super::RequireLoginLayer)
//! takes: who is signed in, and their access token.

use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;

use super::cookies::UpstreamCookies;
use super::{Reason, Rejection};
use crate::idp::Identity;
use crate::secret::AccessToken;
use crate::session::ActiveSession;

/// The signed-in caller, as the layer found it: a browser's session, or an
/// API client's bearer ID token (when `skip_jwt_bearer_tokens` is on).
///
/// As an extractor it needs the layer in front of the route
/// ([`Latchkey::require_login`](super::Latchkey::require_login), or
/// [`Latchkey::optional_login`](super::Latchkey::optional_login) for
/// `Option<SignedIn>`); without it, `SignedIn` refuses every request as not
/// signed in (it fails closed) and `Option<SignedIn>` is always `None`.
#[derive(Clone, Debug)]
pub struct SignedIn {
    caller: Caller,
    /// The request's cookies without latchkey's, when the layer was asked
    /// for them ([`RequireLoginLayer::with_upstream_cookies`](super::RequireLoginLayer::with_upstream_cookies)).
    upstream_cookies: Option<UpstreamCookies>,
}

#[derive(Clone, Debug)]
enum Caller {
    Session(ActiveSession),
    Bearer(Arc<Bearer>),
}

#[derive(Debug)]
struct Bearer {
    identity: Identity,
    /// The raw ID token it presented.
    token: Arc<str>,
}

impl SignedIn {
    pub(crate) fn session(session: ActiveSession) -> Self {
        Self {
            caller: Caller::Session(session),
            upstream_cookies: None,
        }
    }

    pub(crate) fn bearer(identity: Identity, token: Arc<str>) -> Self {
        Self {
            caller: Caller::Bearer(Arc::new(Bearer { identity, token })),
            upstream_cookies: None,
        }
    }

    pub(crate) fn with_upstream_cookies(mut self, cookies: Option<UpstreamCookies>) -> Self {
        self.upstream_cookies = cookies;
        self
    }

    /// The request's `Cookie` header without latchkey's own cookies, when
    /// the layer was asked for it with
    /// [`RequireLoginLayer::with_upstream_cookies`](super::RequireLoginLayer::with_upstream_cookies).
    pub fn take_upstream_cookies(&mut self) -> Option<UpstreamCookies> {
        self.upstream_cookies.take()
    }

    /// Who it is: issuer, subject, verified email, groups.
    pub fn identity(&self) -> &Identity {
        match &self.caller {
            Caller::Session(session) => session.identity(),
            Caller::Bearer(bearer) => &bearer.identity,
        }
    }

    /// The session, for a browser (none for a bearer token).
    pub fn active_session(&self) -> Option<&ActiveSession> {
        match &self.caller {
            Caller::Session(session) => Some(session),
            Caller::Bearer(_) => None,
        }
    }

    /// The session's access token (none for a bearer token). It was
    /// refreshed, once for all of the session's requests at that moment,
    /// when it was within `refresh_before_expiry` of expiring.
    pub fn access_token(&self) -> Option<&AccessToken> {
        self.active_session()
            .map(|session| &session.tokens().access_token)
    }

    /// The raw ID token: the session's latest, or the bearer token itself.
    pub fn id_token(&self) -> Option<&str> {
        match &self.caller {
            Caller::Session(session) => session.tokens().id_token.as_ref().map(|t| t.secret()),
            Caller::Bearer(bearer) => Some(&bearer.token),
        }
    }

    /// Whether the caller presented a bearer token rather than a session cookie.
    pub fn is_bearer(&self) -> bool {
        matches!(self.caller, Caller::Bearer(_))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SignedIn {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        match parts.extensions.get::<SignedIn>() {
            Some(signed_in) => Ok(signed_in.clone()),
            None => {
                let rd = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let rejection = Rejection::not_signed_in(&parts.headers, &rd);
                let page = parts.extensions.get::<super::Latchkey>();
                Err(rejection.with_error_page(page.and_then(|l| l.inner.error_page.clone())))
            }
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for SignedIn {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<SignedIn>().cloned())
    }
}

/// The signed-in session's access token, refreshed first when it was due
/// (single-flight through the store: however many requests of the session
/// arrive at once, on however many replicas, one refresh call is made and
/// all of them get its token). Refused for bearer-token callers, which have
/// no session here.
#[derive(Clone, Debug)]
pub struct FreshAccessToken(pub AccessToken);

impl<S: Send + Sync> FromRequestParts<S> for FreshAccessToken {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let signed_in = <SignedIn as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        match signed_in.access_token() {
            Some(token) => Ok(Self(token.clone())),
            None => Err(Rejection::new(
                Reason::NoAccessToken,
                &parts.headers,
                "This needs a signed-in session; a bearer token carries no access token here.",
            )),
        }
    }
}

/// The signed-in caller's ID token claims, read into the app's own type `T`
/// for the claims beyond the standard ones (implement
/// [`AdditionalClaims`](super::AdditionalClaims) for it, an empty marker trait):
///
/// ```
/// use latchkey::web::{AdditionalClaims, IdTokenClaims};
///
/// #[derive(Debug, serde::Deserialize, serde::Serialize)]
/// struct Employee {
///     department: Option<String>,
/// }
/// impl AdditionalClaims for Employee {}
///
/// async fn page(IdTokenClaims(claims): IdTokenClaims<Employee>) -> String {
///     let department = claims.additional_claims().department.clone();
///     format!("{} of {department:?}", claims.subject().as_str())
/// }
/// ```
///
/// The token is the session's latest (validated at sign-in or at its last
/// refresh) or the bearer token validated for this request. A token whose
/// claims do not fit `T` is refused (`403`): the provider does not say what
/// this route needs.
#[derive(Debug, Clone)]
pub struct IdTokenClaims<T: openidconnect::AdditionalClaims>(
    pub openidconnect::IdTokenClaims<T, openidconnect::core::CoreGenderClaim>,
);

impl<S, T> FromRequestParts<S> for IdTokenClaims<T>
where
    S: Send + Sync,
    T: openidconnect::AdditionalClaims + Send,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let signed_in = <SignedIn as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        let refuse = |reason: &str| {
            tracing::info!(%reason, "ID token claims unavailable");
            Rejection::new(
                Reason::ClaimsUnavailable,
                &parts.headers,
                "Your identity provider did not say what this page needs to know about you.",
            )
        };
        let raw = signed_in.id_token().ok_or_else(|| refuse("no ID token"))?;
        crate::oidc::id_token::claims_of_validated::<T>(raw)
            .map(Self)
            .map_err(|reason| refuse(&reason))
    }
}
