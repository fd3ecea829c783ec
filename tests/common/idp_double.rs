//! A controllable identity provider: its token calls block on gates that the
//! test opens, it counts calls, and it rotates refresh tokens like a real
//! provider (a rotated-away token is `invalid_grant`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use latchkey::clock::{Clock, UnixMillis, duration_ms};
use latchkey::idp::{
    AuthorizationRequest, CodeExchange, Grant, Identity, IdentityProvider, IdpError, TokenSet,
};
use latchkey::secret::RefreshToken;
use tokio::sync::watch;

use super::within;

/// A gate that calls pass through only once the test opens it. It counts the
/// calls that have arrived at it.
#[derive(Debug)]
pub struct Gate {
    open: watch::Sender<bool>,
    arrived: watch::Sender<usize>,
}

impl Gate {
    pub fn new(open: bool) -> Self {
        Self {
            open: watch::Sender::new(open),
            arrived: watch::Sender::new(0),
        }
    }

    /// Called by the double: count the arrival, then wait until open.
    pub async fn pass(&self) {
        self.arrived.send_modify(|n| *n += 1);
        let mut open = self.open.subscribe();
        open.wait_for(|o| *o).await.expect("gate dropped");
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn arrived(&self) -> usize {
        *self.arrived.borrow()
    }

    pub fn subscribe_arrivals(&self) -> watch::Receiver<usize> {
        self.arrived.subscribe()
    }

    /// Waits until at least `n` calls have arrived.
    pub async fn wait_arrived(&self, n: usize) {
        let mut arrived = self.arrived.subscribe();
        within(
            &format!("{n} calls at the gate"),
            arrived.wait_for(|a| *a >= n),
        )
        .await
        .expect("gate dropped");
    }
}

pub const ISSUER: &str = "https://idp.test";

pub fn identity(subject: &str) -> Identity {
    Identity {
        issuer: ISSUER.into(),
        subject: subject.into(),
        email: Some(format!("{subject}@example.test")),
        groups: vec!["staff".into()],
        sid: None,
        issued_at: None,
        // What a provider's userinfo tells beyond the ID token.
        userinfo_claims: serde_json::json!({ "office": "Basel" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }
}

/// The double.
pub struct ControlledIdp {
    pub exchange_gate: Gate,
    pub refresh_gate: Gate,
    clock: Arc<dyn Clock>,
    access_ttl: Duration,
    refresh_latency: Mutex<Duration>,
    exchanges: AtomicUsize,
    refreshes: AtomicUsize,
    issued: AtomicUsize,
    exchange_failures: Mutex<VecDeque<IdpError>>,
    refresh_failures: Mutex<VecDeque<IdpError>>,
    refresh_subject: Mutex<Option<String>>,
    exchange_subject: Mutex<Option<String>>,
    /// Refreshed identities carry no email and no groups; `Some(true)`: and
    /// say so (`partial_identity`), as when userinfo could not be read.
    refresh_without_claims: Mutex<Option<bool>>,
    presented_refresh_tokens: Mutex<Vec<String>>,
    used_refresh_tokens: Mutex<HashSet<String>>,
    refreshes_in_flight: InFlight,
    exchanges_in_flight: InFlight,
}

/// Calls in flight at the double: how many now, the most at once, and when
/// (by the double's clock) each call its caller gave up on was dropped.
#[derive(Debug, Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
    abandoned_at: Mutex<Vec<UnixMillis>>,
}

/// One call in flight; dropped when it answers or when its caller drops it.
struct Call<'a> {
    in_flight: &'a InFlight,
    clock: &'a dyn Clock,
    answered: bool,
}

impl<'a> Call<'a> {
    fn start(in_flight: &'a InFlight, clock: &'a dyn Clock) -> Self {
        let now = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
        in_flight.most.fetch_max(now, Ordering::SeqCst);
        Self {
            in_flight,
            clock,
            answered: false,
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.in_flight.now.fetch_sub(1, Ordering::SeqCst);
        if !self.answered {
            let at = self.clock.now_ms();
            self.in_flight.abandoned_at.lock().unwrap().push(at);
        }
    }
}

impl ControlledIdp {
    /// A double whose gates are open, issuing access tokens valid for `access_ttl`.
    pub fn new(clock: Arc<dyn Clock>, access_ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            exchange_gate: Gate::new(true),
            refresh_gate: Gate::new(true),
            clock,
            access_ttl,
            refresh_latency: Mutex::new(Duration::ZERO),
            exchanges: AtomicUsize::new(0),
            refreshes: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            exchange_failures: Mutex::new(VecDeque::new()),
            refresh_failures: Mutex::new(VecDeque::new()),
            refresh_subject: Mutex::new(None),
            exchange_subject: Mutex::new(None),
            refresh_without_claims: Mutex::new(None),
            presented_refresh_tokens: Mutex::new(Vec::new()),
            used_refresh_tokens: Mutex::new(HashSet::new()),
            refreshes_in_flight: InFlight::default(),
            exchanges_in_flight: InFlight::default(),
        })
    }

    pub fn exchanges(&self) -> usize {
        self.exchanges.load(Ordering::SeqCst)
    }

    pub fn refreshes(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// The most refresh calls that were in flight at once.
    pub fn most_refreshes_in_flight(&self) -> usize {
        self.refreshes_in_flight.most.load(Ordering::SeqCst)
    }

    /// When (by the double's clock) each refresh call whose caller gave up
    /// on it was dropped, in order.
    pub fn abandoned_refreshes(&self) -> Vec<UnixMillis> {
        self.refreshes_in_flight
            .abandoned_at
            .lock()
            .unwrap()
            .clone()
    }

    /// When (by the double's clock) each code exchange whose caller gave up
    /// on it was dropped, in order.
    pub fn abandoned_exchanges(&self) -> Vec<UnixMillis> {
        self.exchanges_in_flight
            .abandoned_at
            .lock()
            .unwrap()
            .clone()
    }

    pub fn presented_refresh_tokens(&self) -> Vec<String> {
        self.presented_refresh_tokens.lock().unwrap().clone()
    }

    pub fn fail_next_exchange(&self, error: IdpError) {
        self.exchange_failures.lock().unwrap().push_back(error);
    }

    pub fn fail_next_refresh(&self, error: IdpError) {
        self.refresh_failures.lock().unwrap().push_back(error);
    }

    /// Simulated provider latency for refresh calls.
    pub fn set_refresh_latency(&self, latency: Duration) {
        *self.refresh_latency.lock().unwrap() = latency;
    }

    /// Makes refreshed ID tokens name `subject` (to test the OIDC Core 12.2 check).
    pub fn refresh_as_subject(&self, subject: &str) {
        *self.refresh_subject.lock().unwrap() = Some(subject.into());
    }

    /// Makes refreshed identities carry no email and no groups; `partial`:
    /// flagged as partial (userinfo unreadable), else meant (the user lost them).
    pub fn refresh_without_claims(&self, partial: bool) {
        *self.refresh_without_claims.lock().unwrap() = Some(partial);
    }

    /// Code exchanges sign in `subject` (default: `user-of-CODE`); each
    /// code still gets its own provider session, `sid-of-CODE`.
    pub fn exchange_as_subject(&self, subject: &str) {
        *self.exchange_subject.lock().unwrap() = Some(subject.to_owned());
    }

    /// Fresh tokens, with a refresh token the double will accept once.
    pub fn issue_tokens(&self) -> TokenSet {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        TokenSet {
            access_token: format!("access-{n}").into(),
            access_expires_at: self.clock.now_ms() + duration_ms(self.access_ttl),
            refresh_token: Some(format!("refresh-{n}").into()),
            id_token: Some(format!("id-{n}").into()),
        }
    }
}

#[async_trait]
impl IdentityProvider for ControlledIdp {
    fn authorization_url(&self, request: &AuthorizationRequest) -> String {
        format!("{ISSUER}/authorize?state={}", request.state.secret())
    }

    async fn exchange_code(&self, exchange: CodeExchange) -> Result<Grant, IdpError> {
        self.exchanges.fetch_add(1, Ordering::SeqCst);
        // The ID token is issued when the request arrives; the gate holds
        // the answer on its way back.
        let issued_at = self.clock.now_ms();
        let mut call = Call::start(&self.exchanges_in_flight, &*self.clock);
        self.exchange_gate.pass().await;
        call.answered = true;
        if let Some(error) = self.exchange_failures.lock().unwrap().pop_front() {
            return Err(error);
        }
        let code = exchange.code.secret();
        let subject = (self.exchange_subject.lock().unwrap().clone())
            .unwrap_or_else(|| format!("user-of-{code}"));
        Ok(Grant {
            identity: Some(Identity {
                sid: Some(format!("sid-of-{code}")),
                issued_at: Some(issued_at),
                userinfo_claims: Default::default(),
                ..identity(&subject)
            }),
            tokens: self.issue_tokens(),
            partial_identity: false,
        })
    }

    async fn refresh(&self, refresh_token: &RefreshToken) -> Result<Grant, IdpError> {
        let refresh_token = refresh_token.secret();
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        self.presented_refresh_tokens
            .lock()
            .unwrap()
            .push(refresh_token.to_owned());
        let mut call = Call::start(&self.refreshes_in_flight, &*self.clock);
        self.refresh_gate.pass().await;
        call.answered = true;
        let latency = *self.refresh_latency.lock().unwrap();
        if !latency.is_zero() {
            // Simulated provider latency; it orders nothing.
            tokio::time::sleep(latency).await;
        }
        if let Some(error) = self.refresh_failures.lock().unwrap().pop_front() {
            return Err(error);
        }
        if !self
            .used_refresh_tokens
            .lock()
            .unwrap()
            .insert(refresh_token.to_owned())
        {
            return Err(IdpError::InvalidGrant("refresh token reused".into()));
        }
        let subject = self.refresh_subject.lock().unwrap().clone();
        let bare = *self.refresh_without_claims.lock().unwrap();
        let identity = match (subject, bare) {
            (Some(subject), Some(_)) => Some(Identity {
                email: None,
                groups: Vec::new(),
                userinfo_claims: Default::default(),
                ..identity(&subject)
            }),
            (subject, _) => subject.map(|s| identity(&s)),
        };
        Ok(Grant {
            identity,
            tokens: self.issue_tokens(),
            partial_identity: bare == Some(true),
        })
    }
}

/// The double as the web surface's provider: no logout, revocation or
/// bearer tokens, `iss` checked against [`ISSUER`].
impl latchkey::web::SignInProvider for ControlledIdp {
    fn issuer(&self) -> &str {
        ISSUER
    }
}
