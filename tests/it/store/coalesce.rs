//! Coalesced selects (`src/store/redis/coalesce.rs`): selects that wait on one pool go to Redis
//! together, each still answered as if it had been its own call, and none is ever stranded.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use keygate::pool::{KeyId, Outcome};
use keygate::store::memory::MemoryStore;
use keygate::store::redis::RedisStore;
use keygate::store::spec::PoolSpec;
use keygate::store::{KeyStore, KeyStoreExt, Report, Route, SelectRequest, Selection, StoreError};

use super::batch::script_calls;
use super::snapshot::command_calls;
use crate::harness::{kid, redis_store, spec, RedisServer};

const T0: u64 = 1_700_000_000_000;

const KEYS: [(&str, u32, &str); 10] = [
    ("h", 4, "stable"),
    ("s1", 1, "stable"),
    ("s2", 3, "stable"),
    ("s3", 10, "stable"),
    ("s4", 200, "stable"),
    ("s5", 7, "stable"),
    ("c1", 2, "canary"),
    ("c2", 5, "canary"),
    ("c3", 1, "canary"),
    ("c4", 0, "canary"),
];

/// The pool of [`KEYS`] with 30% canary traffic and key `h` half-open at `T0 + 5_002` (its
/// breaker opened at `T0 + 2`).
async fn setup(s: &dyn KeyStore) {
    s.sync(&spec("p", &KEYS)).await.unwrap();
    s.set_canary("p", 30).await.unwrap();
    let h = kid("h");
    for i in 0..3 {
        let r = Report {
            key: &h,
            outcome: Outcome::ServerError,
            cooldown_ms: None,
            http_status: 500,
            probe: false,
            now_ms: Some(T0 + i),
        };
        s.report("p", &r).await.unwrap();
    }
}

/// Request `i` of the batch: its route, the keys it already tried and its draw.
fn request(i: u64) -> (Route, Vec<KeyId>, u64) {
    let route = match i % 4 {
        0 | 1 => Route::Stable,
        2 => Route::Bucket((i * 7 % 100) as u8),
        _ => Route::Canary,
    };
    // The two requests sent alone have already tried `h`, so the probe lease is taken inside
    // the batch.
    let exclude = match i % 5 {
        _ if i < 2 => vec![kid("h")],
        1 => vec![kid("s4")],
        2 => vec![kid("s4"), kid("s3"), kid("c2")],
        _ => vec![],
    };
    let rand = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    (route, exclude, rand)
}

fn select_req(r: &(Route, Vec<KeyId>, u64), now: u64) -> SelectRequest<'_> {
    SelectRequest {
        route: r.0,
        exclude: &r.1,
        rand: r.2,
        now_ms: Some(now),
        tokens: 0,
    }
}

/// `n` stable requests that exclude nothing, with draws spread over the range.
fn stable_requests(n: u64) -> Vec<(Route, Vec<KeyId>, u64)> {
    (0..n)
        .map(|i| {
            (
                Route::Stable,
                Vec::new(),
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11,
            )
        })
        .collect()
}

/// Sends `sels` to pool `p` in one pass while Redis is stopped: the first two find a free lane
/// each and are sent alone, the rest queue behind them. Only then may Redis answer (on a
/// runtime worker, a lane's answer could otherwise come back while the pass is still queuing,
/// and take only part of the queue), and the queued ones go together in a third call.
async fn select_together(
    server: &RedisServer,
    redis: &RedisStore,
    sels: &[SelectRequest<'_>],
) -> Vec<Selection> {
    server.pause();
    let mut all = Box::pin(futures::future::join_all(
        sels.iter().map(|q| redis.select("p", q)),
    ));
    assert!(futures::poll!(&mut all).is_pending());
    server.resume();
    all.await.into_iter().map(Result::unwrap).collect()
}

/// A Redis store on its own server and a memory store, both holding pool `sp`.
async fn both_synced(sp: &PoolSpec) -> (RedisServer, RedisStore, MemoryStore) {
    let server = RedisServer::start();
    let redis = redis_store(&server, "kg");
    let memory = MemoryStore::new();
    for s in [&redis as &dyn KeyStore, &memory] {
        s.sync(sp).await.unwrap();
    }
    redis.load_scripts().await.unwrap();
    (server, redis, memory)
}

/// A Redis store (store timeout 500 ms) on its own server, holding the pool of [`setup`].
async fn redis_pool() -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = redis_store(&server, "kg");
    setup(&store).await;
    store.load_scripts().await.unwrap();
    (server, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_selects_share_three_script_calls_and_match_one_by_one_selection() {
    let server = RedisServer::start();
    let redis = redis_store(&server, "kg");
    let memory = MemoryStore::new();
    setup(&redis).await;
    setup(&memory).await;
    redis.load_scripts().await.unwrap();
    let t = T0 + 5_002;
    // 30: `join_all` of more than 30 futures drives them through `FuturesOrdered`, which yields
    // partway through its first pass, so a lane could return before every select is queued.
    let reqs: Vec<_> = (0..30).map(request).collect();
    let sels: Vec<SelectRequest> = reqs.iter().map(|r| select_req(r, t)).collect();

    let before = script_calls(&server);
    // Two sent alone, the other 28 together in the third call.
    let together = select_together(&server, &redis, &sels).await;
    assert_eq!(script_calls(&server) - before, 3);

    let mut one_by_one = Vec::new();
    for r in &reqs {
        one_by_one.push(memory.select("p", &select_req(r, t)).await.unwrap());
    }
    assert_eq!(together, one_by_one);

    let probes: Vec<usize> = together
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Selection::Key(c) if c.probe))
        .map(|(i, _)| i)
        .collect();
    // Requests 2 and 3 are canary traffic; request 4 is the batch's first that may probe `h`.
    assert_eq!(
        probes,
        [4],
        "one probe, and the rest of the batch saw its lease"
    );
    for (i, (s, r)) in together.iter().zip(&reqs).enumerate() {
        let Selection::Key(c) = s else {
            panic!("request {i}: {s:?}");
        };
        assert!(
            !r.1.contains(&c.key),
            "request {i} got a key it had tried: {c:?}"
        );
        assert_ne!(c.key.as_str(), "c4", "weight 0 is never chosen");
    }
}

/// A call of 12 selects from a pool of 64 keys of weight 1 reads their class set once, whole
/// (`lua/select.lua` WHOLE0: a member read whole costs about a tenth of a read by rank), and
/// still picks exactly what the memory store picks one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_selects_from_64_keys_read_their_class_once_and_pick_as_one_by_one() {
    let ids: Vec<String> = (0..64).map(|i| format!("k{i:02}")).collect();
    let keys: Vec<(&str, u32, &str)> = ids.iter().map(|id| (id.as_str(), 1, "stable")).collect();
    let (server, redis, memory) = both_synced(&spec("p", &keys)).await;
    let reqs = stable_requests(14);
    let sels: Vec<SelectRequest> = reqs.iter().map(|r| select_req(r, T0)).collect();
    let (calls, ranges) = (script_calls(&server), command_calls(&server, "zrange"));
    // As above: the first two go alone, one per lane; the other 12 go together.
    let together = select_together(&server, &redis, &sels).await;
    assert_eq!(script_calls(&server) - calls, 3);
    assert_eq!(
        command_calls(&server, "zrange") - ranges,
        3,
        "one read by rank for each select sent alone, one whole read for the 12"
    );
    let mut one_by_one = Vec::new();
    for r in &reqs {
        one_by_one.push(memory.select("p", &select_req(r, T0)).await.unwrap());
    }
    assert_eq!(together, one_by_one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_select_is_sent_when_the_call_before_it_is_cancelled() {
    let (server, store) = redis_pool().await;
    let r = request(3);
    let q = select_req(&r, T0);
    let mut first = Box::pin(store.select("p", &q));
    let mut second = Box::pin(store.select("p", &q));
    let mut third = Box::pin(store.select("p", &q));
    // The first two are in flight, one per lane; the third waits behind them. Redis is stopped
    // meanwhile, so no answer can come back before the third is queued (on a busy host the
    // test's thread may otherwise sleep long enough between a call's send and its first poll).
    server.pause();
    assert!(poll_once(first.as_mut()).await.is_pending());
    assert!(poll_once(second.as_mut()).await.is_pending());
    assert!(poll_once(third.as_mut()).await.is_pending());
    drop(first);
    server.resume();
    // The store timeout is 500 ms: a stranded waiter would time out.
    assert!(matches!(third.await, Ok(Selection::Key(_))));
    assert!(matches!(second.await, Ok(Selection::Key(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_behind_a_stalled_call_time_out_at_their_deadline_and_the_pool_recovers() {
    let (server, store) = redis_pool().await;
    let r = request(3);
    let q = select_req(&r, T0);
    server.pause();
    let started = Instant::now();
    let stalled = futures::future::join_all((0..4).map(|_| store.select("p", &q))).await;
    let waited = started.elapsed();
    server.resume();
    for s in stalled {
        assert!(matches!(s, Err(StoreError::Timeout)), "{s:?}");
    }
    // All four gave up at their own 500 ms deadline, not one timeout after another.
    assert!(
        (Duration::from_millis(500)..Duration::from_millis(950)).contains(&waited),
        "{waited:?}"
    );
    // Nothing is left holding the pool: the next select is answered.
    assert!(matches!(store.select("p", &q).await, Ok(Selection::Key(_))));
}

/// Polls `f` once, from inside a task.
async fn poll_once<F: Future + ?Sized>(mut f: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// A coalesced call that reserves each key's slots further ahead than `LAZY_MS` benches those
/// keys as it goes (`lua/select.lua` try_wait). The rest of the call must then stop drawing
/// them from the class set it read whole: a benched key drawn again was benched a second time,
/// and its class count fell by one for each (the set itself was already without it). A pool
/// then drew from fewer keys than it held, for good: one key of four went unused at c=64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_benches_keys_by_reserving_their_slots_keeps_its_class_counts_exact() {
    use keygate::store::budget::KeyLimits;
    use keygate::store::spec::BudgetSpec;
    use redis::Commands;
    use std::sync::Arc;

    let ids = ["a", "b", "c", "d"];
    let triples: Vec<(&str, u32, &str)> = ids.iter().map(|k| (*k, 1, "stable")).collect();
    let mut sp = spec("p", &triples);
    for k in Arc::make_mut(&mut sp.keys) {
        // One request a millisecond per key (60 per second, stretched 1%).
        k.limits = KeyLimits {
            rpm: 60_600,
            ..KeyLimits::default()
        };
    }
    sp.budget = BudgetSpec {
        max_wait_ms: 1_000,
        lease_ms: 10_000,
        max_request_tokens: 1_000,
        token_budgets: true,
        learn: false,
    };
    let (server, redis, memory) = both_synced(&sp).await;
    // 2 sent alone, then 60 in one call at the same instant: 15 a key, so each key's schedule
    // runs 15 ms ahead by the end and the call benches every key along the way.
    let reqs = stable_requests(62);
    let sels: Vec<SelectRequest> = reqs.iter().map(|r| select_req(r, T0)).collect();
    let calls = script_calls(&server);
    let together = select_together(&server, &redis, &sels).await;
    assert_eq!(script_calls(&server) - calls, 3);

    let mut conn = server.conn();
    let members: usize = conn.zcard("kg:{p}:cls:stable:0").unwrap();
    let counts: std::collections::HashMap<String, i64> =
        conn.hgetall("kg:{p}:clsn:stable").unwrap();
    assert_eq!(
        counts.get("0").copied().unwrap_or(0),
        members as i64,
        "class 0's count against its set, after the call: {counts:?}"
    );
    assert_eq!(
        counts.get("total").copied().unwrap_or(0),
        members as i64,
        "the summed weight of weight-1 members"
    );

    let mut one_by_one = Vec::new();
    for r in &reqs {
        one_by_one.push(memory.select("p", &select_req(r, T0)).await.unwrap());
    }
    assert_eq!(together, one_by_one);
    let waited = together
        .iter()
        .filter(|s| matches!(s, Selection::Key(c) if c.wait_ms > 0))
        .count();
    assert!(
        waited >= 50,
        "most of the call waits for a reserved slot: {waited}"
    );
}
