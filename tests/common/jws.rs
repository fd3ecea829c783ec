//! Hand-made JWTs for the token rejection tests: compact JWS built piece by
//! piece, so that a test can send what no JWT library would make (`alg:
//! none`, a tampered payload, a key in the header).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::JsonWebKeyId;
use openidconnect::core::CoreRsaPrivateSigningKey;
use rsa::RsaPrivateKey;
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use serde_json::Value;

/// A fresh RSA 2048 signing key with key id `kid`.
pub fn rsa_key(kid: &str) -> CoreRsaPrivateSigningKey {
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let pem = key.to_pkcs1_pem(LineEnding::LF).unwrap();
    CoreRsaPrivateSigningKey::from_pem(&pem, Some(JsonWebKeyId::new(kid.into()))).unwrap()
}

/// base64url without padding, as JWS uses it.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS of `claims` with `header`, signed by `sign`.
pub fn jws(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature))
}
