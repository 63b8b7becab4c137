//! Each [`Op`] as one script call: the script ([`Scripts::for_op`](super::super::scripts)), its
//! ARGV (the contract at the top of each `lua/*.lua`), and its reply decoded into the op's
//! [`Receipt`] (`reply.rs`).

use std::borrow::Cow;

use tokio::time::Instant;

use super::reply::{now_arg, receipt, rotation_receipt};
use super::RedisStore;
use crate::store::rotation::memory::join;
use crate::store::rotation::plan::{spec_fields, write_fields};
use crate::store::{Op, Receipt, StoreError};

impl RedisStore {
    /// Runs the script of `op` on `pool` within one deadline, re-creating a pool Redis lost
    /// unless `op` is a rotation op ([`Op::is_rotation`]: the plan went with the pool, and
    /// `rotation_start` answers `nopool`).
    pub(super) async fn run_op(&self, pool: &str, op: &Op<'_>) -> Result<Receipt, StoreError> {
        op.validate()?;
        let args = argv(op);
        let script = self.core.scripts.for_op(op);
        if op.is_rotation() {
            let deadline = Instant::now() + self.core.timeout;
            let reply = self
                .core
                .eval(script, &self.core.pool_base(pool), &args, deadline)
                .await?;
            return rotation_receipt(op, pool, reply);
        }
        let w = self.eval_pool(script, pool, &args).await?;
        receipt(op, pool, &w)
    }
}

/// Appends name, value pairs (the trailing ARGV of `rotation_start` and `rotation_write`).
fn pairs(args: &mut Vec<Cow<'_, str>>, fields: Vec<(&'static str, String)>) {
    for (name, value) in fields {
        args.push(name.into());
        args.push(value.into());
    }
}

/// ARGV of the script `op` runs. ARGV[1] is the clock override in every script ("0": the
/// server's `TIME`) but `rotation_stats` (the step); key ids and group names are borrowed,
/// numbers written out.
fn argv<'a>(op: &'a Op<'_>) -> Vec<Cow<'a, str>> {
    let id = |k: &'a crate::pool::KeyId| Cow::Borrowed(k.as_str());
    let unused_clock = Cow::Borrowed("0");
    match op {
        Op::Report(r) => {
            let hint = r.cooldown_ms.map_or(-1, |h| h.min(i64::MAX as u64) as i64);
            let probe = if r.probe { "1" } else { "0" };
            vec![
                now_arg(r.now_ms).into(),
                id(r.key),
                r.outcome.as_str().into(),
                hint.to_string().into(),
                r.http_status.to_string().into(),
                probe.into(),
            ]
        }
        Op::Successes(b) => {
            let n = 3 + b.keys.len() * 4 + b.hints.len() * 8 + b.ended.len() * 3;
            let mut args = Vec::with_capacity(n);
            args.push(now_arg(b.now_ms).into());
            args.push(b.keys.len().to_string().into());
            for k in b.keys {
                args.push(id(&k.key));
                args.push(k.count.to_string().into());
                args.push(k.http_status.to_string().into());
                args.push(k.age_ms.to_string().into());
            }
            args.push(b.hints.len().to_string().into());
            let said = |v: Option<u64>| v.map_or(-1, |v| v.min(1 << 52) as i64).to_string();
            for h in b.hints {
                let p = &h.hints;
                args.push(id(&h.key));
                args.push(h.age_ms.to_string().into());
                for v in [
                    p.remaining_requests,
                    p.reset_requests_ms,
                    p.remaining_tokens,
                    p.reset_tokens_ms,
                    p.limit_requests,
                    p.limit_tokens,
                ] {
                    args.push(said(v).into());
                }
            }
            for e in b.ended {
                args.push(id(&e.key));
                args.push(e.lease.to_string().into());
                args.push(e.tokens_delta.to_string().into());
            }
            args
        }
        Op::SetState { key, state } => vec![unused_clock, id(key), state.as_str().into()],
        Op::SetWeight { key, weight } => vec![unused_clock, id(key), weight.to_string().into()],
        Op::SetGroup { key, group } => vec![unused_clock, id(key), Cow::Borrowed(*group)],
        Op::SetCanary { percent } => vec![unused_clock, percent.to_string().into()],
        Op::Reset { key } => vec![unused_clock, id(key)],
        Op::Settle(s) => {
            let mut args = Vec::with_capacity(2 + s.ended.len() * 3 + s.renew.len() * 2);
            args.push(now_arg(s.now_ms).into());
            args.push(s.ended.len().to_string().into());
            for e in s.ended {
                args.push(id(&e.key));
                args.push(e.lease.to_string().into());
                args.push(e.tokens_delta.to_string().into());
            }
            for (key, lease) in s.renew {
                args.push(id(key));
                args.push(lease.to_string().into());
            }
            args
        }
        Op::RotationStart(spec) => {
            let mut args = vec![
                unused_clock,
                Cow::Borrowed(spec.id.as_str()),
                spec.new_keys.join(",").into(),
                spec.old_keys.join(",").into(),
                join(&spec.steps).into(),
            ];
            pairs(&mut args, spec_fields(spec));
            args
        }
        Op::RotationControl { action, reason } => {
            vec![unused_clock, action.as_str().into(), Cow::Borrowed(*reason)]
        }
        Op::RotationLease {
            replica,
            fence,
            lease_ms,
        } => vec![
            unused_clock,
            Cow::Borrowed(*replica),
            fence.to_string().into(),
            lease_ms.to_string().into(),
        ],
        Op::RotationWrite(w) => {
            let mut args = vec![
                unused_clock,
                Cow::Borrowed(w.replica.as_str()),
                w.fence.to_string().into(),
                w.canary.map_or(-1, i32::from).to_string().into(),
                Cow::Borrowed(w.event.as_str()),
                Cow::Borrowed(w.detail.as_str()),
            ];
            pairs(&mut args, write_fields(w));
            args
        }
        Op::RotationStats { step, deltas } => {
            let mut args = Vec::with_capacity(1 + deltas.len() * 2);
            args.push(step.to_string().into());
            for (field, delta) in deltas.iter() {
                args.push(Cow::Borrowed(field.as_str()));
                args.push(delta.to_string().into());
            }
            args
        }
        Op::RotationRead => vec![unused_clock],
    }
}
