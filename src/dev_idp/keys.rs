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

/// One signing key.
pub(crate) enum SigningKey {
    /// An RSA key.
    Rsa(CoreRsaPrivateSigningKey),
    /// An Ed25519 key.
    EdDsa(CoreEdDsaPrivateSigningKey),
}

impl SigningKey {
    /// A fresh key for `alg` with a random key id.
    pub(crate) fn generate(alg: SigningAlg) -> Self {
        let kid = Some(JsonWebKeyId::new(random_token()[..16].to_owned()));
        match alg {
            SigningAlg::Rs256 => {
                let key =
                    RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key generation");
                let pem = key
                    .to_pkcs1_pem(LineEnding::LF)
                    .expect("a generated RSA key encodes as PEM");
                SigningKey::Rsa(
                    CoreRsaPrivateSigningKey::from_pem(&pem, kid)
                        .expect("a generated RSA key loads"),
                )
            }
            SigningAlg::EdDsa => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).expect("the OS random number generator");
                let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
                    .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                    .expect("a generated Ed25519 key encodes as PEM");
                SigningKey::EdDsa(
                    CoreEdDsaPrivateSigningKey::from_ed25519_pem(&pem, kid)
                        .expect("a generated Ed25519 key loads"),
                )
            }
        }
    }

    /// The algorithm this key signs with.
    pub(crate) fn alg(&self) -> SigningAlg {
        match self {
            SigningKey::Rsa(_) => SigningAlg::Rs256,
            SigningKey::EdDsa(_) => SigningAlg::EdDsa,
        }
    }
}

impl PrivateSigningKey for SigningKey {
    type VerificationKey = CoreJsonWebKey;

    fn sign(&self, alg: &CoreJwsSigningAlgorithm, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        match self {
            SigningKey::Rsa(key) => key.sign(alg, message),
            SigningKey::EdDsa(key) => key.sign(alg, message),
        }
    }

    fn as_verification_key(&self) -> CoreJsonWebKey {
        match self {
            SigningKey::Rsa(key) => key.as_verification_key(),
            SigningKey::EdDsa(key) => key.as_verification_key(),
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
