//! The flows the tests drive, behind two small traits so that the same scenario
//! runs against latchkey and against the deliberately broken flows that serve
//! as negative controls. The broken flows live only here, in test code.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use latchkey::clock::{Clock, duration_ms};
use latchkey::idp::{CodeExchange, IdentityProvider};
use latchkey::login::{Callback, LoginFlow, PendingLogin};
use latchkey::seal::RecordSeal;
use latchkey::secret::{SessionId, random_token};
use latchkey::session::{SessionRecord, Sessions, session_key};
use latchkey::store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// A started login, as a browser would hold it.
#[derive(Debug, Clone)]
pub struct Begun {
    pub state: String,
    pub binding: String,
    /// What latchkey's per-login cookie carries (`None` for the naive flow).
    pub pending: Option<PendingLogin>,
}

/// Something that runs logins: `begin`, then callbacks.
#[async_trait]
pub trait LoginDriver: Send + Sync {
    async fn begin(&self) -> Begun;
    /// One callback for `begun`; the session id on success.
    async fn callback(&self, begun: &Begun) -> Result<String, String>;
}

#[async_trait]
impl LoginDriver for LoginFlow {
    async fn begin(&self) -> Begun {
        let started = LoginFlow::begin(self, "/after-login")
            .await
            .expect("begin login");
        Begun {
            state: started.state.into_secret(),
            binding: started.binding.into_secret(),
            pending: Some(started.pending),
        }
    }

    async fn callback(&self, begun: &Begun) -> Result<String, String> {
        self.complete(Callback {
            state: &begun.state,
            code: "the-code",
            binding: Some(&begun.binding),
            pending: begun.pending.as_ref(),
        })
        .await
        .map(|done| done.session_id.secret().to_owned())
        .map_err(|e| e.to_string())
    }
}

/// A whole login through `flow` with the authorization code `code`; the
/// session id it made.
pub async fn sign_in(flow: &LoginFlow, code: &str) -> SessionId {
    let started = flow.begin("/").await.expect("begin login");
    flow.complete(Callback {
        state: started.state.secret(),
        code,
        binding: Some(started.binding.secret()),
        pending: Some(&started.pending),
    })
    .await
    .expect("sign in")
    .session_id
}

const TTL: Duration = Duration::from_secs(600);

#[derive(Serialize, Deserialize)]
struct NaiveLogin {
    session_id: Option<String>,
}

/// The bug from the case study: check for a session, exchange the code, and
/// only then take a lock for the final session call.
pub struct NaiveLoginFlow {
    pub store: Arc<dyn Store>,
    pub idp: Arc<dyn IdentityProvider>,
    pub clock: Arc<dyn Clock>,
    pub session_lock: Mutex<()>,
}

#[async_trait]
impl LoginDriver for NaiveLoginFlow {
    async fn begin(&self) -> Begun {
        let state = random_token();
        let record = serde_json::to_vec(&NaiveLogin { session_id: None }).unwrap();
        self.store
            .insert_if_absent(&format!("login:{state}"), &record, TTL)
            .await
            .unwrap();
        Begun {
            state,
            binding: String::new(),
            pending: None,
        }
    }

    async fn callback(&self, begun: &Begun) -> Result<String, String> {
        let key = format!("login:{}", begun.state);
        // 1. Check: is there a session already?
        let login = self.store.get(&key).await.map_err(|e| e.to_string())?;
        let login = login.ok_or("unknown login")?;
        let parsed: NaiveLogin = serde_json::from_slice(&login.value).unwrap();
        if let Some(existing) = parsed.session_id {
            return Ok(existing);
        }
        // 2. Exchange the code.
        let grant = self
            .idp
            .exchange_code(CodeExchange {
                code: "the-code".into(),
                pkce_verifier: "".into(),
                nonce: "".into(),
            })
            .await
            .map_err(|e| e.to_string())?;
        // 3. The visible mutex, around the final session call only.
        let _guard = self.session_lock.lock().await;
        let session_id = random_token();
        let record = SessionRecord::new(
            grant.identity.unwrap(),
            grant.tokens,
            self.clock.now_ms(),
            TTL,
        );
        self.store
            .insert_if_absent(
                &session_key(&session_id),
                &record.seal(&RecordSeal::process_default(), &session_id),
                TTL,
            )
            .await
            .map_err(|e| e.to_string())?;
        let done = serde_json::to_vec(&NaiveLogin {
            session_id: Some(session_id.clone()),
        })
        .unwrap();
        if let Some(now) = self.store.get(&key).await.map_err(|e| e.to_string())? {
            let _ = self
                .store
                .compare_and_swap(&key, now.version, &done, TTL)
                .await;
        }
        Ok(session_id)
    }
}

/// Something that hands out a session's access token, refreshing if due.
#[async_trait]
pub trait RefreshDriver: Send + Sync {
    async fn access_token(&self, session_id: &SessionId) -> Result<String, String>;
}

#[async_trait]
impl RefreshDriver for Sessions {
    async fn access_token(&self, session_id: &SessionId) -> Result<String, String> {
        self.load(session_id)
            .await
            .map(|s| s.tokens().access_token.secret().to_owned())
            .map_err(|e| e.to_string())
    }
}

/// Refresh without a lease: read, refresh if due, write back.
pub struct NaiveRefresh {
    pub store: Arc<dyn Store>,
    pub idp: Arc<dyn IdentityProvider>,
    pub clock: Arc<dyn Clock>,
    pub refresh_before_expiry: Duration,
}

#[async_trait]
impl RefreshDriver for NaiveRefresh {
    async fn access_token(&self, session_id: &SessionId) -> Result<String, String> {
        let session_id = session_id.secret();
        let key = session_key(session_id);
        let current = self.store.get(&key).await.map_err(|e| e.to_string())?;
        let current = current.ok_or("no session")?;
        let seal = RecordSeal::process_default();
        let mut record = SessionRecord::open(&seal, session_id, &current.value).unwrap();
        let due = record.tokens.access_expires_at
            <= self.clock.now_ms() + duration_ms(self.refresh_before_expiry);
        if due {
            let refresh_token = record
                .tokens
                .refresh_token
                .clone()
                .ok_or("no refresh token")?;
            let grant = self
                .idp
                .refresh(&refresh_token)
                .await
                .map_err(|e| e.to_string())?;
            record.tokens = grant.tokens;
            if let Some(latest) = self.store.get(&key).await.map_err(|e| e.to_string())? {
                let _ = self
                    .store
                    .compare_and_swap(&key, latest.version, &record.seal(&seal, session_id), TTL)
                    .await;
            }
        }
        Ok(record.tokens.access_token.into_secret())
    }
}

/// Refresh behind one process-wide lock: correct for one session, but every
/// session waits for every other session's identity provider call.
pub struct GlobalLockRefresh {
    pub sessions: Sessions,
    pub lock: Mutex<()>,
}

#[async_trait]
impl RefreshDriver for GlobalLockRefresh {
    async fn access_token(&self, session_id: &SessionId) -> Result<String, String> {
        let _guard = self.lock.lock().await;
        self.sessions.access_token(session_id).await
    }
}
