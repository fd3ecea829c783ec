//! A per-client token bucket for the sign-in endpoints (`/oauth2/start`,
//! `/oauth2/callback`): defence in depth against floods, on top of the
//! stateless start (which already writes nothing). Keyed by the TCP peer's
//! address: behind a front proxy every client shares the proxy's, so set the
//! rate for the proxy's whole traffic there, or turn it off (0).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Clients remembered at most; beyond it, the buckets that are full again
/// (idle clients) are forgotten first.
const MAX_CLIENTS: usize = 100_000;

/// One client's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by client address.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens per second.
    rate: f64,
    /// The bucket's size: a minute's worth.
    capacity: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `per_minute` requests a minute per client, in bursts of up to as many;
    /// `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            rate: f64::from(per_minute) / 60.0,
            capacity: f64::from(per_minute),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// `Ok` if `client` may make a request now, else how long until it may.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            let (rate, capacity) = (self.rate, self.capacity);
            buckets.retain(|_, b| refilled(*b, now, rate, capacity) < capacity);
            if buckets.len() >= MAX_CLIENTS {
                // Every remembered client is active: forget them all rather
                // than grow without bound (the limit fails open, briefly).
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        let tokens = refilled(*bucket, now, self.rate, self.capacity);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

fn refilled(bucket: Bucket, now: Instant, rate: f64, capacity: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_then_the_rate() {
        let limiter = RateLimiter::per_minute(60).unwrap();
        let alice: IpAddr = "192.0.2.1".parse().unwrap();
        let bob: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..60 {
            assert!(limiter.check(alice).is_ok());
        }
        let wait = limiter.check(alice).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another client is not affected.
        assert!(limiter.check(bob).is_ok());
        // One token a second comes back (a paused clock, advanced by hand).
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.check(alice).is_ok());
        assert!(limiter.check(alice).is_err());
        assert!(RateLimiter::per_minute(0).is_none());
    }
}
