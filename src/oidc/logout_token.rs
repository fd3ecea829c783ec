//! Logout token validation (OpenID Connect Back-Channel Logout 1.0 §2.6).
//!
//! The signature is checked by the `jsonwebtoken` crate against the
//! provider's cached key set (the one ID tokens are checked with, and
//! re-fetched once the same way when the key is unknown); this module
//! chooses the key, enforces the algorithm allowlist, and checks the claims
//! that make a JWT a logout token and not, say, a replayed ID token:
//! `events` with the back-channel logout member, no `nonce`, a `jti`, and
//! `sub` and/or `sid`. Replays of a valid token are refused by the caller,
//! which records each `jti` in the store.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::CoreJsonWebKeySet;
use serde::Deserialize;

use super::id_token::IdTokenRules;
use super::jwks::{JwksCache, RefetchError};
use crate::clock::{UnixMillis, duration_ms};

/// The member of `events` that makes a JWT a logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How old a logout token may be (by its `iat`, beyond the clock skew).
/// Its `jti` is remembered at least this long, so within the window a
/// replay is refused and after it the token is too old anyway.
pub const MAX_LOGOUT_TOKEN_AGE: Duration = Duration::from_secs(300);

/// The longest `sub`, `sid` or `jti` accepted.
const MAX_CLAIM: usize = 256;

/// A validated logout token: whose sessions to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    /// The user (`sub`), when the token names one.
    pub subject: Option<String>,
    /// The provider session (`sid`), when the token names one.
    pub sid: Option<String>,
    /// The token's identifier, for the replay record.
    pub jti: String,
    /// When the provider issued it (`iat`), in milliseconds.
    pub issued_at: UnixMillis,
}

/// Why a logout token was refused. Messages never contain the token or a
/// claim's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoutTokenError {
    /// Not a signed JWT, or its claims are not the expected types.
    #[error("malformed logout token: {0}")]
    Malformed(String),
    /// The algorithm is not on the allowlist (this includes `none`, HMAC,
    /// and an algorithm the key cannot be used with).
    #[error("signing algorithm not allowed: {0}")]
    DisallowedAlgorithm(String),
    /// No key of the provider's key set (even after one re-fetch) matches.
    #[error("unknown signing key: {0}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain the client id.
    #[error("wrong audience")]
    WrongAudience,
    /// Issued in the future or too long ago, or expired.
    #[error("not valid now: {0}")]
    NotValidNow(String),
    /// A JWT, but not a logout token: no back-channel logout event, a
    /// `nonce` (an ID token), or an explicit type of another kind of token.
    #[error("not a logout token: {0}")]
    NotALogoutToken(String),
    /// Neither `sub` nor `sid`, no `jti`, or one of them unusable.
    #[error("missing claim: {0}")]
    MissingClaim(String),
    /// The token names a key the cache does not know, and the provider's
    /// key set could not be fetched to look for it.
    #[error("the provider's key set is unavailable: {0}")]
    KeySetUnavailable(String),
    /// This provider takes no logout tokens.
    #[error("this provider accepts no logout tokens")]
    Unsupported,
}

#[derive(Debug, Deserialize)]
struct LogoutClaims {
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
    nonce: Option<serde_json::Value>,
}

/// Validates logout tokens against the provider's (cached) keys, with the
/// ID token rules' client id, issuer, algorithm allowlist and clock skew.
#[derive(Debug, Clone)]
pub struct LogoutTokenValidator {
    rules: IdTokenRules,
    keys: Arc<JwksCache>,
}

impl LogoutTokenValidator {
    /// A validator for `rules` using `keys`.
    pub fn new(rules: IdTokenRules, keys: Arc<JwksCache>) -> Self {
        Self { rules, keys }
    }

    /// Validates `raw` as of `now` (this server's clock, in milliseconds).
    pub async fn validate(
        &self,
        raw: &str,
        now: UnixMillis,
    ) -> Result<LogoutToken, LogoutTokenError> {
        let header = jsonwebtoken::decode_header(raw).map_err(|e| {
            LogoutTokenError::Malformed(format!(
                "not a signed JWT with a supported algorithm (alg none is never accepted): {}",
                kind_name(e.kind())
            ))
        })?;
        self.check_header(&header)?;
        let snapshot = self.keys.snapshot();
        let claims = match self.verify(raw, &header, &snapshot.keys) {
            Err(LogoutTokenError::UnknownKey(first)) => {
                let newer =
                    self.keys
                        .newer_than(snapshot.generation)
                        .await
                        .map_err(|e| match e {
                            RefetchError::RateLimited => LogoutTokenError::UnknownKey(first),
                            // The provider's fault, not the token's: it may retry.
                            failed @ RefetchError::Failed { .. } => {
                                LogoutTokenError::KeySetUnavailable(failed.to_string())
                            }
                        })?;
                self.verify(raw, &header, &newer.keys)?
            }
            other => other?,
        };
        self.check_claims(claims, now)
    }

    fn check_header(&self, header: &jsonwebtoken::Header) -> Result<(), LogoutTokenError> {
        let alg = algorithm_name(header.alg);
        let allowed = self
            .rules
            .allowed_algs
            .iter()
            .any(|a| serde_plain_name(a).as_deref() == Some(alg.as_str()));
        let hmac = matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        if !allowed || hmac {
            return Err(LogoutTokenError::DisallowedAlgorithm(format!(
                "{alg} is not on the allowlist"
            )));
        }
        // §2.4: "logout+jwt" when typed explicitly; a token typed as
        // anything else (an access token, say) is not one.
        if let Some(typ) = &header.typ {
            let typ = typ.to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            if typ != "logout+jwt" && typ != "jwt" {
                return Err(LogoutTokenError::NotALogoutToken(
                    "typed as another kind of token".into(),
                ));
            }
        }
        // A key in the header (`jwk`, `jku`, `x5u`, `x5c`) is never used:
        // keys come from the provider's key set only.
        Ok(())
    }

    /// Checks the signature with the keys of `keys` that may have made it,
    /// then `iss` and `aud`.
    fn verify(
        &self,
        raw: &str,
        header: &jsonwebtoken::Header,
        keys: &CoreJsonWebKeySet,
    ) -> Result<LogoutClaims, LogoutTokenError> {
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.rules.issuer]);
        validation.set_audience(&[&self.rules.client_id]);
        validation.set_required_spec_claims(&["iss", "aud"]);
        // `iat` and `exp` are checked against latchkey's clock below.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let candidates: Vec<Jwk> = keys
            .keys()
            .iter()
            .filter_map(|key| serde_json::to_value(key).ok())
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter(|jwk| usable_for(jwk, header))
            .collect();
        if candidates.is_empty() {
            return Err(LogoutTokenError::UnknownKey(
                "no key in the provider's key set matches".into(),
            ));
        }
        let mut last = LogoutTokenError::BadSignature;
        for jwk in &candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<LogoutClaims>(raw, &key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(error) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match error.kind() {
                        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => {
                            LogoutTokenError::BadSignature
                        }
                        K::InvalidIssuer => return Err(LogoutTokenError::WrongIssuer),
                        K::InvalidAudience => return Err(LogoutTokenError::WrongAudience),
                        K::MissingRequiredClaim(claim) => {
                            return Err(LogoutTokenError::MissingClaim(claim.clone()));
                        }
                        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                            LogoutTokenError::DisallowedAlgorithm(
                                "the key cannot be used with this algorithm".into(),
                            )
                        }
                        other => {
                            return Err(LogoutTokenError::Malformed(kind_name(other)));
                        }
                    };
                }
            }
        }
        Err(last)
    }

    fn check_claims(
        &self,
        claims: LogoutClaims,
        now: UnixMillis,
    ) -> Result<LogoutToken, LogoutTokenError> {
        let skew = duration_ms(self.rules.clock_skew);
        let iat = claims
            .iat
            .and_then(|iat| u64::try_from(iat).ok())
            .and_then(|iat| iat.checked_mul(1000))
            .ok_or_else(|| LogoutTokenError::MissingClaim("iat".into()))?;
        if iat > now.saturating_add(skew) {
            return Err(LogoutTokenError::NotValidNow("issued in the future".into()));
        }
        if iat.saturating_add(duration_ms(MAX_LOGOUT_TOKEN_AGE) + skew) < now {
            return Err(LogoutTokenError::NotValidNow(format!(
                "issued more than {}s ago",
                MAX_LOGOUT_TOKEN_AGE.as_secs()
            )));
        }
        if let Some(exp) = claims.exp {
            let exp = u64::try_from(exp).unwrap_or(0).saturating_mul(1000);
            if exp.saturating_add(skew) < now {
                return Err(LogoutTokenError::NotValidNow("expired".into()));
            }
        }
        let is_logout = claims
            .events
            .as_ref()
            .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
            .is_some_and(serde_json::Value::is_object);
        if !is_logout {
            return Err(LogoutTokenError::NotALogoutToken(
                "no back-channel logout event".into(),
            ));
        }
        if claims.nonce.is_some() {
            return Err(LogoutTokenError::NotALogoutToken(
                "it carries a nonce (an ID token?)".into(),
            ));
        }
        let usable = |name: &str, value: Option<String>| match value {
            None => Ok(None),
            Some(v) if v.is_empty() || v.len() > MAX_CLAIM || v.chars().any(char::is_control) => {
                Err(LogoutTokenError::MissingClaim(format!(
                    "{name} is unusable"
                )))
            }
            Some(v) => Ok(Some(v)),
        };
        let subject = usable("sub", claims.sub)?;
        let sid = usable("sid", claims.sid)?;
        let jti = usable("jti", claims.jti)?
            .ok_or_else(|| LogoutTokenError::MissingClaim("jti".into()))?;
        if subject.is_none() && sid.is_none() {
            return Err(LogoutTokenError::MissingClaim("neither sub nor sid".into()));
        }
        Ok(LogoutToken {
            subject,
            sid,
            jti,
            issued_at: iat,
        })
    }
}

/// Whether `jwk` may have signed a token with `header`: the same key id
/// (when the token names one), a signing key, of the algorithm's family
/// and curve, and of the same algorithm when the key names one.
fn usable_for(jwk: &Jwk, header: &jsonwebtoken::Header) -> bool {
    let common = &jwk.common;
    if let Some(kid) = &header.kid
        && common.key_id.as_deref() != Some(kid.as_str())
    {
        return false;
    }
    if matches!(common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return false;
    }
    if let Some(key_alg) = &common.key_algorithm
        && key_alg.to_string() != algorithm_name(header.alg)
    {
        return false;
    }
    match (&jwk.algorithm, header.alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        // An Ed25519 public key is 32 bytes (the verifier slices it as such).
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
                && URL_SAFE_NO_PAD
                    .decode(okp.x.as_bytes())
                    .is_ok_and(|x| x.len() == 32)
        }
        _ => false,
    }
}

/// The JOSE name of `alg`, as the crate serializes it.
fn algorithm_name(alg: Algorithm) -> String {
    match serde_json::to_value(alg) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// The JOSE name of an allowlisted algorithm, as openidconnect serializes it.
fn serde_plain_name(alg: &openidconnect::core::CoreJwsSigningAlgorithm) -> Option<String> {
    match serde_json::to_value(alg).ok()? {
        serde_json::Value::String(name) => Some(name),
        _ => None,
    }
}

/// A short name for a decoding error (never the token's text).
fn kind_name(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidToken => "not a JWT".into(),
        K::Base64(_) => "bad base64".into(),
        K::Json(_) => "claims are not the expected JSON".into(),
        K::Utf8(_) => "not UTF-8".into(),
        K::InvalidClaimFormat(claim) => format!("`{claim}` has the wrong type"),
        _ => "cannot be decoded".into(),
    }
}
