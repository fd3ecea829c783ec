//! The store contract as executable checks, written once and run against every
//! backend: by the test suite (each check is a test per backend) and by
//! `latchkey check-store` against a user's own deployment.
//!
//! Each check works under a key prefix of its caller's choosing, so that checks
//! can share a server with live data and with each other. It returns what it
//! observed on success and what broke on failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Barrier;

use super::{LoginCommit, Store, StoreResult};

/// What a check observed when the guarantee held, or how it was broken.
pub type CheckResult = Result<String, String>;

/// A named check of one guarantee.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Short identifier, also the name of the test that runs it.
    pub name: &'static str,
    /// The guarantee in one sentence.
    pub guarantee: &'static str,
}

/// Every check, in the order `run_all` runs them.
pub const CHECKS: &[Check] = &[
    Check {
        name: "absent_and_insert_once",
        guarantee: "a missing key reads as absent; insert_if_absent inserts once",
    },
    Check {
        name: "concurrent_insert_one_winner",
        guarantee: "50 concurrent insert_if_absent on one key: exactly one wins",
    },
    Check {
        name: "cas_bumps_version",
        guarantee: "compare_and_swap succeeds only at the current version and bumps it by one",
    },
    Check {
        name: "concurrent_cas_one_winner",
        guarantee: "50 concurrent compare_and_swap at one version: exactly one wins",
    },
    Check {
        name: "delete_is_final",
        guarantee: "after delete no CAS revives the record, and a re-insert gets a new version",
    },
    Check {
        name: "ttl_expiry",
        guarantee: "an expired record is absent to get, CAS and insert_if_absent, and is swept",
    },
    Check {
        name: "commit_all_or_nothing",
        guarantee: "the login commit writes both records or neither",
    },
    Check {
        name: "concurrent_commit_one_winner",
        guarantee: "8 concurrent login commits at one version: exactly one session is written",
    },
    Check {
        name: "wait_for_change_wakes",
        guarantee: "a waiter is woken by a write and honours its timeout",
    },
    Check {
        name: "logout_ends_indexed_sessions",
        guarantee: "a logout takes its user's indexed sessions and tombstones them: no commit of theirs lands after it, a later sign-in does",
    },
    Check {
        name: "purge_stays_in_prefix",
        guarantee: "purge removes every record under its prefix and nothing else",
    },
];

/// Runs one check by name under `prefix`.
pub async fn run(name: &str, store: Arc<dyn Store>, prefix: &str) -> CheckResult {
    let p = prefix;
    let result = match name {
        "absent_and_insert_once" => absent_and_insert_once(&store, p).await,
        "concurrent_insert_one_winner" => concurrent_insert_one_winner(&store, p).await,
        "cas_bumps_version" => cas_bumps_version(&store, p).await,
        "concurrent_cas_one_winner" => concurrent_cas_one_winner(&store, p).await,
        "delete_is_final" => delete_is_final(&store, p).await,
        "ttl_expiry" => ttl_expiry(&store, p).await,
        "commit_all_or_nothing" => commit_all_or_nothing(&store, p).await,
        "concurrent_commit_one_winner" => concurrent_commit_one_winner(&store, p).await,
        "wait_for_change_wakes" => wait_for_change_wakes(&store, p).await,
        "logout_ends_indexed_sessions" => logout_ends_indexed_sessions(&store, p).await,
        "purge_stays_in_prefix" => purge_stays_in_prefix(&store, p).await,
        other => return Err(format!("no such check: {other}")),
    };
    result.unwrap_or_else(|e| Err(format!("store error: {e}")))
}

/// `p` with a Redis Cluster hash tag after it: a login commit writes two
/// keys at once, and the engine gives a login's keys one tag (see
/// `crate::keys`), so the checks that commit do too.
fn one_slot(p: &str) -> String {
    format!("{p}{{commit}}:")
}

/// Fails the check with `message` unless `condition` holds.
fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

const TTL: Duration = Duration::from_secs(300);

async fn absent_and_insert_once(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    let key = format!("{p}a");
    let absent = store.get(&key).await?;
    store.delete(&key).await?;
    let first = store.insert_if_absent(&key, b"one", TTL).await?;
    let second = store.insert_if_absent(&key, b"two", TTL).await?;
    let read = store.get(&key).await?;
    Ok((|| {
        ensure(absent.is_none(), || {
            "a missing key was read as present".into()
        })?;
        ensure(first && !second, || {
            format!("inserts returned {first} then {second}, expected true then false")
        })?;
        ensure(read.as_ref().map(|r| &r.value[..]) == Some(b"one"), || {
            "the second insert overwrote the first".into()
        })?;
        Ok("missing key absent; second insert refused, first value kept".into())
    })())
}

async fn concurrent_insert_one_winner(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    const CALLERS: usize = 50;
    let key = format!("{p}race");
    let barrier = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .insert_if_absent(&key, format!("caller {i}").as_bytes(), TTL)
                    .await
                    .map(|won| won.then_some(i))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(i) = task.await.expect("insert task panicked")? {
            winners.push(i);
        }
    }
    let stored = store.get(&key).await?.map(|r| r.value);
    Ok((|| {
        ensure(winners.len() == 1, || {
            format!(
                "{CALLERS} concurrent insert_if_absent -> {} winners",
                winners.len()
            )
        })?;
        let expected = format!("caller {}", winners[0]).into_bytes();
        ensure(stored == Some(expected.into()), || {
            "the stored value is not the winner's".into()
        })?;
        Ok(format!("{CALLERS} concurrent insert_if_absent -> 1 winner"))
    })())
}

async fn cas_bumps_version(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    let key = format!("{p}cas");
    store.insert_if_absent(&key, b"v1", TTL).await?;
    let Some(before) = store.get(&key).await? else {
        return Ok(Err("an inserted record was not readable".into()));
    };
    let missed = store
        .compare_and_swap(&key, before.version.wrapping_add(7), b"wrong", TTL)
        .await?;
    let swapped = store
        .compare_and_swap(&key, before.version, b"v2", TTL)
        .await?;
    let stale = store
        .compare_and_swap(&key, before.version, b"stale", TTL)
        .await?;
    let after = store.get(&key).await?;
    let missing = store
        .compare_and_swap(&format!("{p}nope"), 1, b"x", TTL)
        .await?;
    Ok((|| {
        ensure(!missed, || "CAS at a wrong version succeeded".into())?;
        ensure(swapped, || "CAS at the current version failed".into())?;
        ensure(!stale, || {
            "a second CAS at the old version succeeded".into()
        })?;
        ensure(!missing, || "CAS on a missing key succeeded".into())?;
        let after = after.ok_or("the record vanished after CAS")?;
        ensure(after.value[..] == *b"v2", || {
            "CAS did not store its value".into()
        })?;
        ensure(after.version == before.version + 1, || {
            format!("version went {} -> {}", before.version, after.version)
        })?;
        Ok(format!(
            "version {} -> {}; stale and wrong versions refused",
            before.version, after.version
        ))
    })())
}

async fn concurrent_cas_one_winner(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    const CALLERS: usize = 50;
    let key = format!("{p}casrace");
    store.insert_if_absent(&key, b"start", TTL).await?;
    let Some(start) = store.get(&key).await? else {
        return Ok(Err("an inserted record was not readable".into()));
    };
    let barrier = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .compare_and_swap(&key, start.version, format!("caller {i}").as_bytes(), TTL)
                    .await
                    .map(|won| won.then_some(i))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(i) = task.await.expect("CAS task panicked")? {
            winners.push(i);
        }
    }
    let end = store.get(&key).await?;
    Ok((|| {
        ensure(winners.len() == 1, || {
            format!("{CALLERS} concurrent CAS -> {} winners", winners.len())
        })?;
        let end = end.ok_or("the record vanished")?;
        ensure(
            end.value == format!("caller {}", winners[0]).into_bytes(),
            || "the stored value is not the winner's".into(),
        )?;
        ensure(end.version == start.version + 1, || {
            "the version moved more than once".into()
        })?;
        Ok(format!(
            "{CALLERS} concurrent CAS at one version -> 1 winner"
        ))
    })())
}

async fn delete_is_final(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    let key = format!("{p}del");
    store.insert_if_absent(&key, b"x", TTL).await?;
    let Some(before) = store.get(&key).await? else {
        return Ok(Err("an inserted record was not readable".into()));
    };
    store.delete(&key).await?;
    let revived = store
        .compare_and_swap(&key, before.version, b"revived", TTL)
        .await?;
    let after_delete = store.get(&key).await?;
    let reinserted = store.insert_if_absent(&key, b"y", TTL).await?;
    let fresh = store.get(&key).await?;
    Ok((|| {
        ensure(!revived && after_delete.is_none(), || {
            "a CAS revived a deleted record".into()
        })?;
        ensure(reinserted, || "insert after delete failed".into())?;
        let fresh = fresh.ok_or("the re-inserted record is not readable")?;
        ensure(fresh.version != before.version, || {
            "a re-inserted key reused its old version".into()
        })?;
        Ok("deleted record not revived by CAS; re-insert got a new version".into())
    })())
}

async fn ttl_expiry(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    const SHORT: Duration = Duration::from_millis(1500);
    let key = format!("{p}ttl");
    let long_key = format!("{p}ttl-long");
    store.insert_if_absent(&key, b"short", SHORT).await?;
    store.insert_if_absent(&long_key, b"long", TTL).await?;
    let inserted_at = tokio::time::Instant::now();
    let Some(live) = store.get(&key).await? else {
        return Ok(Err("a record was absent right after insert".into()));
    };
    if inserted_at.elapsed() >= SHORT {
        return Ok(Err("the store took longer than the TTL to answer".into()));
    }
    // Real time has to pass for a server-side TTL; this waits for expiry, it
    // orders nothing.
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    let expired = store.get(&key).await?;
    let cas = store
        .compare_and_swap(&key, live.version, b"late", TTL)
        .await?;
    let counted = store.count_live(&format!("{p}ttl")).await?;
    store.sweep_expired().await?;
    let still_long = store.get(&long_key).await?;
    let reinsert = store.insert_if_absent(&key, b"again", TTL).await?;
    Ok((|| {
        ensure(expired.is_none(), || {
            "an expired record was still readable".into()
        })?;
        ensure(!cas, || "CAS succeeded on an expired record".into())?;
        ensure(counted == 1, || {
            format!("count_live counted {counted} live records, expected 1")
        })?;
        ensure(still_long.is_some(), || {
            "the sweep removed a live record".into()
        })?;
        ensure(reinsert, || {
            "insert_if_absent refused an expired key".into()
        })?;
        Ok(
            "expired record absent to get/CAS/count, replaced by insert; sweep kept live rows"
                .into(),
        )
    })())
}

/// Inserts a login record and returns its version.
async fn pending_login(store: &Arc<dyn Store>, key: &str) -> StoreResult<Option<u64>> {
    store.insert_if_absent(key, b"pending", TTL).await?;
    Ok(store.get(key).await?.map(|r| r.version))
}

fn commit<'a>(login_key: &'a str, version: u64, session_key: &'a str) -> LoginCommit<'a> {
    LoginCommit {
        login_key,
        login_version: version,
        login_value: b"completed",
        login_ttl: TTL,
        session_key,
        session_value: b"session",
        session_ttl: TTL,
    }
}

async fn commit_all_or_nothing(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    let p = &one_slot(p);
    let login = format!("{p}login");
    let Some(v) = pending_login(store, &login).await? else {
        return Ok(Err("an inserted record was not readable".into()));
    };
    // A stale version writes nothing.
    let (s_stale, s_taken, s_ok) = (
        format!("{p}session-stale"),
        format!("{p}session-taken"),
        format!("{p}session-ok"),
    );
    let stale = store.commit_login(commit(&login, v + 1, &s_stale)).await?;
    let stale_session = store.get(&s_stale).await?;
    // A taken session key writes nothing either.
    store.insert_if_absent(&s_taken, b"other", TTL).await?;
    let taken = store.commit_login(commit(&login, v, &s_taken)).await?;
    let taken_session = store.get(&s_taken).await?;
    let login_after_failures = store.get(&login).await?;
    // The real one writes both.
    let ok = store.commit_login(commit(&login, v, &s_ok)).await?;
    let login_after = store.get(&login).await?;
    let session_after = store.get(&s_ok).await?;
    Ok((|| {
        ensure(!stale && stale_session.is_none(), || {
            "a commit at a stale version wrote something".into()
        })?;
        ensure(!taken, || {
            "a commit onto a taken session key succeeded".into()
        })?;
        ensure(
            taken_session.map(|r| r.value) == Some(Bytes::from_static(b"other")),
            || "a failed commit overwrote an existing session".into(),
        )?;
        ensure(
            login_after_failures
                .as_ref()
                .map(|r| (&r.value[..], r.version))
                == Some((b"pending".as_slice(), v)),
            || "a failed commit changed the login record".into(),
        )?;
        ensure(ok, || "a commit at the current version failed".into())?;
        ensure(
            login_after.map(|r| (r.value, r.version))
                == Some((Bytes::from_static(b"completed"), v + 1)),
            || "the commit did not swap the login record to version + 1".into(),
        )?;
        ensure(
            session_after.map(|r| r.value) == Some(Bytes::from_static(b"session")),
            || "the commit did not insert the session".into(),
        )?;
        Ok("stale version and taken session key wrote nothing; the good commit wrote both".into())
    })())
}

/// The session index (`crate::logout`) on this store: what back-channel
/// logout relies on. Its records live under `logout:` (hashed, for a
/// made-up user) and expire within seconds.
async fn logout_ends_indexed_sessions(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    let p = &one_slot(p);
    use crate::clock::{Clock, SystemClock};
    use crate::idp::Identity;
    use crate::logout::{Handle, Registration, SessionIndex};

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let index = SessionIndex::new(store.clone(), clock.clone());
    let now = clock.now_ms();
    let subject = format!("{p}user-{}", crate::secret::random_token());
    let signed_in_at = |issued_at: u64| Identity {
        issuer: "https://check-store.invalid".into(),
        subject: subject.clone(),
        email: None,
        groups: Vec::new(),
        sid: None,
        issued_at: Some(issued_at),
        userinfo_claims: Default::default(),
    };
    let (login, in_flight, before, after) = (
        format!("{p}login"),
        format!("{p}session-in-flight"),
        format!("{p}session-before"),
        format!("{p}session-after"),
    );
    let Some(v) = pending_login(store, &login).await? else {
        return Ok(Err("an inserted record was not readable".into()));
    };
    let until = now + 5_000;
    let registered = index
        .register(&in_flight, &signed_in_at(now - 1_000), until)
        .await?;
    let ended = index
        .end(Handle::Subject(&subject), now, Duration::from_secs(5))
        .await?;
    let late_commit = store.commit_login(commit(&login, v, &in_flight)).await?;
    let covered = index
        .register(&before, &signed_in_at(now - 500), until)
        .await?;
    let later = index
        .register(&after, &signed_in_at(now + 1_000), until)
        .await?;
    Ok((|| {
        ensure(registered == Registration::Registered, || {
            "a session could not be indexed".into()
        })?;
        ensure(ended.sessions_revoked == 1, || {
            format!("the logout took {} sessions, not 1", ended.sessions_revoked)
        })?;
        ensure(!late_commit, || {
            "a commit of a revoked session landed after the logout".into()
        })?;
        ensure(covered == Registration::LoggedOut, || {
            "a sign-in from before the logout was indexed after it".into()
        })?;
        ensure(later == Registration::Registered, || {
            "a sign-in after the logout was refused".into()
        })?;
        Ok(
            "the logout revoked the in-flight session; covered sign-ins refused, later ones not"
                .into(),
        )
    })())
}

async fn concurrent_commit_one_winner(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    let p = &one_slot(p);
    const CALLERS: usize = 8;
    let login = format!("{p}login");
    let Some(v) = pending_login(store, &login).await? else {
        return Ok(Err("an inserted record was not readable".into()));
    };
    let barrier = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (store, login, barrier) = (store.clone(), login.clone(), barrier.clone());
            let session = format!("{p}session-{i}");
            tokio::spawn(async move {
                barrier.wait().await;
                store.commit_login(commit(&login, v, &session)).await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.expect("commit task panicked")?);
    }
    let sessions = store.count_live(&format!("{p}session-")).await?;
    Ok((|| {
        ensure(wins == 1 && sessions == 1, || {
            format!("{CALLERS} concurrent commits -> {wins} winners, {sessions} sessions")
        })?;
        Ok(format!(
            "{CALLERS} concurrent commits -> 1 winner, 1 session"
        ))
    })())
}

async fn wait_for_change_wakes(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    const LONG: Duration = Duration::from_secs(60);
    let key = format!("{p}wait");
    store.insert_if_absent(&key, b"a", TTL).await?;
    let Some(v) = store.get(&key).await?.map(|r| r.version) else {
        return Ok(Err("an inserted record was not readable".into()));
    };
    // Timeout honoured when nothing changes.
    let started = tokio::time::Instant::now();
    store
        .wait_for_change(&key, Some(v), Duration::from_millis(100))
        .await?;
    let quiet_wait = started.elapsed();
    // A write wakes a long waiter.
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            store.wait_for_change(&key, Some(v), LONG).await?;
            StoreResult::Ok(started.elapsed())
        })
    };
    store.compare_and_swap(&key, v, b"b", TTL).await?;
    let woken_after = waiter.await.expect("waiter panicked")?;
    Ok((|| {
        ensure(quiet_wait < LONG / 2, || {
            "a quiet wait ignored its timeout".into()
        })?;
        ensure(woken_after < LONG / 2, || {
            "a waiter was not woken by a write".into()
        })?;
        Ok(format!(
            "quiet wait returned at its timeout; waiter woken {} ms after the write",
            woken_after.as_millis()
        ))
    })())
}

async fn purge_stays_in_prefix(store: &Arc<dyn Store>, p: &str) -> StoreResult<CheckResult> {
    for key in ["doomed:1", "doomed:2", "kept:1"] {
        store
            .insert_if_absent(&format!("{p}{key}"), b"x", TTL)
            .await?;
    }
    let purged = store.purge(&format!("{p}doomed:")).await?;
    let doomed = store.count_live(&format!("{p}doomed:")).await?;
    let kept = store.count_live(&format!("{p}kept:")).await?;
    Ok((|| {
        ensure(purged == 2 && doomed == 0, || {
            format!("purge reported {purged} and left {doomed} of 2 records")
        })?;
        ensure(kept == 1, || {
            "purge removed a record outside its prefix".into()
        })?;
        Ok("2 records under the prefix purged, the neighbour kept".into())
    })())
}

/// Runs every check under `prefix` and returns them with their results.
pub async fn run_all(store: Arc<dyn Store>, prefix: &str) -> Vec<(Check, CheckResult)> {
    let mut results = Vec::new();
    for check in CHECKS {
        let result = run(
            check.name,
            store.clone(),
            &format!("{prefix}{}:", check.name),
        )
        .await;
        results.push((*check, result));
    }
    results
}
