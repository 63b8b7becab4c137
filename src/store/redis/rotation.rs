//! The rotation operations on Redis: one `lua/rotation_<op>.lua` script each, replies decoded
//! here into the types of `store::rotation::plan`.

use std::collections::BTreeMap;

use redis::Value;
use tokio::time::Instant;

use super::reply::words;
use super::RedisStore;
use crate::store::rotation::memory::join;
use crate::store::rotation::plan::{
    counts_from_fields, plan_from_fields, spec_fields, write_fields, HistoryEntry, LeaseInfo,
    LeaseReply, PlanState, RotationOp, RotationReply, RotationView, WriteReply,
};
use crate::store::StoreError;

fn bad(w: &[String]) -> StoreError {
    StoreError::Script(format!("unexpected rotation reply {w:?}"))
}

fn num(w: &[String], i: usize) -> Result<u64, StoreError> {
    w.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| bad(w))
}

fn state(w: &[String], i: usize) -> Result<PlanState, StoreError> {
    w.get(i)
        .and_then(|s| PlanState::parse(s))
        .ok_or_else(|| bad(w))
}

fn lease(w: &[String]) -> Result<LeaseInfo, StoreError> {
    Ok(LeaseInfo {
        holder: w.get(1).cloned().unwrap_or_default(),
        fence: num(w, 2)?,
        until_ms: num(w, 3)?,
    })
}

/// A flat name/value array (`HGETALL`) as a map.
fn pairs(v: Value) -> Result<BTreeMap<String, String>, StoreError> {
    let w = words(v)?;
    Ok(w.chunks(2)
        .filter_map(|c| match c {
            [k, v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect())
}

fn parse_view(v: Value) -> Result<RotationView, StoreError> {
    let Value::Array(parts) = v else {
        return Err(StoreError::Script("rotation_read: not an array".into()));
    };
    let mut it = parts.into_iter();
    let mut next = || it.next().unwrap_or(Value::Nil);
    let now = words(next())?;
    let plan = pairs(next())?;
    let lease = pairs(next())?;
    let history = words(next())?;
    let stats: BTreeMap<String, u64> = pairs(next())?
        .into_iter()
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();
    let field = |k: &str| lease.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(RotationView {
        now_ms: num(&now, 0)?,
        plan: plan_from_fields(&plan),
        lease: LeaseInfo {
            holder: lease.get("holder").cloned().unwrap_or_default(),
            until_ms: field("until_ms"),
            fence: field("fence"),
        },
        history: history
            .iter()
            .filter_map(|l| HistoryEntry::parse(l))
            .collect(),
        counts: counts_from_fields(&stats),
    })
}

impl RedisStore {
    /// One rotation operation: one script call within the store timeout.
    pub(super) async fn rotation_op(
        &self,
        pool: &str,
        op: RotationOp,
    ) -> Result<RotationReply, StoreError> {
        let scripts = &self.core.scripts;
        let deadline = Instant::now() + self.core.timeout;
        let (script, args): (_, Vec<String>) = match &op {
            RotationOp::Start(spec) => {
                let mut a = vec![
                    "0".to_string(),
                    spec.id.clone(),
                    spec.new_keys.join(","),
                    spec.old_keys.join(","),
                    join(&spec.steps),
                ];
                for (k, v) in spec_fields(spec) {
                    a.push(k.to_string());
                    a.push(v);
                }
                (&scripts.rotation_start, a)
            }
            RotationOp::Control { action, reason } => (
                &scripts.rotation_control,
                vec!["0".into(), action.as_str().into(), reason.clone()],
            ),
            RotationOp::Lease {
                replica,
                fence,
                lease_ms,
            } => (
                &scripts.rotation_lease,
                vec![
                    "0".into(),
                    replica.clone(),
                    fence.to_string(),
                    lease_ms.to_string(),
                ],
            ),
            RotationOp::Write(w) => {
                let mut a = vec![
                    "0".to_string(),
                    w.replica.clone(),
                    w.fence.to_string(),
                    w.canary.map_or(-1, i32::from).to_string(),
                    w.event.clone(),
                    w.detail.clone(),
                ];
                for (k, v) in write_fields(w) {
                    a.push(k.to_string());
                    a.push(v);
                }
                (&scripts.rotation_write, a)
            }
            RotationOp::Stats { step, deltas } => {
                let mut a = vec![step.to_string()];
                for (k, v) in deltas {
                    a.push(k.clone());
                    a.push(v.to_string());
                }
                (&scripts.rotation_stats, a)
            }
            RotationOp::Read => (&scripts.rotation_read, vec!["0".into()]),
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let value = self.core.eval(script, pool, &refs, deadline).await?;
        if matches!(op, RotationOp::Read) {
            return Ok(RotationReply::View(Box::new(parse_view(value)?)));
        }
        let w = words(value)?;
        let reply = match (w.first().map(String::as_str), &op) {
            (Some("nopool"), _) => return Err(StoreError::UnknownPool(pool.to_string())),
            (Some("ok"), RotationOp::Start(_)) => RotationReply::Started {
                percent: num(&w, 1)? as u8,
            },
            (Some("busy"), _) => RotationReply::Busy(state(&w, 1)?),
            (Some("badkey"), _) => RotationReply::BadKey {
                key: w.get(1).cloned().unwrap_or_default(),
                why: w.get(2).cloned().unwrap_or_default(),
            },
            (Some("ok"), RotationOp::Control { .. }) => RotationReply::Controlled(state(&w, 1)?),
            (Some("noplan"), RotationOp::Write(_)) => RotationReply::Written(WriteReply::NoPlan),
            (Some("noplan"), _) => RotationReply::NoPlan,
            (Some("badstate"), _) => RotationReply::BadState(state(&w, 1)?),
            (Some("held"), _) => RotationReply::Lease(LeaseReply::Held {
                fence: num(&w, 1)?,
                until_ms: num(&w, 2)?,
            }),
            (Some("other"), _) => RotationReply::Lease(LeaseReply::Other(lease(&w)?)),
            (Some("lost"), _) => RotationReply::Lease(LeaseReply::Lost(lease(&w)?)),
            (Some("idle"), _) => RotationReply::Lease(LeaseReply::Idle),
            (Some("ok"), RotationOp::Write(_)) => RotationReply::Written(WriteReply::Ok),
            (Some("fenced"), _) => RotationReply::Written(WriteReply::Fenced {
                fence: num(&w, 1)?,
                holder: w.get(2).cloned().unwrap_or_default(),
            }),
            (Some("ok"), RotationOp::Stats { .. }) => RotationReply::Stats { applied: true },
            (Some("stale"), _) => RotationReply::Stats { applied: false },
            _ => return Err(bad(&w)),
        };
        Ok(reply)
    }
}
