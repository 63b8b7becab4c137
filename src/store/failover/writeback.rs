//! What a replica learned while it answered from memory, and how it goes back into Redis.
//!
//! Two sources:
//! - the journal: every report that changed or may change a key (anything but a success
//!   without a cooldown, a batch of such successes, and a client error) and every admin change
//!   answered from memory, in
//!   order. Reports are replayed with their cooldown recomputed to end at the moment memory set
//!   (a cooldown that already ended is dropped); admin changes are replayed as they were.
//! - a pool Redis lost (restart without persistence, `FLUSHALL`) and re-created from config:
//!   the replica's last view of it (memory in degraded mode, else its last Redis snapshot) is
//!   written back, so disables, drains, cooldowns, weights, groups and the canary percent it knew
//!   stay in force. Breaker states are not restored: the breaker learns again from traffic.
//!
//! Every write goes through a script whose transitions are safe to apply twice (cooldowns only
//! extend, disables stay), so two replicas writing back the same knowledge agree.

use std::time::{SystemTime, UNIX_EPOCH};

use super::super::redis::RedisStore;
use super::super::{
    AdminState, KeyStore, PoolSnapshot, PoolSpec, Report, ReportReceipt, StoreError,
};
use crate::pool::{KeyId, KeyState, Outcome};

/// One thing learned while Redis was not answering.
#[derive(Clone, Debug)]
pub(crate) enum Learned {
    Report {
        pool: String,
        key: KeyId,
        outcome: Outcome,
        http_status: u16,
        /// When the cooldown or quota disable memory set ends (replica clock, ms).
        until_ms: Option<u64>,
    },
    State {
        pool: String,
        key: KeyId,
        state: AdminState,
    },
    Weight {
        pool: String,
        key: KeyId,
        weight: u32,
    },
    Group {
        pool: String,
        key: KeyId,
        group: String,
    },
    Canary {
        pool: String,
        percent: u8,
    },
    Reset {
        pool: String,
        key: KeyId,
    },
}

pub(crate) fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Outcomes that leave something to remember.
fn worth_keeping(r: &Report<'_>, receipt: &ReportReceipt) -> bool {
    match r.outcome {
        Outcome::ClientError => false,
        Outcome::Success => r.cooldown_ms.is_some(),
        // A bench, or the probe's confirmation; a 401 that changed nothing teaches nothing.
        Outcome::Unauthorized => receipt.changed,
        _ => true,
    }
}

impl Learned {
    /// The journal entry for a report memory applied, if it taught anything.
    pub fn from_report(pool: &str, r: &Report<'_>, receipt: &ReportReceipt) -> Option<Learned> {
        if !worth_keeping(r, receipt) {
            return None;
        }
        let timed = matches!(receipt.state, KeyState::Cooling | KeyState::Disabled);
        let until_ms = (timed && receipt.cooldown_until_ms > receipt.now_ms)
            .then_some(receipt.cooldown_until_ms);
        Some(Learned::Report {
            pool: pool.to_string(),
            key: r.key.clone(),
            outcome: r.outcome,
            http_status: r.http_status,
            until_ms,
        })
    }

    /// Writes this entry into Redis. An entry that no longer applies (a cooldown that ended, a
    /// key or pool gone from config) counts as written; only an outage is an error.
    pub async fn replay(&self, redis: &RedisStore, now_ms: u64) -> Result<(), StoreError> {
        let result = match self {
            Learned::Report {
                pool,
                key,
                outcome,
                http_status,
                until_ms,
            } => {
                let cooldown_ms = match (outcome, until_ms) {
                    (_, Some(until)) if *until <= now_ms => return Ok(()),
                    (Outcome::RateLimited | Outcome::Success, None) => return Ok(()),
                    // For a 401 a deadline is its bench; without one it was confirmed.
                    (
                        Outcome::RateLimited | Outcome::Success | Outcome::Unauthorized,
                        Some(until),
                    ) => Some(until - now_ms),
                    _ => None,
                };
                let r = Report {
                    key,
                    outcome: *outcome,
                    cooldown_ms,
                    http_status: *http_status,
                    probe: false,
                    now_ms: None,
                };
                redis.report(pool, &r).await.map(|_| ())
            }
            Learned::State { pool, key, state } => {
                redis.set_state(pool, key, *state).await.map(|_| ())
            }
            Learned::Weight { pool, key, weight } => redis.set_weight(pool, key, *weight).await,
            Learned::Group { pool, key, group } => redis.set_group(pool, key, group).await,
            Learned::Canary { pool, percent } => redis.set_canary(pool, *percent).await,
            Learned::Reset { pool, key } => redis.reset_counters(pool, key).await,
        };
        match result {
            Err(e) if e.is_outage() => Err(e),
            Err(e) => {
                tracing::debug!(entry = ?self, error = %e, "journal entry no longer applies");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }
}

/// The writes that put one known key record into a freshly re-created pool.
fn record_writes(
    pool: &str,
    key: &KeyId,
    rec: &super::super::KeyRecord,
    spec_weight: u32,
    spec_group: &str,
    now_ms: u64,
) -> Vec<Learned> {
    let mut out = Vec::new();
    let report = |outcome, http_status, until_ms| Learned::Report {
        pool: pool.to_string(),
        key: key.clone(),
        outcome,
        http_status,
        until_ms,
    };
    let state = |state| Learned::State {
        pool: pool.to_string(),
        key: key.clone(),
        state,
    };
    let running = rec.cooldown_until_ms > now_ms;
    match (rec.status, rec.reason.as_str()) {
        (KeyState::Disabled, "unauthorized") => out.push(report(Outcome::Unauthorized, 401, None)),
        (KeyState::Disabled, "quota") if running => out.push(report(
            Outcome::QuotaExhausted,
            429,
            Some(rec.cooldown_until_ms),
        )),
        (KeyState::Disabled, "admin") => out.push(state(AdminState::Disable)),
        (KeyState::Draining, "admin") => out.push(state(AdminState::Drain)),
        (KeyState::Cooling, _) if running => out.push(report(
            Outcome::RateLimited,
            429,
            Some(rec.cooldown_until_ms),
        )),
        _ => {}
    }
    if rec.weight != spec_weight {
        out.push(Learned::Weight {
            pool: pool.to_string(),
            key: key.clone(),
            weight: rec.weight,
        });
    }
    if rec.group != spec_group {
        out.push(Learned::Group {
            pool: pool.to_string(),
            key: key.clone(),
            group: rec.group.clone(),
        });
    }
    out
}

/// Writes `known` (the replica's last view of a pool Redis lost) into the re-created pool.
/// Returns how many writes it made.
pub(crate) async fn restore(
    redis: &RedisStore,
    spec: &PoolSpec,
    known: &PoolSnapshot,
) -> Result<usize, StoreError> {
    let now_ms = system_now_ms();
    let mut writes = Vec::new();
    for rec in &known.keys {
        let Some(sk) = spec.keys.iter().find(|k| k.id.as_str() == rec.id) else {
            continue;
        };
        writes.extend(record_writes(
            &spec.name, &sk.id, rec, sk.weight, &sk.group, now_ms,
        ));
    }
    if known.canary_percent != spec.canary_percent {
        writes.push(Learned::Canary {
            pool: spec.name.clone(),
            percent: known.canary_percent,
        });
    }
    for w in &writes {
        w.replay(redis, now_ms).await?;
    }
    Ok(writes.len())
}
