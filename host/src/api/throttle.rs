//! Failed authentications per peer: a wrong key (on a login, a route behind a key or a
//! node route) costs a token from the peer's bucket; a peer whose bucket is empty is
//! answered 429 with `Retry-After` before its key is even looked at, so keys cannot
//! be guessed at the speed of the network.
//!
//! Buckets are kept per IPv4 address and per IPv6 /64 (what one host usually holds), in
//! a table of at most [`MAX_PEERS`] entries; full buckets are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a peer may have in a burst.
pub const BURST: f64 = 10.0;

/// How often a peer earns one more failure back.
pub const REFILL: Duration = Duration::from_secs(2);

/// Peers tracked at most.
const MAX_PEERS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        (self.tokens + earned).min(BURST)
    }
}

/// The answer to a peer with no failure left.
pub fn refused(retry_after: u64) -> crate::api::error::ApiError {
    crate::api::error::ApiError::RateLimited(
        "too many failed authentications from this address; try again later".into(),
        retry_after,
    )
}

/// The buckets.
#[derive(Debug, Default)]
pub struct Failures {
    peers: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The peer an address belongs to: itself for IPv4 (an IPv4-mapped IPv6 address too),
/// its /64 for IPv6 (what one host usually holds). Failures and connections are
/// counted per peer.
pub fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl Failures {
    /// `Err(seconds)` to wait when `peer` has no failure left; `Ok` otherwise (and for
    /// an unknown peer: in-process callers).
    pub fn check(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        let Some(ip) = peer else { return Ok(()) };
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(&peer_of(ip)) {
            Some(bucket) if bucket.now(now) < 1.0 => {
                let missing = 1.0 - bucket.now(now);
                Err((missing * REFILL.as_secs_f64()).ceil().max(1.0) as u64)
            }
            _ => Ok(()),
        }
    }

    /// Takes one failure from `peer`'s bucket.
    pub fn fail(&self, peer: Option<IpAddr>, now: Instant) {
        let Some(ip) = peer else { return };
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, bucket| bucket.now(now) < BURST);
            if peers.len() >= MAX_PEERS {
                // Every tracked peer is failing: the one closest to full goes.
                if let Some(fullest) = peers
                    .iter()
                    .max_by(|a, b| a.1.now(now).total_cmp(&b.1.now(now)))
                    .map(|(ip, _)| *ip)
                {
                    peers.remove(&fullest);
                }
            }
        }
        let bucket = peers.entry(peer_of(ip)).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.tokens = (bucket.now(now) - 1.0).max(0.0);
        bucket.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_a_burst_of_failures_then_one_per_refill() {
        let failures = Failures::default();
        let peer = Some("198.51.100.7".parse().unwrap());
        let other = Some("198.51.100.8".parse().unwrap());
        let now = Instant::now();
        for _ in 0..BURST as usize {
            assert_eq!(failures.check(peer, now), Ok(()));
            failures.fail(peer, now);
        }
        assert_eq!(failures.check(peer, now), Err(2));
        assert_eq!(
            failures.check(other, now),
            Ok(()),
            "another peer is not held"
        );
        assert_eq!(failures.check(None, now), Ok(()), "in-process callers");
        assert_eq!(failures.check(peer, now + REFILL), Ok(()));
        failures.fail(peer, now + REFILL);
        assert!(failures.check(peer, now + REFILL).is_err());
    }

    #[test]
    fn an_ipv6_host_is_one_peer_across_its_64() {
        let failures = Failures::default();
        let now = Instant::now();
        for i in 0..BURST as usize {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            failures.fail(Some(ip), now);
        }
        let next: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(failures.check(Some(next), now).is_err());
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(failures.check(Some(elsewhere), now).is_ok());
    }
}
