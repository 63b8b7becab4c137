//! What a pool is to the store: its policy in milliseconds, its canary settings and its keys
//! (ids, weights, groups; never secrets), derived once from config.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::budget::KeyLimits;
use crate::config::{Limits, PoolConfig};
use crate::pool::KeyId;

/// The pool policy of the config (`[pools.policy]`), in the store's unit (ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorePolicy {
    pub cooldown_default_ms: u64,
    pub cooldown_max_ms: u64,
    pub breaker_errors: u32,
    pub breaker_window_ms: u64,
    pub breaker_open_ms: u64,
    pub quota_cooldown_ms: u64,
    /// How long a half-open probe holds the key before another replica may probe it.
    pub probe_lease_ms: u64,
}

impl Default for StorePolicy {
    fn default() -> Self {
        StorePolicy {
            cooldown_default_ms: 60_000,
            cooldown_max_ms: 900_000,
            breaker_errors: 5,
            breaker_window_ms: 60_000,
            breaker_open_ms: 30_000,
            quota_cooldown_ms: 3_600_000,
            probe_lease_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecKey {
    pub id: KeyId,
    pub weight: u32,
    pub group: String,
    /// The key's effective budgets (its own over the pool's); empty: none.
    pub limits: KeyLimits,
}

/// How a pool's budgets behave (README "Budgets"); meaningful when some key has limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSpec {
    pub max_wait_ms: u64,
    pub lease_ms: u64,
    pub max_request_tokens: u64,
    /// Some key has a token budget (or may learn one): requests estimate their reservation.
    pub token_budgets: bool,
    /// The pool fills in unset per-minute limits from the provider's announcements.
    pub learn: bool,
}

impl Default for BudgetSpec {
    fn default() -> Self {
        BudgetSpec {
            max_wait_ms: 0,
            lease_ms: 10_000,
            max_request_tokens: 8192,
            token_budgets: false,
            learn: false,
        }
    }
}

impl KeyLimits {
    pub fn from_config(l: &Limits) -> KeyLimits {
        KeyLimits {
            rpm: l.rpm.unwrap_or(0),
            tpm: l.tpm.unwrap_or(0),
            conc: l.max_concurrent.unwrap_or(0),
            rpd: l.rpd.unwrap_or(0),
            tpd: l.tpd.unwrap_or(0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub policy: StorePolicy,
    pub canary_group: String,
    pub canary_percent: u8,
    pub canary_fallback: bool,
    /// Shared by every copy of the spec (the gateway's, the Redis store's and the failover
    /// store's): at 10,000 keys one list is over a megabyte.
    pub keys: Arc<[SpecKey]>,
    pub budget: BudgetSpec,
}

impl PoolSpec {
    pub fn from_config(pool: &PoolConfig) -> PoolSpec {
        let p = &pool.policy;
        PoolSpec {
            name: pool.name.clone(),
            policy: StorePolicy {
                cooldown_default_ms: p.cooldown_default_s.saturating_mul(1000),
                cooldown_max_ms: p.cooldown_max_s.saturating_mul(1000),
                breaker_errors: p.breaker_errors,
                breaker_window_ms: p.breaker_window_s.saturating_mul(1000),
                breaker_open_ms: p.breaker_open_s.saturating_mul(1000),
                quota_cooldown_ms: p.quota_cooldown_s.saturating_mul(1000),
                probe_lease_ms: p.probe_lease_s.saturating_mul(1000),
            },
            canary_group: pool.canary.group.clone(),
            canary_percent: pool.canary.percent,
            canary_fallback: pool.canary.fallback,
            keys: pool
                .keys
                .iter()
                .filter_map(|k| {
                    Some(SpecKey {
                        id: KeyId::new(&k.id)?,
                        weight: k.weight,
                        group: k.group.clone(),
                        limits: KeyLimits::from_config(&k.limits.over(pool.limits.keys)),
                    })
                })
                .collect(),
            budget: BudgetSpec {
                max_wait_ms: pool.limits.max_wait_ms,
                lease_ms: pool.limits.lease_s.saturating_mul(1000),
                max_request_tokens: pool.limits.max_request_tokens,
                token_budgets: pool.limits.learn_limits
                    || (pool.keys.iter()).any(|k| k.limits.over(pool.limits.keys).has_tokens()),
                learn: pool.limits.learn_limits,
            },
        }
    }

    /// The ARGV of `lua/sync.lua` after the fingerprint, in order.
    pub fn sync_args(&self) -> Vec<String> {
        let p = &self.policy;
        let mut args = vec![
            p.cooldown_default_ms.to_string(),
            p.cooldown_max_ms.to_string(),
            p.breaker_errors.to_string(),
            p.breaker_window_ms.to_string(),
            p.breaker_open_ms.to_string(),
            p.quota_cooldown_ms.to_string(),
            p.probe_lease_ms.to_string(),
            self.canary_group.clone(),
            self.canary_percent.to_string(),
            if self.canary_fallback { "1" } else { "0" }.to_string(),
            if self.has_budgets() { "1" } else { "0" }.to_string(),
            self.budget.max_wait_ms.to_string(),
            self.budget.lease_ms.to_string(),
            self.budget.max_request_tokens.to_string(),
            if self.budget.learn { "1" } else { "0" }.to_string(),
        ];
        for k in self.keys.iter() {
            let l = &k.limits;
            args.push(k.id.to_string());
            args.push(k.weight.to_string());
            args.push(k.group.clone());
            args.extend([l.rpm, l.tpm, l.conc, l.rpd, l.tpd].map(|v| v.to_string()));
        }
        args
    }

    /// Whether any key of the pool has a budget, or the pool learns them (the meta flag
    /// `budgets` the scripts test).
    pub fn has_budgets(&self) -> bool {
        self.budget.learn || self.keys.iter().any(|k| !k.limits.is_empty())
    }

    /// A hash of everything `sync` writes: equal fingerprints mean there is nothing to do.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for a in self.sync_args() {
            h.update(a.len().to_le_bytes());
            h.update(a.as_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::PoolSpec;
    use crate::config::Config;

    fn spec(limits: &str) -> PoolSpec {
        let text = format!(
            "[[clients]]\nname = \"c\"\ntoken_sha256 = \"{}\"\npools = [\"p\"]\n\n\
             [[pools]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:9/v1\"\n{limits}\n\n\
             [[pools.keys]]\nid = \"k1\"\nsecret = \"sk-inline-test-0001\"\n",
            "a".repeat(64)
        );
        let config = Config::from_toml_str(&text, &|_: &str| None, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        PoolSpec::from_config(&config.pools[0])
    }

    #[test]
    fn learn_limits_turns_budgets_on_in_a_pool_without_configured_limits() {
        let learning = spec("[pools.limits]\nlearn_limits = true");
        let b = &learning.budget;
        assert!(b.learn && b.token_budgets && learning.has_budgets());
        assert!(
            !spec("").has_budgets(),
            "a pool without limits has no budgets"
        );
        assert_eq!(learning.sync_args()[14], "1", "sync.lua's learn flag");
    }
}
