//! `report_successes` (a batch of many keys' successes in one call), run against both stores:
//! counters add up, errors reset unless a failure is as new as the successes (the late-failure
//! rule of `lua/report_batch.lua`), and a batch never changes a key's status.
//! Time is virtual (`now_ms` passed in), so the rule's boundaries are exact.

use keygate::pool::{KeyId, KeyState, Outcome};
use keygate::store::{
    BatchReceipt, KeyRecord, KeyStore, KeyStoreExt, KeySuccesses, Report, Route, SelectRequest,
    Selection, StoreError, SuccessBatch,
};

use crate::harness::{kid, redis_store, spec, RedisServer, Subject};

const T0: u64 = 1_700_000_000_000;

const ABC: &[(&str, u32, &str)] = &[("a", 1, "stable"), ("b", 1, "stable"), ("c", 1, "stable")];

fn tally(key: &str, count: u64, age_ms: u64) -> KeySuccesses {
    KeySuccesses {
        key: kid(key),
        count,
        http_status: 200,
        age_ms,
    }
}

async fn flush(s: &dyn KeyStore, keys: &[KeySuccesses], now: u64) -> BatchReceipt {
    let batch = SuccessBatch {
        keys,
        hints: &[],
        ended: &[],
        now_ms: Some(now),
    };
    s.report_successes("p", &batch).await.unwrap()
}

async fn report(s: &dyn KeyStore, key: &str, outcome: Outcome, probe: bool, now: u64) -> KeyState {
    let k = kid(key);
    let r = Report {
        key: &k,
        outcome,
        cooldown_ms: None,
        http_status: if outcome == Outcome::Success {
            200
        } else {
            500
        },
        probe,
        now_ms: Some(now),
    };
    s.report("p", &r).await.unwrap().state
}

async fn record(s: &dyn KeyStore, key: &str, now: u64) -> KeyRecord {
    let snap = s.snapshot("p", Some(now)).await.unwrap();
    snap.keys.into_iter().find(|k| k.id == key).expect("key")
}

async fn setup(s: &Subject) {
    s.store.sync(&spec("p", ABC)).await.unwrap();
}

pub async fn a_batch_adds_successes_and_resets_errors_of_every_key(s: &Subject) {
    setup(s).await;
    let st = &*s.store;
    report(st, "a", Outcome::ServerError, false, T0).await;
    report(st, "a", Outcome::ServerError, false, T0 + 1).await;
    let keys = [tally("a", 3, 5), tally("b", 1, 0), tally("zz", 4, 0)];
    let receipt = flush(st, &keys, T0 + 20).await;
    assert_eq!(
        receipt,
        BatchReceipt {
            applied: 2,
            held: 0,
            now_ms: T0 + 20
        }
    );
    let a = record(st, "a", T0 + 20).await;
    assert_eq!(
        (
            a.successes,
            a.failures,
            a.errors,
            a.last_status,
            a.last_used_ms
        ),
        (3, 2, 0, 200, T0 + 15)
    );
    assert_eq!(record(st, "b", T0 + 20).await.successes, 1);
    // The reset counted: two more errors stay below the threshold of 3.
    report(st, "a", Outcome::ServerError, false, T0 + 21).await;
    let state = report(st, "a", Outcome::ServerError, false, T0 + 22).await;
    assert_eq!(state, KeyState::Active);
}

pub async fn a_batch_never_undoes_a_failure_newer_than_its_successes(s: &Subject) {
    setup(s).await;
    let st = &*s.store;
    // Success at T0 (buffered), a server error at T0+10 (reported at once), flush at T0+50.
    report(st, "a", Outcome::ServerError, false, T0 + 10).await;
    let receipt = flush(st, &[tally("a", 1, 50)], T0 + 50).await;
    assert_eq!((receipt.applied, receipt.held), (1, 1));
    let a = record(st, "a", T0 + 50).await;
    assert_eq!((a.successes, a.errors, a.last_status), (1, 1, 500));
    // The error still counts: two more open the breaker (threshold 3).
    report(st, "a", Outcome::ServerError, false, T0 + 51).await;
    let state = report(st, "a", Outcome::ServerError, false, T0 + 52).await;
    assert_eq!(state, KeyState::Open);
}

pub async fn a_failure_in_the_same_millisecond_wins_and_an_older_one_is_reset(s: &Subject) {
    setup(s).await;
    let st = &*s.store;
    report(st, "a", Outcome::RateLimited, false, T0 + 10).await;
    report(st, "b", Outcome::ServerError, false, T0 + 10).await;
    // a's newest success happened exactly at the failure's millisecond; b's one after it.
    let keys = [tally("a", 2, 40), tally("b", 2, 39)];
    let receipt = flush(st, &keys, T0 + 50).await;
    assert_eq!((receipt.applied, receipt.held), (2, 1));
    let a = record(st, "a", T0 + 50).await;
    assert_eq!((a.strikes, a.status), (1, KeyState::Cooling));
    let b = record(st, "b", T0 + 50).await;
    assert_eq!((b.errors, b.last_status, b.last_used_ms), (0, 200, T0 + 11));
}

pub async fn a_batch_never_reactivates_a_half_open_or_cooling_key(s: &Subject) {
    setup(s).await;
    let st = &*s.store;
    for i in 0..3 {
        report(st, "a", Outcome::ServerError, false, T0 + i).await;
    }
    report(st, "b", Outcome::RateLimited, false, T0).await;
    flush(st, &[tally("b", 5, 0)], T0 + 3).await;
    let b = record(st, "b", T0 + 3).await;
    assert_eq!(
        (b.status, b.successes, b.strikes),
        (KeyState::Cooling, 5, 0)
    );
    let t = T0 + 2 + 5_000; // the breaker's open time has passed: a goes half-open
    assert_eq!(record(st, "a", t).await.status, KeyState::HalfOpen);
    flush(st, &[tally("a", 5, 0)], t + 1).await;
    let a = record(st, "a", t + 1).await;
    assert_eq!(
        (a.status, a.successes, a.errors),
        (KeyState::HalfOpen, 5, 0)
    );
    // The probe is still there to be taken, and only its own success closes the breaker.
    let req = SelectRequest {
        route: Route::Stable,
        exclude: &[],
        rand: 0,
        now_ms: Some(t + 2),
        tokens: 0,
    };
    match st.select("p", &req).await.unwrap() {
        Selection::Key(c) => assert_eq!((c.key.as_str(), c.probe), ("a", true)),
        other => panic!("expected a's probe, got {other:?}"),
    }
    assert_eq!(
        report(st, "a", Outcome::Success, true, t + 3).await,
        KeyState::Active
    );
}

pub async fn a_late_batch_adds_its_successes_without_moving_the_last_use_back(s: &Subject) {
    setup(s).await;
    let st = &*s.store;
    report(st, "a", Outcome::ServerError, false, T0 + 10).await;
    // Replica X's batch: newest success at T0+50, after the failure (resets it).
    flush(st, &[tally("a", 2, 0)], T0 + 50).await;
    // Replica Y's batch arrives later, but its newest success was at T0+20: after the failure
    // (so not held), before X's (so the last use stays at T0+50).
    let receipt = flush(st, &[tally("a", 3, 40)], T0 + 60).await;
    assert_eq!((receipt.applied, receipt.held), (1, 0));
    let a = record(st, "a", T0 + 60).await;
    assert_eq!(
        (a.successes, a.errors, a.last_status, a.last_used_ms),
        (5, 0, 200, T0 + 50)
    );
    // A batch older than the failure: held, counted, and the last use stays put.
    let receipt = flush(st, &[tally("a", 1, 55)], T0 + 60).await;
    assert_eq!((receipt.applied, receipt.held), (1, 1));
    let a = record(st, "a", T0 + 60).await;
    assert_eq!((a.successes, a.last_used_ms), (6, T0 + 50));
}

pub async fn a_batch_of_many_keys_applies_in_one_call(s: &Subject) {
    let ids: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    let keys: Vec<(&str, u32, &str)> = ids.iter().map(|i| (i.as_str(), 1, "stable")).collect();
    s.store.sync(&spec("p", &keys)).await.unwrap();
    let batch: Vec<KeySuccesses> = (0..300u64)
        .map(|i| tally(&ids[i as usize], i + 1, 0))
        .collect();
    let receipt = flush(&*s.store, &batch, T0).await;
    assert_eq!((receipt.applied, receipt.held), (300, 0));
    let snap = s.store.snapshot("p", Some(T0)).await.unwrap();
    for (i, k) in snap.keys.iter().enumerate() {
        assert_eq!(
            (k.id.as_str(), k.successes),
            (ids[i].as_str(), i as u64 + 1)
        );
    }
}

pub async fn a_batch_for_an_unknown_pool_is_an_error(s: &Subject) {
    let keys = [tally("a", 1, 0)];
    let batch = SuccessBatch {
        keys: &keys,
        hints: &[],
        ended: &[],
        now_ms: Some(T0),
    };
    let r = s.store.report_successes("nope", &batch).await;
    assert!(matches!(r, Err(StoreError::UnknownPool(_))), "{r:?}");
    setup(s).await;
    assert_eq!(flush(&*s.store, &[], T0).await.applied, 0);
}

conformance!(
    a_batch_adds_successes_and_resets_errors_of_every_key,
    a_batch_never_undoes_a_failure_newer_than_its_successes,
    a_failure_in_the_same_millisecond_wins_and_an_older_one_is_reset,
    a_batch_never_reactivates_a_half_open_or_cooling_key,
    a_late_batch_adds_its_successes_without_moving_the_last_use_back,
    a_batch_of_many_keys_applies_in_one_call,
    a_batch_for_an_unknown_pool_is_an_error,
);

/// `INFO commandstats`: script calls (`FCALL`, and `EVALSHA` on a Redis without Functions).
pub fn script_calls(server: &RedisServer) -> u64 {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    ["cmdstat_fcall:calls=", "cmdstat_evalsha:calls="]
        .iter()
        .map(|prefix| {
            info.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test]
async fn a_batch_of_300_keys_is_one_script_call_in_redis() {
    let server = RedisServer::start();
    let store = redis_store(&server, "kg");
    let ids: Vec<KeyId> = (0..300).map(|i| kid(&format!("k{i:03}"))).collect();
    let keys: Vec<(&str, u32, &str)> = ids.iter().map(|i| (i.as_str(), 1, "stable")).collect();
    store.sync(&spec("p", &keys)).await.unwrap();
    store.load_scripts().await.unwrap();
    let batch: Vec<KeySuccesses> = ids.iter().map(|i| tally(i.as_str(), 2, 0)).collect();
    let before = script_calls(&server);
    flush(&store, &batch, T0).await;
    assert_eq!(script_calls(&server) - before, 1);
}
