//! Session records sealed before they reach the store, and session ids that
//! only the server can derive.
//!
//! A session record holds the user's tokens and identity. The store sees it
//! only sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the
//! server secret **and the session id**. The store never sees the id (it keys
//! the record by the id's hash; see [`crate::session::session_key`]), so:
//!
//! - a store dump reveals no token and no identity: only key hashes, expiries,
//!   versions and sizes;
//! - a store write cannot forge or edit an identity: a record that does not
//!   open under its session's key reads as no session;
//! - a record cannot be moved to another session's key: it opens only under
//!   the key of the id it was sealed for.
//!
//! The session id itself is an HMAC, under the server secret, of the login's
//! `state` and lease, so `state` (which travels in URLs and front-proxy logs)
//! together with a store read does not yield it.
//!
//! The first secret seals; every secret opens, so that a rotation of
//! `cookie_secret` (the previous ones in `previous_cookie_secrets`) keeps
//! sessions readable.

use std::sync::{Arc, OnceLock};

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The first byte of a sealed record: the format.
const FORMAT: u8 = 1;
/// AES-GCM's nonce length.
const NONCE_LEN: usize = 12;

/// A record that opened.
pub struct Opened {
    /// Its plaintext.
    pub plaintext: Vec<u8>,
    /// Whether a previous secret opened it.
    pub by_previous_secret: bool,
}

/// The keys that seal and open session records and derive session ids.
#[derive(Clone)]
pub struct RecordSeal {
    /// Master keys, one per secret; the first seals and derives ids.
    masters: Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for RecordSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordSeal([redacted])")
    }
}

/// A master key for record sealing from a server secret (domain-separated
/// from the cookie keys made from the same secret).
fn master_from(secret: &[u8]) -> [u8; 32] {
    let mut master = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(b"latchkey store seal"), secret)
        .expand(b"latchkey session records", &mut master)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    master
}

impl RecordSeal {
    /// Seals with `secret`; opens with it and with each of `previous`.
    pub fn new(secret: &[u8], previous: &[Vec<u8>]) -> Self {
        let masters: Vec<[u8; 32]> = std::iter::once(secret)
            .chain(previous.iter().map(Vec::as_slice))
            .map(master_from)
            .collect();
        Self {
            masters: masters.into(),
        }
    }

    /// A seal with a key made at random once per process: what settings
    /// built with `Default` use, so that nothing ever seals under a known key.
    /// Records it seals are readable only by this process.
    pub fn process_default() -> Self {
        static DEFAULT: OnceLock<RecordSeal> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).expect("the operating system's random source failed");
                RecordSeal::new(&secret, &[])
            })
            .clone()
    }

    fn cipher(master: &[u8; 32], session_id: &str) -> Aes256Gcm {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, master)
            .expand_multi_info(
                &[b"latchkey session record\n", session_id.as_bytes()],
                &mut key,
            )
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Aes256Gcm::new(&key.into())
    }

    /// `plaintext` sealed for the session `session_id`.
    pub fn seal(&self, session_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let sealed = Self::cipher(&self.masters[0], session_id)
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("AES-GCM seals any record latchkey writes");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of a record sealed for `session_id`, or `None` when it
    /// does not open (altered, sealed for another session, or with a secret
    /// this server does not have).
    pub fn open(&self, session_id: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        self.open_noting_secret(session_id, sealed)
            .map(|opened| opened.plaintext)
    }

    /// Like [`RecordSeal::open`], and says whether a previous secret opened
    /// it (the record should then be sealed again with the current one).
    pub fn open_noting_secret(&self, session_id: &str, sealed: &[u8]) -> Option<Opened> {
        let (&format, rest) = sealed.split_first()?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.masters.iter().enumerate().find_map(|(index, master)| {
            Self::cipher(master, session_id)
                .decrypt(Nonce::from_slice(nonce), ciphertext)
                .ok()
                .map(|plaintext| Opened {
                    plaintext,
                    by_previous_secret: index > 0,
                })
        })
    }

    /// The id of the session a login completes: `TAG.` followed by an HMAC,
    /// under the server secret, of the login's `state` and lease.
    pub fn session_id(&self, tag: &str, state: &str, lease_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.masters[0])
            .expect("HMAC accepts keys of any length");
        mac.update(b"latchkey session id\n");
        mac.update(state.as_bytes());
        mac.update(b"\n");
        mac.update(lease_id.as_bytes());
        format!(
            "{tag}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_record_opens_only_for_its_session_and_secret() {
        let seal = RecordSeal::new(&[1; 32], &[]);
        let sealed = seal.seal("TAG.id-a", b"{\"tokens\":\"secret\"}");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            seal.open("TAG.id-a", &sealed).unwrap(),
            b"{\"tokens\":\"secret\"}"
        );
        // Another session's key, another server's secret: nothing.
        assert_eq!(seal.open("TAG.id-b", &sealed), None);
        assert_eq!(
            RecordSeal::new(&[2; 32], &[]).open("TAG.id-a", &sealed),
            None
        );
        // Any altered byte: nothing.
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x01;
            assert_eq!(seal.open("TAG.id-a", &altered), None, "byte {i}");
        }
        assert_eq!(seal.open("TAG.id-a", b""), None);
        assert_eq!(seal.open("TAG.id-a", b"{\"plain\":\"json\"}"), None);
        // Two seals of one record differ (random nonces).
        assert_ne!(sealed, seal.seal("TAG.id-a", b"{\"tokens\":\"secret\"}"));
    }

    #[test]
    fn a_rotation_keeps_records_readable() {
        let old = RecordSeal::new(&[1; 32], &[]);
        let sealed = old.seal("TAG.id", b"record");
        let rotated = RecordSeal::new(&[2; 32], &[vec![1; 32]]);
        assert_eq!(rotated.open("TAG.id", &sealed).unwrap(), b"record");
        // New records are sealed with the new secret.
        let resealed = rotated.seal("TAG.id", b"record");
        assert_eq!(old.open("TAG.id", &resealed), None);
    }

    #[test]
    fn session_ids_need_the_server_secret() {
        let seal = RecordSeal::new(&[1; 32], &[]);
        let id = seal.session_id("TAG", "state", "lease");
        assert_eq!(id, seal.session_id("TAG", "state", "lease"));
        assert!(id.starts_with("TAG."));
        assert_ne!(id, seal.session_id("TAG", "state", "other-lease"));
        assert_ne!(id, seal.session_id("TAG", "other-state", "lease"));
        assert_ne!(
            id,
            RecordSeal::new(&[2; 32], &[]).session_id("TAG", "state", "lease")
        );
        assert_eq!(id.split_once('.').unwrap().1.len(), 43);
    }
}
