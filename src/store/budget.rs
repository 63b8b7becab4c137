//! Per-key budgets, the arithmetic both stores share (README "Budgets"; `lua/lib.lua` does the
//! same in the same integer steps). A key's rate budgets are GCRA schedules with zero burst
//! tolerance: each holds a theoretical arrival time (`tat`, ms); a request may start at
//! `max(now, tat)`, and starting moves `tat` one emission interval later. Requests started on
//! one schedule are therefore spaced by at least the interval, which is what bounds any
//! window. In-flight slots are leases (id -> expiry) bounded by `max_concurrent`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Rate windows, stretched by 1% (`GUARD`) so the spacing survives a little network and timer
/// jitter between keygate's clock and the provider's count.
pub const MINUTE_MS: u64 = 60_600;
pub const DAY_MS: u64 = 87_264_000;

/// A key's configured limits, 0 meaning none (the key hash fields `b_rpm b_tpm b_conc b_rpd
/// b_tpd`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    pub rpm: u64,
    pub tpm: u64,
    #[serde(rename = "max_concurrent")]
    pub conc: u64,
    pub rpd: u64,
    pub tpd: u64,
}

impl KeyLimits {
    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }
}

/// The per-minute limits a key's provider announced (`x-ratelimit-limit-requests/-tokens`),
/// kept where the config sets none and the pool learns (the key hash fields `l_rpm l_tpm`; 0:
/// none learned).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Learned {
    pub rpm: u64,
    pub tpm: u64,
}

impl Learned {
    pub fn is_empty(&self) -> bool {
        *self == Learned::default()
    }
}

/// A key's budget state (the key hash fields `tat_r tat_rd tat_t tat_td`, and the lease set
/// `kg:{P}:inflight:<id>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyBudget {
    /// The configured limits.
    pub limits: KeyLimits,
    pub learned: Learned,
    pub tat_r: u64,
    pub tat_rd: u64,
    pub tat_t: u64,
    pub tat_td: u64,
    /// lease id -> expiry ms.
    pub inflight: BTreeMap<u64, u64>,
}

/// A key's budget as snapshots show it (the admin listing, `keygate keys list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRecord {
    /// The limits in force: the configured ones, and learned ones where the config sets none.
    pub limits: KeyLimits,
    /// Which of `limits` the provider announced (the rest are configured).
    #[serde(default, skip_serializing_if = "Learned::is_empty")]
    pub learned: Learned,
    /// When the key's next request may start on its request schedules (ms; past: now).
    pub next_request_ms: u64,
    /// When its token schedules allow the next reservation (ms; past: now).
    pub next_tokens_ms: u64,
    /// Leases in flight (unexpired).
    pub in_flight: u64,
}

impl BudgetRecord {
    /// The requests and tokens the key's schedules let start within the minute after `now`
    /// (the time already booked ahead of now is taken off the minute); `None` for a dimension
    /// without a per-minute limit.
    pub fn minute_remaining(&self, now: u64) -> (Option<u64>, Option<u64>) {
        let window = MINUTE_MS;
        let free = |next: u64| window.saturating_sub(next.saturating_sub(now));
        let l = &self.limits;
        let requests =
            (l.rpm > 0).then(|| (free(self.next_request_ms) / window.div_ceil(l.rpm)).min(l.rpm));
        let tokens = (l.tpm > 0).then(|| {
            let n = free(self.next_tokens_ms) as u128 * l.tpm as u128 / window as u128;
            u64::try_from(n).unwrap_or(u64::MAX)
        });
        (requests, tokens)
    }
}

/// One dimension (requests or tokens) of what a pool's usable keys allow together: the sums
/// of their per-minute limits and of what they may still start within the minute, and how
/// long until every one of them is back to its full minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolMinute {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// The pool's `x-ratelimit-*` view: requests and tokens per minute, each `None` unless every
/// usable key (any status but disabled and draining) has that per-minute limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolHeadroom {
    pub requests: Option<PoolMinute>,
    pub tokens: Option<PoolMinute>,
}

impl PoolHeadroom {
    /// Sums `keys` (each usable key's budget record, `None` for a key without limits) at `now`.
    pub fn of<'a>(keys: impl IntoIterator<Item = Option<&'a BudgetRecord>>, now: u64) -> Self {
        let mut out = PoolHeadroom {
            requests: Some(PoolMinute::default()),
            tokens: Some(PoolMinute::default()),
        };
        let mut any = false;
        for record in keys {
            any = true;
            let (requests, tokens) = match record {
                Some(r) => (
                    r.minute_remaining(now)
                        .0
                        .map(|n| (r.limits.rpm, n, r.next_request_ms)),
                    r.minute_remaining(now)
                        .1
                        .map(|n| (r.limits.tpm, n, r.next_tokens_ms)),
                ),
                None => (None, None),
            };
            for (sum, key) in [(&mut out.requests, requests), (&mut out.tokens, tokens)] {
                *sum = match (*sum, key) {
                    (Some(s), Some((limit, left, next))) => Some(PoolMinute {
                        limit: s.limit.saturating_add(limit),
                        remaining: s.remaining.saturating_add(left),
                        reset_ms: s.reset_ms.max(next.saturating_sub(now)),
                    }),
                    _ => None,
                };
            }
        }
        if !any {
            return PoolHeadroom::default();
        }
        out
    }
}

impl KeyBudget {
    /// The limits in force: each configured one, else the learned one.
    pub fn effective(&self) -> KeyLimits {
        let pick = |configured: u64, learned: u64| {
            if configured > 0 {
                configured
            } else {
                learned
            }
        };
        KeyLimits {
            rpm: pick(self.limits.rpm, self.learned.rpm),
            tpm: pick(self.limits.tpm, self.learned.tpm),
            ..self.limits
        }
    }

    /// What a snapshot at `now` shows; `None` for a key without limits.
    pub fn record(&self, now: u64) -> Option<BudgetRecord> {
        let l = self.effective();
        if l.is_empty() {
            return None;
        }
        let learned = Learned {
            rpm: if self.limits.rpm == 0 { l.rpm } else { 0 },
            tpm: if self.limits.tpm == 0 { l.tpm } else { 0 },
        };
        let pick = |pairs: [(u64, u64); 2]| {
            (pairs.iter().filter(|(lim, _)| *lim > 0))
                .map(|(_, tat)| *tat)
                .max()
                .unwrap_or(0)
        };
        Some(BudgetRecord {
            limits: l,
            learned,
            next_request_ms: pick([(l.rpm, self.tat_r), (l.rpd, self.tat_rd)]),
            next_tokens_ms: pick([(l.tpm, self.tat_t), (l.tpd, self.tat_td)]),
            in_flight: if l.conc > 0 {
                self.inflight.values().filter(|e| **e > now).count() as u64
            } else {
                0
            },
        })
    }
}

/// `ceil(a / b)`, 0 when `b` is 0.
fn div_ceil(a: u64, b: u64) -> u64 {
    if b == 0 {
        0
    } else {
        a.div_ceil(b)
    }
}

/// The interval one request of `tokens` moves a token schedule of `limit` per `window`: tokens
/// are spaced against `limit - max_request` (see `PoolLimits::max_request_tokens`).
pub fn token_step(tokens: u64, limit: u64, max_request: u64, window: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    div_ceil(
        tokens.saturating_mul(window),
        limit.saturating_sub(max_request).max(1),
    )
}

/// What a key's budget allows now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    /// The earliest moment a request may start on the rate schedules.
    pub at: u64,
    /// Every in-flight slot is taken: the earliest lease expiry.
    pub busy_until: Option<u64>,
}

impl KeyBudget {
    /// Drops leases that expired by `now`.
    pub fn expire(&mut self, now: u64) {
        self.inflight.retain(|_, until| *until > now);
    }

    /// The key's headroom as of `now` (leases expired first).
    pub fn headroom(&mut self, now: u64) -> Headroom {
        self.expire(now);
        let l = &self.effective();
        let mut at = 0;
        for (limit, tat) in [
            (l.rpm, self.tat_r),
            (l.rpd, self.tat_rd),
            (l.tpm, self.tat_t),
            (l.tpd, self.tat_td),
        ] {
            if limit > 0 {
                at = at.max(tat);
            }
        }
        let full = l.conc > 0 && self.inflight.len() as u64 >= l.conc;
        Headroom {
            at,
            busy_until: full
                .then(|| self.inflight.values().min().copied())
                .flatten(),
        }
    }

    /// Spends one request of `tokens` starting at `start` (>= every schedule's tat) and, when
    /// the key limits concurrency, takes lease `lease` until `lease_until`.
    pub fn spend(&mut self, start: u64, tokens: u64, max_request: u64, lease: Option<(u64, u64)>) {
        let l = self.effective();
        if l.rpm > 0 {
            self.tat_r = start.max(self.tat_r) + div_ceil(MINUTE_MS, l.rpm);
        }
        if l.rpd > 0 {
            self.tat_rd = start.max(self.tat_rd) + div_ceil(DAY_MS, l.rpd);
        }
        if l.tpm > 0 {
            self.tat_t = start.max(self.tat_t) + token_step(tokens, l.tpm, max_request, MINUTE_MS);
        }
        if l.tpd > 0 {
            self.tat_td = start.max(self.tat_td) + token_step(tokens, l.tpd, max_request, DAY_MS);
        }
        if let (true, Some((id, until))) = (l.conc > 0, lease) {
            self.inflight.insert(id, until);
        }
    }

    /// Replaces a reservation by the real usage: `delta = real - reserved` tokens moves the
    /// token schedules later (ceil) or earlier (floor), never before `now`; a schedule already
    /// at or before `now` stays where it is when the request used less (every moment up to
    /// `now` allows the same, and the Redis store then writes nothing).
    pub fn settle(&mut self, delta: i64, max_request: u64, now: u64) {
        let l = self.effective();
        for (limit, window, tat) in [
            (l.tpm, MINUTE_MS, &mut self.tat_t),
            (l.tpd, DAY_MS, &mut self.tat_td),
        ] {
            if limit == 0 || delta == 0 {
                continue;
            }
            let room = limit.saturating_sub(max_request).max(1);
            let mag = delta.unsigned_abs().saturating_mul(window);
            *tat = if delta > 0 {
                (*tat).max(now) + div_ceil(mag, room)
            } else if *tat <= now {
                *tat
            } else {
                tat.saturating_sub(mag / room).max(now)
            };
        }
    }
}

/// What one upstream answer said about its key's budget (`x-ratelimit-*`), for the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderHints {
    pub remaining_requests: Option<u64>,
    pub reset_requests_ms: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens_ms: Option<u64>,
    pub limit_requests: Option<u64>,
    pub limit_tokens: Option<u64>,
}

impl ProviderHints {
    pub fn is_empty(&self) -> bool {
        *self == ProviderHints::default()
    }

    /// These hints less what [`KeyBudget::learn`] would take in without effect, for a key whose
    /// config sets `limits` (`max_request`: the pool's largest reservation): a dimension
    /// (requests, tokens) whose per-minute limit the config sets is dropped when its
    /// `remaining` at the configured pace lasts the provider's whole window, since learn would
    /// move its schedule no later than the answer's arrival, a moment already past (README
    /// "Budgets", "Learned from the provider"). A provider announces plenty of headroom on nearly every answer; each hint
    /// the batch carries costs Redis a budget read and a placement of the key (BENCHMARKS.md,
    /// "Hints that change nothing"). A dimension the config leaves unset is kept whole: its
    /// limit may be learned.
    pub fn that_bind(mut self, limits: &KeyLimits, max_request: u64) -> ProviderHints {
        if limits.rpm > 0 {
            let binds = self.remaining_requests.is_some_and(|r| {
                let window = provider_window(r, self.reset_requests_ms, self.limit_requests);
                let free = r
                    .saturating_add(1)
                    .saturating_mul(div_ceil(MINUTE_MS, limits.rpm));
                window > free
            });
            if !binds {
                self.remaining_requests = None;
                self.reset_requests_ms = None;
                self.limit_requests = None;
            }
        }
        if limits.tpm > 0 {
            let binds = self.remaining_tokens.is_some_and(|r| {
                let window = provider_window(r, self.reset_tokens_ms, self.limit_tokens);
                let free =
                    r.saturating_add(max_request) as u128 * MINUTE_MS as u128 / limits.tpm as u128;
                window as u128 > free
            });
            if !binds {
                self.remaining_tokens = None;
                self.reset_tokens_ms = None;
                self.limit_tokens = None;
            }
        }
        self
    }
}

impl KeyBudget {
    /// Takes in what the provider said at `seen` (README "Budgets", "Learned from the
    /// provider"): with `learn`, its per-minute limits where the config sets none (a token
    /// limit only above `max_request`); then, read as "only `remaining` more until the reset",
    /// each per-minute schedule moves late enough that its starts before the reset fit in
    /// `remaining` plus one request (one largest reservation of tokens) of slack. Never moves a
    /// schedule earlier.
    pub fn learn(&mut self, h: &ProviderHints, seen: u64, learn: bool, max_request: u64) {
        if learn && self.limits.rpm == 0 {
            if let Some(l) = h.limit_requests.filter(|l| *l > 0) {
                self.learned.rpm = l;
            }
        }
        if learn && self.limits.tpm == 0 {
            if let Some(l) = h.limit_tokens.filter(|l| *l > max_request) {
                self.learned.tpm = l;
            }
        }
        let l = self.effective();
        if let (true, Some(r)) = (l.rpm > 0, h.remaining_requests) {
            let window = provider_window(r, h.reset_requests_ms, h.limit_requests);
            let free = r
                .saturating_add(1)
                .saturating_mul(div_ceil(MINUTE_MS, l.rpm));
            self.tat_r = self.tat_r.max(seen + window.saturating_sub(free));
        }
        if let (true, Some(r)) = (l.tpm > 0, h.remaining_tokens) {
            let window = provider_window(r, h.reset_tokens_ms, h.limit_tokens);
            let free = r.saturating_add(max_request) as u128 * MINUTE_MS as u128 / l.tpm as u128;
            let free = u64::try_from(free).unwrap_or(u64::MAX);
            self.tat_t = self.tat_t.max(seen + window.saturating_sub(free));
        }
    }
}

/// How long the provider's `remaining` must last: its announced reset, else the time its
/// announced `limit` takes to refill what is spent, else a whole minute.
fn provider_window(remaining: u64, reset_ms: Option<u64>, limit: Option<u64>) -> u64 {
    match (reset_ms, limit) {
        (Some(d), _) => d,
        (None, Some(l)) if l > 0 => {
            let spent = l.saturating_sub(remaining) as u128;
            u64::try_from(spent * MINUTE_MS as u128 / l as u128).unwrap_or(u64::MAX)
        }
        _ => MINUTE_MS,
    }
}

#[cfg(test)]
mod tests;
