//! Successful reports, batched: successes commute, so a replica adds them up per pool and key and
//! writes each pool's buffer with one `report_successes` call (`lua/report_batch.lua`) once the
//! buffer is `store.report_flush_ms` old or holds [`MAX_KEYS`] keys. A successful request then
//! costs one store round trip (its `select`) plus a share of a batch, instead of two.
//!
//! - One flush task per replica waits for the oldest buffer's deadline (or a full buffer) and
//!   flushes the pools that are due, each in one call.
//! - Only plain successes come here: probes and successes carrying a cooldown hint, and every
//!   failure, are reported at once as before. In a pool with budgets, the provider's newest
//!   `x-ratelimit-*` hints per key and the requests that ended (leases freed, reservations
//!   settled) ride the same call (README "Budgets").
//! - [`Ticket::landed`] lets a request wait until its success reached the store, flushing its
//!   batch early if need be (a stream that breaks off reports its failure after its success).
//! - [`SuccessBatcher::shutdown`] writes what is left; successes recorded after it are refused
//!   (`record` answers `None`) and the caller reports them at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pool::KeyId;
use crate::store::budget::ProviderHints;
use crate::store::{KeyHints, KeyStore, KeyStoreExt, KeySuccesses, LeaseEnd, SuccessBatch};

/// A pool's buffer is written once it holds this many distinct keys, whatever its age.
pub const MAX_KEYS: usize = 256;

/// Buffers successes per pool and writes them in batches; see the module docs.
pub struct SuccessBatcher {
    inner: Option<Arc<Inner>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

struct Inner {
    store: Arc<dyn KeyStore>,
    interval: Duration,
    pools: Mutex<HashMap<String, Arc<PoolBuffer>>>,
    /// Wakes the flush task: a buffer opened (a new deadline), filled up or freed a slot.
    wake: Arc<Notify>,
    /// Set when the flush task stops: from then on `record` refuses successes.
    closed: AtomicBool,
}

/// One pool's open buffer, and the sequence of its batches.
struct PoolBuffer {
    name: String,
    /// Held across a flush, so a pool's batches reach the store one at a time and in order:
    /// whoever holds it and sees `flushed < seq` knows batch `seq` is still the open buffer.
    flushing: tokio::sync::Mutex<()>,
    open: Mutex<Open>,
    /// The sequence number of the last batch written (or given up on after a store error).
    flushed: AtomicU64,
}

struct Open {
    /// The sequence number of this buffer's batch (the first is 1).
    seq: u64,
    opened: Option<Instant>,
    keys: HashMap<KeyId, Tally>,
    /// Per key, the newest provider hints and when their answer arrived (pools with budgets).
    hints: HashMap<KeyId, (ProviderHints, Instant)>,
    /// Requests on budgeted keys that ended (their leases and reservations to settle).
    ended: Vec<LeaseEnd>,
    /// Some ended request frees a slot of a crowded key: the buffer is written at once (another
    /// request may be waiting for that slot), sharing its call with whatever else is buffered.
    frees_slot: bool,
}

impl Open {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.hints.is_empty() && self.ended.is_empty()
    }

    /// Full, or holding a freed slot: to be written without waiting for the interval.
    fn due_now(&self) -> bool {
        self.frees_slot
            || self.keys.len() >= MAX_KEYS
            || self.hints.len() >= MAX_KEYS
            || self.ended.len() >= MAX_KEYS
    }
}

struct Tally {
    count: u64,
    http_status: u16,
    newest: Instant,
}

/// Names the batch a success went into.
pub struct Ticket {
    store: Arc<dyn KeyStore>,
    pool: Arc<PoolBuffer>,
    seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SuccessBatcher {
    /// Batches with `interval` (its flush task runs on the current Tokio runtime); a zero
    /// interval batches nothing (`record` always answers `None`).
    pub fn new(store: Arc<dyn KeyStore>, interval: Duration) -> SuccessBatcher {
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(runtime)) = (!interval.is_zero(), runtime) else {
            return SuccessBatcher {
                inner: None,
                cancel,
                tasks,
            };
        };
        let inner = Arc::new(Inner {
            store,
            interval,
            pools: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
        });
        let task = flush_loop(Arc::downgrade(&inner), inner.wake.clone(), cancel.clone());
        tasks.spawn_on(task, &runtime);
        tasks.close();
        SuccessBatcher {
            inner: Some(inner),
            cancel,
            tasks,
        }
    }

    /// Buffers one success of `key`, with the provider's hints its answer carried (a pool with
    /// budgets; `None`: the answer said nothing, empty: nothing that binds); `None` when this
    /// batcher takes none (interval 0, or shut down): report it at once instead.
    pub fn record(
        &self,
        pool: &str,
        key: &KeyId,
        http_status: u16,
        hints: Option<ProviderHints>,
    ) -> Option<Ticket> {
        let inner = self.inner.as_ref()?;
        let now = Instant::now();
        let (buffer, seq) = inner.add(pool, |open| {
            let tally = open.keys.entry(key.clone()).or_insert(Tally {
                count: 0,
                http_status,
                newest: now,
            });
            (tally.count, tally.http_status, tally.newest) = (tally.count + 1, http_status, now);
            // The newest answer's hints stand for the key; hints that bind nothing (all the
            // answer said was dropped by `ProviderHints::that_bind`) take the place of older
            // ones as before, by leaving none.
            match hints {
                Some(h) if h.is_empty() => {
                    open.hints.remove(key);
                }
                Some(h) => {
                    open.hints.insert(key.clone(), (h, now));
                }
                None => {}
            }
        })?;
        Some(Ticket {
            store: inner.store.clone(),
            pool: buffer,
            seq,
        })
    }

    /// Buffers the end of a request on a budgeted key (README "Budgets": settlement rides the
    /// batch; the end of a `crowded` lease, one that left at least half its key's slots taken,
    /// has the batch written at once); `false` when this batcher takes none: settle it at once
    /// instead.
    pub fn record_end(&self, pool: &str, end: LeaseEnd, crowded: bool) -> bool {
        let Some(inner) = self.inner.as_ref() else {
            return false;
        };
        inner
            .add(pool, |open| {
                open.frees_slot |= crowded && end.lease != 0;
                open.ended.push(end);
            })
            .is_some()
    }

    /// Stops the flush task after it wrote every buffer; later successes are refused.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for SuccessBatcher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Ticket {
    /// Returns once the batch holding this success was written, flushing it now if it is
    /// still open.
    pub async fn landed(self) {
        let _turn = self.pool.flushing.lock().await;
        if self.pool.flushed.load(Ordering::Acquire) < self.seq {
            self.pool.flush_locked(&*self.store).await;
        }
    }
}

impl PoolBuffer {
    fn new(name: &str) -> PoolBuffer {
        PoolBuffer {
            name: name.to_string(),
            flushing: tokio::sync::Mutex::new(()),
            open: Mutex::new(Open {
                seq: 1,
                opened: None,
                keys: HashMap::new(),
                hints: HashMap::new(),
                ended: Vec::new(),
                frees_slot: false,
            }),
            flushed: AtomicU64::new(0),
        }
    }

    async fn flush(&self, store: &dyn KeyStore) {
        let _turn = self.flushing.lock().await;
        self.flush_locked(store).await;
    }

    /// Writes the open buffer as one batch. The caller holds `flushing`.
    async fn flush_locked(&self, store: &dyn KeyStore) {
        let (seq, keys, hints, ended) = {
            let mut open = lock(&self.open);
            if open.is_empty() {
                return;
            }
            let seq = open.seq;
            open.seq += 1;
            open.opened = None;
            open.frees_slot = false;
            let taken = std::mem::take(&mut open.keys);
            (
                seq,
                taken,
                std::mem::take(&mut open.hints),
                std::mem::take(&mut open.ended),
            )
        };
        let now = Instant::now();
        let age = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let batch: Vec<KeySuccesses> = keys
            .into_iter()
            .map(|(key, t)| KeySuccesses {
                key,
                count: t.count,
                http_status: t.http_status,
                age_ms: age(t.newest),
            })
            .collect();
        let hints: Vec<KeyHints> = hints
            .into_iter()
            .map(|(key, (hints, at))| KeyHints {
                key,
                age_ms: age(at),
                hints,
            })
            .collect();
        let call = SuccessBatch {
            keys: &batch,
            hints: &hints,
            ended: &ended,
            now_ms: None,
        };
        if let Err(e) = store.report_successes(&self.name, &call).await {
            let successes: u64 = batch.iter().map(|k| k.count).sum();
            tracing::warn!(pool = %self.name, keys = batch.len(), successes, ended = ended.len(),
                error = %e, "store batch report failed");
        }
        self.flushed.store(seq, Ordering::Release);
    }

    /// When this buffer is due: `Some(now)` at once when full, `None` when empty.
    fn due_at(&self, interval: Duration) -> Option<Instant> {
        let open = lock(&self.open);
        let opened = open.opened?;
        if open.due_now() {
            return Some(opened);
        }
        Some(opened + interval)
    }
}

impl Inner {
    /// Adds to `pool`'s open buffer with `f`, waking the flush task when the buffer opened or
    /// filled up; answers the buffer and its batch, `None` once shut down.
    fn add(&self, pool: &str, f: impl FnOnce(&mut Open)) -> Option<(Arc<PoolBuffer>, u64)> {
        let buffer = {
            let mut pools = lock(&self.pools);
            match pools.get(pool) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(PoolBuffer::new(pool));
                    pools.insert(pool.to_string(), b.clone());
                    b
                }
            }
        };
        let (seq, wake) = {
            let mut open = lock(&buffer.open);
            // Checked under the buffer's lock: the final flush takes this lock after `closed`
            // is set, so an entry is either in a buffer it writes or refused here.
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            let was_due = open.due_now();
            f(&mut open);
            let first = open.opened.is_none();
            if first {
                open.opened = Some(Instant::now());
            }
            (open.seq, first || (!was_due && open.due_now()))
        };
        if wake {
            self.wake.notify_one();
        }
        Some((buffer, seq))
    }

    fn buffers(&self) -> Vec<Arc<PoolBuffer>> {
        lock(&self.pools).values().cloned().collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.buffers()
            .iter()
            .filter_map(|b| b.due_at(self.interval))
            .min()
    }

    /// Writes every buffer due by `now` (all of them with `None`), each pool in one call, the
    /// pools concurrently.
    async fn flush_due(&self, now: Option<Instant>) {
        let due = self.buffers().into_iter().filter(|b| {
            let at = b.due_at(self.interval);
            at.is_some_and(|at| now.is_none_or(|now| at <= now))
        });
        let flushes: Vec<_> = due
            .map(|b| async move { b.flush(&*self.store).await })
            .collect();
        futures::future::join_all(flushes).await;
    }
}

/// The flush task: sleeps until the earliest buffer is due (or a buffer opens or fills up),
/// flushes what is due; on cancellation, refuses further successes and writes what is left.
async fn flush_loop(inner: Weak<Inner>, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let Some(next) = inner.upgrade().map(|i| i.next_deadline()) else {
            return;
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake.notified() => {}
            _ = sleep_until(next) => {}
        }
        let Some(i) = inner.upgrade() else { return };
        i.flush_due(Some(Instant::now())).await;
    }
    if let Some(i) = inner.upgrade() {
        i.closed.store(true, Ordering::SeqCst);
        i.flush_due(None).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
