//! Replaying a model's counterexample on the real code: the events a Spin
//! simulation of a trail prints (`model/login.pml`: `EV 1 get`, `EV tick`,
//! …) become a schedule that the store and provider wrappers below follow,
//! one process (replica) per callback, each with its own wrappers. A
//! process's store call or provider call waits until the trail's next event
//! is that call of that process; a tick advances the test clock; a crash
//! makes the process's store refuse everything from then on (SIGKILL: not
//! even its abandon guard reaches the store) and drops its future; a drop
//! only drops its future (its abandon guard runs). When the code does
//! something else than the trail's next event for it, the replay has
//! **diverged** there: from then on nothing is held.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey::clock::ManualClock;
use latchkey::idp::{AuthorizationRequest, CodeExchange, Grant, IdentityProvider, IdpError};
use latchkey::logout::REVOKED_MARKER;
use latchkey::secret::RefreshToken;
use latchkey::session::{SessionRecord, SessionSettings};
use latchkey::store::{LoginCommit, Store, StoreError, StoreResult, Versioned};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::idp_double::ControlledIdp;

/// A store or provider call, as the model names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Get,
    Insert,
    Cas,
    Commit,
    Delete,
    /// An insert or a CAS (the model does not say which).
    Write,
    /// The process begins (its task waits for this before it acts).
    Start,
    /// A code exchange; `true`: the provider answers with tokens.
    Exchange(bool),
    /// A refresh, and how the provider answers it.
    Refresh(Answer),
}

/// How the provider answers a refresh in a trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Tokens,
    Transient,
    InvalidGrant,
}

impl Call {
    /// The same call, whatever the provider answers (the trail says that).
    fn same_as(self, other: Call) -> bool {
        match (self, other) {
            (Call::Exchange(_), Call::Exchange(_)) | (Call::Refresh(_), Call::Refresh(_)) => true,
            (Call::Write, Call::Insert | Call::Cas) => true,
            (a, b) => a == b,
        }
    }
}

/// One event of a trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Tick,
    Call(usize, Call),
    Crash(usize),
    Drop(usize),
    /// The process's next store call fails, as if the store had gone away.
    Fail(usize),
}

/// The events of a Spin simulation's output (lines `EV …`), in order.
pub fn parse_events(simulation: &str) -> Vec<Event> {
    simulation
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "EV")?;
            let event = match &words[at + 1..] {
                ["tick"] => Event::Tick,
                [p, rest @ ..] => {
                    let p: usize = p.parse().ok()?;
                    match rest {
                        ["get"] => Event::Call(p, Call::Get),
                        ["insert"] => Event::Call(p, Call::Insert),
                        ["cas"] => Event::Call(p, Call::Cas),
                        ["commit"] => Event::Call(p, Call::Commit),
                        ["delete"] => Event::Call(p, Call::Delete),
                        ["write"] => Event::Call(p, Call::Write),
                        ["start"] => Event::Call(p, Call::Start),
                        ["fail"] => Event::Fail(p),
                        ["refresh", "ok"] => Event::Call(p, Call::Refresh(Answer::Tokens)),
                        ["refresh", "transient"] => {
                            Event::Call(p, Call::Refresh(Answer::Transient))
                        }
                        ["refresh", "invalid"] => {
                            Event::Call(p, Call::Refresh(Answer::InvalidGrant))
                        }
                        ["exchange", "ok"] => Event::Call(p, Call::Exchange(true)),
                        ["exchange", "fail"] => Event::Call(p, Call::Exchange(false)),
                        ["crash"] => Event::Crash(p),
                        ["drop"] => Event::Drop(p),
                        other => panic!("unknown event {other:?} in {line:?}"),
                    }
                }
                other => panic!("unknown event {other:?} in {line:?}"),
            };
            Some(event)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    Running,
    /// Its future was dropped; its abandon guard may still call.
    Dropped,
    Crashed,
    Finished,
}

struct State {
    events: Vec<Event>,
    cursor: usize,
    /// A call of the trail's is running (the next waits for it to end).
    busy: bool,
    diverged: Option<String>,
    processes: HashMap<usize, Process>,
    tasks: HashMap<usize, AbortHandle>,
    /// Processes whose next store call fails.
    failing: HashSet<usize>,
    /// Processes parked in a store wait, once the trail is over.
    parked: HashSet<usize>,
    /// Each process's last call, and whether it got its turn (for reports).
    last: HashMap<usize, String>,
}

/// The schedule: the trail's events and how far the replay has come.
pub struct Schedule {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Moved when the clock runs the leases out, past the trail.
    leases_ran_out: watch::Sender<bool>,
    clock: Arc<ManualClock>,
    tick: Duration,
}

/// What a call is to do.
pub enum Turn<'a> {
    /// It is the trail's event: run it; the replay moves on when this is dropped.
    Scheduled(TurnGuard<'a>, Call),
    /// Past the trail, or diverged: run freely.
    Free,
    /// Its process crashed, or the trail's store goes away for this one
    /// call (a `fail` event): the call fails as if the store were gone.
    Crashed,
}

pub struct TurnGuard<'a>(&'a Schedule);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap();
        state.busy = false;
        state.cursor += 1;
        // Ticks right after a call come before its caller goes on: the
        // model decides on the time after a read when it takes its next
        // step, the code reads the clock as the call returns.
        while state.events.get(state.cursor) == Some(&Event::Tick) {
            self.0.clock.advance(self.0.tick);
            state.cursor += 1;
        }
        drop(state);
        self.0.changed.send_modify(|n| *n += 1);
    }
}

impl Schedule {
    /// A schedule of `events`, each tick advancing `clock` by `tick`.
    pub fn new(events: Vec<Event>, clock: Arc<ManualClock>, tick: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                events,
                cursor: 0,
                busy: false,
                diverged: None,
                processes: HashMap::new(),
                tasks: HashMap::new(),
                failing: HashSet::new(),
                parked: HashSet::new(),
                last: HashMap::new(),
            }),
            changed: watch::Sender::new(0),
            leases_ran_out: watch::Sender::new(false),
            clock,
            tick,
        })
    }

    /// Where the replay left the trail, if it did.
    pub fn diverged(&self) -> Option<String> {
        self.state.lock().unwrap().diverged.clone()
    }

    /// Whether every event of the trail was replayed.
    pub fn completed(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.diverged.is_none() && state.cursor == state.events.len()
    }

    /// Registers process `p`, before its task is spawned (a task may run
    /// to its end before the spawner goes on).
    pub fn register(&self, p: usize) {
        self.state
            .lock()
            .unwrap()
            .processes
            .insert(p, Process::Running);
    }

    /// Registers process `p`'s task: crash and drop events abort it, also
    /// one that came before this.
    pub fn started(&self, p: usize, task: AbortHandle) {
        let mut state = self.state.lock().unwrap();
        if matches!(
            state.processes.get(&p),
            Some(Process::Crashed | Process::Dropped)
        ) {
            task.abort();
        }
        state.tasks.insert(p, task);
    }

    /// Process `p`'s task ended by itself.
    pub fn finished(&self, p: usize) {
        let mut state = self.state.lock().unwrap();
        if state.processes.get(&p) == Some(&Process::Running) {
            state.processes.insert(p, Process::Finished);
        }
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    fn diverge(state: &mut State, why: String) {
        if state.diverged.is_none() {
            state.diverged = Some(format!(
                "at event {} of {}: {why}",
                state.cursor,
                state.events.len()
            ));
        }
    }

    /// Waits for process `p`'s `call` to be the trail's next event.
    pub async fn turn(&self, p: usize, call: Call) -> Turn<'_> {
        let mut changed = self.changed.subscribe();
        (self.state.lock().unwrap().last).insert(p, format!("{call:?}"));
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.processes.get(&p) == Some(&Process::Crashed) || state.failing.remove(&p) {
                    return Turn::Crashed;
                }
                if state.diverged.is_some() || state.cursor >= state.events.len() {
                    return Turn::Free;
                }
                if !state.busy
                    && let Event::Call(q, expected) = state.events[state.cursor]
                    && q == p
                {
                    if expected.same_as(call) {
                        state.busy = true;
                        return Turn::Scheduled(TurnGuard(self), expected);
                    }
                    Self::diverge(
                        &mut state,
                        format!("process {p} called {call:?}, the trail has {expected:?}"),
                    );
                    drop(state);
                    self.changed.send_modify(|n| *n += 1);
                    return Turn::Free;
                }
            }
            changed
                .changed()
                .await
                .expect("the schedule outlives its calls");
        }
    }

    /// Plays the trail's ticks, crashes and drops as they come up, until the
    /// trail ends or the replay diverges; then lets every lease run out.
    pub async fn conduct(&self, lease_ticks: u32) {
        let mut changed = self.changed.subscribe();
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.diverged.is_some() || state.cursor >= state.events.len() {
                    break;
                }
                if !state.busy {
                    let cursor = state.cursor;
                    match state.events[cursor] {
                        Event::Tick => {
                            self.clock.advance(self.tick);
                            state.cursor += 1;
                            drop(state);
                            self.changed.send_modify(|n| *n += 1);
                            continue;
                        }
                        Event::Crash(p) | Event::Drop(p) => {
                            let crashed = matches!(state.events[cursor], Event::Crash(_));
                            if state.processes.get(&p) != Some(&Process::Running) {
                                Self::diverge(
                                    &mut state,
                                    format!("process {p} had ended before its crash"),
                                );
                                continue;
                            }
                            let status = if crashed {
                                Process::Crashed
                            } else {
                                Process::Dropped
                            };
                            state.processes.insert(p, status);
                            if let Some(task) = state.tasks.get(&p) {
                                task.abort();
                            }
                            state.cursor += 1;
                            drop(state);
                            self.changed.send_modify(|n| *n += 1);
                            continue;
                        }
                        Event::Fail(p) => {
                            state.failing.insert(p);
                            state.cursor += 1;
                            drop(state);
                            self.changed.send_modify(|n| *n += 1);
                            continue;
                        }
                        Event::Call(p, call) => {
                            if state.processes.get(&p) == Some(&Process::Finished) {
                                Self::diverge(
                                    &mut state,
                                    format!("process {p} had ended before its {call:?}"),
                                );
                                drop(state);
                                self.changed.send_modify(|n| *n += 1);
                                continue;
                            }
                        }
                    }
                }
            }
            changed.changed().await.expect("the schedule lives on");
        }
        // Once every process still running waits on the store (a lease
        // holder that is alive gets to write first: the clock does not pass
        // a lease while its holder works), whoever waits on a lease sees it
        // run out.
        loop {
            {
                let state = self.state.lock().unwrap();
                let settled = (state.processes.iter())
                    .all(|(p, status)| *status != Process::Running || state.parked.contains(p));
                if settled {
                    break;
                }
            }
            changed.changed().await.expect("the schedule lives on");
        }
        self.clock.advance(self.tick * (lease_ticks + 1));
        self.leases_ran_out.send_replace(true);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Where the replay stands, for a failure's message.
    pub fn report(&self) -> String {
        let state = self.state.lock().unwrap();
        format!(
            "event {} of {} (busy {}), diverged {:?}, processes {:?}, parked {:?}, last calls {:?}, next {:?}",
            state.cursor,
            state.events.len(),
            state.busy,
            state.diverged,
            state.processes,
            state.parked,
            state.last,
            state.events.get(state.cursor)
        )
    }

    /// Whether the replay is past the trail (or left it).
    fn free(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.diverged.is_some() || state.cursor >= state.events.len()
    }

    /// Process `p` waits on the store (past the trail) until `wait` ends or
    /// the clock runs the leases out.
    async fn parked<T>(&self, p: usize, wait: impl std::future::Future<Output = T>) {
        let mut ran_out = self.leases_ran_out.subscribe();
        self.state.lock().unwrap().parked.insert(p);
        self.changed.send_modify(|n| *n += 1);
        tokio::select! {
            _ = wait => {}
            _ = ran_out.wait_for(|ran_out| *ran_out) => {}
        }
        self.state.lock().unwrap().parked.remove(&p);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// How a store wrapper departs from the contract, to stand for a mutant of
/// the code (the replay must then break the property the mutant breaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// None: the contract.
    Honest,
    /// The login commit lands whatever the login record's version (the
    /// model's `NO_FENCE`).
    CommitUnfenced,
    /// A login's first claim always wins, overwriting another's (the
    /// model's `CLAIM_IGNORED`: a callback that lost goes on to exchange).
    ClaimAlwaysWon,
    /// A session's refresh lease is never written, though its CAS reports
    /// success (the model's refresh `NO_LEASE`).
    LeaseNotWritten,
    /// Writes of a session land whatever its version, also after it was
    /// deleted (the model's refresh `NO_FENCE`, the logout's
    /// `REFRESH_UNFENCED`).
    SessionWritesUnfenced,
    /// A logout's tombstone is never written (the logout's `DELETE_ONLY`).
    TombstoneDropped,
    /// Revoking a session deletes it instead of writing the marker (the
    /// logout's `NO_MARKER`).
    MarkerDeletes,
    /// A logout's tombstone covers every sign-in, also those issued after
    /// it (the logout's `IGNORE_IAT`).
    TombstoneCoversAll,
    /// Not a store's: the logout keeps its tombstone for the clock skew
    /// only (the logout's `SHORT_TOMBSTONE`).
    ShortTombstone,
}

/// Process `process`'s view of the shared store: calls on keys under
/// `gated` (and, for logins, commits) follow the schedule, reads only if
/// `gate_gets`; every write of a login record is logged (its phase) in
/// `phases`.
pub struct ScheduledStore {
    pub process: usize,
    pub schedule: Arc<Schedule>,
    pub inner: Arc<dyn Store>,
    pub mutation: Mutation,
    /// Keys whose calls follow the schedule: those under `gated`, and
    /// `also_gated`.
    pub gated: &'static str,
    pub also_gated: Option<String>,
    /// Whether login commits follow the schedule.
    pub gate_commits: bool,
    pub gate_gets: bool,
    /// The session the trail is about (to see a lease in its record).
    pub session_id: Option<String>,
    pub phases: Arc<Mutex<Vec<String>>>,
}

fn phase_of(value: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v["phase"]["phase"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "unreadable".into())
}

fn gone() -> StoreError {
    StoreError::Unavailable("the replica crashed (model trail)".into())
}

impl ScheduledStore {
    /// With `TombstoneDropped`, an index record as written without its
    /// tombstone; with `TombstoneCoversAll`, with one covering every `iat`.
    fn without_tombstone(&self, key: &str, value: &[u8]) -> Option<Vec<u8>> {
        let dropped = self.mutation == Mutation::TombstoneDropped;
        let covers_all = self.mutation == Mutation::TombstoneCoversAll;
        if !(dropped || covers_all) || !key.starts_with("logout:") {
            return None;
        }
        let mut record: serde_json::Value = serde_json::from_slice(value).ok()?;
        let fields = record.as_object_mut()?;
        if dropped {
            fields.remove("logged_out_at");
            fields.remove("tombstone_until");
        } else if fields.contains_key("logged_out_at") {
            fields.insert("logged_out_at".into(), u64::MAX.into());
        }
        serde_json::to_vec(&record).ok()
    }

    /// Whether `value` is the trail's session with a refresh lease in it.
    fn writes_a_lease(&self, value: &[u8]) -> bool {
        let seal = SessionSettings::default().seal;
        self.session_id.as_deref().is_some_and(|id| {
            SessionRecord::open(&seal, id, value).is_ok_and(|r| r.refresh_lease.is_some())
        })
    }

    fn log(&self, value: &[u8]) {
        self.phases.lock().unwrap().push(phase_of(value));
    }

    async fn turn(&self, key: &str, call: Call) -> StoreResult<Option<TurnGuard<'_>>> {
        let gated = key.starts_with(self.gated) || self.also_gated.as_deref() == Some(key);
        if !gated || (call == Call::Get && !self.gate_gets) {
            return Ok(None);
        }
        self.turn_always(call).await
    }

    async fn turn_always(&self, call: Call) -> StoreResult<Option<TurnGuard<'_>>> {
        match self.schedule.turn(self.process, call).await {
            Turn::Scheduled(guard, _) => Ok(Some(guard)),
            Turn::Free => Ok(None),
            Turn::Crashed => Err(gone()),
        }
    }
}

#[async_trait]
impl Store for ScheduledStore {
    async fn insert_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let _turn = self.turn(key, Call::Insert).await?;
        if self.mutation == Mutation::MarkerDeletes && value == REVOKED_MARKER {
            return Ok(self.inner.get(key).await?.is_none());
        }
        let stripped = self.without_tombstone(key, value);
        let value = stripped.as_deref().unwrap_or(value);
        let mut won = self.inner.insert_if_absent(key, value, ttl).await?;
        if !won
            && self.mutation == Mutation::ClaimAlwaysWon
            && key.starts_with("login:")
            && let Some(current) = self.inner.get(key).await?
        {
            won = (self.inner)
                .compare_and_swap(key, current.version, value, ttl)
                .await?;
        }
        if won && key.starts_with("login:") {
            self.log(value);
        }
        Ok(won)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Versioned>> {
        let _turn = self.turn(key, Call::Get).await?;
        self.inner.get(key).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        let _turn = self.turn(key, Call::Cas).await?;
        if self.mutation == Mutation::MarkerDeletes && value == REVOKED_MARKER {
            let current = self.inner.get(key).await?;
            if current.is_some_and(|c| c.version == expected_version) {
                self.inner.delete(key).await?;
                return Ok(true);
            }
            return Ok(false);
        }
        let stripped = self.without_tombstone(key, value);
        let value = stripped.as_deref().unwrap_or(value);
        let session = key.starts_with("session:");
        if session && self.mutation == Mutation::LeaseNotWritten && self.writes_a_lease(value) {
            let current = self.inner.get(key).await?;
            return Ok(current.is_some_and(|c| c.version == expected_version));
        }
        if session && self.mutation == Mutation::SessionWritesUnfenced {
            return match self.inner.get(key).await? {
                None => self.inner.insert_if_absent(key, value, ttl).await,
                Some(current) => {
                    (self.inner)
                        .compare_and_swap(key, current.version, value, ttl)
                        .await
                }
            };
        }
        let swapped = (self.inner)
            .compare_and_swap(key, expected_version, value, ttl)
            .await?;
        if swapped && key.starts_with("login:") {
            self.log(value);
        }
        Ok(swapped)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let _turn = self.turn(key, Call::Delete).await?;
        self.inner.delete(key).await
    }

    async fn commit_login(&self, commit: LoginCommit<'_>) -> StoreResult<bool> {
        let _turn = match self.gate_commits {
            true => self.turn_always(Call::Commit).await?,
            false => None,
        };
        let mut commit = commit;
        if self.mutation == Mutation::CommitUnfenced
            && let Some(current) = self.inner.get(commit.login_key).await?
        {
            commit.login_version = current.version;
        }
        let login_value = commit.login_value;
        let committed = self.inner.commit_login(commit).await?;
        if committed {
            self.log(login_value);
        }
        Ok(committed)
    }

    async fn wait_for_change(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> StoreResult<()> {
        if self.schedule.free() {
            let wait = self.inner.wait_for_change(key, seen, timeout);
            self.schedule.parked(self.process, wait).await;
            return Ok(());
        }
        // A wait may end early (the caller reads again); the trail says
        // when that read comes.
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn count_live(&self, prefix: &str) -> StoreResult<u64> {
        self.inner.count_live(prefix).await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        self.inner.sweep_expired().await
    }

    async fn purge(&self, prefix: &str) -> StoreResult<u64> {
        self.inner.purge(prefix).await
    }
}

/// Process `process`'s view of the provider: its code exchange follows the
/// schedule and answers as the trail says.
pub struct ScheduledIdp {
    pub process: usize,
    pub schedule: Arc<Schedule>,
    pub idp: Arc<ControlledIdp>,
    /// Called with the process as its code exchange is answered.
    pub on_exchange: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

#[async_trait]
impl IdentityProvider for ScheduledIdp {
    fn authorization_url(&self, request: &AuthorizationRequest) -> String {
        self.idp.authorization_url(request)
    }

    async fn exchange_code(&self, exchange: CodeExchange) -> Result<Grant, IdpError> {
        let turn = self.schedule.turn(self.process, Call::Exchange(true)).await;
        let _guard = match turn {
            Turn::Scheduled(guard, Call::Exchange(false)) => {
                self.idp.fail_next_exchange(IdpError::InvalidGrant(
                    "the trail's failed exchange".into(),
                ));
                Some(guard)
            }
            Turn::Scheduled(guard, _) => Some(guard),
            Turn::Free | Turn::Crashed => None,
        };
        if let Some(noted) = &self.on_exchange {
            noted(self.process);
        }
        self.idp.exchange_code(exchange).await
    }

    async fn refresh(&self, refresh_token: &RefreshToken) -> Result<Grant, IdpError> {
        let turn = self
            .schedule
            .turn(self.process, Call::Refresh(Answer::Tokens))
            .await;
        let _guard = match turn {
            Turn::Scheduled(guard, Call::Refresh(answer)) => {
                match answer {
                    Answer::Tokens => {}
                    Answer::Transient => (self.idp).fail_next_refresh(IdpError::Transient(
                        "the trail's transient error".into(),
                    )),
                    Answer::InvalidGrant => (self.idp).fail_next_refresh(IdpError::InvalidGrant(
                        "the trail's revoked grant".into(),
                    )),
                }
                Some(guard)
            }
            Turn::Scheduled(guard, _) => Some(guard),
            Turn::Free | Turn::Crashed => None,
        };
        self.idp.refresh(refresh_token).await
    }
}

/// The processes a trail names.
pub fn processes(events: &[Event]) -> Vec<usize> {
    let mut seen: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Call(p, _) | Event::Crash(p) | Event::Drop(p) | Event::Fail(p) => Some(*p),
            Event::Tick => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    seen.sort_unstable();
    seen
}
