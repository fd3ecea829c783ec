//! Session records and single-flight token refresh (`docs/DESIGN.md` §3).
//!
//! A session lives under `session:<sha256(id)>` as a versioned record. When its
//! access token is within `refresh_before_expiry` of expiry, the first request
//! to notice takes the session's **refresh lease** by a CAS on the record's
//! version, calls the token endpoint with no lock held, and CASes the new
//! tokens in (fenced by the version it wrote). Requests of the same session
//! that arrive meanwhile keep using the old access token while it is valid, or
//! wait (bounded) for the version to change. Sessions never wait on each other:
//! every lease and every wait is keyed by one session.

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clock::{Clock, UnixMillis, duration_ms};
use crate::idp::{Identity, IdentityProvider, IdpError, TokenSet, answer_within, call_budget};
pub use crate::keys::session_key;
use crate::keys::signed_out_key_of;
use crate::logout::REVOKED_MARKER;
use crate::seal::RecordSeal;
use crate::secret::{SessionId, random_token};
use crate::store::{Store, StoreError, Versioned};

use crate::cache::BoundedCache;

/// A decoded record, tagged with the store version it was decoded from.
///
/// Every load still reads the record from the store (the store stays the only
/// source of truth: a sign-out or a refresh on another replica is seen at
/// once); the decoded copy is used only when the version read is the one it
/// was decoded from. That is sound because a version names one content for a
/// key: every write bumps it, and a key deleted and written again starts at a
/// fresh random version (the store contract's `delete_is_final` check).
#[derive(Debug, Clone)]
struct CachedRecord {
    /// The session's store key (derived from its id by a hash, kept to skip it).
    key: Arc<str>,
    /// The store version the record was decoded from.
    version: u64,
    /// The record.
    loaded: Arc<Loaded>,
}

/// A decoded record, and a value derived from it by the caller (made once
/// per record version in this process; see [`ActiveSession::derived`]).
#[derive(Debug)]
struct Loaded {
    record: SessionRecord,
    derived: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl From<SessionRecord> for Loaded {
    fn from(record: SessionRecord) -> Self {
        Self {
            record,
            derived: OnceLock::new(),
        }
    }
}

fn parse_ms(bytes: &[u8]) -> Option<UnixMillis> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A refresh in progress: who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshLease {
    /// Random id of the holder.
    pub id: String,
    /// When other requests may take the lease over.
    pub until: UnixMillis,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Who is signed in.
    pub identity: Identity,
    /// The current tokens.
    pub tokens: TokenSet,
    /// When the session was created.
    pub created_at: UnixMillis,
    /// When the session ends regardless of refreshes.
    pub expires_at: UnixMillis,
    /// Set while one request refreshes the tokens.
    pub refresh_lease: Option<RefreshLease>,
}

impl SessionRecord {
    /// A new session created at `now` that lives for `ttl`.
    pub fn new(identity: Identity, tokens: TokenSet, now: UnixMillis, ttl: Duration) -> Self {
        Self {
            identity,
            tokens,
            created_at: now,
            expires_at: now.saturating_add(duration_ms(ttl)),
            refresh_lease: None,
        }
    }

    /// The record as stored for the session `session_id`: its JSON, sealed
    /// (see [`crate::seal`]).
    pub fn seal(&self, seal: &RecordSeal, session_id: &str) -> Vec<u8> {
        let plain = serde_json::to_vec(self).expect("session records always serialize");
        seal.seal(session_id, &plain)
    }

    /// The record stored for `session_id`. A record that does not open (altered
    /// in the store, or sealed for another session or with an unknown secret)
    /// is [`SessionError::Corrupt`]: no session, never another identity.
    pub fn open(seal: &RecordSeal, session_id: &str, stored: &[u8]) -> Result<Self, SessionError> {
        Self::open_noting_secret(seal, session_id, stored).map(|(record, _)| record)
    }

    /// Like [`SessionRecord::open`], and says whether a previous secret opened it.
    fn open_noting_secret(
        seal: &RecordSeal,
        session_id: &str,
        stored: &[u8],
    ) -> Result<(Self, bool), SessionError> {
        let opened = seal
            .open_noting_secret(session_id, stored)
            .ok_or_else(|| SessionError::Corrupt("the sealed record does not open".into()))?;
        let record = serde_json::from_slice(&opened.plaintext)
            .map_err(|e| SessionError::Corrupt(e.to_string()))?;
        Ok((record, opened.by_previous_secret))
    }

    /// Store TTL that keeps the record exactly until `expires_at`.
    fn remaining(&self, now: UnixMillis) -> Duration {
        Duration::from_millis(self.expires_at.saturating_sub(now))
    }
}

/// Timing of session refresh.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Refresh when the access token expires within this window.
    pub refresh_before_expiry: Duration,
    /// How long one request may spend refreshing before others take over.
    /// The provider call gets three quarters of it ([`call_budget`]) and
    /// is abandoned after that.
    pub refresh_lease: Duration,
    /// How long a request waits for another request's refresh.
    pub refresh_wait: Duration,
    /// How many decoded records this process keeps (0: decode on every load).
    pub cached_records: usize,
    /// How long a sign-out is remembered against the user's earlier ID
    /// tokens presented as bearer tokens (ID tokens live minutes to hours).
    pub sign_out_memory: Duration,
    /// Seals and opens session records (the server secret).
    pub seal: RecordSeal,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            refresh_before_expiry: Duration::from_secs(60),
            refresh_lease: Duration::from_secs(30),
            refresh_wait: Duration::from_secs(10),
            cached_records: 10_000,
            sign_out_memory: Duration::from_secs(24 * 60 * 60),
            seal: RecordSeal::process_default(),
        }
    }
}

/// A session ready for use by one request.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    loaded: Arc<Loaded>,
}

impl ActiveSession {
    /// Who is signed in.
    pub fn identity(&self) -> &Identity {
        &self.loaded.record.identity
    }

    /// Tokens that are valid now (or, for a provider without refresh tokens, the last ones).
    pub fn tokens(&self) -> &TokenSet {
        &self.loaded.record.tokens
    }

    /// A value derived from the session's record by `make`, such as the
    /// identity headers a proxy sends: made once per record version in this
    /// process and shared by the requests that use that version. One type of
    /// value is remembered; asking for another type makes it afresh each time.
    pub fn derived<T: Any + Send + Sync>(&self, make: impl Fn(&SessionRecord) -> T) -> Arc<T> {
        let any = self
            .loaded
            .derived
            .get_or_init(|| Arc::new(make(&self.loaded.record)));
        match any.clone().downcast::<T>() {
            Ok(value) => value,
            Err(_) => Arc::new(make(&self.loaded.record)),
        }
    }
}

impl PartialEq for ActiveSession {
    fn eq(&self, other: &Self) -> bool {
        self.loaded.record == other.loaded.record
    }
}

impl Eq for ActiveSession {}

/// Why a session cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session (never existed, expired or signed out).
    #[error("no such session")]
    NotFound,
    /// The provider ended the session (`invalid_grant`) or a refreshed ID token
    /// named someone else; the session has been deleted.
    #[error("the session has ended: {0}")]
    Ended(String),
    /// The access token has expired and the provider could not refresh it now.
    #[error("the identity provider could not refresh the session: {0}")]
    RefreshUnavailable(String),
    /// Another request's refresh did not finish within `refresh_wait`.
    #[error("timed out waiting for the session's refresh")]
    RefreshTimedOut,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored session record could not be read.
    #[error("corrupt session record: {0}")]
    Corrupt(String),
}

/// Loads, refreshes and ends sessions.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    idp: Arc<dyn IdentityProvider>,
    clock: Arc<dyn Clock>,
    settings: SessionSettings,
    cache: Arc<BoundedCache<CachedRecord>>,
}

impl Sessions {
    /// Sessions over `store`, refreshed through `idp`, judged by `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        idp: Arc<dyn IdentityProvider>,
        clock: Arc<dyn Clock>,
        settings: SessionSettings,
    ) -> Self {
        Self {
            store,
            idp,
            clock,
            cache: Arc::new(BoundedCache::new(settings.cached_records)),
            settings,
        }
    }

    /// How many decoded records this process holds.
    pub fn cached_records(&self) -> usize {
        self.cache.len()
    }

    /// The record under `key` for `session_id`, decoded or from the cache when
    /// the store holds the version that was decoded. `None`: no such record.
    async fn read(
        &self,
        session_id: &str,
        key: &Arc<str>,
        cached: &mut Option<CachedRecord>,
    ) -> Result<Option<(Versioned, Arc<Loaded>)>, SessionError> {
        let current = self
            .store
            .get(key)
            .await?
            // A revoked session is no session (see `crate::logout`).
            .filter(|current| current.value.as_ref() != REVOKED_MARKER);
        let Some(current) = current else {
            self.cache.remove(session_id);
            *cached = None;
            return Ok(None);
        };
        if let Some(hit) = cached.as_ref().filter(|c| c.version == current.version) {
            let loaded = hit.loaded.clone();
            return Ok(Some((current, loaded)));
        }
        let (record, stale) =
            SessionRecord::open_noting_secret(&self.settings.seal, session_id, &current.value)?;
        // Sealed with a previous secret: seal it again with the current one
        // (fenced on the version read), so that the previous secret can be
        // retired without signing this session out.
        let mut current = current;
        if stale {
            let resealed = record.seal(&self.settings.seal, session_id);
            let ttl = record.remaining(self.clock.now_ms());
            if self
                .store
                .compare_and_swap(key, current.version, &resealed, ttl)
                .await?
            {
                current = Versioned {
                    version: current.version + 1,
                    value: resealed.into(),
                };
            }
        }
        let loaded = Arc::new(Loaded::from(record));
        let entry = CachedRecord {
            key: key.clone(),
            version: current.version,
            loaded: loaded.clone(),
        };
        self.cache.put(session_id, entry.clone());
        *cached = Some(entry);
        Ok(Some((current, loaded)))
    }

    /// The session with this id, with its access token refreshed if it is due.
    /// At most one request per session calls the identity provider at a time.
    pub async fn load(&self, session_id: &SessionId) -> Result<ActiveSession, SessionError> {
        let session_id = session_id.secret();
        let mut cached = self.cache.get(session_id);
        let key = match &cached {
            Some(entry) => entry.key.clone(),
            None => Arc::from(session_key(session_id)),
        };
        let wait_deadline = Instant::now() + self.settings.refresh_wait;
        loop {
            let Some((current, loaded)) = self.read(session_id, &key, &mut cached).await? else {
                return Err(SessionError::NotFound);
            };
            let record = &loaded.record;
            let now = self.clock.now_ms();
            if !self.refresh_due(record, now) {
                return Ok(ActiveSession { loaded });
            }
            match &record.refresh_lease {
                Some(lease) if lease.until > now => {
                    // Someone else is refreshing. Use the old token while it lasts.
                    if record.tokens.access_expires_at > now {
                        return Ok(ActiveSession { loaded });
                    }
                    let left = wait_deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SessionError::RefreshTimedOut);
                    }
                    let lease_left = Duration::from_millis(lease.until - now);
                    self.store
                        .wait_for_change(&key, Some(current.version), left.min(lease_left))
                        .await?;
                }
                _ => {
                    let record = record.clone();
                    // Boxed: refreshes are rare, and the refresh's large state
                    // would otherwise be part of every request's future.
                    let refresh =
                        Box::pin(self.try_refresh(session_id, &key, current, record, now));
                    match refresh.await? {
                        RefreshAttempt::Done(session) => return Ok(session),
                        RefreshAttempt::Ended(error) => return Err(error),
                        RefreshAttempt::Superseded => {}
                    }
                }
            }
        }
    }

    /// Ends the session: deletes its record, so that no in-flight refresh can
    /// write it back, and remembers when its user signed out (see
    /// [`Sessions::signed_out_at`]). Returns the record it deleted (for
    /// `id_token_hint`).
    pub async fn sign_out(
        &self,
        session_id: &SessionId,
    ) -> Result<Option<SessionRecord>, SessionError> {
        let session_id = session_id.secret();
        let key = session_key(session_id);
        let existing = self.store.get(&key).await?;
        self.store.delete(&key).await?;
        self.cache.remove(session_id);
        // A record that does not open is gone all the same.
        let record = existing
            .and_then(|v| SessionRecord::open(&self.settings.seal, session_id, &v.value).ok());
        if let Some(record) = &record {
            self.remember_sign_out(&record.identity).await?;
        }
        Ok(record)
    }

    /// Records that `identity` signed out now (the latest time wins).
    async fn remember_sign_out(&self, identity: &Identity) -> Result<(), SessionError> {
        self.remember_sign_out_of(&identity.issuer, &identity.subject)
            .await
    }

    /// Records that the user `subject` at `issuer` signed out now, as a
    /// logout from the provider does: bearer ID tokens issued until now are
    /// refused from here on (see [`Sessions::signed_out_at`]).
    pub async fn remember_sign_out_of(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<(), SessionError> {
        let key = signed_out_key_of(issuer, subject);
        let now = self.clock.now_ms();
        let value = now.to_string().into_bytes();
        let ttl = self.settings.sign_out_memory;
        loop {
            match self.store.get(&key).await? {
                None => {
                    if self.store.insert_if_absent(&key, &value, ttl).await? {
                        return Ok(());
                    }
                }
                Some(current) => {
                    if parse_ms(&current.value).is_some_and(|at| at >= now) {
                        return Ok(());
                    }
                    if self
                        .store
                        .compare_and_swap(&key, current.version, &value, ttl)
                        .await?
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// When the user named by `issuer` and `subject` last signed out of a
    /// session here, if within `sign_out_memory`: ID tokens issued before
    /// then are no longer accepted as bearer tokens.
    pub async fn signed_out_at(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<UnixMillis>, SessionError> {
        let key = signed_out_key_of(issuer, subject);
        Ok(self.store.get(&key).await?.and_then(|v| parse_ms(&v.value)))
    }

    fn refresh_due(&self, record: &SessionRecord, now: UnixMillis) -> bool {
        record.tokens.refresh_token.is_some()
            && record.tokens.access_expires_at
                <= now.saturating_add(duration_ms(self.settings.refresh_before_expiry))
    }

    /// Takes the refresh lease and refreshes; see [`RefreshAttempt`] for
    /// what can come of it. `Err` only when the store failed.
    async fn try_refresh(
        &self,
        session_id: &str,
        key: &str,
        current: Versioned,
        record: SessionRecord,
        now: UnixMillis,
    ) -> Result<RefreshAttempt, SessionError> {
        let Some(refresh_token) = record.tokens.refresh_token.clone() else {
            return Ok(RefreshAttempt::Done(active(record)));
        };
        let leased = SessionRecord {
            refresh_lease: Some(RefreshLease {
                id: random_token(),
                until: now.saturating_add(duration_ms(self.settings.refresh_lease)),
            }),
            ..record.clone()
        };
        if !self
            .store
            .compare_and_swap(
                key,
                current.version,
                &leased.seal(&self.settings.seal, session_id),
                record.remaining(now),
            )
            .await?
        {
            return Ok(RefreshAttempt::Superseded);
        }
        let lease_version = current.version + 1;
        // The network call, with no lock and no transaction held.
        let refreshed = answer_within(
            call_budget(self.settings.refresh_lease),
            self.idp.refresh(&refresh_token),
        )
        .await;
        let now = self.clock.now_ms();
        match refreshed {
            Ok(grant) => {
                if let Some(identity) = &grant.identity
                    && (identity.issuer != record.identity.issuer
                        || identity.subject != record.identity.subject)
                {
                    self.store.delete(key).await?;
                    return Ok(RefreshAttempt::Ended(SessionError::Ended(
                        "the refreshed ID token names a different user".into(),
                    )));
                }
                let tokens = TokenSet {
                    refresh_token: grant.tokens.refresh_token.clone().or(Some(refresh_token)),
                    id_token: grant
                        .tokens
                        .id_token
                        .clone()
                        .or(record.tokens.id_token.clone()),
                    ..grant.tokens
                };
                let identity = match grant.identity {
                    None => record.identity,
                    Some(fresh) if grant.partial_identity => Identity {
                        email: fresh.email.or(record.identity.email),
                        userinfo_claims: if fresh.userinfo_claims.is_empty() {
                            record.identity.userinfo_claims
                        } else {
                            fresh.userinfo_claims
                        },
                        groups: if fresh.groups.is_empty() {
                            record.identity.groups
                        } else {
                            fresh.groups
                        },
                        ..fresh
                    },
                    Some(fresh) => fresh,
                };
                let updated = SessionRecord {
                    identity,
                    tokens,
                    refresh_lease: None,
                    ..record
                };
                let stored = self
                    .store
                    .compare_and_swap(
                        key,
                        lease_version,
                        &updated.seal(&self.settings.seal, session_id),
                        updated.remaining(now),
                    )
                    .await?;
                if !stored {
                    // Signed out meanwhile, or our lease ran out and was taken over:
                    // a fenced write never overwrites newer state.
                    return Ok(RefreshAttempt::Superseded);
                }
                Ok(RefreshAttempt::Done(active(updated)))
            }
            Err(IdpError::InvalidGrant(reason)) => {
                self.store.delete(key).await?;
                Ok(RefreshAttempt::Ended(SessionError::Ended(reason)))
            }
            Err(error) => {
                // Transient or invalid response: free the lease, keep the session.
                let freed = SessionRecord {
                    refresh_lease: None,
                    ..record.clone()
                };
                self.store
                    .compare_and_swap(
                        key,
                        lease_version,
                        &freed.seal(&self.settings.seal, session_id),
                        freed.remaining(now),
                    )
                    .await?;
                if record.tokens.access_expires_at > now {
                    Ok(RefreshAttempt::Done(active(record)))
                } else {
                    Ok(RefreshAttempt::Ended(SessionError::RefreshUnavailable(
                        error.to_string(),
                    )))
                }
            }
        }
    }
}

/// What one attempt at refreshing a session came to.
enum RefreshAttempt {
    /// The session to serve: refreshed, or (no refresh token; a transient
    /// provider failure while the old token still lasts) as it was.
    Done(ActiveSession),
    /// The request ends with this error: the session ended (the grant was
    /// revoked, another user), or its token expired with the provider down.
    Ended(SessionError),
    /// Someone else took the lease first, or the record changed under ours
    /// (signed out, taken over): read it again and decide again.
    Superseded,
}

fn active(record: SessionRecord) -> ActiveSession {
    ActiveSession {
        loaded: Arc::new(Loaded::from(record)),
    }
}
