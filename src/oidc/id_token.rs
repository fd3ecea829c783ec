//! ID token validation (OIDC Core 3.1.3.7), on top of the `openidconnect`
//! crate's verifier, plus the checks it leaves to the relying party: `azp`,
//! clock skew on `exp`/`iat`, an explicit algorithm allowlist, and a single
//! key-set re-fetch when the signing key is unknown.

use std::sync::Arc;
use std::time::Duration;

use openidconnect::core::{
    CoreGenderClaim, CoreIdTokenVerifier, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, ClaimsVerificationError, ClientId, IdToken, IdTokenClaims, IssuerUrl, Nonce,
    SignatureVerificationError,
};
use serde::{Deserialize, Serialize};

use super::jwks::{JwksCache, RefetchError};
use crate::idp::Identity;

/// Claims beyond the standard ones (groups live here, under a configurable name).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraClaims {
    /// Every claim the standard claim types do not cover, by name.
    #[serde(flatten)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for ExtraClaims {}

impl ExtraClaims {
    /// The string values of claim `name`: an array of strings, or one string
    /// (space-separated values are not split).
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.claims.get(name) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        }
    }
}

/// An ID token as latchkey parses it.
pub type LatchkeyIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Its claims.
pub type LatchkeyIdTokenClaims = IdTokenClaims<ExtraClaims, CoreGenderClaim>;

/// The claims of an ID token that was validated when it was received (at
/// sign-in, at a refresh, or as a bearer token on this request), read into
/// the caller's own type of additional claims. Nothing is verified here:
/// not the signature (it was), not the expiry (an ID token's `exp` says how
/// long it may be *accepted*, not how long its claims stay true).
///
/// `Err` names what did not fit (never a claim's value).
pub fn claims_of_validated<T: AdditionalClaims>(
    raw: &str,
) -> Result<IdTokenClaims<T, CoreGenderClaim>, String> {
    type Token<T> =
        IdToken<T, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
    let token: Token<T> = raw
        .parse()
        .map_err(|e: serde_json::Error| format!("the ID token's claims do not fit: {e}"))?;
    // Validated on receipt; as of the epoch, nothing has expired.
    let verifier = CoreIdTokenVerifier::new_insecure_without_verification()
        .set_time_fn(|| chrono::DateTime::UNIX_EPOCH);
    token
        .into_claims(&verifier, |_: Option<&Nonce>| Ok(()))
        .map_err(|e| format!("the ID token could not be read: {e}"))
}

/// Why an ID token was rejected. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// Not a JWT, or a required claim (`iss`, `sub`, `aud`, `exp`, `iat`) is missing.
    #[error("malformed ID token: {0}")]
    Malformed(String),
    /// `iss` is not the configured issuer.
    #[error("wrong issuer: {0}")]
    WrongIssuer(String),
    /// `aud` does not contain the client id, or names an untrusted audience.
    #[error("wrong audience: {0}")]
    WrongAudience(String),
    /// Several audiences and no `azp`, or an `azp` that is not the client id.
    #[error("wrong authorized party: {0}")]
    WrongAuthorizedParty(String),
    /// Expired, or issued in the future (beyond the allowed clock skew).
    #[error("not valid now: {0}")]
    NotValidNow(String),
    /// `nonce` missing or not the one this login sent.
    #[error("nonce mismatch: {0}")]
    Nonce(String),
    /// The algorithm is not on the allowlist (this includes `none`, and HMAC
    /// with the client secret).
    #[error("signing algorithm not allowed: {0}")]
    DisallowedAlgorithm(String),
    /// No key of the provider's key set (even after one re-fetch) matches.
    #[error("unknown signing key: {0}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("invalid signature: {0}")]
    BadSignature(String),
}

/// Validation settings.
#[derive(Debug, Clone)]
pub struct IdTokenRules {
    /// The client id the token must be for.
    pub client_id: String,
    /// The issuer the token must come from.
    pub issuer: String,
    /// Accepted signing algorithms.
    pub allowed_algs: Vec<CoreJwsSigningAlgorithm>,
    /// Tolerance for `exp` and `iat` against this machine's clock.
    pub clock_skew: Duration,
    /// The claim that holds group names.
    pub groups_claim: String,
    /// Audiences besides the client id that a token may also name (then `azp`
    /// must be the client id). Empty: a token for anyone else is rejected.
    pub trusted_audiences: Vec<String>,
    /// Take `email` even when `email_verified` is not `true` (unsafe where
    /// users can set their own email at the provider).
    pub allow_unverified_email: bool,
}

/// The email an identity may carry: the `email` claim only when the same
/// source (ID token or userinfo) says `email_verified: true` (unless
/// `allow_unverified`), and only when it is one plausible address: exactly
/// one `@`, with something on each side. Anything else is no email at all,
/// so that authorization by email fails closed and no email header is sent.
pub fn usable_email(
    email: Option<&str>,
    verified: Option<bool>,
    allow_unverified: bool,
) -> Option<String> {
    let email = email?;
    if !(verified == Some(true) || allow_unverified) {
        return None;
    }
    let (local, domain) = email.split_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    plausible.then(|| email.to_owned())
}

/// A validated ID token.
#[derive(Debug, Clone)]
pub struct ValidatedIdToken {
    /// Who it names.
    pub identity: Identity,
    /// The claims.
    pub claims: LatchkeyIdTokenClaims,
}

/// Validates ID tokens against the provider's (cached) keys.
#[derive(Debug, Clone)]
pub struct IdTokenValidator {
    rules: IdTokenRules,
    keys: Arc<JwksCache>,
}

impl IdTokenValidator {
    /// A validator for `rules` using `keys`.
    pub fn new(rules: IdTokenRules, keys: Arc<JwksCache>) -> Self {
        Self { rules, keys }
    }

    /// The rules it applies.
    pub fn rules(&self) -> &IdTokenRules {
        &self.rules
    }

    /// The key cache (for metrics and tests).
    pub fn keys(&self) -> &Arc<JwksCache> {
        &self.keys
    }

    /// Validates `raw`. With `Some(nonce)` the token must carry exactly that
    /// nonce (login); with `None` no nonce is required (refresh).
    pub async fn validate(
        &self,
        raw: &str,
        nonce: Option<&str>,
    ) -> Result<ValidatedIdToken, IdTokenError> {
        let token: LatchkeyIdToken = raw
            .parse()
            .map_err(|e: serde_json::Error| IdTokenError::Malformed(e.to_string()))?;
        let snapshot = self.keys.snapshot();
        match self.check(&token, &snapshot.keys, nonce) {
            Err(IdTokenError::UnknownKey(first)) => {
                let newer =
                    self.keys
                        .newer_than(snapshot.generation)
                        .await
                        .map_err(|e| match e {
                            RefetchError::RateLimited => IdTokenError::UnknownKey(first),
                            other => IdTokenError::UnknownKey(other.to_string()),
                        })?;
                self.check(&token, &newer.keys, nonce)
            }
            other => other,
        }
    }

    fn check(
        &self,
        token: &LatchkeyIdToken,
        keys: &openidconnect::core::CoreJsonWebKeySet,
        nonce: Option<&str>,
    ) -> Result<ValidatedIdToken, IdTokenError> {
        let rules = &self.rules;
        let issuer = IssuerUrl::new(rules.issuer.clone())
            .map_err(|e| IdTokenError::WrongIssuer(e.to_string()))?;
        let skew = chrono::Duration::from_std(rules.clock_skew).unwrap_or(chrono::Duration::zero());
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(rules.client_id.clone()),
            issuer,
            keys.clone(),
        )
        .set_allowed_algs(rules.allowed_algs.iter().cloned())
        .set_other_audience_verifier_fn(|aud| {
            rules
                .trusted_audiences
                .iter()
                .any(|t| t.as_str() == aud.as_str())
        })
        .set_time_fn(move || chrono::Utc::now() - skew)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > chrono::Utc::now() + skew {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        });
        let claims = match nonce {
            Some(expected) => token.claims(&verifier, &Nonce::new(expected.to_owned())),
            None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(map_verification_error)?;
        check_authorized_party(claims, &rules.client_id)?;
        Ok(ValidatedIdToken {
            identity: Identity {
                issuer: claims.issuer().to_string(),
                subject: claims.subject().to_string(),
                email: usable_email(
                    claims.email().map(|e| e.as_str()),
                    claims.email_verified(),
                    rules.allow_unverified_email,
                ),
                groups: claims.additional_claims().strings(&rules.groups_claim),
                sid: claims
                    .additional_claims()
                    .claims
                    .get("sid")
                    .and_then(|v| v.as_str())
                    .filter(|sid| !sid.is_empty() && sid.len() <= 256)
                    .map(str::to_owned),
                issued_at: u64::try_from(claims.issue_time().timestamp_millis()).ok(),
                userinfo_claims: Default::default(),
            },
            claims: claims.clone(),
        })
    }
}

/// OIDC Core 3.1.3.7 steps 4–5, which the `openidconnect` crate leaves out.
fn check_authorized_party(
    claims: &LatchkeyIdTokenClaims,
    client_id: &str,
) -> Result<(), IdTokenError> {
    match claims.authorized_party() {
        Some(azp) if azp.as_str() != client_id => Err(IdTokenError::WrongAuthorizedParty(format!(
            "azp is `{}`, expected `{client_id}`",
            azp.as_str()
        ))),
        None if claims.audiences().len() > 1 => Err(IdTokenError::WrongAuthorizedParty(
            "several audiences and no azp".into(),
        )),
        _ => Ok(()),
    }
}

fn map_verification_error(error: ClaimsVerificationError) -> IdTokenError {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match error {
        C::InvalidIssuer(m) => IdTokenError::WrongIssuer(m),
        C::InvalidAudience(m) => IdTokenError::WrongAudience(m),
        C::Expired(m) => IdTokenError::NotValidNow(m),
        C::InvalidNonce(m) => IdTokenError::Nonce(m),
        C::SignatureVerification(S::DisallowedAlg(m)) => IdTokenError::DisallowedAlgorithm(m),
        C::SignatureVerification(S::NoSignature) => {
            IdTokenError::DisallowedAlgorithm("the token is unsigned (alg none)".into())
        }
        C::SignatureVerification(S::UnsupportedAlg(m)) => IdTokenError::DisallowedAlgorithm(m),
        C::SignatureVerification(S::NoMatchingKey) => {
            IdTokenError::UnknownKey("no key in the provider's key set matches".into())
        }
        C::SignatureVerification(S::AmbiguousKeyId(m)) => IdTokenError::UnknownKey(m),
        C::SignatureVerification(other) => IdTokenError::BadSignature(other.to_string()),
        other => IdTokenError::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::usable_email;

    #[test]
    fn only_verified_plausible_emails_are_used() {
        assert_eq!(
            usable_email(Some("a@corp.com"), Some(true), false).as_deref(),
            Some("a@corp.com")
        );
        for (email, verified) in [
            ("a@corp.com", Some(false)),
            ("a@corp.com", None),
            ("a@evil.test@corp.com", Some(true)),
            ("@corp.com", Some(true)),
            ("a@", Some(true)),
            ("corp.com", Some(true)),
            ("a b@corp.com", Some(true)),
            ("a@corp.com\n", Some(true)),
        ] {
            assert_eq!(
                usable_email(Some(email), verified, false),
                None,
                "{email:?} {verified:?}"
            );
        }
        // The opt-out takes unverified addresses, never implausible ones.
        assert!(usable_email(Some("a@corp.com"), Some(false), true).is_some());
        assert!(usable_email(Some("a@corp.com"), None, true).is_some());
        assert!(usable_email(Some("a@evil.test@corp.com"), None, true).is_none());
    }
}
