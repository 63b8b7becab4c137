//! The per-client circuit: a client whose requests keep producing answers that take keys out of
//! rotation (401/403 not blamed on the request by `classify`, after which keygate's own probe
//! found the key fine) is refused with a 429 for a while, before it reaches more keys. A key
//! the probe finds revoked never counts against the client that met it.
//!
//! Counted per replica, in memory, per (pool, client): the counts are only ever read by the
//! replica that serves the client's next request, a refusal costs no store round trip, and the
//! damage a client can do before every replica refuses it is bounded anyway (a benched key
//! comes back after `auth_bench_s`, or at once when keygate's own probe succeeds). With R
//! replicas a client reaches at most R × `client_circuit_threshold` key-damaging answers per
//! window. README.md, "Who is blamed".

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::config::Policy;
use crate::error::ApiError;

pub use crate::metrics::CIRCUIT_OPEN;

/// One client's count on one pool.
#[derive(Debug, Clone, Copy)]
struct Circuit {
    window_start: Instant,
    damage: u32,
    open_until: Option<Instant>,
}

/// Every (pool, client) circuit of this replica. The keys are configured names, so the map is
/// bounded by the config; a std mutex held for one lookup, never across `.await`.
#[derive(Debug, Default)]
pub struct ClientCircuits {
    /// By pool, then by client: looked up by `&str` on every request, without building a key.
    circuits: Mutex<HashMap<String, HashMap<String, Circuit>>>,
}

impl ClientCircuits {
    /// How long the client stays refused on the pool, if its circuit is open at `now`.
    pub fn open_for(&self, pool: &str, client: &str, now: Instant) -> Option<Duration> {
        let circuits = self.circuits.lock().unwrap_or_else(PoisonError::into_inner);
        let until = circuits.get(pool)?.get(client)?.open_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one key-damaging answer the client's request produced; `true` when it opened
    /// the circuit.
    pub fn record_damage(&self, pool: &str, client: &str, policy: &Policy, now: Instant) -> bool {
        if policy.client_circuit_threshold == 0 {
            return false;
        }
        let window = Duration::from_secs(policy.client_circuit_window_s);
        let mut circuits = self.circuits.lock().unwrap_or_else(PoisonError::into_inner);
        let c = circuits
            .entry(pool.to_string())
            .or_default()
            .entry(client.to_string())
            .or_insert(Circuit {
                window_start: now,
                damage: 0,
                open_until: None,
            });
        if now.saturating_duration_since(c.window_start) >= window {
            (c.window_start, c.damage) = (now, 0);
        }
        c.damage += 1;
        let opens = c.damage >= policy.client_circuit_threshold
            && c.open_until.is_none_or(|until| until <= now);
        if opens {
            c.open_until = Some(now + Duration::from_secs(policy.client_circuit_open_s));
            (c.window_start, c.damage) = (now, 0);
        }
        opens
    }
}

/// The 429 an open circuit answers, with `Retry-After`.
pub fn refusal(remaining: Duration) -> ApiError {
    let secs = remaining.as_secs_f64().ceil().max(1.0) as u64;
    ApiError {
        retry_after_s: Some(secs),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            CIRCUIT_OPEN,
            format!(
                "This client's recent requests made the upstream refuse keygate's keys too often; \
                 its requests are refused for {secs} s to protect the keys other clients share."
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: u32) -> Policy {
        Policy {
            client_circuit_threshold: threshold,
            client_circuit_window_s: 10,
            client_circuit_open_s: 30,
            ..Policy::default()
        }
    }

    #[test]
    fn the_circuit_opens_at_the_threshold_within_the_window_and_closes_after_open_s() {
        let (c, p, t0) = (ClientCircuits::default(), policy(3), Instant::now());
        assert!(!c.record_damage("p", "evil", &p, t0));
        assert!(!c.record_damage("p", "evil", &p, t0 + Duration::from_secs(1)));
        assert_eq!(c.open_for("p", "evil", t0), None);
        assert!(c.record_damage("p", "evil", &p, t0 + Duration::from_secs(2)));
        let open = c.open_for("p", "evil", t0 + Duration::from_secs(2));
        assert_eq!(open, Some(Duration::from_secs(30)));
        // Other clients and other pools are not affected.
        assert_eq!(c.open_for("p", "good", t0), None);
        assert_eq!(c.open_for("q", "evil", t0), None);
        assert_eq!(c.open_for("p", "evil", t0 + Duration::from_secs(32)), None);
    }

    #[test]
    fn damage_spread_wider_than_the_window_never_opens_it() {
        let (c, p, t0) = (ClientCircuits::default(), policy(3), Instant::now());
        for i in 0..10 {
            let at = t0 + Duration::from_secs(6 * i);
            assert!(!c.record_damage("p", "slow", &p, at), "opened at {i}");
        }
    }

    #[test]
    fn a_zero_threshold_turns_the_circuit_off() {
        let (c, p, t0) = (ClientCircuits::default(), policy(0), Instant::now());
        for _ in 0..100 {
            assert!(!c.record_damage("p", "any", &p, t0));
        }
        assert_eq!(c.open_for("p", "any", t0), None);
    }

    #[test]
    fn the_refusal_is_an_openai_shaped_429_with_retry_after() {
        let e = refusal(Duration::from_millis(2_500));
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, CIRCUIT_OPEN);
        assert_eq!(e.retry_after_s, Some(3));
    }
}
