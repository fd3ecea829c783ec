//! The store's key layout, in one place: what each record is stored under.
//!
//! Keys hold only hashes of the secrets they are named by (a login's
//! `state`, a session id), never the secrets. The keys of one login and of
//! the session it creates carry the same Redis Cluster hash tag (`{TAG}`),
//! so that the login commit, which writes both, touches one slot.

use crate::secret::hash_token;

/// The hash tag of the login named by `state` (8 characters of its hash).
pub(crate) fn login_tag(state: &str) -> String {
    hash_token(state)[..8].to_owned()
}

/// The store key of the login named by `state`.
pub fn login_key(state: &str) -> String {
    format!("login:{{{}}}:{}", login_tag(state), hash_token(state))
}

/// The store key of the session with this id (the id itself is never stored).
///
/// A session id made by a login starts with its login's tag (`TAG.rest`), and
/// the key carries it as the hash tag, so that the login record and the
/// session record that the login commit writes together hash to one slot.
pub fn session_key(session_id: &str) -> String {
    let tag = match session_id.split_once('.') {
        Some((tag, _)) => tag.to_owned(),
        None => login_tag(session_id),
    };
    format!("session:{{{tag}}}:{}", hash_token(session_id))
}

/// The store key of the sign-out marker of the user `subject` at `issuer`.
pub(crate) fn signed_out_key_of(issuer: &str, subject: &str) -> String {
    format!("signed-out:{}", hash_token(&format!("{issuer}\n{subject}")))
}
