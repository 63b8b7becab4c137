//! The per-key metric families, kept in plain atomics and rendered straight into the text
//! exposition format.
//!
//! The `prometheus` crate keeps every labelled series as its own object with its label pairs,
//! and renders by building the whole registry into protobuf structs and then one string: kilobytes
//! per key, and hundreds of MB while a scrape of 10,000 keys renders (BENCHMARKS.md, "Resident
//! memory"). Here a key costs one [`KeySeries`] (a few
//! hundred bytes of counters) and `/metrics` is rendered in chunks as the response is written,
//! so a scrape holds one chunk at a time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::pool::{KeyState, Outcome};

/// Upper bounds of `keygate_upstream_duration_seconds`, in seconds.
pub const UPSTREAM_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `le` labels of [`UPSTREAM_BUCKETS`], written once (a scrape renders them for every key).
const UPSTREAM_LE: [&str; 13] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
];

/// The most distinct `model` label values kept per key; further models count as `other`, so a
/// client sending random model names cannot grow memory or the exposition without bound.
pub const MODELS_PER_KEY: usize = 32;

const OUTCOMES: usize = Outcome::ALL.len();

/// Every per-key series of one key.
#[derive(Default)]
pub struct KeySeries {
    /// `keygate_requests_total` by group (a key's group changes when a canary is promoted).
    requests: RwLock<Vec<(Box<str>, [AtomicU64; OUTCOMES])>>,
    /// Non-cumulative counts per bucket; the last one is `+Inf` only.
    buckets: [AtomicU64; UPSTREAM_BUCKETS.len() + 1],
    duration_sum_ns: AtomicU64,
    /// `keygate_cooldowns_total` by reason (the outcome that caused it).
    cooldowns: [AtomicU64; OUTCOMES],
    /// `keygate_tokens_total`: per model, prompt and completion.
    tokens: Mutex<Vec<(Box<str>, [u64; 2])>>,
    /// The gauges filled from store snapshots; `shown` false: the key has none right now.
    shown: AtomicBool,
    state: AtomicU8,
    cooldown_ms: AtomicU64,
    weight: AtomicU32,
}

fn zeroed() -> [AtomicU64; OUTCOMES] {
    Default::default()
}

fn outcome_index(o: Outcome) -> usize {
    Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0)
}

impl KeySeries {
    pub fn count_request(&self, group: &str, outcome: Outcome) {
        let i = outcome_index(outcome);
        {
            let groups = self.requests.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, c)) = groups.iter().find(|(g, _)| &**g == group) {
                c[i].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut groups = self.requests.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = groups.iter().find(|(g, _)| &**g == group) {
            c[i].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let c = zeroed();
        c[i].fetch_add(1, Ordering::Relaxed);
        groups.reserve_exact(1); // nearly every key has one group: a first push reserves four
        groups.push((group.into(), c));
    }

    /// `keygate_requests_total` of one group and outcome.
    pub fn requests(&self, group: &str, outcome: Outcome) -> u64 {
        let groups = self.requests.read().unwrap_or_else(|e| e.into_inner());
        groups
            .iter()
            .find(|(g, _)| &**g == group)
            .map_or(0, |(_, c)| {
                c[outcome_index(outcome)].load(Ordering::Relaxed)
            })
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let b = UPSTREAM_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(UPSTREAM_BUCKETS.len());
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.duration_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn count_cooldown(&self, reason: Outcome) {
        self.cooldowns[outcome_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_tokens(&self, model: &str, prompt: u64, completion: u64) {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let i = match t.iter().position(|(m, _)| &**m == model) {
            Some(i) => i,
            None if t.len() < MODELS_PER_KEY - 1 => {
                t.reserve_exact(1); // most keys see one or two models: a first push reserves four
                t.push((model.into(), [0, 0]));
                t.len() - 1
            }
            None => match t.iter().position(|(m, _)| &**m == "other") {
                Some(i) => i,
                None => {
                    t.push(("other".into(), [0, 0]));
                    t.len() - 1
                }
            },
        };
        t[i].1[0] += prompt;
        t[i].1[1] += completion;
    }

    pub fn set_gauges(&self, state: KeyState, cooldown_ms: u64, weight: u32) {
        let s = KeyState::ALL.iter().position(|x| *x == state).unwrap_or(0);
        self.state.store(s as u8, Ordering::Relaxed);
        self.cooldown_ms.store(cooldown_ms, Ordering::Relaxed);
        self.weight.store(weight, Ordering::Relaxed);
        self.shown.store(true, Ordering::Release);
    }

    pub fn hide_gauges(&self) {
        self.shown.store(false, Ordering::Release);
    }
}

/// By key id. A hash map: every proxied attempt looks its key up here, and a 10,000-key
/// B-tree cost about 14 string comparisons per lookup (BENCHMARKS.md, "Per-key metrics
/// lookups"); a scrape sorts.
type PoolKeys = FxHashMap<Arc<str>, Arc<KeySeries>>;

/// Every key's series, by pool and key id.
#[derive(Default)]
pub struct KeyTable {
    pools: RwLock<FxHashMap<Arc<str>, PoolKeys>>,
}

impl KeyTable {
    /// The series of one key, created on first use.
    pub fn get(&self, pool: &str, key: &str) -> Arc<KeySeries> {
        {
            let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = pools.get(pool).and_then(|p| p.get(key)) {
                return s.clone();
            }
        }
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        let keys = match pools.get_mut(pool) {
            Some(k) => k,
            None => pools.entry(Arc::from(pool)).or_default(),
        };
        keys.entry(Arc::from(key)).or_default().clone()
    }

    /// The series of one key if it has any.
    pub fn find(&self, pool: &str, key: &str) -> Option<Arc<KeySeries>> {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        pools.get(pool).and_then(|p| p.get(key)).cloned()
    }

    /// Hides the gauges of every key `keep` refuses (keys that left the store or the config).
    pub fn retain_gauges(&self, keep: impl Fn(&str, &str) -> bool) {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        for (pool, keys) in pools.iter() {
            for (key, series) in keys {
                if !keep(pool, key) {
                    series.hide_gauges();
                }
            }
        }
    }

    /// Every key, sorted by pool and key id (what one scrape renders).
    pub fn entries(&self) -> Vec<Entry> {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&Arc<str>> = pools.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(pools.values().map(PoolKeys::len).sum());
        for name in names {
            let mut keys: Vec<_> = pools[name].iter().collect();
            keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, series) in keys {
                out.push(Entry {
                    pool: name.clone(),
                    key: key.clone(),
                    series: series.clone(),
                });
            }
        }
        out
    }
}

pub struct Entry {
    pool: Arc<str>,
    key: Arc<str>,
    series: Arc<KeySeries>,
}

/// One per-key metric family.
#[derive(Clone, Copy)]
enum Family {
    Requests,
    Duration,
    State,
    Cooldown,
    Weight,
    Cooldowns,
    Tokens,
}

const FAMILIES: [Family; 7] = [
    Family::Requests,
    Family::Duration,
    Family::State,
    Family::Cooldown,
    Family::Weight,
    Family::Cooldowns,
    Family::Tokens,
];

impl Family {
    fn header(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::Requests => (
                "keygate_requests_total",
                "counter",
                "Upstream attempts by key and outcome",
            ),
            Family::Duration => (
                "keygate_upstream_duration_seconds",
                "histogram",
                "Time from sending an attempt to its response headers",
            ),
            Family::State => (
                "keygate_key_state",
                "gauge",
                "1 for the key's current state (cluster-wide, from the store)",
            ),
            Family::Cooldown => (
                "keygate_key_cooldown_seconds",
                "gauge",
                "Seconds until the key's deadline (cooling, open, quota-disabled)",
            ),
            Family::Weight => (
                "keygate_key_weight",
                "gauge",
                "The key's weight in selection",
            ),
            Family::Cooldowns => (
                "keygate_cooldowns_total",
                "counter",
                "Keys taken out of rotation by traffic, by reason",
            ),
            Family::Tokens => (
                "keygate_tokens_total",
                "counter",
                "Tokens reported in upstream usage, by kind (prompt, completion)",
            ),
        }
    }

    /// Writes this family's series of one key.
    fn write(self, out: &mut String, e: &Entry) {
        let s = &e.series;
        let (name, _, _) = self.header();
        match self {
            Family::Requests => {
                let groups = s.requests.read().unwrap_or_else(|e| e.into_inner());
                let mut sorted: Vec<_> = groups.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                for (group, counts) in sorted {
                    for (i, o) in Outcome::ALL.iter().enumerate() {
                        let n = counts[i].load(Ordering::Relaxed);
                        if n > 0 {
                            sample(
                                out,
                                name,
                                e,
                                &[("group", group), ("outcome", o.as_str())],
                                n,
                            );
                        }
                    }
                }
            }
            Family::Duration => {
                let counts: Vec<u64> = s
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let total: u64 = counts.iter().sum();
                if total > 0 {
                    let bucket = "keygate_upstream_duration_seconds_bucket";
                    let mut cumulative = 0;
                    for (i, le) in UPSTREAM_LE.iter().enumerate() {
                        cumulative += counts[i];
                        sample(out, bucket, e, &[("le", le)], cumulative);
                    }
                    sample(out, bucket, e, &[("le", "+Inf")], total);
                    let sum = s.duration_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
                    sample(out, "keygate_upstream_duration_seconds_sum", e, &[], sum);
                    sample(
                        out,
                        "keygate_upstream_duration_seconds_count",
                        e,
                        &[],
                        total,
                    );
                }
            }
            Family::State | Family::Cooldown | Family::Weight
                if !s.shown.load(Ordering::Acquire) => {}
            Family::State => {
                let current = usize::from(s.state.load(Ordering::Relaxed));
                for (i, st) in KeyState::ALL.iter().enumerate() {
                    let v = u8::from(i == current);
                    sample(out, name, e, &[("state", st.as_str())], v);
                }
            }
            Family::Cooldown => {
                let secs = s.cooldown_ms.load(Ordering::Relaxed) as f64 / 1000.0;
                sample(out, name, e, &[], secs);
            }
            Family::Weight => sample(out, name, e, &[], s.weight.load(Ordering::Relaxed)),
            Family::Cooldowns => {
                // Every reason that can take a key out of rotation, at 0 before it first does,
                // so `increase()` sees the first one.
                for (i, o) in Outcome::ALL.iter().enumerate() {
                    if o.is_failure() {
                        let n = s.cooldowns[i].load(Ordering::Relaxed);
                        sample(out, name, e, &[("reason", o.as_str())], n);
                    }
                }
            }
            Family::Tokens => {
                let tokens = s.tokens.lock().unwrap_or_else(|e| e.into_inner());
                let mut sorted: Vec<_> = tokens.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                for (model, [prompt, completion]) in sorted {
                    for (kind, n) in [("completion", completion), ("prompt", prompt)] {
                        sample(out, name, e, &[("model", model), ("kind", kind)], n);
                    }
                }
            }
        }
    }
}

/// One sample line: `name{pool="..",key="..",extra..} value`.
fn sample(out: &mut String, name: &str, e: &Entry, extra: &[(&str, &str)], v: impl Value) {
    out.push_str(name);
    out.push_str("{pool=\"");
    escape(out, &e.pool);
    out.push_str("\",key=\"");
    escape(out, &e.key);
    out.push('"');
    for (label, value) in extra {
        out.push(',');
        out.push_str(label);
        out.push_str("=\"");
        escape(out, value);
        out.push('"');
    }
    out.push_str("} ");
    v.write(out);
    out.push('\n');
}

trait Value {
    fn write(self, out: &mut String);
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write(self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
        impl Value for &$t {
            fn write(self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_value!(u8, u32, u64);

impl Value for f64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

/// Label value escaping of the text format: backslash, double quote and line feed.
fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Renders the per-key families in chunks of about `chunk_bytes`: an iterator, so a scrape
/// holds one chunk at a time however many keys there are.
pub struct Renderer {
    entries: Vec<Entry>,
    family: usize,
    pos: usize,
    header_written: bool,
    chunk_bytes: usize,
}

impl Renderer {
    pub fn new(entries: Vec<Entry>, chunk_bytes: usize) -> Renderer {
        Renderer {
            entries,
            family: 0,
            pos: 0,
            header_written: false,
            chunk_bytes,
        }
    }
}

impl Iterator for Renderer {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let mut out = String::with_capacity(self.chunk_bytes.min(1 << 16) + 1024);
        while self.family < FAMILIES.len() && out.len() < self.chunk_bytes {
            let family = FAMILIES[self.family];
            // Every family says what it is even before its first sample (a dashboard then
            // shows 0, not "no data").
            if !self.header_written {
                let (name, kind, help) = family.header();
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
                self.header_written = true;
            }
            let Some(e) = self.entries.get(self.pos) else {
                self.family += 1;
                self.pos = 0;
                self.header_written = false;
                continue;
            };
            self.pos += 1;
            family.write(&mut out, e);
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests;
