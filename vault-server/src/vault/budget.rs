//! The per-mailbox probe budget: a token bucket, so the vault never gets a mailbox
//! rate-limited or blocked (providers block for about 24 h after heavy login activity).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before idle full ones are dropped.
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct ProbeBudget {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl ProbeBudget {
    /// `burst` probes at once, refilled at `per_hour`.
    pub fn new(burst: u32, per_hour: u32) -> Self {
        Self { burst: f64::from(burst), per_sec: f64::from(per_hour) / 3600.0, buckets: Mutex::new(HashMap::new()) }
    }

    fn refill(&self, b: Bucket, now: Instant) -> f64 {
        (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec).min(self.burst)
    }

    /// The bucket's shape for a take that leaves `keep` (what a shared budget is given).
    pub fn bucket(&self, keep: f64) -> crate::store::Bucket {
        crate::store::Bucket { burst: self.burst, per_sec: self.per_sec, keep }
    }

    /// Takes one probe for `mailbox`, or says how long until one is available.
    pub fn take(&self, mailbox: &str, now: Instant) -> Result<(), Duration> {
        self.take_leaving(mailbox, now, 0.0)
    }

    /// Probes the scheduled sweep must leave in a bucket: half of it, at least one, so an
    /// admin's Bind, Rotate or Verify always has one.
    pub fn sweep_reserve(&self) -> f64 {
        (self.burst / 2.0).floor().max(1.0)
    }

    /// Takes one probe for `mailbox` only if `keep` are left after it, or says how long until
    /// then.
    pub fn take_leaving(&self, mailbox: &str, now: Instant, keep: f64) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| self.refill(*b, now) < self.burst);
        }
        let bucket = buckets.entry(mailbox.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        let tokens = self.refill(*bucket, now);
        let need = 1.0 + keep;
        if tokens >= need {
            *bucket = Bucket { tokens: tokens - 1.0, at: now };
            return Ok(());
        }
        *bucket = Bucket { tokens, at: now };
        if self.per_sec <= 0.0 || need > self.burst {
            return Err(Duration::from_secs(3600));
        }
        Err(Duration::from_secs_f64(((need - tokens) / self.per_sec).ceil()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let b = ProbeBudget::new(3, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take("a@sina.com", t0).is_ok());
        }
        let wait = b.take("a@sina.com", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(360));
        // Other mailboxes have their own bucket.
        assert!(b.take("b@sina.com", t0).is_ok());
        assert!(b.take("a@sina.com", t0 + Duration::from_secs(359)).is_err());
        assert!(b.take("a@sina.com", t0 + Duration::from_secs(361)).is_ok());
        assert!(b.take("a@sina.com", t0 + Duration::from_secs(362)).is_err());
    }

    #[test]
    fn the_sweep_leaves_its_reserve_for_admins() {
        let b = ProbeBudget::new(3, 10);
        let t0 = Instant::now();
        assert!((b.sweep_reserve() - 1.0).abs() < f64::EPSILON);
        assert!(b.take_leaving("a@sina.com", t0, 1.0).is_ok());
        assert!(b.take_leaving("a@sina.com", t0, 1.0).is_ok());
        assert!(b.take_leaving("a@sina.com", t0, 1.0).is_err(), "the last probe is the admin's");
        assert!(b.take("a@sina.com", t0).is_ok());
        // A bucket of one is never touched by the sweep.
        let one = ProbeBudget::new(1, 10);
        assert!(one.take_leaving("a@sina.com", t0, one.sweep_reserve()).is_err());
    }
}
