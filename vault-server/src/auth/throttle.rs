//! Failed authentications per peer address, as a token bucket: a peer may fail
//! [`FAILURE_BURST`] times at once, refilled by [`FAILURES_PER_SEC`]. Past that its failing
//! calls are refused as throttled, before any table re-read. A valid token the server has read is
//! checked first and is never throttled, so callers behind the same address keep working.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a peer may make at once.
pub const FAILURE_BURST: f64 = 20.0;
/// Failures per second the bucket refills by.
pub const FAILURES_PER_SEC: f64 = 1.0;
/// Peers tracked at most; full buckets are dropped first.
const MAX_PEERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        (self.left + now.saturating_duration_since(self.at).as_secs_f64() * FAILURES_PER_SEC).min(FAILURE_BURST)
    }
}

/// The per-peer failure buckets. Touched only when a call fails to authenticate.
#[derive(Debug, Default)]
pub struct FailureThrottle {
    peers: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A peer: an IPv4 address (also when it arrives IPv4-mapped on a dual-stack listener), or an
/// IPv6 /64 (one host usually holds a whole /64). One failure bucket, and one connection count,
/// per peer.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::from(s)
        }
    }
}

impl FailureThrottle {
    /// Gives back a failure spent by a call that turned out to hold a valid token.
    pub fn refund(&self, ip: IpAddr, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = peers.get_mut(&peer_key(ip)) {
            *b = Bucket { left: (b.refilled(now) + 1.0).min(FAILURE_BURST), at: now };
        }
    }

    /// Spends one failure for `ip`; `Err(retry_after)` if its bucket is empty.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, b| b.refilled(now) < FAILURE_BURST);
        }
        let key = peer_key(ip);
        let tracked = peers.get(&key).copied();
        if tracked.is_none() && peers.len() >= MAX_PEERS {
            // Every tracked peer is failing right now: a new one is not given a fresh burst
            // (that would let an attacker with many addresses slip past). Valid tokens are
            // checked before this and are never affected.
            return Err(Duration::from_secs_f64(1.0 / FAILURES_PER_SEC));
        }
        let left = tracked.map_or(FAILURE_BURST, |b| b.refilled(now));
        if left >= 1.0 {
            peers.insert(key, Bucket { left: left - 1.0, at: now });
            return Ok(());
        }
        peers.insert(key, Bucket { left, at: now });
        Err(Duration::from_secs_f64((1.0 - left) / FAILURES_PER_SEC))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_then_refill() {
        let t = FailureThrottle::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let now = Instant::now();
        for _ in 0..20 {
            assert!(t.fail(a, now).is_ok());
        }
        let wait = t.fail(a, now).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(t.fail(b, now).is_ok(), "another peer is not affected");
        assert!(t.fail(a, now + Duration::from_millis(1100)).is_ok(), "refilled after a second");
        assert!(t.fail(a, now + Duration::from_millis(1100)).is_err());
    }

    #[test]
    fn ipv4_mapped_peers_are_told_apart_and_a_full_table_fails_closed() {
        let t = FailureThrottle::default();
        let now = Instant::now();
        let mapped = |last: u8| IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, last).to_ipv6_mapped());
        for _ in 0..20 {
            assert!(t.fail(mapped(1), now).is_ok());
        }
        assert!(t.fail(mapped(1), now).is_err());
        assert!(t.fail(mapped(2), now).is_ok(), "another IPv4 client behind a dual-stack listener");
        assert!(t.fail(IpAddr::from([10, 0, 0, 1]), now).is_err(), "mapped and plain are one peer");

        let full = FailureThrottle::default();
        for i in 0..u32::try_from(MAX_PEERS).unwrap() {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..21 {
                let _ = full.fail(ip, now);
            }
        }
        assert!(full.fail(IpAddr::from([192, 0, 2, 1]), now).is_err(), "a new peer slipped past a full table");
        // Once buckets refill, they are dropped and new peers get their burst.
        assert!(full.fail(IpAddr::from([192, 0, 2, 1]), now + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn ipv6_peers_share_a_slash_64() {
        let t = FailureThrottle::default();
        let now = Instant::now();
        for i in 0..20u16 {
            assert!(t.fail(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]), now).is_ok());
        }
        assert!(t.fail(IpAddr::from([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9]), now).is_err());
        assert!(t.fail(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), now).is_ok());
    }
}
