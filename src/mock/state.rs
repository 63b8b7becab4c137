//! The mock's shared state: per-key scripts and request counters, the last request received,
//! and the switches tests flip (strict keys, missing models, global delay).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::{header, HeaderMap, Method, Uri};
use bytes::Bytes;
use tokio::sync::watch;

use super::behavior::{Behavior, KeyFlag};
use super::rules::ProviderRules;
use super::{MockError, MockOptions};

/// One key: its request count and its script.
#[derive(Debug, Default)]
struct KeyEntry {
    /// An atomic outside the script lock, so counting never waits for it.
    requests: AtomicU64,
    script: Mutex<KeyScript>,
}

#[derive(Debug, Default)]
struct KeyScript {
    /// One-shot behaviours, consumed first, in order.
    once: VecDeque<Behavior>,
    /// What every request gets once `once` is empty.
    steady: Behavior,
    /// Scripted (by options, `script`, `set_steady` or the control API): allowed when strict.
    known: bool,
}

/// The last request the mock received on `/v1`, as it arrived.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions?x=1`.
    pub uri: String,
    /// The `Host` header (or, over HTTP/2, the URI authority).
    pub host: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// State shared by the mock's handlers and its test handle.
#[derive(Debug)]
pub struct MockState {
    /// A std mutex: held only for a lookup or an insert, never across `.await`.
    keys: Mutex<HashMap<String, Arc<KeyEntry>>>,
    total: AtomicU64,
    delay_ms: AtomicU64,
    strict: AtomicBool,
    missing_models: Mutex<HashSet<String>>,
    rules: Mutex<ProviderRules>,
    last_request: Mutex<Option<RecordedRequest>>,
    /// What `reset` returns to: the options the mock started with.
    initial: MockOptions,
    initial_keys: Vec<KeyFlag>,
    /// Set once the server shuts down, so hanging and slow answers let go.
    stopping: watch::Sender<bool>,
    /// Paced (slow) SSE bodies still being sent: a client that goes away drops its body.
    open_streams: Arc<AtomicU64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for MockState {
    fn default() -> Self {
        MockState {
            keys: Mutex::default(),
            total: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            strict: AtomicBool::new(false),
            missing_models: Mutex::default(),
            rules: Mutex::default(),
            last_request: Mutex::new(None),
            initial: MockOptions::default(),
            initial_keys: Vec::new(),
            stopping: watch::Sender::new(false),
            open_streams: Arc::default(),
        }
    }
}

impl MockState {
    /// An open mock (every key answers ok), no delay, no missing model.
    pub fn new() -> MockState {
        MockState::default()
    }

    /// The state `opts` describe; a bad `--key` flag is an error naming it.
    pub fn from_options(opts: &MockOptions) -> Result<MockState, MockError> {
        let initial_keys = opts
            .keys
            .iter()
            .map(|flag| {
                flag.parse().map_err(|reason| MockError::KeyFlag {
                    flag: flag.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<KeyFlag>, _>>()?;
        let state = MockState {
            initial: opts.clone(),
            initial_keys,
            ..MockState::default()
        };
        state.reset();
        Ok(state)
    }

    /// Back to the starting options: scripts, switches, counts and the last request.
    pub fn reset(&self) {
        lock(&self.keys).clear();
        for flag in &self.initial_keys {
            self.script(&flag.secret, flag.once.clone());
            self.set_steady(&flag.secret, flag.steady.clone());
        }
        let missing: Vec<&str> = self
            .initial
            .missing_models
            .iter()
            .map(String::as_str)
            .collect();
        self.set_missing_models(&missing);
        self.set_rules(ProviderRules::default());
        self.set_strict(self.initial.strict);
        self.set_delay_ms(self.initial.delay_ms);
        self.total.store(0, Ordering::Relaxed);
        *lock(&self.last_request) = None;
    }

    fn entry(&self, key: &str) -> Arc<KeyEntry> {
        let mut keys = lock(&self.keys);
        if let Some(entry) = keys.get(key) {
            return Arc::clone(entry);
        }
        Arc::clone(keys.entry(key.to_owned()).or_default())
    }

    fn edit_script(&self, key: &str, edit: impl FnOnce(&mut KeyScript)) {
        let entry = self.entry(key);
        let mut script = lock(&entry.script);
        script.known = true;
        edit(&mut script);
    }

    /// Replaces `key`'s one-shot queue; they are answered in order, before its steady behaviour.
    pub fn script(&self, key: &str, one_shots: Vec<Behavior>) {
        self.edit_script(key, |script| script.once = one_shots.into());
    }

    /// What `key` answers once its one-shots are used up.
    pub fn set_steady(&self, key: &str, behavior: Behavior) {
        self.edit_script(key, |script| script.steady = behavior);
    }

    /// Lets `key` through in strict mode without changing its script.
    pub fn allow_key(&self, key: &str) {
        self.edit_script(key, |_| {});
    }

    /// Strict: keys never scripted answer 401. Open (the default): they answer ok.
    pub fn set_strict(&self, strict: bool) {
        self.strict.store(strict, Ordering::Relaxed);
    }

    /// A delay before every answer (the benchmarks' delay mode); 0 for none.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Models whose requests answer 404 `model_not_found`; replaces the previous set.
    pub fn set_missing_models(&self, models: &[&str]) {
        *lock(&self.missing_models) = models.iter().map(|m| (*m).to_owned()).collect();
    }

    /// The organisation, scopes and TPM limit every key answers by (see `rules.rs`).
    pub fn set_rules(&self, rules: ProviderRules) {
        *lock(&self.rules) = rules;
    }

    pub fn rules(&self) -> ProviderRules {
        lock(&self.rules).clone()
    }

    /// Requests received with `key` as their bearer secret.
    pub fn requests(&self, key: &str) -> u64 {
        let entry = lock(&self.keys).get(key).cloned();
        entry.map_or(0, |entry| entry.requests.load(Ordering::Relaxed))
    }

    /// Requests received on `/v1`, with or without a key.
    /// Paced SSE bodies still open (sent in part, neither finished nor dropped).
    pub fn open_streams(&self) -> u64 {
        self.open_streams.load(Ordering::SeqCst)
    }

    pub(super) fn open_streams_counter(&self) -> Arc<AtomicU64> {
        self.open_streams.clone()
    }

    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Request counts per key, by secret.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        let keys = lock(&self.keys);
        let counts = keys
            .iter()
            .map(|(key, entry)| (key.clone(), entry.requests.load(Ordering::Relaxed)));
        counts.collect()
    }

    /// Zeroes every counter; scripts stay.
    pub fn reset_counts(&self) {
        for entry in lock(&self.keys).values() {
            entry.requests.store(0, Ordering::Relaxed);
        }
        self.total.store(0, Ordering::Relaxed);
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.last_request).clone()
    }

    /// Counts a request for `key` (`None`: no bearer secret) and picks its behaviour.
    pub(super) fn next_behavior(&self, key: Option<&str>) -> Option<Behavior> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let entry = self.entry(key?);
        entry.requests.fetch_add(1, Ordering::Relaxed);
        let mut script = lock(&entry.script);
        if !script.known && self.strict.load(Ordering::Relaxed) {
            return Some(Behavior::Unauthorized);
        }
        Some(match script.once.pop_front() {
            Some(one_shot) => one_shot,
            None => script.steady.clone(),
        })
    }

    pub(super) fn record(&self, method: Method, uri: &Uri, headers: HeaderMap, body: Bytes) {
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| uri.authority().map(|authority| authority.as_str()))
            .map(str::to_owned);
        let uri = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let request = RecordedRequest {
            method,
            uri,
            host,
            headers,
            body,
        };
        // The previous request is dropped after the lock is released.
        let _previous = lock(&self.last_request).replace(request);
    }

    /// The documented refusal of a request a valid key cannot serve, if a rule applies.
    pub(super) fn rule_refusal(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<axum::response::Response> {
        lock(&self.rules).refusal(path, headers, body)
    }

    pub(super) fn is_missing(&self, model: &str) -> bool {
        lock(&self.missing_models).contains(model)
    }

    pub(super) fn listed_models(&self) -> Vec<&'static str> {
        let missing = lock(&self.missing_models);
        let listed = super::openai::LISTED_MODELS.iter().copied();
        listed.filter(|model| !missing.contains(*model)).collect()
    }

    pub(super) fn delay_ms(&self) -> u64 {
        self.delay_ms.load(Ordering::Relaxed)
    }

    pub(super) fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// A receiver that turns `true` when the server shuts down.
    pub(super) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Sleeps `ms`; `false` when the server began shutting down first.
    pub(super) async fn pause(&self, ms: u64) -> bool {
        let mut stopping = self.stopping();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => true,
            _ = stopping.wait_for(|stopping| *stopping) => false,
        }
    }
}
