//! The development IdP's signing keys: RSA 2048 (RS256, the default) or
//! Ed25519 (EdDSA), generated at start, rotated on request. The key set keeps
//! the previous key so tokens signed before a rotation still verify.

use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use openidconnect::core::{
    CoreEdDsaPrivateSigningKey, CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::{JsonWebKeyId, JsonWebKeySet, PrivateSigningKey, SigningError};
use rsa::RsaPrivateKey;
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use serde::Deserialize;

use crate::secret::random_token;

/// The algorithm the development IdP signs ID tokens with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum SigningAlg {
    /// RSA 2048 with SHA-256, what most providers use.
    #[default]
    #[serde(rename = "RS256")]
    #[value(name = "RS256")]
    Rs256,
    /// Ed25519: signing costs microseconds instead of a millisecond or more,
    /// so that a benchmark on one machine does not measure the IdP's CPU.
    #[serde(rename = "EdDSA")]
    #[value(name = "EdDSA")]
    EdDsa,
}

impl SigningAlg {
    /// The JWS algorithm.
    pub fn jws(self) -> CoreJwsSigningAlgorithm {
        match self {
            SigningAlg::Rs256 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            SigningAlg::EdDsa => CoreJwsSigningAlgorithm::EdDsa,
        }
    }

    /// Its name in discovery documents and JWT headers.
    pub fn name(self) -> &'static str {
        match self {
            SigningAlg::Rs256 => "RS256",
            SigningAlg::EdDsa => "EdDSA",
        }
    }
}

/// One signing key: openidconnect's, for ID tokens, and the same key's
/// DER, for the other JWTs the IdP signs (logout tokens).
pub(crate) struct SigningKey {
    kind: KeyKind,
    kid: String,
    /// PKCS#1 (RSA) or PKCS#8 (Ed25519) DER of the private key.
    der: Vec<u8>,
}

enum KeyKind {
    Rsa(CoreRsaPrivateSigningKey),
    EdDsa(CoreEdDsaPrivateSigningKey),
}

impl SigningKey {
    /// A fresh key for `alg` with a random key id.
    pub(crate) fn generate(alg: SigningAlg) -> Self {
        let kid = random_token()[..16].to_owned();
        let key_id = Some(JsonWebKeyId::new(kid.clone()));
        match alg {
            SigningAlg::Rs256 => {
                let key =
                    RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key generation");
                let pem = key
                    .to_pkcs1_pem(LineEnding::LF)
                    .expect("a generated RSA key encodes as PEM");
                let der = key
                    .to_pkcs1_der()
                    .expect("a generated RSA key encodes as DER")
                    .as_bytes()
                    .to_vec();
                SigningKey {
                    kind: KeyKind::Rsa(
                        CoreRsaPrivateSigningKey::from_pem(&pem, key_id)
                            .expect("a generated RSA key loads"),
                    ),
                    kid,
                    der,
                }
            }
            SigningAlg::EdDsa => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).expect("the OS random number generator");
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                let pem = key
                    .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                    .expect("a generated Ed25519 key encodes as PEM");
                let der = key
                    .to_pkcs8_der()
                    .expect("a generated Ed25519 key encodes as DER")
                    .as_bytes()
                    .to_vec();
                SigningKey {
                    kind: KeyKind::EdDsa(
                        CoreEdDsaPrivateSigningKey::from_ed25519_pem(&pem, key_id)
                            .expect("a generated Ed25519 key loads"),
                    ),
                    kid,
                    der,
                }
            }
        }
    }

    /// The algorithm this key signs with.
    pub(crate) fn alg(&self) -> SigningAlg {
        match self.kind {
            KeyKind::Rsa(_) => SigningAlg::Rs256,
            KeyKind::EdDsa(_) => SigningAlg::EdDsa,
        }
    }

    /// A JWT of `claims`, typed `typ`, signed with this key (for tokens
    /// other than ID tokens).
    pub(crate) fn sign_jwt(
        &self,
        typ: &str,
        claims: &serde_json::Value,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let (alg, key) = match self.kind {
            KeyKind::Rsa(_) => (
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_der(&self.der),
            ),
            KeyKind::EdDsa(_) => (
                jsonwebtoken::Algorithm::EdDSA,
                jsonwebtoken::EncodingKey::from_ed_der(&self.der),
            ),
        };
        let mut header = jsonwebtoken::Header::new(alg);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &key)
    }
}

impl PrivateSigningKey for SigningKey {
    type VerificationKey = CoreJsonWebKey;

    fn sign(&self, alg: &CoreJwsSigningAlgorithm, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        match &self.kind {
            KeyKind::Rsa(key) => key.sign(alg, message),
            KeyKind::EdDsa(key) => key.sign(alg, message),
        }
    }

    fn as_verification_key(&self) -> CoreJsonWebKey {
        match &self.kind {
            KeyKind::Rsa(key) => key.as_verification_key(),
            KeyKind::EdDsa(key) => key.as_verification_key(),
        }
    }
}

/// The current signing key and the one before it.
pub(crate) struct SigningKeys {
    current: Arc<SigningKey>,
    previous: Option<Arc<SigningKey>>,
}

impl SigningKeys {
    /// A fresh key for `alg`.
    pub(crate) fn generate(alg: SigningAlg) -> Self {
        Self {
            current: Arc::new(SigningKey::generate(alg)),
            previous: None,
        }
    }

    /// Keeps `old`'s current key published as the previous key (after a
    /// rotation: tokens it signed still verify).
    pub(crate) fn adopt_previous(&mut self, old: SigningKeys) {
        self.previous = Some(old.current);
    }

    /// The key that signs new tokens (shared, so that signing happens with no
    /// lock held).
    pub(crate) fn current(&self) -> Arc<SigningKey> {
        self.current.clone()
    }

    /// The published key set.
    pub(crate) fn jwks(&self) -> CoreJsonWebKeySet {
        let mut keys = vec![self.current.as_verification_key()];
        if let Some(previous) = &self.previous {
            keys.push(previous.as_verification_key());
        }
        JsonWebKeySet::new(keys)
    }
}
