//! [`SignInProvider`]: what the web surface needs from an identity provider,
//! beyond the state machines' [`IdentityProvider`]. The discovered
//! [`OidcProvider`] is one; a test double, or a provider set up some other
//! way, can be another ([`LatchkeyBuilder::provider`](super::LatchkeyBuilder::provider)).

use std::time::Duration;

use async_trait::async_trait;

use crate::clock::UnixMillis;
use crate::idp::{Identity, IdentityProvider, IdpError};
use crate::oidc::OidcProvider;
use crate::oidc::logout_token::{LogoutToken, LogoutTokenError};
use crate::secret::{RawIdToken, RefreshToken};

/// An API client's bearer ID token, validated.
#[derive(Debug, Clone)]
pub struct BearerToken {
    /// Who it names.
    pub identity: Identity,
    /// When it was issued (`iat`): a token issued before its user signed
    /// out here is refused.
    pub issued_at: UnixMillis,
}

/// The identity provider as the sign-in endpoints, the layer and the probes
/// use it. Only [`issuer`](SignInProvider::issuer) must be written; the
/// rest have the answers of a provider that offers none of it (no
/// RP-initiated logout, no revocation, no bearer tokens), and
/// `check_response_issuer` checks RFC 9207's `iss` against `issuer()`.
#[async_trait]
pub trait SignInProvider: IdentityProvider {
    /// Its issuer identifier.
    fn issuer(&self) -> &str;

    /// RFC 9207: when the authorization response carries `iss`, it must be
    /// this issuer.
    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), IdpError> {
        match iss {
            Some(iss) if iss != self.issuer() => Err(IdpError::Invalid(
                "the authorization response came from another issuer".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Where to send a browser that signs out, to end its session at the
    /// provider too (RP-initiated logout); `None`: the provider has no such
    /// endpoint.
    fn end_session_url(
        &self,
        _id_token_hint: Option<&RawIdToken>,
        _post_logout_redirect: Option<&str>,
    ) -> Option<String> {
        None
    }

    /// Validates an ID token an API client presents as a bearer token.
    /// `Err` says why not (for the log; it may quote the token's claims).
    async fn validate_bearer(&self, _token: &str) -> Result<BearerToken, String> {
        Err("this provider accepts no bearer tokens".into())
    }

    /// Validates a back-channel logout token (Back-Channel Logout 1.0
    /// §2.6: signature, `iss`, `aud`, `iat`, `exp`, `events`, no `nonce`,
    /// `jti`, `sub` and/or `sid`). Replays are refused by the caller.
    async fn validate_logout_token(&self, _token: &str) -> Result<LogoutToken, LogoutTokenError> {
        Err(LogoutTokenError::Unsupported)
    }

    /// Revokes a refresh token (RFC 7009); `Ok(false)`: the provider has no
    /// revocation endpoint.
    async fn revoke_refresh_token(&self, _token: &RefreshToken) -> Result<bool, String> {
        Ok(false)
    }

    /// Whether the provider answers, within `timeout` (for `/readyz`).
    async fn probe(&self, _timeout: Duration) -> Result<(), String> {
        Ok(())
    }
}

#[async_trait]
impl SignInProvider for OidcProvider {
    fn issuer(&self) -> &str {
        OidcProvider::issuer(self)
    }

    fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), IdpError> {
        OidcProvider::check_response_issuer(self, iss)
    }

    fn end_session_url(
        &self,
        id_token_hint: Option<&RawIdToken>,
        post_logout_redirect: Option<&str>,
    ) -> Option<String> {
        OidcProvider::end_session_url(self, id_token_hint, post_logout_redirect)
    }

    async fn validate_bearer(&self, token: &str) -> Result<BearerToken, String> {
        let validated = OidcProvider::validate_bearer(self, token)
            .await
            .map_err(|e| e.to_string())?;
        let issued_at =
            u64::try_from(validated.claims.issue_time().timestamp_millis()).unwrap_or(0);
        Ok(BearerToken {
            identity: validated.identity,
            issued_at,
        })
    }

    async fn validate_logout_token(&self, token: &str) -> Result<LogoutToken, LogoutTokenError> {
        OidcProvider::validate_logout_token(self, token).await
    }

    async fn revoke_refresh_token(&self, token: &RefreshToken) -> Result<bool, String> {
        OidcProvider::revoke_refresh_token(self, token).await
    }

    async fn probe(&self, timeout: Duration) -> Result<(), String> {
        OidcProvider::probe(self, timeout).await
    }
}
