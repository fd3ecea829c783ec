//! The development IdP's signing keys: RSA 2048, generated at start, rotated on
//! request. The key set keeps the previous key so tokens signed before a
//! rotation still verify.

use openidconnect::core::{CoreJsonWebKeySet, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, JsonWebKeySet, PrivateSigningKey};
use rsa::RsaPrivateKey;
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};

use crate::secret::random_token;

/// The current signing key and the one before it.
pub struct SigningKeys {
    current: CoreRsaPrivateSigningKey,
    previous: Option<CoreRsaPrivateSigningKey>,
}

impl SigningKeys {
    /// A fresh key.
    pub fn generate() -> Self {
        Self {
            current: new_key(),
            previous: None,
        }
    }

    /// Keeps `old`'s current key published as the previous key (after a
    /// rotation: tokens it signed still verify).
    pub fn adopt_previous(&mut self, old: SigningKeys) {
        self.previous = Some(old.current);
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &CoreRsaPrivateSigningKey {
        &self.current
    }

    /// The published key set.
    pub fn jwks(&self) -> CoreJsonWebKeySet {
        let mut keys = vec![self.current.as_verification_key()];
        if let Some(previous) = &self.previous {
            keys.push(previous.as_verification_key());
        }
        JsonWebKeySet::new(keys)
    }
}

fn new_key() -> CoreRsaPrivateSigningKey {
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key generation");
    let pem = key
        .to_pkcs1_pem(LineEnding::LF)
        .expect("a generated RSA key encodes as PEM");
    let kid = JsonWebKeyId::new(random_token()[..16].to_owned());
    CoreRsaPrivateSigningKey::from_pem(&pem, Some(kid)).expect("a generated RSA key loads")
}
