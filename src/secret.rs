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

/// Declares a secret string type, as `openidconnect`'s `new_secret_type!`
/// does: `Debug` prints `Name([redacted])`, equality is constant-time, the
/// value is reached only through `secret()`, and serde sees the bare string
/// (so stored records and cookies keep their format).
macro_rules! secret_string {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps `secret`.
            pub fn new(secret: impl Into<String>) -> Self {
                Self(secret.into())
            }

            /// The secret itself: the one way to read it.
            pub fn secret(&self) -> &str {
                &self.0
            }

            /// The secret itself, unwrapped.
            pub fn into_secret(self) -> String {
                self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
            }
        }

        impl Eq for $name {}

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0.as_bytes().ct_eq(other.as_bytes()).into()
            }
        }

        impl From<String> for $name {
            fn from(secret: String) -> Self {
                Self(secret)
            }
        }

        impl From<&str> for $name {
            fn from(secret: &str) -> Self {
                Self(secret.to_owned())
            }
        }
    };
}

/// A session id: the bearer secret in the session cookie. Stores see only
/// its hash; the session record is sealed under a key derived from it.
/// Cheap to clone (the process's decrypted-cookie cache hands out copies).
#[derive(Clone)]
pub struct SessionId(std::sync::Arc<str>);

impl SessionId {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<std::sync::Arc<str>>) -> Self {
        Self(secret.into())
    }

    /// The secret itself: the one way to read it.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for SessionId {}

impl From<&str> for SessionId {
    fn from(secret: &str) -> Self {
        Self(secret.into())
    }
}

impl From<String> for SessionId {
    fn from(secret: String) -> Self {
        Self(secret.into())
    }
}
secret_string!(
    /// A login's `state`: ties the provider's redirect back to its login.
    LoginState
);
secret_string!(
    /// The browser binding: a random value in the login cookie that a
    /// callback must present, so a callback URL alone signs nobody in.
    BrowserBinding
);
secret_string!(
    /// The `nonce` an ID token must carry back to its login.
    LoginNonce
);
secret_string!(
    /// A PKCE code verifier (the provider sees only its S256 challenge).
    PkceVerifier
);
secret_string!(
    /// An authorization code from a callback.
    AuthorizationCode
);
secret_string!(
    /// An OAuth 2.0 access token.
    AccessToken
);
secret_string!(
    /// An OAuth 2.0 refresh token.
    RefreshToken
);
secret_string!(
    /// A raw (compact-serialised) ID token, kept for `id_token_hint`.
    RawIdToken
);
secret_string!(
    /// The client secret registered at the provider.
    ClientSecret
);
secret_string!(
    /// A cookie secret as configured (base64 or text; see the settings).
    CookieSecret
);

/// Key material derived from a cookie secret: 32 bytes that encrypt cookies.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial(Vec<u8>);

impl KeyMaterial {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes themselves.
    pub fn secret(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial([redacted])")
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
    fn secret_types_print_no_secret_and_keep_their_wire_form() {
        let id = SessionId::new("s3cr3t-session");
        let tokens = (
            AccessToken::new("s3cr3t-access"),
            Some(RefreshToken::new("s3cr3t-refresh")),
            ClientSecret::new("s3cr3t-client"),
            KeyMaterial::new(b"s3cr3t-key".to_vec()),
        );
        let printed = format!("{id:?} {tokens:?} {:#?}", LoginState::new("s3cr3t-state"));
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("SessionId([redacted])"), "{printed}");
        let state = LoginState::new("s3cr3t-state");
        assert_eq!(serde_json::to_string(&state).unwrap(), "\"s3cr3t-state\"");
        let back: LoginState = serde_json::from_str("\"s3cr3t-state\"").unwrap();
        assert_eq!(back, state);
        assert_ne!(back, LoginState::new("s3cr3t-statE"));
        assert_eq!(id.secret(), "s3cr3t-session");
        assert_ne!(id, SessionId::new("s3cr3t-sessioN"));
    }

    #[test]
    fn keyed_hash_depends_on_key_and_message() {
        assert_eq!(keyed_hash("k", "m"), keyed_hash("k", "m"));
        assert_ne!(keyed_hash("k", "m"), keyed_hash("k2", "m"));
        assert_ne!(keyed_hash("k", "m"), keyed_hash("k", "m2"));
    }
}
