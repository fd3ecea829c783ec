//! Random tokens and the one-way hashes that turn them into store keys.
//!
//! Every token latchkey hands out (login `state`, nonce, PKCE verifier, browser
//! binding, session id) is 256 bits from the operating system's CSPRNG, encoded
//! as unpadded base64url. Stores only ever see hashes of the tokens that a
//! browser presents, so a store dump reveals no live cookie.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Stands in for a secret in `Debug` output: prints `[redacted]`, as
/// `openidconnect`'s secret types do. Types that hold tokens, codes, nonces,
/// verifiers or bindings write their `Debug` with it, so that a panic message
/// or a stray `{:?}` never shows one.
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `Some([redacted])` or `None`: whether an optional secret is there, not what it is.
pub fn redacted_option<T>(value: &Option<T>) -> Option<Redacted> {
    value.as_ref().map(|_| Redacted)
}

/// A fresh 256-bit random token, base64url without padding (43 characters).
///
/// # Panics
/// Panics if the operating system cannot provide randomness: continuing without
/// it would hand out guessable sessions.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A random 64-bit value (for lease ids and initial record versions).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    u64::from_le_bytes(bytes)
}

/// SHA-256 of `token`, base64url: the form in which a token is stored or used as a key.
pub fn hash_token(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// HMAC-SHA256 of `message` under `key`, base64url.
pub fn keyed_hash(key: &str, message: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Whether `presented` hashes to `expected_hash`, compared in constant time.
pub fn token_matches_hash(presented: &str, expected_hash: &str) -> bool {
    hash_token(presented)
        .as_bytes()
        .ct_eq(expected_hash.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let a = random_token();
        let b = random_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn hash_match_accepts_only_the_original() {
        let token = random_token();
        let stored = hash_token(&token);
        assert!(token_matches_hash(&token, &stored));
        assert!(!token_matches_hash(&random_token(), &stored));
        assert!(!token_matches_hash("", &stored));
    }

    #[test]
    fn keyed_hash_depends_on_key_and_message() {
        assert_eq!(keyed_hash("k", "m"), keyed_hash("k", "m"));
        assert_ne!(keyed_hash("k", "m"), keyed_hash("k2", "m"));
        assert_ne!(keyed_hash("k", "m"), keyed_hash("k", "m2"));
    }
}
