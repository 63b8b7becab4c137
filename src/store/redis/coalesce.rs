//! Coalesced selects: at most [`LANES`] `select.lua` calls per pool are in flight from a
//! replica; the selects that arrive while all are busy wait and then go together in one call
//! (group commit).
//!
//! A select that finds a lane free runs at once, in its own task, as a batch of one, so a lone
//! request, or two at once, pays nothing for this. Under load the waiting selects form the next
//! batch, sent by a spawned task as soon as a call in flight returns. The script selects for each
//! request of a batch in order, exactly as separate calls at the same instant would (probe
//! leases included), but reads the pool's meta, the clock, the due keys and the class counts
//! once: a batch costs Redis a fraction of as many calls, and the replica one command instead
//! of one per select (BENCHMARKS.md, "Coalesced selects").
//!
//! Every caller keeps its own deadline: a waiter gives up at it whatever the batch does, and a
//! batch is sent only for the waiters still waiting. A caller that goes away (its request was
//! cancelled) hands its lane on (the `Turn` guard), so a pool is never left marked busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use redis::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::shared::Core;
use crate::store::{Route, SelectRequest, StoreError};

/// The most requests one call selects for; the rest wait for the next call.
const MAX_BATCH: usize = 128;

/// Calls per pool in flight at once. With one, a select arriving during a call waits for it to
/// return (up to a round trip more at moderate load); with two, that happens only when three
/// overlap, while under heavy load batches still form (BENCHMARKS.md, "Coalesced selects").
const LANES: usize = 2;

/// One request's line of the call's reply (`lua/select.lua`), or `nopool`.
type Reply = Result<String, StoreError>;

/// The select queues of all pools.
pub(super) struct Coalescer {
    core: Arc<Core>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

/// One pool's queue, and what a task needs to send its calls.
struct Queue {
    /// The pool's KEYS[1] (`kg:{P}`), made once.
    base: String,
    core: Arc<Core>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Calls for this pool in flight (or about to be sent by a spawned task), at most
    /// [`LANES`].
    busy: usize,
    waiting: Vec<Waiter>,
}

/// One request's part of a select call's ARGV (`lua/select.lua`): rand, route, bucket, tokens,
/// n, then the n key ids the request already tried, in one string, each argument ended by a NUL
/// (none holds one: key ids are validated, the rest are numbers and route words). One
/// allocation a request instead of one per argument, and one to copy when the request waits
/// for a batch (BENCHMARKS.md, "Where a request's CPU goes").
#[derive(Clone)]
pub(super) struct SelectArgs(String);

impl SelectArgs {
    pub fn new(req: &SelectRequest<'_>) -> SelectArgs {
        let (route, bucket) = match req.route {
            Route::Bucket(b) => ("bucket", b),
            Route::Canary => ("canary", 0),
            Route::Stable => ("stable", 0),
        };
        let ids: usize = req.exclude.iter().map(|k| k.as_str().len() + 1).sum();
        let mut s = String::with_capacity(48 + ids);
        let mut num = itoa::Buffer::new();
        s.push_str(num.format(req.rand));
        s.push('\0');
        s.push_str(route);
        s.push('\0');
        s.push_str(num.format(bucket));
        s.push('\0');
        s.push_str(num.format(req.tokens));
        s.push('\0');
        s.push_str(num.format(req.exclude.len()));
        s.push('\0');
        for k in req.exclude {
            s.push_str(k.as_str());
            s.push('\0');
        }
        SelectArgs(s)
    }

    /// The arguments, in order.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split_terminator('\0')
    }
}

/// A select waiting for the next call.
struct Waiter {
    /// ARGV[1] of the call (a virtual clock, or 0): only waiters with equal clocks share one.
    now: u64,
    /// This request's part of the call's ARGV.
    args: SelectArgs,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Coalescer {
    pub fn new(core: Arc<Core>) -> Coalescer {
        Coalescer {
            core,
            queues: Mutex::new(HashMap::new()),
        }
    }

    fn queue(&self, pool: &str) -> Arc<Queue> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = queues.get(pool) {
            return q.clone();
        }
        let q = Arc::new(Queue {
            base: self.core.pool_base(pool),
            core: self.core.clone(),
            state: Mutex::new(State::default()),
        });
        queues.insert(pool.to_string(), q.clone());
        q
    }

    /// One request's select reply, its line of the call's reply (`nopool` when Redis lost the
    /// pool); `now` is ARGV[1], `args` the request's part of ARGV.
    pub async fn select(
        &self,
        pool: &str,
        now: u64,
        args: &SelectArgs,
        deadline: Instant,
    ) -> Reply {
        let queue = self.queue(pool);
        let waiting = {
            let mut st = queue.lock();
            if st.busy >= LANES {
                let (tx, rx) = oneshot::channel();
                st.waiting.push(Waiter {
                    now,
                    args: args.clone(),
                    deadline,
                    reply: tx,
                });
                Some(rx)
            } else {
                st.busy += 1;
                None
            }
        };
        if let Some(rx) = waiting {
            return match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(_)) => Err(StoreError::Unavailable("select batch abandoned".into())),
                Err(_) => Err(StoreError::Timeout),
            };
        }
        let turn = Turn(queue);
        let mut num = itoa::Buffer::new();
        let mut argv = Vec::with_capacity(6);
        argv.push(num.format(now));
        argv.extend(args.parts());
        let core = &turn.0.core;
        let v = core
            .eval(&core.scripts.select, &turn.0.base, &argv, deadline)
            .await?;
        let mut replies = split(v, 1)?;
        Ok(replies.pop().unwrap_or_default())
    }
}

/// A lane of the pool, held by whoever sends a call in flight. Dropped (the call returned, or
/// its caller went away), it passes the lane to a task that sends the waiters' batch, or frees
/// it when nobody waits.
struct Turn(Arc<Queue>);

impl Drop for Turn {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        let now = Instant::now();
        // Waiters past their deadline hear so (they are giving up at this moment).
        for w in std::mem::take(&mut st.waiting) {
            if w.reply.is_closed() {
                continue;
            }
            if w.deadline <= now {
                let _ = w.reply.send(Err(StoreError::Timeout));
            } else {
                st.waiting.push(w);
            }
        }
        if st.waiting.is_empty() {
            st.busy -= 1;
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime left to send it (shutting down): the waiters hear "abandoned".
            st.waiting.clear();
            st.busy -= 1;
            return;
        };
        let batch = take_batch(&mut st.waiting);
        drop(st);
        rt.spawn(send(Turn(self.0.clone()), batch));
    }
}

/// The first waiter and every later one with the same clock, up to [`MAX_BATCH`], in order.
fn take_batch(waiting: &mut Vec<Waiter>) -> Vec<Waiter> {
    let first = waiting[0].now;
    if waiting.len() <= MAX_BATCH && waiting.iter().all(|w| w.now == first) {
        return std::mem::take(waiting);
    }
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for w in waiting.drain(..) {
        if batch.len() < MAX_BATCH && w.now == first {
            batch.push(w);
        } else {
            rest.push(w);
        }
    }
    *waiting = rest;
    batch
}

/// Sends one batch and hands each waiter its reply (or the call's error), holding a lane.
async fn send(turn: Turn, batch: Vec<Waiter>) {
    let Some(deadline) = batch.iter().map(|w| w.deadline).max() else {
        return;
    };
    let mut num = itoa::Buffer::new();
    let mut argv: Vec<&str> = Vec::with_capacity(1 + batch.len() * 5);
    argv.push(num.format(batch[0].now));
    for w in &batch {
        argv.extend(w.args.parts());
    }
    let Queue { base, core, .. } = &*turn.0;
    let replies = match core.eval(&core.scripts.select, base, &argv, deadline).await {
        Ok(v) => split(v, batch.len()),
        Err(e) => Err(e),
    };
    match replies {
        Ok(replies) => {
            for (w, r) in batch.into_iter().zip(replies) {
                let _ = w.reply.send(Ok(r));
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

/// A call's reply as one line per request: `lua/select.lua` answers one string of lines, or
/// `nopool` (then that for each). A call of one request hands its line on without a copy.
fn split(v: Value, n: usize) -> Result<Vec<String>, StoreError> {
    let text = match v {
        Value::BulkString(b) => String::from_utf8(b)
            .map_err(|e| StoreError::Script(format!("select reply not UTF-8: {e}")))?,
        other => {
            return Err(StoreError::Script(format!(
                "unexpected select reply {other:?}"
            )))
        }
    };
    if text == "nopool" {
        return Ok(vec![text; n]);
    }
    if n == 1 && !text.contains('\n') {
        return Ok(vec![text]);
    }
    let lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    if lines.len() != n {
        return Err(StoreError::Script(format!(
            "select answered {} requests of {n}",
            lines.len()
        )));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::KeyId;
    use proptest::prelude::*;

    /// The arguments as they were built before [`SelectArgs`]: one string each.
    fn one_string_each(req: &SelectRequest<'_>) -> Vec<String> {
        let (route, bucket) = match req.route {
            Route::Bucket(b) => ("bucket", b),
            Route::Canary => ("canary", 0),
            Route::Stable => ("stable", 0),
        };
        let mut args = vec![
            req.rand.to_string(),
            route.to_string(),
            bucket.to_string(),
            req.tokens.to_string(),
            req.exclude.len().to_string(),
        ];
        args.extend(req.exclude.iter().map(|k| k.as_str().to_string()));
        args
    }

    proptest! {
        #[test]
        fn a_requests_arguments_are_those_of_one_string_each(
            rand in any::<u64>(),
            route in 0u8..3,
            bucket in any::<u8>(),
            tokens in any::<u64>(),
            ids in proptest::collection::vec("[A-Za-z0-9._-]{1,24}", 0..6),
        ) {
            let exclude: Vec<KeyId> = ids.iter().filter_map(|i| KeyId::new(i)).collect();
            let route = match route {
                0 => Route::Bucket(bucket),
                1 => Route::Canary,
                _ => Route::Stable,
            };
            let req = SelectRequest { route, exclude: &exclude, rand, now_ms: None, tokens };
            let args = SelectArgs::new(&req);
            let parts: Vec<&str> = args.parts().collect();
            prop_assert_eq!(parts, one_string_each(&req));
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_call_reply_is_split_into_one_line_per_request_in_order() {
        let lines = split(
            bulk("key a stable 0 0 0 0 0\nnone -1 5 0 0 0 0 0 0 0\nkey b stable 0 0 0 0 0"),
            3,
        );
        assert_eq!(
            lines.unwrap(),
            [
                "key a stable 0 0 0 0 0",
                "none -1 5 0 0 0 0 0 0 0",
                "key b stable 0 0 0 0 0"
            ]
        );
        assert_eq!(
            split(bulk("key a stable 0 0 0 0 0"), 1).unwrap(),
            ["key a stable 0 0 0 0 0"]
        );
    }

    #[test]
    fn a_lost_pool_is_told_to_every_request_of_the_call() {
        assert_eq!(split(bulk("nopool"), 3).unwrap(), ["nopool"; 3]);
    }

    #[test]
    fn a_reply_for_another_number_of_requests_or_of_another_shape_is_an_error() {
        assert!(matches!(
            split(bulk("key a stable 0 0 0 0 0"), 2),
            Err(StoreError::Script(_))
        ));
        assert!(matches!(
            split(bulk("key a stable 0 0 0 0 0\nkey b stable 0 0 0 0 0"), 1),
            Err(StoreError::Script(_))
        ));
        assert!(matches!(
            split(Value::Array(vec![bulk("nopool")]), 1),
            Err(StoreError::Script(_))
        ));
        assert!(matches!(
            split(Value::BulkString(vec![0xff, 0xfe]), 1),
            Err(StoreError::Script(_))
        ));
    }
}
