//! The login state machine (`docs/DESIGN.md` §2).
//!
//! ```text
//! begin:     nothing stored; nonce, PKCE verifier, binding and destination
//!            go to the browser's encrypted per-login cookie
//! callback:  insert_if_absent ──▶ Exchanging{lease_id, lease_until}  exactly one winner
//!   winner:  token exchange, no lock held
//!            ok  ──commit_login──▶ Completed{lease_id} + new session   one atomic step
//!            err ──CAS──▶ Failed{reason}                               no session written
//!   others:  wait for Completed/Failed, bounded by the lease; an Exchanging
//!            record whose lease ran out is CASed to Failed
//!   Completed: the same browser gets the same session again (idempotent replay)
//! ```
//!
//! Every record carries the hash of a **browser binding** token that `begin`
//! hands out for a per-login cookie; a callback without it is rejected, which is
//! both login-CSRF protection and what makes a replay safe.
//!
//! The session id is derived, not stored: `TAG.HMAC_server(state, lease_id)`,
//! where TAG is the login's hash tag (see [`session_key`]) and the HMAC key
//! comes from the server secret ([`RecordSeal::session_id`]). The browser
//! holds `state` (it comes back on every callback) and the store holds only
//! `sha256(state)` as the key and the random `lease_id`, so every caller for
//! one login computes the same session id while neither a store dump nor a
//! `state` seen in a log yields it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clock::{Clock, UnixMillis, duration_ms};
use crate::idp::{
    AuthorizationRequest, CodeExchange, IdentityProvider, IdpError, answer_within, call_budget,
};
pub use crate::keys::login_key;
use crate::keys::{login_tag, session_key};
use crate::logout::{Registration, SessionIndex};
use crate::seal::RecordSeal;
use crate::secret::{
    AuthorizationCode, BrowserBinding, LoginNonce, LoginState, PkceVerifier, Redacted, SessionId,
    hash_token, random_token, redacted_option, token_matches_hash,
};
use crate::session::SessionRecord;
use crate::store::{LoginCommit, Store, StoreError};

/// Timing of the login state machine.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// How long a started login may take, and how long its final record is
    /// kept for idempotent replays.
    pub login_ttl: Duration,
    /// How long one callback may spend on the token exchange before the others
    /// treat the login as failed. The provider call gets three quarters of it
    /// ([`call_budget`]) and is abandoned after that.
    pub exchange_lease: Duration,
    /// How long a duplicate callback waits for the exchanging one.
    pub wait_timeout: Duration,
    /// Lifetime of the session a login creates.
    pub session_ttl: Duration,
    /// Seals the session record and derives the session id (the server secret).
    pub seal: RecordSeal,
}

impl Default for LoginSettings {
    fn default() -> Self {
        Self {
            login_ttl: Duration::from_secs(10 * 60),
            exchange_lease: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(30),
            session_ttl: Duration::from_secs(7 * 24 * 60 * 60),
            seal: RecordSeal::process_default(),
        }
    }
}

/// A login that has been started: where to send the browser and what the
/// browser keeps (in its encrypted per-login cookie). Nothing is stored.
#[derive(Clone)]
pub struct StartedLogin {
    /// The `state` parameter; also names the login.
    pub state: LoginState,
    /// The browser binding token, to be set in a per-login cookie.
    pub binding: BrowserBinding,
    /// The identity provider's authorization URL.
    pub authorization_url: String,
    /// The rest of what the callback needs, for the per-login cookie.
    pub pending: PendingLogin,
}

/// What a started login needs at its callback, carried by the browser (in
/// the per-login cookie, encrypted and authenticated) rather than written to
/// the store: an anonymous `/oauth2/start` writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// `sha256(state)`: the cookie belongs to this login and no other.
    pub state_hash: String,
    /// `sha256(binding)`: the binding that must come with it.
    pub binding_hash: String,
    /// The nonce the ID token must carry.
    pub nonce: LoginNonce,
    /// The PKCE verifier.
    pub pkce_verifier: PkceVerifier,
    /// Where the browser wanted to go.
    pub return_to: String,
    /// When the login started (Unix ms); it is refused `login_ttl` later.
    pub started: UnixMillis,
}

/// What a callback request brought.
#[derive(Clone, Copy)]
pub struct Callback<'a> {
    /// The `state` query parameter.
    pub state: &'a str,
    /// The `code` query parameter.
    pub code: &'a str,
    /// The browser binding from the per-login cookie, if the browser sent one.
    pub binding: Option<&'a str>,
    /// The rest of the per-login cookie, if the browser sent one.
    pub pending: Option<&'a PendingLogin>,
}

/// A finished login, as seen by one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedLogin {
    /// The session id to put in the session cookie. The same for every callback
    /// of one login.
    pub session_id: SessionId,
    /// Where the browser wanted to go.
    pub return_to: String,
    /// Whether this callback did the token exchange (false for duplicates and replays).
    pub exchanged_here: bool,
}

impl std::fmt::Debug for StartedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedLogin")
            .field("state", &self.state)
            .field("binding", &self.binding)
            .field("authorization_url", &"[redacted: holds the state]")
            .field("pending", &self.pending)
            .finish()
    }
}

impl std::fmt::Debug for Callback<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("state", &Redacted)
            .field("code", &Redacted)
            .field("binding", &redacted_option(&self.binding))
            .field("pending", &self.pending)
            .finish()
    }
}

/// Why a login ended without a session. Each reason says whose doing it
/// was, which decides the status the browser gets (the README's table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FailureReason {
    /// The provider answered the authorization request with `error=CODE`
    /// (the user declined, or may not use the client). `CODE` is checked by
    /// [`idp_error_code`]; it is the only text of the response kept.
    #[error("the identity provider refused the sign-in ({error})")]
    Refused {
        /// The provider's error code.
        error: String,
    },
    /// The authorization response names another issuer (RFC 9207): a mix-up
    /// or a forged response.
    #[error("the sign-in response came from another issuer")]
    WrongIssuer,
    /// The token endpoint refused the code (`invalid_grant`: used, expired,
    /// or issued to someone else).
    #[error("the identity provider refused the code: {0}")]
    CodeRejected(String),
    /// The provider's answer failed validation.
    #[error("the identity provider's answer failed validation: {0}")]
    Invalid(String),
    /// The provider could not be reached, timed out, or answered 5xx.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The exchanging callback did not finish within its lease (crashed or hung).
    #[error("the token exchange did not finish in time")]
    LeaseExpired,
    /// The exchanging request was cancelled (client went away, shutdown).
    #[error("the token exchange was cancelled")]
    Cancelled,
    /// The provider logged the user (or their provider session) out while
    /// this login was exchanging its code: the session was not written (I8).
    #[error("the identity provider ended this sign-in while it was being completed")]
    LoggedOut,
}

/// Why a callback did not produce a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No such login: never started, or expired.
    #[error("unknown or expired login")]
    UnknownLogin,
    /// The callback did not carry this login's browser binding.
    #[error("the callback did not come from the browser that started this login")]
    BindingMismatch,
    /// The login has ended in failure, in this callback or in one that ran
    /// at the same time; start a new one.
    #[error("login failed: {0}")]
    Failed(FailureReason),
    /// The login had already failed before this request came (a replay).
    #[error("login failed earlier: {0}")]
    AlreadyFailed(FailureReason),
    /// The login had already completed; an error response for it changes nothing.
    #[error("the login already completed")]
    AlreadyCompleted,
    /// Another callback is still exchanging the code after `wait_timeout`.
    #[error("the login is still being completed by another request")]
    StillInProgress,
    /// This callback's exchange outlived its lease and the login moved on;
    /// nothing was written.
    #[error("the login was taken over while its token exchange ran")]
    LeaseLost,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored login record could not be read.
    #[error("corrupt login record: {0}")]
    Corrupt(String),
}

/// A login record as stored under `login_key(state)`.
#[derive(Clone, Serialize, Deserialize)]
struct LoginRecord {
    binding_hash: String,
    return_to: String,
    phase: Phase,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "phase")]
enum Phase {
    Pending {
        nonce: LoginNonce,
        pkce_verifier: PkceVerifier,
    },
    Exchanging {
        nonce: LoginNonce,
        pkce_verifier: PkceVerifier,
        lease_id: String,
        lease_until: UnixMillis,
    },
    Completed {
        lease_id: String,
    },
    Failed {
        reason: FailureReason,
    },
}

impl std::fmt::Debug for LoginRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.phase {
            Phase::Pending { .. } => "Pending",
            Phase::Exchanging { .. } => "Exchanging",
            Phase::Completed { .. } => "Completed",
            Phase::Failed { .. } => "Failed",
        };
        f.debug_struct("LoginRecord")
            .field("return_to", &self.return_to)
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

impl LoginRecord {
    fn with_phase(&self, phase: Phase) -> Self {
        Self {
            phase,
            ..self.clone()
        }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("login records always serialize")
    }

    fn decode(bytes: &[u8]) -> Result<Self, LoginError> {
        serde_json::from_slice(bytes).map_err(|e| LoginError::Corrupt(e.to_string()))
    }
}

/// The provider's `error` code if it is a plausible one (RFC 6749 §4.1.2.1:
/// short, of `A-Z a-z 0-9 _ . -`, a subset of the spec's character set that
/// holds every registered code), else `invalid_error_code`. The response's
/// `error_description` and `error_uri` are never kept: they are whatever the
/// sender of the link wrote.
pub fn idp_error_code(error: &str) -> String {
    let plausible = !error.is_empty()
        && error.len() <= 64
        && error
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if plausible {
        error.to_owned()
    } else {
        "invalid_error_code".to_owned()
    }
}

/// The session id of a completed login; see the module documentation.
fn derive_session_id(seal: &RecordSeal, state: &str, lease_id: &str) -> SessionId {
    SessionId::new(seal.session_id(&login_tag(state), state, lease_id))
}

/// Runs logins against one store and one identity provider.
#[derive(Clone)]
pub struct LoginFlow {
    store: Arc<dyn Store>,
    idp: Arc<dyn IdentityProvider>,
    clock: Arc<dyn Clock>,
    index: SessionIndex,
    settings: LoginSettings,
}

impl LoginFlow {
    /// A login flow over `store` and `idp`, judging leases by `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        idp: Arc<dyn IdentityProvider>,
        clock: Arc<dyn Clock>,
        settings: LoginSettings,
    ) -> Self {
        Self {
            index: SessionIndex::new(store.clone(), clock.clone()),
            store,
            idp,
            clock,
            settings,
        }
    }

    /// Starts a login that will return the browser to `return_to` (already
    /// checked to be a local path by the caller). Writes nothing: what the
    /// callback needs travels in [`StartedLogin::pending`] and the binding,
    /// and the login's record is first written by its first callback. (It
    /// cannot fail today; the `Result` keeps room for providers that need a
    /// call here, such as pushed authorization requests.)
    pub async fn begin(&self, return_to: &str) -> Result<StartedLogin, LoginError> {
        self.begin_with(return_to, Vec::new()).await
    }

    /// [`begin`](Self::begin), passing `passed` on to the authorization
    /// request (parameters the caller has checked, such as `login_hint`).
    pub async fn begin_with(
        &self,
        return_to: &str,
        passed: Vec<(String, String)>,
    ) -> Result<StartedLogin, LoginError> {
        let request = AuthorizationRequest {
            state: LoginState::new(random_token()),
            nonce: LoginNonce::new(random_token()),
            pkce_verifier: PkceVerifier::new(random_token()),
            passed,
        };
        let binding = BrowserBinding::new(random_token());
        let pending = PendingLogin {
            state_hash: hash_token(request.state.secret()),
            binding_hash: hash_token(binding.secret()),
            nonce: request.nonce.clone(),
            pkce_verifier: request.pkce_verifier.clone(),
            return_to: return_to.to_owned(),
            started: self.clock.now_ms(),
        };
        Ok(StartedLogin {
            authorization_url: self.idp.authorization_url(&request),
            state: request.state,
            binding,
            pending,
        })
    }

    /// The first record of a login, written by its first callback: the
    /// claim (`Exchanging`), from what the browser's cookie carried, with the
    /// TTL that keeps it until the login's end. Refused when the cookie is
    /// missing or expired (`UnknownLogin`) or belongs to another login or
    /// binding (`BindingMismatch`).
    fn first_claim(&self, callback: &Callback<'_>) -> Result<(LoginRecord, Duration), LoginError> {
        // Without the cookie nothing is known of this `state`: never started
        // here, or started in another browser.
        let Some(pending) = callback.pending else {
            return Err(LoginError::UnknownLogin);
        };
        let bound = callback
            .binding
            .is_some_and(|binding| token_matches_hash(binding, &pending.binding_hash));
        if !bound || !token_matches_hash(callback.state, &pending.state_hash) {
            return Err(LoginError::BindingMismatch);
        }
        let now = self.clock.now_ms();
        let ends = pending
            .started
            .saturating_add(duration_ms(self.settings.login_ttl));
        if now >= ends {
            return Err(LoginError::UnknownLogin);
        }
        let record = LoginRecord {
            binding_hash: pending.binding_hash.clone(),
            return_to: pending.return_to.clone(),
            phase: Phase::Exchanging {
                nonce: pending.nonce.clone(),
                pkce_verifier: pending.pkce_verifier.clone(),
                lease_id: random_token(),
                lease_until: now + duration_ms(self.settings.exchange_lease),
            },
        };
        Ok((record, Duration::from_millis(ends - now)))
    }

    /// Handles a callback. However many callbacks of one login run at once, on
    /// however many replicas, the code is exchanged once and all of them that
    /// carry the binding get the same session.
    pub async fn complete(&self, callback: Callback<'_>) -> Result<CompletedLogin, LoginError> {
        let key = login_key(callback.state);
        let wait_deadline = Instant::now() + self.settings.wait_timeout;
        // Whether this callback saw the login in flight: a Failed record is
        // then this attempt's outcome, otherwise a replay of an old one.
        let mut saw_in_flight = false;
        loop {
            let Some(current) = self.store.get(&key).await? else {
                // The first callback: the claim is the login's first record,
                // and the first insert wins (I1) exactly as the first CAS did.
                let (claimed, ttl) = self.first_claim(&callback)?;
                saw_in_flight = true;
                if self
                    .store
                    .insert_if_absent(&key, &claimed.encode(), ttl)
                    .await?
                {
                    let claim = self.inserted_claim(key.clone(), claimed).await?;
                    return self.exchange(claim, callback).await;
                }
                continue;
            };
            let record = LoginRecord::decode(&current.value)?;
            let bound = callback
                .binding
                .is_some_and(|b| token_matches_hash(b, &record.binding_hash));
            if !bound {
                return Err(LoginError::BindingMismatch);
            }
            match &record.phase {
                Phase::Pending {
                    nonce,
                    pkce_verifier,
                } => {
                    let lease_id = random_token();
                    let claimed = record.with_phase(Phase::Exchanging {
                        nonce: nonce.clone(),
                        pkce_verifier: pkce_verifier.clone(),
                        lease_id,
                        lease_until: self.clock.now_ms()
                            + duration_ms(self.settings.exchange_lease),
                    });
                    let won = self
                        .store
                        .compare_and_swap(
                            &key,
                            current.version,
                            &claimed.encode(),
                            self.settings.login_ttl,
                        )
                        .await?;
                    saw_in_flight = true;
                    if won {
                        let claim = Claim {
                            key,
                            version: current.version + 1,
                            record: claimed,
                        };
                        return self.exchange(claim, callback).await;
                    }
                }
                Phase::Exchanging { lease_until, .. } => {
                    saw_in_flight = true;
                    let now = self.clock.now_ms();
                    if now >= *lease_until {
                        let failed = record.with_phase(Phase::Failed {
                            reason: FailureReason::LeaseExpired,
                        });
                        self.store
                            .compare_and_swap(
                                &key,
                                current.version,
                                &failed.encode(),
                                self.settings.login_ttl,
                            )
                            .await?;
                        continue;
                    }
                    let left = wait_deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(LoginError::StillInProgress);
                    }
                    let lease_left = Duration::from_millis(lease_until - now);
                    self.store
                        .wait_for_change(&key, Some(current.version), left.min(lease_left))
                        .await?;
                }
                Phase::Completed { lease_id } => {
                    return Ok(CompletedLogin {
                        session_id: derive_session_id(
                            &self.settings.seal,
                            callback.state,
                            lease_id,
                        ),
                        return_to: record.return_to.clone(),
                        exchanged_here: false,
                    });
                }
                Phase::Failed { reason } if saw_in_flight => {
                    return Err(LoginError::Failed(reason.clone()));
                }
                Phase::Failed { reason } => return Err(LoginError::AlreadyFailed(reason.clone())),
            }
        }
    }

    /// The claim this callback just inserted, with the version the store gave
    /// it (a fresh record's version is the store's to choose). `LeaseLost`
    /// if the record is no longer this claim (its lease ran out and another
    /// callback moved the login on meanwhile).
    async fn inserted_claim(&self, key: String, claimed: LoginRecord) -> Result<Claim, LoginError> {
        let Phase::Exchanging { lease_id, .. } = &claimed.phase else {
            unreachable!("a first claim is always Exchanging");
        };
        let current = self.store.get(&key).await?.ok_or(LoginError::LeaseLost)?;
        match LoginRecord::decode(&current.value)?.phase {
            Phase::Exchanging { lease_id: held, .. } if &held == lease_id => Ok(Claim {
                key,
                version: current.version,
                record: claimed,
            }),
            _ => Err(LoginError::LeaseLost),
        }
    }

    /// Where a callback of a completed login goes when it comes without the
    /// login's cookie (spent when the login completed) from the browser
    /// that holds the session this login made: the history's forward
    /// button re-sending the provider's form, a reopened tab, a bookmarked
    /// callback. The login's `return_to` when `session_id` is the one this
    /// login made (only that browser can show it: I4, nothing is
    /// exchanged); `None` for any other login, phase or session.
    pub async fn replayed_by_its_session(
        &self,
        state: &str,
        session_id: &SessionId,
    ) -> Result<Option<String>, LoginError> {
        let Some(current) = self.store.get(&login_key(state)).await? else {
            return Ok(None);
        };
        let record = LoginRecord::decode(&current.value)?;
        let Phase::Completed { lease_id } = &record.phase else {
            return Ok(None);
        };
        let made = derive_session_id(&self.settings.seal, state, lease_id);
        let same =
            subtle::ConstantTimeEq::ct_eq(made.secret().as_bytes(), session_id.secret().as_bytes());
        Ok(bool::from(same).then(|| record.return_to.clone()))
    }

    /// Ends a login whose authorization response was an error (`error=` from
    /// the provider, or a failed `iss` check): it becomes `Failed` and no code is
    /// ever exchanged for it. Needs the browser binding like a callback.
    /// Returns `reason` once written; a login that had already failed is
    /// [`LoginError::AlreadyFailed`] with its first reason.
    pub async fn abort(
        &self,
        state: &str,
        binding: Option<&str>,
        pending: Option<&PendingLogin>,
        reason: FailureReason,
    ) -> Result<FailureReason, LoginError> {
        let key = login_key(state);
        loop {
            let Some(current) = self.store.get(&key).await? else {
                // No callback came yet: the failure is the login's first
                // record, so that no later callback can exchange a code for it.
                let callback = Callback {
                    state,
                    code: "",
                    binding,
                    pending,
                };
                let (claimed, ttl) = self.first_claim(&callback)?;
                let failed = claimed.with_phase(Phase::Failed {
                    reason: reason.clone(),
                });
                if self
                    .store
                    .insert_if_absent(&key, &failed.encode(), ttl)
                    .await?
                {
                    return Ok(reason);
                }
                continue;
            };
            let record = LoginRecord::decode(&current.value)?;
            if !binding.is_some_and(|b| token_matches_hash(b, &record.binding_hash)) {
                return Err(LoginError::BindingMismatch);
            }
            match &record.phase {
                Phase::Pending { .. } => {
                    let failed = record.with_phase(Phase::Failed {
                        reason: reason.clone(),
                    });
                    if self
                        .store
                        .compare_and_swap(
                            &key,
                            current.version,
                            &failed.encode(),
                            self.settings.login_ttl,
                        )
                        .await?
                    {
                        return Ok(reason);
                    }
                }
                // A callback with a code got there first; its outcome stands.
                Phase::Exchanging { .. } => return Err(LoginError::StillInProgress),
                Phase::Completed { .. } => return Err(LoginError::AlreadyCompleted),
                Phase::Failed { reason } => return Err(LoginError::AlreadyFailed(reason.clone())),
            }
        }
    }

    /// The winner's half: exchange outside any lock, then commit or fail.
    async fn exchange(
        &self,
        claim: Claim,
        callback: Callback<'_>,
    ) -> Result<CompletedLogin, LoginError> {
        let Phase::Exchanging {
            nonce,
            pkce_verifier,
            lease_id,
            lease_until,
        } = &claim.record.phase
        else {
            unreachable!("a claim is always in the Exchanging phase");
        };
        // If this future is dropped mid-exchange, the guard marks the login failed.
        let guard = AbandonGuard::new(self.store.clone(), &claim, self.settings.login_ttl);
        let exchange = self.idp.exchange_code(CodeExchange {
            code: AuthorizationCode::new(callback.code),
            pkce_verifier: pkce_verifier.clone(),
            nonce: nonce.clone(),
        });
        let exchanged = answer_within(call_budget(self.settings.exchange_lease), exchange)
            .await
            .and_then(|grant| match grant.identity {
                Some(identity) => Ok((identity, grant.tokens)),
                None => Err(IdpError::Invalid(
                    "the token response has no ID token".into(),
                )),
            });
        let (identity, tokens) = match exchanged {
            Ok(ok) => ok,
            Err(error) => {
                let reason = match error {
                    IdpError::InvalidGrant(detail) => FailureReason::CodeRejected(detail),
                    IdpError::Invalid(detail) => FailureReason::Invalid(detail),
                    IdpError::Transient(detail) => FailureReason::Unavailable(detail),
                };
                self.fail_claim(&claim, reason.clone()).await?;
                guard.disarm();
                return Err(LoginError::Failed(reason));
            }
        };
        // No commit after the lease: a logout's tombstone outlives every
        // lease that was running when it came (by the clock skew, which is
        // also the margin for the two store calls that follow).
        if self.clock.now_ms() >= *lease_until {
            self.fail_claim(&claim, FailureReason::LeaseExpired).await?;
            guard.disarm();
            return Err(LoginError::LeaseLost);
        }
        let session_id = derive_session_id(&self.settings.seal, callback.state, lease_id);
        let session = SessionRecord::new(
            identity,
            tokens,
            self.clock.now_ms(),
            self.settings.session_ttl,
        );
        let completed = claim.record.with_phase(Phase::Completed {
            lease_id: lease_id.clone(),
        });
        let session_key = session_key(session_id.secret());
        // Indexed before it exists, so that a logout from now on finds it.
        if self
            .index
            .register(&session_key, &session.identity, session.expires_at)
            .await?
            == Registration::LoggedOut
        {
            self.fail_claim(&claim, FailureReason::LoggedOut).await?;
            guard.disarm();
            return Err(LoginError::Failed(FailureReason::LoggedOut));
        }
        let committed = self
            .store
            .commit_login(LoginCommit {
                login_key: &claim.key,
                login_version: claim.version,
                login_value: &completed.encode(),
                login_ttl: self.settings.login_ttl,
                session_key: &session_key,
                session_value: &session.seal(&self.settings.seal, session_id.secret()),
                session_ttl: self.settings.session_ttl,
            })
            .await?;
        if !committed {
            // Still this claim's record: then the session key was taken, by
            // a logout that revoked it after the registration.
            let ours = self
                .store
                .get(&claim.key)
                .await?
                .is_some_and(|current| current.version == claim.version);
            if ours {
                self.fail_claim(&claim, FailureReason::LoggedOut).await?;
                guard.disarm();
                return Err(LoginError::Failed(FailureReason::LoggedOut));
            }
            guard.disarm();
            return Err(LoginError::LeaseLost);
        }
        guard.disarm();
        Ok(CompletedLogin {
            session_id,
            return_to: claim.record.return_to.clone(),
            exchanged_here: true,
        })
    }
}

impl LoginFlow {
    /// Ends a claimed login `Failed{reason}`, fenced by the claim's version
    /// (if the lease was taken over, the record already says so).
    async fn fail_claim(&self, claim: &Claim, reason: FailureReason) -> Result<(), LoginError> {
        let failed = claim.record.with_phase(Phase::Failed { reason });
        self.store
            .compare_and_swap(
                &claim.key,
                claim.version,
                &failed.encode(),
                self.settings.login_ttl,
            )
            .await?;
        Ok(())
    }
}

/// A won claim on a login: its key, the version the claim wrote, and the record.
struct Claim {
    key: String,
    version: u64,
    record: LoginRecord,
}

/// Marks a claimed login `Failed{Cancelled}` if the exchanging future is dropped
/// before it reached an outcome, so duplicates need not wait out the lease. The
/// write is a fenced CAS at the claim's version: it can never undo a commit. If
/// the process dies instead, the lease expiry does the same job.
struct AbandonGuard {
    pending: Option<FencedWrite>,
}

/// A CAS to run later.
struct FencedWrite {
    store: Arc<dyn Store>,
    key: String,
    version: u64,
    value: Vec<u8>,
    ttl: Duration,
}

impl AbandonGuard {
    fn new(store: Arc<dyn Store>, claim: &Claim, ttl: Duration) -> Self {
        let failed = claim.record.with_phase(Phase::Failed {
            reason: FailureReason::Cancelled,
        });
        Self {
            pending: Some(FencedWrite {
                store,
                key: claim.key.clone(),
                version: claim.version,
                value: failed.encode(),
                ttl,
            }),
        }
    }

    fn disarm(mut self) {
        self.pending = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let Some(write) = self.pending.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let FencedWrite {
                    store,
                    key,
                    version,
                    value,
                    ttl,
                } = write;
                if let Err(error) = store.compare_and_swap(&key, version, &value, ttl).await {
                    tracing::warn!(%error, "could not mark an abandoned login as failed; its lease will expire");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag between `{` and `}`, as Redis Cluster computes slots.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn a_login_and_its_session_share_one_hash_tag() {
        let state = random_token();
        let session_id = derive_session_id(&RecordSeal::process_default(), &state, &random_token());
        assert_eq!(
            hash_tag(&login_key(&state)),
            hash_tag(&session_key(session_id.secret()))
        );
        assert!(!hash_tag(&login_key(&state)).is_empty());
        let other = random_token();
        assert_ne!(hash_tag(&login_key(&state)), hash_tag(&login_key(&other)));
    }

    #[test]
    fn session_ids_are_derived_per_lease_and_keep_256_bits() {
        let state = random_token();
        let seal = RecordSeal::new(&[3; 32], &[]);
        let a = derive_session_id(&seal, &state, "lease-a");
        assert_eq!(a, derive_session_id(&seal, &state, "lease-a"));
        assert_ne!(a, derive_session_id(&seal, &state, "lease-b"));
        // state alone does not give it: the server secret is part of it.
        assert_ne!(
            a,
            derive_session_id(&RecordSeal::new(&[4; 32], &[]), &state, "lease-a")
        );
        let (_, mac) = a.secret().split_once('.').unwrap();
        assert_eq!(mac.len(), 43);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        use crate::idp::{CodeExchange, TokenSet};
        let secret = "s3cret-value-that-must-not-show";
        let pending = PendingLogin {
            state_hash: hash_token(secret),
            binding_hash: hash_token(secret),
            nonce: secret.into(),
            pkce_verifier: secret.into(),
            return_to: "/app".into(),
            started: 1,
        };
        let shown = [
            format!(
                "{:?}",
                StartedLogin {
                    state: secret.into(),
                    binding: secret.into(),
                    authorization_url: format!("https://idp/authorize?state={secret}"),
                    pending: pending.clone(),
                }
            ),
            format!(
                "{:?}",
                Callback {
                    state: secret,
                    code: secret,
                    binding: Some(secret),
                    pending: Some(&pending),
                }
            ),
            format!(
                "{:?}",
                CompletedLogin {
                    session_id: secret.into(),
                    return_to: "/app".into(),
                    exchanged_here: true,
                }
            ),
            format!(
                "{:?}",
                TokenSet {
                    access_token: secret.into(),
                    access_expires_at: 1,
                    refresh_token: Some(secret.into()),
                    id_token: Some(secret.into()),
                }
            ),
            format!(
                "{:?}",
                CodeExchange {
                    code: secret.into(),
                    pkce_verifier: secret.into(),
                    nonce: secret.into(),
                }
            ),
        ];
        for text in shown {
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::idp_error_code;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn only_plausible_error_codes_are_kept(error in "\\PC{0,80}|[a-z_]{1,70}") {
                let kept = idp_error_code(&error);
                prop_assert!(kept == error || kept == "invalid_error_code");
                prop_assert!(kept.len() <= 64);
                prop_assert!(kept.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            }
        }
    }
}
