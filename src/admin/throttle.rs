//! Admin token guessing, slowed down: failures are counted per peer address, and a peer with
//! [`MAX_FAILURES`] failures within [`WINDOW`] gets 429 on every admin request (right token or
//! not, so guessing on gains nothing) for [`BLOCK`]. The table holds at most [`MAX_PEERS`]
//! addresses: expired entries go first, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const BLOCK: Duration = Duration::from_secs(60);
const MAX_PEERS: usize = 4096;

struct Peer {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Peer {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.window_start) >= WINDOW
            && self.blocked_until.is_none_or(|until| until <= now)
    }
}

#[derive(Default)]
pub struct AdminThrottle {
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

impl AdminThrottle {
    /// Seconds until `peer` may try again, while it is blocked.
    pub fn blocked_for(&self, peer: IpAddr) -> Option<u64> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let until = peers.get(&peer)?.blocked_until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs().max(1))
    }

    /// Counts a refused token; returns the peer's failures in the current window.
    pub fn failed(&self, peer: IpAddr) -> u32 {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(&peer) && peers.len() >= MAX_PEERS {
            make_room(&mut peers, now);
        }
        let entry = peers.entry(peer).or_insert(Peer {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if entry.expired(now) {
            *entry = Peer {
                window_start: now,
                failures: 0,
                blocked_until: None,
            };
        }
        entry.failures += 1;
        if entry.failures >= MAX_FAILURES {
            entry.blocked_until = Some(now + BLOCK);
        }
        entry.failures
    }

    /// A peer that presented the right token starts over.
    pub fn succeeded(&self, peer: IpAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.remove(&peer);
    }
}

fn make_room(peers: &mut HashMap<IpAddr, Peer>, now: Instant) {
    peers.retain(|_, p| !p.expired(now));
    if peers.len() < MAX_PEERS {
        return;
    }
    let oldest = (peers.iter())
        .min_by_key(|(_, p)| p.window_start)
        .map(|(ip, _)| *ip);
    if let Some(ip) = oldest {
        peers.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_blocked_at_the_failure_limit_and_others_are_not() {
        let t = AdminThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for n in 1..MAX_FAILURES {
            assert_eq!(t.failed(a), n);
            assert_eq!(t.blocked_for(a), None);
        }
        t.failed(a);
        assert!(t.blocked_for(a).is_some_and(|s| s <= BLOCK.as_secs()));
        assert_eq!(t.blocked_for(b), None);
        t.failed(b);
        t.succeeded(b);
        assert_eq!(t.failed(b), 1, "success starts the count over");
    }

    #[test]
    fn the_peer_table_stays_bounded() {
        let t = AdminThrottle::default();
        for i in 0..(MAX_PEERS as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(t.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}
