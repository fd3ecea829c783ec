//! Ending sessions by who they belong to: the session index and the logout
//! tombstone behind back-channel logout and `sessions revoke`
//! (`docs/DESIGN.md` §3a, invariant I8).
//!
//! Every session a login creates is entered, **before** the login commits
//! it, in the index record of its user (`sub`) and of its provider session
//! (`sid`): one versioned record per [`Handle`], updated by CAS, so it is
//! atomic on every store and stays in one Redis Cluster slot. A logout for
//! a handle is one CAS on the same record that leaves a **tombstone**
//! (`logged_out_at`, kept for the exchange lease plus the clock skew) and
//! reads the session keys listed there. Then it revokes each listed key,
//! and only then takes them off the list: a logout that fails part-way
//! (store gone) leaves them listed, and its retry finishes the job.
//!
//! ```text
//! login:   exchange ─▶ register(handle) ─▶ commit_login
//!                       refused if tombstoned      refused if the key was revoked
//! logout:  CAS(handle: tombstone; read keys) ─▶ revoke(key) for each ─▶ CAS(handle: drop them)
//! ```
//!
//! The two CASes on the handle's record are ordered. If the registration
//! comes second, it sees the tombstone and the login fails
//! `Failed{logged_out}`. If it comes first, the logout takes its key and
//! revokes it: revoking writes a marker at the session key (replacing the
//! session if it exists, by CAS, so that an in-flight refresh's CAS fails),
//! and a commit that has not happened yet finds its key taken and writes
//! nothing. A commit is never made after its exchange lease, and the
//! tombstone outlives every lease that was running at the logout, so a
//! registration that finds no tombstone belongs to an exchange that began
//! after the logout.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, UnixMillis, duration_ms};
use crate::idp::Identity;
use crate::secret::hash_token;
use crate::store::{Store, StoreError};

/// What a revoked session's key holds until its marker expires: no sealed
/// record looks like it, and a login's commit cannot take the key meanwhile.
pub const REVOKED_MARKER: &[u8] = b"latchkey:revoked-session";

/// Whose sessions a logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle<'a> {
    /// Every session of a user (the ID token's `sub`).
    Subject(&'a str),
    /// Every session of one provider session (the ID token's `sid`).
    ProviderSession(&'a str),
}

impl Handle<'_> {
    /// The store key of this handle's index record: a hash of the value
    /// (the store holds no user name in the clear), as its own hash tag.
    pub fn key(&self) -> String {
        let named = match self {
            Handle::Subject(sub) => format!("sub\n{sub}"),
            Handle::ProviderSession(sid) => format!("sid\n{sid}"),
        };
        let hash = hash_token(&named);
        format!("logout:{{{}}}:{hash}", &hash[..8])
    }
}

/// The store key of the replay record of logout token `jti` of `issuer`.
fn logout_token_key(issuer: &str, jti: &str) -> String {
    let hash = hash_token(&format!("{issuer}\n{jti}"));
    format!("logout-jti:{{{}}}:{hash}", &hash[..8])
}

/// One session in an index record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedSession {
    /// The session's store key (a hash; the session id is never stored).
    pub key: String,
    /// When the session ends at the latest; the entry is dropped after.
    pub until: UnixMillis,
}

/// The record stored under [`Handle::key`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct IndexRecord {
    #[serde(default)]
    sessions: Vec<IndexedSession>,
    /// The latest logout accepted for this handle (provider's clock when
    /// the provider sent it), while its tombstone lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logged_out_at: Option<UnixMillis>,
    /// When the tombstone ends (this server's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tombstone_until: Option<UnixMillis>,
}

impl IndexRecord {
    fn decode(bytes: &[u8]) -> Self {
        // An unreadable index (written by a future version, or damaged) is
        // replaced; the sessions it listed stay until they expire, and a
        // logout of them ends the ones registered from now on.
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("index records always serialize")
    }

    /// Whether a sign-in whose ID token was issued at `issued_at` is covered
    /// by a live tombstone. Without `iat` it is, to be safe.
    fn tombstones(&self, issued_at: Option<UnixMillis>, now: UnixMillis) -> bool {
        match (self.logged_out_at, self.tombstone_until) {
            (Some(at), Some(until)) if until > now => issued_at.is_none_or(|iat| iat <= at),
            _ => false,
        }
    }

    /// How long the store must keep the record.
    fn ttl(&self, now: UnixMillis) -> Duration {
        let last = self
            .sessions
            .iter()
            .map(|s| s.until)
            .chain(self.tombstone_until)
            .max()
            .unwrap_or(now);
        Duration::from_millis(last.saturating_sub(now).max(1_000))
    }
}

/// What an indexed session's key holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// A session record: signed in.
    Live,
    /// Revoked by a logout.
    Revoked,
    /// Nothing: signed out, expired, or never committed.
    Gone,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionState::Live => "live",
            SessionState::Revoked => "revoked",
            SessionState::Gone => "gone",
        })
    }
}

/// Whether a registration may go on to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The session is indexed; commit it.
    Registered,
    /// A logout covers this sign-in: write no session.
    LoggedOut,
}

/// A logout, as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Session keys listed in the index at the logout, now revoked.
    pub sessions_revoked: usize,
}

/// The session index over a store.
#[derive(Clone)]
pub struct SessionIndex {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SessionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionIndex").finish_non_exhaustive()
    }
}

impl SessionIndex {
    /// The index in `store`, judging tombstones by `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Enters the session stored under `session_key`, for `identity`, in the
    /// index of its `sub` and of its `sid`, unless a logout covers it.
    /// Called by the login between the exchange and the commit.
    pub async fn register(
        &self,
        session_key: &str,
        identity: &Identity,
        until: UnixMillis,
    ) -> Result<Registration, StoreError> {
        let mut handles = vec![Handle::Subject(&identity.subject)];
        if let Some(sid) = &identity.sid {
            handles.push(Handle::ProviderSession(sid));
        }
        for handle in handles {
            if self
                .register_under(handle, session_key, identity.issued_at, until)
                .await?
                == Registration::LoggedOut
            {
                return Ok(Registration::LoggedOut);
            }
        }
        Ok(Registration::Registered)
    }

    async fn register_under(
        &self,
        handle: Handle<'_>,
        session_key: &str,
        issued_at: Option<UnixMillis>,
        until: UnixMillis,
    ) -> Result<Registration, StoreError> {
        let key = handle.key();
        loop {
            let now = self.clock.now_ms();
            let (version, mut record) = self.read(&key).await?;
            if record.tombstones(issued_at, now) {
                return Ok(Registration::LoggedOut);
            }
            record.sessions.retain(|s| s.until > now);
            record.sessions.push(IndexedSession {
                key: session_key.to_owned(),
                until,
            });
            if self.write(&key, version, &record, now).await? {
                return Ok(Registration::Registered);
            }
        }
    }

    /// Ends every session indexed under `handle` and tombstones it, so that
    /// no login covered by the logout (ID token issued at or before
    /// `logged_out_at`) commits within `tombstone` from now.
    pub async fn end(
        &self,
        handle: Handle<'_>,
        logged_out_at: UnixMillis,
        tombstone: Duration,
    ) -> Result<Ended, StoreError> {
        let key = handle.key();
        // 1. The tombstone, and the sessions listed when it was written
        //    (they stay listed until revoked, so that a logout that fails
        //    part-way is finished by its retry).
        let listed = loop {
            let now = self.clock.now_ms();
            let (version, mut record) = self.read(&key).await?;
            record.logged_out_at = Some(record.logged_out_at.unwrap_or(0).max(logged_out_at));
            let until = now.saturating_add(duration_ms(tombstone));
            record.tombstone_until = Some(record.tombstone_until.unwrap_or(0).max(until));
            if self.write(&key, version, &record, now).await? {
                break record.sessions;
            }
        };
        // 2. Every listed session revoked.
        for session in &listed {
            self.revoke(&session.key, tombstone).await?;
        }
        // 3. Only then off the list (sign-ins registered since stay on it).
        loop {
            let now = self.clock.now_ms();
            let (version, mut record) = self.read(&key).await?;
            if version.is_none() {
                break;
            }
            record
                .sessions
                .retain(|s| !listed.iter().any(|gone| gone.key == s.key));
            if self.write(&key, version, &record, now).await? {
                break;
            }
        }
        Ok(Ended {
            sessions_revoked: listed.len(),
        })
    }

    /// Records that the logout token `jti` of `issuer` is being used, for
    /// `ttl`; `false`: it was used before (a replay). A logout that then
    /// fails gives the `jti` back with [`forget_logout_token`](Self::forget_logout_token),
    /// so that the provider's retry is not taken for a replay.
    pub async fn first_use_of_logout_token(
        &self,
        issuer: &str,
        jti: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = logout_token_key(issuer, jti);
        self.store.insert_if_absent(&key, b"used", ttl).await
    }

    /// Forgets a use recorded by [`first_use_of_logout_token`](Self::first_use_of_logout_token).
    pub async fn forget_logout_token(&self, issuer: &str, jti: &str) -> Result<(), StoreError> {
        self.store.delete(&logout_token_key(issuer, jti)).await
    }

    /// The sessions indexed under `handle` that may still be live.
    pub async fn list(&self, handle: Handle<'_>) -> Result<Vec<IndexedSession>, StoreError> {
        let now = self.clock.now_ms();
        let mut sessions = match self.store.get(&handle.key()).await? {
            Some(current) => IndexRecord::decode(&current.value).sessions,
            None => Vec::new(),
        };
        sessions.retain(|s| s.until > now);
        Ok(sessions)
    }

    /// What the key of an indexed session holds now.
    pub async fn state(&self, session_key: &str) -> Result<SessionState, StoreError> {
        Ok(match self.store.get(session_key).await? {
            None => SessionState::Gone,
            Some(current) if current.value.as_ref() == REVOKED_MARKER => SessionState::Revoked,
            Some(_) => SessionState::Live,
        })
    }

    /// Replaces whatever is under `session_key` with the revoked marker, for
    /// at least `ttl`: the session (if committed) is gone, its refreshes'
    /// CASes fail, and a commit still to come finds the key taken.
    pub async fn revoke(&self, session_key: &str, ttl: Duration) -> Result<(), StoreError> {
        loop {
            match self.store.get(session_key).await? {
                None => {
                    if self
                        .store
                        .insert_if_absent(session_key, REVOKED_MARKER, ttl)
                        .await?
                    {
                        return Ok(());
                    }
                }
                Some(current) if current.value.as_ref() == REVOKED_MARKER => return Ok(()),
                Some(current) => {
                    if self
                        .store
                        .compare_and_swap(session_key, current.version, REVOKED_MARKER, ttl)
                        .await?
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The index record under `key` and its version (`None`: absent).
    async fn read(&self, key: &str) -> Result<(Option<u64>, IndexRecord), StoreError> {
        Ok(match self.store.get(key).await? {
            Some(current) => (Some(current.version), IndexRecord::decode(&current.value)),
            None => (None, IndexRecord::default()),
        })
    }

    async fn write(
        &self,
        key: &str,
        version: Option<u64>,
        record: &IndexRecord,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let (value, ttl) = (record.encode(), record.ttl(now));
        match version {
            None => self.store.insert_if_absent(key, &value, ttl).await,
            Some(version) => self.store.compare_and_swap(key, version, &value, ttl).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_hash_their_value_and_carry_a_hash_tag() {
        let key = Handle::Subject("alice").key();
        assert!(!key.contains("alice"));
        assert!(key.starts_with("logout:{"));
        assert_ne!(key, Handle::ProviderSession("alice").key());
    }

    #[test]
    fn a_tombstone_covers_sign_ins_issued_until_the_logout_while_it_lasts() {
        let record = IndexRecord {
            logged_out_at: Some(1_000),
            tombstone_until: Some(5_000),
            ..IndexRecord::default()
        };
        assert!(record.tombstones(Some(999), 2_000));
        assert!(record.tombstones(Some(1_000), 2_000));
        assert!(record.tombstones(None, 2_000));
        assert!(!record.tombstones(Some(1_001), 2_000));
        assert!(!record.tombstones(Some(999), 5_000));
        assert!(!IndexRecord::default().tombstones(None, 0));
    }
}
