//! Per-key budgets (README "Budgets"), run against both stores with a virtual clock: request and
//! token schedules, in-flight leases, settlement, waiting for a reserved slot.

use std::sync::Arc;

use keygate::pool::{KeyId, KeyState};
use keygate::store::budget::KeyLimits;
use keygate::store::spec::BudgetSpec;
use keygate::store::{
    Chosen, KeyRecord, KeyStore, KeyStoreExt, KeySuccesses, LeaseEnd, Route, SelectRequest,
    Selection, Settlement, SuccessBatch, Unavailable,
};

use crate::harness::{kid, spec, Subject};

const T0: u64 = 1_700_000_000_000;

async fn setup(s: &Subject, keys: &[&str], limits: KeyLimits, budget: BudgetSpec) {
    let triples: Vec<(&str, u32, &str)> = keys.iter().map(|k| (*k, 1, "stable")).collect();
    let mut sp = spec("p", &triples);
    for k in Arc::make_mut(&mut sp.keys) {
        k.limits = limits;
    }
    sp.budget = budget;
    s.store.sync(&sp).await.unwrap();
}

fn budget(max_wait_ms: u64, lease_ms: u64, max_request_tokens: u64) -> BudgetSpec {
    BudgetSpec {
        max_wait_ms,
        lease_ms,
        max_request_tokens,
        token_budgets: true,
        learn: false,
    }
}

async fn select(s: &dyn KeyStore, now: u64, tokens: u64) -> Result<Chosen, Unavailable> {
    let req = SelectRequest {
        route: Route::Stable,
        exclude: &[],
        rand: now.wrapping_mul(2654435761) >> 11,
        now_ms: Some(now),
        tokens,
    };
    match s.select("p", &req).await.unwrap() {
        Selection::Key(c) => Ok(c),
        Selection::None(u) => Err(u),
    }
}

async fn settle(s: &dyn KeyStore, ended: &[LeaseEnd], renew: &[(KeyId, u64)], now: u64) {
    let st = Settlement {
        ended,
        renew,
        now_ms: Some(now),
    };
    s.settle("p", &st).await.unwrap();
}

/// One success of `key` and the end of its request (`lease`, `tokens_delta`) in one success
/// batch (`lua/report_batch.lua`).
async fn success_batch(s: &dyn KeyStore, key: &str, lease: u64, tokens_delta: i64, now: u64) {
    let keys = [KeySuccesses {
        key: kid(key),
        count: 1,
        http_status: 200,
        age_ms: 0,
    }];
    let ended = [LeaseEnd {
        key: kid(key),
        lease,
        tokens_delta,
    }];
    let batch = SuccessBatch {
        keys: &keys,
        hints: &[],
        ended: &ended,
        now_ms: Some(now),
    };
    s.report_successes("p", &batch).await.unwrap();
}

async fn record(s: &dyn KeyStore, key: &str, now: u64) -> KeyRecord {
    let snap = s.snapshot("p", Some(now)).await.unwrap();
    snap.keys.into_iter().find(|k| k.id == key).expect("key")
}

fn rpm(n: u64) -> KeyLimits {
    KeyLimits {
        rpm: n,
        ..KeyLimits::default()
    }
}

pub async fn rpm_spaces_requests_and_benches_the_key_until_its_next_slot(s: &Subject) {
    setup(s, &["a"], rpm(60), budget(0, 10_000, 1000)).await;
    let st = &*s.store;
    // 60 per minute (stretched 1%): one every ceil(60600 / 60) = 1010 ms.
    assert_eq!(select(st, T0, 0).await.unwrap().key.as_str(), "a");
    let none = select(st, T0, 0).await.unwrap_err();
    assert_eq!(none.retry_at_ms, Some(T0 + 1010));
    assert!(select(st, T0 + 1009, 0).await.is_err());
    let snap = st.snapshot("p", Some(T0 + 1)).await.unwrap();
    assert_eq!(
        (snap.keys[0].status, snap.keys[0].reason.as_str()),
        (KeyState::Cooling, "budget")
    );
    assert_eq!(select(st, T0 + 1010, 0).await.unwrap().wait_ms, 0);
}

pub async fn rpm_never_exceeds_the_limit_in_any_minute_and_uses_it(s: &Subject) {
    setup(s, &["a", "b"], rpm(30), budget(0, 10_000, 1000)).await;
    let st = &*s.store;
    let mut starts: Vec<(String, u64)> = Vec::new();
    let end = T0 + 300_000;
    let mut now = T0;
    while now < end {
        if let Ok(c) = select(st, now, 0).await {
            starts.push((c.key.to_string(), now));
        }
        now += 37;
    }
    for key in ["a", "b"] {
        let t: Vec<u64> = (starts.iter().filter(|(k, _)| k == key))
            .map(|(_, t)| *t)
            .collect();
        for (i, s0) in t.iter().enumerate() {
            let n = t[i..].iter().take_while(|x| **x < s0 + 60_000).count();
            assert!(n <= 30, "key {key}: {n} requests in the minute from {s0}");
        }
        // Five minutes at 30 per minute, less the guard and the 37 ms polling granularity.
        assert!(t.len() >= 140, "key {key} served only {}", t.len());
    }
}

pub async fn max_concurrent_holds_slots_until_the_request_ends(s: &Subject) {
    let conc = KeyLimits {
        conc: 2,
        ..KeyLimits::default()
    };
    setup(s, &["a"], conc, budget(0, 5_000, 1000)).await;
    let st = &*s.store;
    let first = select(st, T0, 0).await.unwrap();
    let second = select(st, T0 + 1, 0).await.unwrap();
    assert!(first.lease != 0 && second.lease != 0 && first.lease != second.lease);
    let none = select(st, T0 + 2, 0).await.unwrap_err();
    assert_eq!(
        none.retry_at_ms,
        Some(T0 + 5_000),
        "the earliest lease expiry"
    );
    let end = LeaseEnd {
        key: kid("a"),
        lease: first.lease,
        tokens_delta: 0,
    };
    settle(st, &[end], &[], T0 + 10).await;
    assert!(
        select(st, T0 + 10, 0).await.is_ok(),
        "the freed slot is back at once"
    );
    assert!(select(st, T0 + 11, 0).await.is_err());
}

/// The success batch's path (`lua/report_batch.lua` reads only a key's status and reason with
/// its successes): a key benched as busy comes back with its weight and group when the batch
/// ends its request, and is chosen again.
pub async fn a_busy_key_freed_by_the_success_batch_is_chosen_again(s: &Subject) {
    let conc = KeyLimits {
        conc: 1,
        ..KeyLimits::default()
    };
    let mut sp = spec("p", &[("a", 3, "stable")]);
    for k in Arc::make_mut(&mut sp.keys) {
        k.limits = conc;
    }
    sp.budget = budget(0, 5_000, 1000);
    s.store.sync(&sp).await.unwrap();
    let st = &*s.store;
    let first = select(st, T0, 0).await.unwrap();
    let busy = select(st, T0 + 1, 0).await.unwrap_err();
    assert_eq!(
        busy.retry_at_ms,
        Some(T0 + 5_000),
        "benched until its lease expires"
    );
    success_batch(st, "a", first.lease, 0, T0 + 10).await;
    let again = select(st, T0 + 10, 0).await.unwrap();
    assert_eq!(again.key.as_str(), "a");
    let a = record(st, "a", T0 + 10).await;
    assert_eq!((a.weight, a.group.as_str()), (3, "stable"));
}

/// A success batch that settles more tokens than a request reserved benches its key at once,
/// until its token schedule allows the next start.
pub async fn a_batch_that_settles_more_tokens_than_reserved_benches_the_key(s: &Subject) {
    let tpm = KeyLimits {
        tpm: 10_000_000,
        ..KeyLimits::default()
    };
    setup(s, &["a"], tpm, budget(0, 10_000, 1000)).await;
    let st = &*s.store;
    // 100 tokens against 9,999,000 a minute: the schedule moves 1 ms, the key stays active.
    select(st, T0, 100).await.unwrap();
    success_batch(st, "a", 0, 900_000, T0 + 10).await;
    // 900,000 more tokens: ceil(900000 * 60600 / 9999000) = 5455 ms from T0 + 10.
    let a = record(st, "a", T0 + 10).await;
    assert_eq!(
        (a.status, a.reason.as_str(), a.cooldown_until_ms),
        (KeyState::Cooling, "budget", T0 + 5_465)
    );
}

pub async fn an_unrenewed_lease_expires_and_a_renewed_one_lives_on(s: &Subject) {
    let conc = KeyLimits {
        conc: 1,
        ..KeyLimits::default()
    };
    setup(s, &["a", "b"], conc, budget(0, 1_000, 1000)).await;
    let st = &*s.store;
    let x = select(st, T0, 0).await.unwrap();
    let y = select(st, T0, 0).await.unwrap();
    assert_ne!(x.key, y.key);
    assert!(select(st, T0 + 1, 0).await.is_err());
    // Only x's replica is alive: it renews x's lease.
    settle(st, &[], &[(x.key.clone(), x.lease)], T0 + 900).await;
    let back = select(st, T0 + 1_000, 0).await.unwrap();
    assert_eq!(back.key, y.key, "y's lease expired; x's was renewed");
    assert!(select(st, T0 + 1_001, 0).await.is_err());
    let again = select(st, T0 + 1_900, 0).await.unwrap();
    assert_eq!(again.key, x.key, "x's renewed lease expired at T0 + 1900");
}

/// A renewal that comes when the lease has already expired does not bring it back: its slot
/// may already be free (the memory store drops an expired lease at once; Redis purges a key's
/// lease set when it counts it near a threshold and when `settle.lua` renews its leases).
pub async fn a_lease_renewed_after_it_expired_stays_expired(s: &Subject) {
    let conc = KeyLimits {
        conc: 1,
        ..KeyLimits::default()
    };
    setup(s, &["a"], conc, budget(0, 1_000, 1000)).await;
    let st = &*s.store;
    let x = select(st, T0, 0).await.unwrap();
    settle(st, &[], &[(x.key.clone(), x.lease)], T0 + 1_000).await;
    let next = select(st, T0 + 1_001, 0).await;
    assert!(next.is_ok(), "the slot is free: {next:?}");
}

/// Forty requests in flight on one key (Redis keeps such a lease set as a skiplist, lua/lib.lua
/// KEEP_SORTED): every slot counted, a renewal of thirty of them in one call keeps exactly those
/// alive, the other ten expire, and ends in a success batch free their slots one for one.
pub async fn many_leases_on_one_key_are_counted_renewed_and_freed_one_for_one(s: &Subject) {
    let conc = KeyLimits {
        conc: 40,
        ..KeyLimits::default()
    };
    setup(s, &["a"], conc, budget(0, 1_000, 1000)).await;
    let st = &*s.store;
    let mut held = Vec::new();
    for i in 0..40 {
        held.push(select(st, T0 + i, 0).await.unwrap());
    }
    let none = select(st, T0 + 40, 0).await.unwrap_err();
    assert_eq!(
        none.retry_at_ms,
        Some(T0 + 1_000),
        "the first lease expires first"
    );
    let in_flight = |r: KeyRecord| r.budget.expect("a budget").in_flight;
    assert_eq!(in_flight(record(st, "a", T0 + 41).await), 40);

    // The replica renews the first thirty; the last ten (taken at T0 + 30..39) expire.
    let renew: Vec<(KeyId, u64)> = (held[..30].iter())
        .map(|c| (c.key.clone(), c.lease))
        .collect();
    settle(st, &[], &renew, T0 + 900).await;
    assert_eq!(in_flight(record(st, "a", T0 + 1_039).await), 30);
    let mut fresh = Vec::new();
    for i in 0..10 {
        fresh.push(select(st, T0 + 1_040 + i, 0).await.unwrap());
    }
    let none = select(st, T0 + 1_050, 0).await.unwrap_err();
    assert_eq!(
        none.retry_at_ms,
        Some(T0 + 1_900),
        "the renewed leases' expiry"
    );

    // Five renewed requests end in one batch: five slots, no more.
    for c in &held[..5] {
        success_batch(st, "a", c.lease, 0, T0 + 1_060).await;
    }
    for i in 0..5 {
        select(st, T0 + 1_061 + i, 0).await.unwrap();
    }
    assert!(select(st, T0 + 1_070, 0).await.is_err());
    assert_eq!(in_flight(record(st, "a", T0 + 1_071).await), 40);
}

/// A lease id is the request's random draw (`lua/lib.lua` budget_spend), unless the draw is 0
/// or already a lease of the key: then another id, so each request in flight holds a slot of
/// its own and its end frees that one.
pub async fn requests_with_the_same_draw_or_a_zero_draw_hold_a_slot_each(s: &Subject) {
    let conc = KeyLimits {
        conc: 3,
        ..KeyLimits::default()
    };
    setup(s, &["a"], conc, budget(0, 10_000, 1000)).await;
    let st = &*s.store;
    let pick = |rand: u64, now: u64| async move {
        let req = SelectRequest {
            route: Route::Stable,
            exclude: &[],
            rand,
            now_ms: Some(now),
            tokens: 0,
        };
        match st.select("p", &req).await.unwrap() {
            Selection::Key(c) => Ok(c),
            Selection::None(u) => Err(u),
        }
    };
    let x = pick(42, T0).await.unwrap();
    let y = pick(42, T0).await.unwrap();
    let z = pick(0, T0).await.unwrap();
    assert_eq!(x.lease, 42, "the draw is the lease id");
    let ids = [x.lease, y.lease, z.lease];
    assert!(
        ids.iter().all(|l| *l != 0),
        "every request holds a lease: {ids:?}"
    );
    assert!(
        x.lease != y.lease && y.lease != z.lease && x.lease != z.lease,
        "three leases, three ids: {ids:?}"
    );
    assert!(pick(7, T0 + 1).await.is_err(), "three slots, three taken");
    // y's end frees one slot, and x (whose id y's draw was) still holds its own.
    success_batch(st, "a", y.lease, 0, T0 + 2).await;
    let w = pick(42, T0 + 3).await.unwrap();
    assert!(w.lease != x.lease && w.lease != z.lease && w.lease != 0);
    assert!(pick(8, T0 + 4).await.is_err());
    settle(
        st,
        &[LeaseEnd {
            key: kid("a"),
            lease: x.lease,
            tokens_delta: 0,
        }],
        &[],
        T0 + 5,
    )
    .await;
    assert_eq!(
        pick(42, T0 + 6).await.unwrap().lease,
        42,
        "x's id is free again"
    );
}

pub async fn tokens_space_requests_by_their_reservation_and_settle_to_real_usage(s: &Subject) {
    let tpm = KeyLimits {
        tpm: 10_000,
        ..KeyLimits::default()
    };
    setup(s, &["a"], tpm, budget(0, 10_000, 1_000)).await;
    let st = &*s.store;
    // Spaced against tpm - max_request_tokens = 9000: 1000 tokens move the schedule by
    // ceil(1000 * 60600 / 9000) = 6734 ms.
    select(st, T0, 1_000).await.unwrap();
    assert_eq!(
        select(st, T0, 1).await.unwrap_err().retry_at_ms,
        Some(T0 + 6_734)
    );
    // The answer used 100 tokens: 900 are credited (floor(900 * 60600 / 9000) = 6060 ms).
    let end = LeaseEnd {
        key: kid("a"),
        lease: 0,
        tokens_delta: -900,
    };
    settle(st, &[end], &[], T0 + 10).await;
    assert!(select(st, T0 + 673, 1).await.is_err());
    assert!(select(st, T0 + 674, 1).await.is_ok());
    // A reservation is capped at max_request_tokens.
    let capped = select(st, T0 + 100_000, 50_000).await.unwrap();
    assert_eq!(capped.key.as_str(), "a");
    assert_eq!(
        select(st, T0 + 100_000, 1).await.unwrap_err().retry_at_ms,
        Some(T0 + 100_000 + 6_734)
    );
}

pub async fn a_request_waits_for_the_earliest_slot_within_max_wait(s: &Subject) {
    setup(s, &["a"], rpm(60), budget(2_500, 10_000, 1000)).await;
    let st = &*s.store;
    assert_eq!(select(st, T0, 0).await.unwrap().wait_ms, 0);
    assert_eq!(select(st, T0, 0).await.unwrap().wait_ms, 1_010);
    assert_eq!(select(st, T0 + 10, 0).await.unwrap().wait_ms, 2_010);
    let none = select(st, T0 + 10, 0).await.unwrap_err();
    assert_eq!(none.retry_at_ms, Some(T0 + 3_030));
}

pub async fn a_pool_without_budgets_is_never_benched(s: &Subject) {
    setup(s, &["a"], KeyLimits::default(), BudgetSpec::default()).await;
    let st = &*s.store;
    for i in 0..50 {
        let c = select(st, T0 + i, 0).await.unwrap();
        assert_eq!((c.wait_ms, c.lease), (0, 0));
    }
}

/// A key whose next slot is within `LAZY_MS` (10 ms) stays active and is skipped, never spent
/// early; when every key is a few ms from its slot the skipped keys are benched, so the 429
/// counts them and tells when the first comes back.
pub async fn a_key_a_few_ms_from_its_slot_is_skipped_not_benched_nor_spent_early(s: &Subject) {
    // rpm 12,120: one request every ceil(60600 / 12120) = 5 ms per key.
    setup(s, &["a", "b"], rpm(12_120), budget(0, 10_000, 1000)).await;
    let st = &*s.store;
    let first = select(st, T0, 0).await.unwrap().key;
    let second = select(st, T0, 0).await.unwrap().key;
    assert_ne!(
        first, second,
        "the spent key is skipped, the other one taken"
    );
    let snap = st.snapshot("p", Some(T0)).await.unwrap();
    assert!(
        snap.keys.iter().all(|k| k.status == KeyState::Active),
        "both keys stay in rotation: {:?}",
        snap.keys
            .iter()
            .map(|k| (k.status, &k.reason))
            .collect::<Vec<_>>()
    );
    // Both keys are 5 ms from their next slot: no key now, and both are benched until then.
    let none = select(st, T0 + 1, 0).await.unwrap_err();
    assert!(none.budget_bound);
    assert_eq!(none.retry_at_ms, Some(T0 + 5));
    let snap = st.snapshot("p", Some(T0 + 1)).await.unwrap();
    assert!(snap
        .keys
        .iter()
        .all(|k| (k.status, k.reason.as_str()) == (KeyState::Cooling, "budget")));
    // At the slot both are back, and each is taken once more.
    let a = select(st, T0 + 5, 0).await.unwrap().key;
    let b = select(st, T0 + 5, 0).await.unwrap().key;
    assert_ne!(a, b);
}

/// With `max_wait_ms`, a request that finds every key a few ms from its slot waits for the
/// skipped key that comes back first, and that slot is spent.
pub async fn a_request_waits_for_a_skipped_key_within_max_wait(s: &Subject) {
    setup(s, &["a"], rpm(12_120), budget(100, 10_000, 1000)).await;
    let st = &*s.store;
    assert_eq!(select(st, T0, 0).await.unwrap().wait_ms, 0);
    let waited = select(st, T0 + 2, 0).await.unwrap();
    assert_eq!(waited.wait_ms, 3);
    // The reserved slot moved the schedule to T0 + 10: the next request waits 8 ms from T0 + 2.
    assert_eq!(select(st, T0 + 2, 0).await.unwrap().wait_ms, 8);
}

conformance!(
    a_key_a_few_ms_from_its_slot_is_skipped_not_benched_nor_spent_early,
    a_request_waits_for_a_skipped_key_within_max_wait,
    rpm_spaces_requests_and_benches_the_key_until_its_next_slot,
    rpm_never_exceeds_the_limit_in_any_minute_and_uses_it,
    max_concurrent_holds_slots_until_the_request_ends,
    a_busy_key_freed_by_the_success_batch_is_chosen_again,
    a_batch_that_settles_more_tokens_than_reserved_benches_the_key,
    an_unrenewed_lease_expires_and_a_renewed_one_lives_on,
    a_lease_renewed_after_it_expired_stays_expired,
    many_leases_on_one_key_are_counted_renewed_and_freed_one_for_one,
    requests_with_the_same_draw_or_a_zero_draw_hold_a_slot_each,
    tokens_space_requests_by_their_reservation_and_settle_to_real_usage,
    a_request_waits_for_the_earliest_slot_within_max_wait,
    a_pool_without_budgets_is_never_benched,
);
