//! What a replica learned while it answered from memory, and how it goes back into Redis.
//!
//! Two sources, both kept as [`OwnedOp`]s (an [`Op`] that owns its data) and replayed through
//! the Redis store's `apply`:
//! - the journal: every op answered from memory that changed or may change a key (any report but
//!   a success without a cooldown and a client error; every admin change; never a batch of
//!   successes), in order. Reports are replayed with their cooldown recomputed to end at the
//!   moment memory set (a cooldown that already ended is dropped); admin changes as they were.
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
    AdminState, KeyRecord, KeyStore, Op, PoolSnapshot, PoolSpec, Receipt, Report, StoreError,
};
use crate::pool::{KeyId, KeyState, Outcome};

/// An [`Op`] in owned form, as the journal keeps it: one thing learned while Redis was not
/// answering. A report keeps the moment its cooldown ends instead of its length, so that
/// replayed later it still ends then. A batch of successes teaches nothing worth keeping and has
/// no owned form.
#[derive(Clone, Debug)]
pub(crate) enum OwnedOp {
    Report {
        key: KeyId,
        outcome: Outcome,
        http_status: u16,
        /// When the cooldown or quota disable memory set ends (replica clock, ms).
        until_ms: Option<u64>,
    },
    SetState {
        key: KeyId,
        state: AdminState,
    },
    SetWeight {
        key: KeyId,
        weight: u32,
    },
    SetGroup {
        key: KeyId,
        group: String,
    },
    SetCanary {
        percent: u8,
    },
    Reset {
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
fn worth_keeping(r: &Report<'_>, receipt: &super::super::ReportReceipt) -> bool {
    match r.outcome {
        Outcome::ClientError => false,
        Outcome::Success => r.cooldown_ms.is_some(),
        // A bench, or the probe's confirmation; a 401 that changed nothing teaches nothing.
        Outcome::Unauthorized => receipt.changed,
        _ => true,
    }
}

impl OwnedOp {
    /// The journal entry for `op`, which memory answered with `receipt`, if it taught anything.
    pub fn learned(op: &Op<'_>, receipt: &Receipt) -> Option<OwnedOp> {
        Some(match op {
            Op::Report(r) => {
                let Receipt::Report(receipt) = receipt else {
                    return None;
                };
                if !worth_keeping(r, receipt) {
                    return None;
                }
                let timed = matches!(receipt.state, KeyState::Cooling | KeyState::Disabled);
                let until_ms = (timed && receipt.cooldown_until_ms > receipt.now_ms)
                    .then_some(receipt.cooldown_until_ms);
                OwnedOp::Report {
                    key: r.key.clone(),
                    outcome: r.outcome,
                    http_status: r.http_status,
                    until_ms,
                }
            }
            // Leases and schedules the stand-in kept concern its own budget copy only.
            Op::Successes(_) | Op::Settle(_) => return None,
            // Never answered by memory here (`FailoverStore::apply` refuses them while degraded).
            Op::RotationStart(_)
            | Op::RotationControl { .. }
            | Op::RotationLease { .. }
            | Op::RotationWrite(_)
            | Op::RotationStats { .. }
            | Op::RotationRead => return None,
            Op::SetState { key, state } => OwnedOp::SetState {
                key: (*key).clone(),
                state: *state,
            },
            Op::SetWeight { key, weight } => OwnedOp::SetWeight {
                key: (*key).clone(),
                weight: *weight,
            },
            Op::SetGroup { key, group } => OwnedOp::SetGroup {
                key: (*key).clone(),
                group: group.to_string(),
            },
            Op::SetCanary { percent } => OwnedOp::SetCanary { percent: *percent },
            Op::Reset { key } => OwnedOp::Reset {
                key: (*key).clone(),
            },
        })
    }

    /// The op to replay at `now_ms`; `None` when it no longer applies (a cooldown that ended,
    /// a rate limit memory did not turn into a cooldown).
    pub fn as_op(&self, now_ms: u64) -> Option<Op<'_>> {
        Some(match self {
            OwnedOp::Report {
                key,
                outcome,
                http_status,
                until_ms,
            } => {
                let cooldown_ms = match (outcome, until_ms) {
                    (_, Some(until)) if *until <= now_ms => return None,
                    (Outcome::RateLimited | Outcome::Success, None) => return None,
                    // For a 401 a deadline is its bench; without one it was confirmed.
                    (
                        Outcome::RateLimited | Outcome::Success | Outcome::Unauthorized,
                        Some(until),
                    ) => Some(until - now_ms),
                    _ => None,
                };
                Op::Report(Report {
                    key,
                    outcome: *outcome,
                    cooldown_ms,
                    http_status: *http_status,
                    probe: false,
                    now_ms: None,
                })
            }
            OwnedOp::SetState { key, state } => Op::SetState { key, state: *state },
            OwnedOp::SetWeight { key, weight } => Op::SetWeight {
                key,
                weight: *weight,
            },
            OwnedOp::SetGroup { key, group } => Op::SetGroup { key, group },
            OwnedOp::SetCanary { percent } => Op::SetCanary { percent: *percent },
            OwnedOp::Reset { key } => Op::Reset { key },
        })
    }

    /// Writes this op into `pool` in Redis. One that no longer applies (a cooldown that ended, a
    /// key or pool gone from config) counts as written; only an outage is an error.
    pub async fn replay(
        &self,
        redis: &RedisStore,
        pool: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(op) = self.as_op(now_ms) else {
            return Ok(());
        };
        match redis.apply(pool, op).await {
            Err(e) if e.is_outage() => Err(e),
            Err(e) => {
                tracing::debug!(pool, entry = ?self, error = %e, "journal entry no longer applies");
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }
}

/// The ops that put one known key record into a freshly re-created pool.
fn record_writes(
    key: &KeyId,
    rec: &KeyRecord,
    spec_weight: u32,
    spec_group: &str,
    now_ms: u64,
) -> Vec<OwnedOp> {
    let mut out = Vec::new();
    let report = |outcome, http_status, until_ms| OwnedOp::Report {
        key: key.clone(),
        outcome,
        http_status,
        until_ms,
    };
    let state = |state| OwnedOp::SetState {
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
        out.push(OwnedOp::SetWeight {
            key: key.clone(),
            weight: rec.weight,
        });
    }
    if rec.group != spec_group {
        out.push(OwnedOp::SetGroup {
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
        writes.extend(record_writes(&sk.id, rec, sk.weight, &sk.group, now_ms));
    }
    if known.canary_percent != spec.canary_percent {
        writes.push(OwnedOp::SetCanary {
            percent: known.canary_percent,
        });
    }
    for w in &writes {
        w.replay(redis, &spec.name, now_ms).await?;
    }
    Ok(writes.len())
}

#[cfg(test)]
mod tests;
