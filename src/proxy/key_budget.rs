//! The proxy side of per-key budgets (README "Budgets"): a request's token reservation
//! estimated from its body, the end of a budgeted request (its in-flight lease freed and its
//! reservation settled against real usage), what an answer's `x-ratelimit-*` headers tell the
//! store, and the pool's headers on 429 `pool_exhausted`.
//!
//! The leases themselves, and their renewal, are `crate::store::leases`.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;
use crate::pool::KeyId;
use crate::state::AppState;
use crate::store::budget::{PoolHeadroom, ProviderHints};
use crate::store::{Chosen, KeyStoreExt, LeaseEnd, PoolSpec, Settlement};
use crate::upstream::headers::{format_reset_duration, RateLimitHints};

/// The tokens a request reserves: its prompt estimated as a quarter of the body's `body_len`
/// bytes (an over-estimate for JSON), plus the completion it `asked` for
/// (`max_completion_tokens`, else `max_tokens`, read by `proxy::request::inspect`) or the
/// pool's default. A reservation above the pool's `max_request_tokens` is refused: budgets
/// could not bound it.
pub fn reservation(
    body_len: usize,
    asked: Option<u64>,
    spec: &PoolSpec,
    default_completion: u64,
) -> Result<u64, ApiError> {
    let total = (body_len as u64)
        .div_ceil(4)
        .saturating_add(asked.unwrap_or(default_completion));
    let max = spec.budget.max_request_tokens;
    if total > max {
        let message = format!(
            "This request would reserve about {total} tokens (prompt estimated from its size, \
             plus max_tokens); this pool accepts at most {max} per request."
        );
        return Err(ApiError::bad_request("request_too_large", message));
    }
    Ok(total)
}

/// One request on a budgeted key: ends it in the store when dropped (a stream that ends or
/// breaks frees its slot with the pool's next success batch, within `store.report_flush_ms`),
/// settling the reservation against the usage set with [`BudgetTicket::set_usage`].
pub(crate) struct BudgetTicket {
    state: Arc<AppState>,
    pool: String,
    key: KeyId,
    lease: u64,
    crowded: bool,
    reserved: u64,
    used: Option<u64>,
}

impl BudgetTicket {
    /// `None` when the request holds nothing to end (no lease, no tokens reserved).
    pub fn new(state: &Arc<AppState>, pool: &str, chosen: &Chosen, reserved: u64) -> Option<Self> {
        if chosen.lease == 0 && reserved == 0 {
            return None;
        }
        if chosen.lease != 0 {
            state.leases.hold(pool, chosen.lease, &chosen.key);
        }
        Some(BudgetTicket {
            state: state.clone(),
            pool: pool.to_string(),
            key: chosen.key.clone(),
            lease: chosen.lease,
            crowded: chosen.crowded,
            reserved,
            used: None,
        })
    }

    pub fn set_usage(&mut self, total_tokens: u64) {
        self.used = Some(total_tokens);
    }
}

/// Real tokens minus reserved ones, to settle. A request that reserved none (its pool budgets
/// no tokens) settles nothing: its usage would only make the store place its key again.
fn tokens_delta(reserved: u64, used: Option<u64>) -> i64 {
    match (reserved, used) {
        (0, _) | (_, None) => 0,
        (r, Some(u)) => u as i64 - r as i64,
    }
}

impl Drop for BudgetTicket {
    fn drop(&mut self) {
        let delta = tokens_delta(self.reserved, self.used);
        if self.lease != 0 {
            self.state.leases.release(&self.pool, self.lease, &self.key);
        } else if delta == 0 {
            return;
        }
        let end = LeaseEnd {
            key: self.key.clone(),
            lease: self.lease,
            tokens_delta: delta,
        };
        // Rides the pool's next success batch (no call of its own; written at once when the
        // key's slots were crowded); settled by its own call only when this replica batches
        // nothing.
        if (self.state.successes).record_end(&self.pool, end.clone(), self.crowded) {
            return;
        }
        let (store, pool) = (self.state.store.clone(), self.pool.clone());
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.state.tasks.spawn(async move {
            let s = Settlement {
                ended: std::slice::from_ref(&end),
                renew: &[],
                now_ms: None,
            };
            if let Err(e) = store.settle(&pool, &s).await {
                tracing::warn!(pool = %pool, key = %end.key, error = %e, "budget settle failed");
            }
        });
    }
}

/// The `x-ratelimit-*` headers of 429 `pool_exhausted`, describing the whole pool (README
/// "Budgets"): a dimension is left out unless every usable key has its per-minute limit.
pub(crate) fn pool_rate_limit_headers(pool: &PoolHeadroom) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let dims = [
        (
            pool.requests,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        ),
        (
            pool.tokens,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ),
    ];
    for (minute, [limit, remaining, reset]) in dims {
        if let Some(m) = minute {
            out.push((limit, m.limit.to_string()));
            out.push((remaining, m.remaining.to_string()));
            out.push((reset, format_reset_duration(m.reset_ms)));
        }
    }
    out
}

/// What an answer's `x-ratelimit-*` headers say, as the store takes it (values beyond 2^52,
/// which no provider sends, are capped so both stores compute alike).
pub(crate) fn provider_hints(h: &RateLimitHints) -> ProviderHints {
    let cap = |v: Option<u64>| v.map(|v| v.min(1 << 52));
    let ms = |d: Option<Duration>| cap(d.map(|d| d.as_millis().min(u64::MAX as u128) as u64));
    ProviderHints {
        remaining_requests: cap(h.remaining_requests),
        reset_requests_ms: ms(h.reset_requests),
        remaining_tokens: cap(h.remaining_tokens),
        reset_tokens_ms: ms(h.reset_tokens),
        limit_requests: cap(h.limit_requests),
        limit_tokens: cap(h.limit_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_request_tokens: u64) -> PoolSpec {
        let mut s = PoolSpec {
            name: "p".into(),
            policy: Default::default(),
            canary_group: "canary".into(),
            canary_percent: 0,
            canary_fallback: true,
            keys: Arc::new([]),
            budget: Default::default(),
        };
        s.budget.max_request_tokens = max_request_tokens;
        s
    }

    #[test]
    fn only_a_request_that_reserved_tokens_settles_its_usage() {
        assert_eq!(
            tokens_delta(0, Some(500)),
            0,
            "no token budget: nothing to settle"
        );
        assert_eq!(
            tokens_delta(300, None),
            0,
            "no usage seen: the reservation stands"
        );
        assert_eq!(tokens_delta(300, Some(500)), 200);
        assert_eq!(tokens_delta(300, Some(100)), -200);
    }

    /// The reservation of a JSON `body`, its completion read by the request's one parse.
    fn reserve(body: &[u8], max_request_tokens: u64) -> Result<u64, ApiError> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        let asked =
            match crate::proxy::request::inspect(&http::Method::POST, &headers, body, |_| false) {
                Ok(inspected) => inspected.max_completion,
                Err(_) => None,
            };
        reservation(body.len(), asked, &spec(max_request_tokens), 7)
    }

    #[test]
    fn a_reservation_is_the_body_quarter_plus_the_asked_completion() {
        let quarter = |body: &[u8]| (body.len() as u64).div_ceil(4);
        let body = br#"{"model":"m","max_tokens":100,"messages":[]}"#;
        assert_eq!(reserve(body, 1000).unwrap(), quarter(body) + 100);
        let body = br#"{"max_completion_tokens":50,"max_tokens":100}"#;
        assert_eq!(
            reserve(body, 1000).unwrap(),
            quarter(body) + 50,
            "the newer field first"
        );
        let body = br#"{"max_completion_tokens":null,"max_tokens":100}"#;
        assert_eq!(reserve(body, 1000).unwrap(), quarter(body) + 100);
        let body = br#"{"max_tokens":-3}"#;
        assert_eq!(
            reserve(body, 1000).unwrap(),
            quarter(body) + 7,
            "not a count: the default"
        );
        // A duplicate field takes the full parse, which reads the completion too.
        let body = br#"{"model":"m","model":"m","max_tokens":40}"#;
        assert_eq!(reserve(body, 1000).unwrap(), quarter(body) + 40);
        assert_eq!(reserve(b"{}", 1000).unwrap(), 1 + 7);
        assert_eq!(reserve(b"not json", 1000).unwrap(), 2 + 7);
    }

    #[test]
    fn a_reservation_above_max_request_tokens_is_refused() {
        let err = reserve(br#"{"max_tokens":5000}"#, 1000).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (400, "request_too_large"));
    }
}
