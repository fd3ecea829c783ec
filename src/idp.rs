//! What the login and refresh state machines need from an identity provider.
//!
//! [`IdentityProvider`] is the seam between the race-free state machines and
//! the network: the OpenID Connect implementation speaks HTTP to a real
//! provider, and tests plug in a controllable double whose calls block until
//! the test releases them. Implementations validate what they return: an
//! [`Identity`] handed back here is already checked (signature, issuer,
//! audience, nonce, expiry).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::secret::{
    AccessToken, AuthorizationCode, LoginNonce, LoginState, PkceVerifier, RawIdToken, RefreshToken,
};

/// The secrets of one authorization request, made by the login state machine
/// and carried by the browser's login cookie until the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationRequest {
    /// The `state` parameter (256 random bits).
    pub state: LoginState,
    /// The `nonce` the ID token must carry back.
    pub nonce: LoginNonce,
    /// The PKCE code verifier; the provider gets its S256 challenge.
    pub pkce_verifier: PkceVerifier,
    /// Parameters this sign-in passes on from `/oauth2/start` (`login_hint`,
    /// `prompt`, …, as the settings allow), in order.
    #[serde(default)]
    pub passed: Vec<(String, String)>,
}

/// The code from a callback, with what is needed to redeem and validate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeExchange {
    /// The authorization code.
    pub code: AuthorizationCode,
    /// The PKCE verifier of the login.
    pub pkce_verifier: PkceVerifier,
    /// The nonce the ID token must carry.
    pub nonce: LoginNonce,
}

/// Who signed in, as validated from the ID token (and userinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The `iss` claim.
    pub issuer: String,
    /// The `sub` claim.
    pub subject: String,
    /// The `email` claim, when present.
    pub email: Option<String>,
    /// Group names from the configured groups claim.
    pub groups: Vec<String>,
    /// The provider's session (`sid` claim), when the ID token names one:
    /// a back-channel logout for it ends this sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// When the ID token was issued (`iat`, by the provider's clock): a
    /// logout the provider issued at or after it covers this sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<UnixMillis>,
    /// Claims of the userinfo response that headers are made of
    /// (`claim_headers`, `user_id_claim`) and the ID token does not carry;
    /// only the ones configured are kept.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub userinfo_claims: serde_json::Map<String, serde_json::Value>,
}

/// Tokens from the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSet {
    /// The access token.
    pub access_token: AccessToken,
    /// When the access token expires.
    pub access_expires_at: UnixMillis,
    /// The refresh token, when the provider issued one.
    pub refresh_token: Option<RefreshToken>,
    /// The raw ID token, kept for `id_token_hint` at logout.
    pub id_token: Option<RawIdToken>,
}

/// A successful token response, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The identity from the (new) ID token. On refresh, `None` when the
    /// provider sent no new ID token.
    pub identity: Option<Identity>,
    /// The tokens.
    pub tokens: TokenSet,
    /// The identity holds only what the ID token says, because the claims
    /// the provider gives elsewhere (userinfo) could not be read this time:
    /// the session keeps the email and groups it knew rather than lose them.
    pub partial_identity: bool,
}

/// Why a call to the provider failed. Messages name the endpoint and status,
/// never a token or code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    /// The grant is dead (`invalid_grant`): the code was used or expired, or the
    /// refresh token was revoked or rotated away. Retrying cannot help.
    #[error("the identity provider rejected the grant: {0}")]
    InvalidGrant(String),
    /// The provider answered, but what it answered failed validation.
    #[error("the identity provider's response failed validation: {0}")]
    Invalid(String),
    /// Timeout, connection failure or 5xx: it may work later.
    #[error("the identity provider is unavailable: {0}")]
    Transient(String),
}

/// The share of a lease that the provider call under it may take. The rest,
/// a quarter, is the margin for the store write that follows the answer and
/// for replicas' clocks disagreeing: another replica judges the lease's end by
/// its own clock.
pub fn call_budget(lease: Duration) -> Duration {
    lease.saturating_sub(lease / 4)
}

/// Runs a provider call made under a lease, abandoning it as
/// [`IdpError::Transient`] when it has not answered within `budget` (see
/// [`call_budget`]). A lease's holder is then never still waiting for the
/// provider once another caller may see the lease run out and take over:
/// two refreshes of one session never overlap, whatever the provider's own
/// timeout, and a slow exchange fails rather than finishing after its lease.
pub async fn answer_within<T>(
    budget: Duration,
    call: impl Future<Output = Result<T, IdpError>>,
) -> Result<T, IdpError> {
    tokio::time::timeout(budget, call)
        .await
        .unwrap_or_else(|_| {
            Err(IdpError::Transient(format!(
                "no answer within {} ms, the part of the lease a provider call may take",
                budget.as_millis()
            )))
        })
}

/// The identity provider operations the state machines call.
#[async_trait]
pub trait IdentityProvider: Send + Sync + 'static {
    /// The URL to send the browser to for this authorization request.
    fn authorization_url(&self, request: &AuthorizationRequest) -> String;

    /// Redeems an authorization code and validates the ID token against the nonce.
    async fn exchange_code(&self, exchange: CodeExchange) -> Result<Grant, IdpError>;

    /// Redeems a refresh token. Providers that rotate refresh tokens return a new
    /// one; the old one must never be presented again.
    async fn refresh(&self, refresh_token: &RefreshToken) -> Result<Grant, IdpError>;
}
