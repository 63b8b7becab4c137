//! `[pools.limits]` and a key's `limits = {...}`: the per-key budgets of README "Budgets"
//! (requests and tokens per minute and per day, requests in flight), decoded and checked.
//! Every field is optional; a pool with none set behaves as if budgets did not exist.

use serde::Deserialize;

use super::decode::Ctx;

/// Per-key rates; `None`: not limited. A key's own `limits` override the pool's field by field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub rpd: Option<u64>,
    pub tpd: Option<u64>,
}

impl Limits {
    /// `self` where set, else `pool`.
    pub fn over(self, pool: Limits) -> Limits {
        Limits {
            rpm: self.rpm.or(pool.rpm),
            tpm: self.tpm.or(pool.tpm),
            max_concurrent: self.max_concurrent.or(pool.max_concurrent),
            rpd: self.rpd.or(pool.rpd),
            tpd: self.tpd.or(pool.tpd),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    pub fn has_tokens(&self) -> bool {
        self.tpm.is_some() || self.tpd.is_some()
    }
}

/// `[pools.limits]`: the pool's default [`Limits`] and how budgets behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    pub keys: Limits,
    /// How long a request may wait for a key's headroom before the pool answers 429.
    pub max_wait_ms: u64,
    /// How long an in-flight slot outlives a replica that stopped renewing it.
    pub lease_s: u64,
    /// The completion reserved for a request that names no `max_tokens`.
    pub default_completion_tokens: u64,
    /// The largest reservation one request may make; token budgets are spaced against
    /// `tpm - max_request_tokens` so no 60-second window ever holds more than `tpm`.
    pub max_request_tokens: u64,
    /// Fill in `rpm`/`tpm` the config leaves unset from the provider's
    /// `x-ratelimit-limit-requests/-tokens` (README "Budgets"); turns budgets on by itself.
    pub learn_limits: bool,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            keys: Limits::default(),
            max_wait_ms: 0,
            lease_s: 10,
            default_completion_tokens: 1024,
            max_request_tokens: 8192,
            learn_limits: false,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawKeyLimits {
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrent: Option<i64>,
    rpd: Option<i64>,
    tpd: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawPoolLimits {
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrent: Option<i64>,
    rpd: Option<i64>,
    tpd: Option<i64>,
    max_wait_ms: Option<i64>,
    lease_s: Option<i64>,
    default_completion_tokens: Option<i64>,
    max_request_tokens: Option<i64>,
    learn_limits: Option<bool>,
}

/// A given value must be at least 1.
fn positive(v: Option<i64>, path: &str, field: &str, ctx: &mut Ctx) -> Option<u64> {
    let v = v?;
    match u64::try_from(v) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            ctx.problem(format!("{path}.{field}"), "must be at least 1");
            None
        }
    }
}

impl RawKeyLimits {
    pub(super) fn check(self, path: &str, ctx: &mut Ctx) -> Limits {
        Limits {
            rpm: positive(self.rpm, path, "rpm", ctx),
            tpm: positive(self.tpm, path, "tpm", ctx),
            max_concurrent: positive(self.max_concurrent, path, "max_concurrent", ctx),
            rpd: positive(self.rpd, path, "rpd", ctx),
            tpd: positive(self.tpd, path, "tpd", ctx),
        }
    }
}

/// Decodes and checks `[pools.limits]` at `path` (e.g. `pools[0].limits`).
pub(super) fn check_pool_limits(table: toml::Table, path: &str, ctx: &mut Ctx) -> PoolLimits {
    let Some(raw) = ctx.decode::<RawPoolLimits>(toml::Value::Table(table), path) else {
        return PoolLimits::default();
    };
    let keys = RawKeyLimits {
        rpm: raw.rpm,
        tpm: raw.tpm,
        max_concurrent: raw.max_concurrent,
        rpd: raw.rpd,
        tpd: raw.tpd,
    }
    .check(path, ctx);
    let d = PoolLimits::default();
    let max_wait_ms = match raw.max_wait_ms.map(u64::try_from) {
        None => d.max_wait_ms,
        Some(Ok(ms)) if ms <= 60_000 => ms,
        Some(_) => {
            ctx.problem(format!("{path}.max_wait_ms"), "must be 0..=60000");
            d.max_wait_ms
        }
    };
    let lease_s = positive(raw.lease_s, path, "lease_s", ctx).unwrap_or(d.lease_s);
    let default_completion_tokens = positive(
        raw.default_completion_tokens,
        path,
        "default_completion_tokens",
        ctx,
    )
    .unwrap_or(d.default_completion_tokens);
    let max_request_tokens = positive(raw.max_request_tokens, path, "max_request_tokens", ctx)
        .unwrap_or(d.max_request_tokens);
    if default_completion_tokens > max_request_tokens {
        let message = format!("must not exceed max_request_tokens ({max_request_tokens})");
        ctx.problem(format!("{path}.default_completion_tokens"), message);
    }
    PoolLimits {
        keys,
        max_wait_ms,
        lease_s,
        default_completion_tokens,
        max_request_tokens,
        learn_limits: raw.learn_limits.unwrap_or(d.learn_limits),
    }
}

/// A token budget must hold more than one request's largest reservation (`path` names the
/// table the effective value came from).
pub(super) fn check_token_room(limits: &Limits, pool: &PoolLimits, path: &str, ctx: &mut Ctx) {
    for (field, value) in [("tpm", limits.tpm), ("tpd", limits.tpd)] {
        if let Some(v) = value.filter(|v| *v <= pool.max_request_tokens) {
            let message = format!(
                "{v} must exceed max_request_tokens ({}), one request's largest reservation",
                pool.max_request_tokens
            );
            ctx.problem(format!("{path}.{field}"), message);
        }
    }
}
