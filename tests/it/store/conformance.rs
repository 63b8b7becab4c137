//! One conformance suite, run against both stores: every transition of README.md, "Key states".
//! Time is virtual (`now_ms` passed in), so deadlines are exact and nothing sleeps.

use std::collections::HashMap;

use keygate::config::RotationConfig;
use keygate::pool::{KeyId, KeyState, Outcome};
use keygate::rotation::driver::plan_spec;
use keygate::store::rotation::{
    Control, ControlReply, LeaseReply, PlanSpec, PlanState, PlanWrite, StartReply, StatsReply,
    WriteReply,
};
use keygate::store::{
    AdminState, KeyStore, KeyStoreExt, Report, Route, SelectRequest, Selection, StoreError,
    SyncReceipt,
};

use crate::harness::{kid, spec, Subject};

const T0: u64 = 1_700_000_000_000;

fn req(rand: u64, route: Route, exclude: &[KeyId], now: u64) -> SelectRequest<'_> {
    SelectRequest {
        route,
        exclude,
        rand,
        now_ms: Some(now),
        tokens: 0,
    }
}

/// The key selected at `now` by a draw at fraction `f` of the range.
async fn pick_at(s: &dyn KeyStore, now: u64, f: f64) -> Option<String> {
    let rand = (f * (1u64 << 53) as f64) as u64;
    match s
        .select("p", &req(rand, Route::Stable, &[], now))
        .await
        .unwrap()
    {
        Selection::Key(c) => Some(c.key.to_string()),
        Selection::None(_) => None,
    }
}

/// Every key selectable at `now`, found by draws across the range.
async fn selectable(s: &dyn KeyStore, now: u64) -> Vec<String> {
    let mut seen = Vec::new();
    for i in 0..64 {
        if let Some(k) = pick_at(s, now, (i as f64 + 0.5) / 64.0).await {
            if !seen.contains(&k) {
                seen.push(k);
            }
        }
    }
    seen.sort();
    seen
}

async fn report(
    s: &dyn KeyStore,
    key: &str,
    outcome: Outcome,
    hint: Option<u64>,
    now: u64,
) -> KeyState {
    let k = kid(key);
    let r = Report {
        key: &k,
        outcome,
        cooldown_ms: hint,
        http_status: 0,
        probe: false,
        now_ms: Some(now),
    };
    s.report("p", &r).await.unwrap().state
}

async fn probe_report(s: &dyn KeyStore, key: &str, outcome: Outcome, now: u64) -> KeyState {
    let k = kid(key);
    let r = Report {
        key: &k,
        outcome,
        cooldown_ms: None,
        http_status: 0,
        probe: true,
        now_ms: Some(now),
    };
    s.report("p", &r).await.unwrap().state
}

async fn state_of(s: &dyn KeyStore, key: &str, now: u64) -> (KeyState, String, u64) {
    let snap = s.snapshot("p", Some(now)).await.unwrap();
    let k = snap
        .keys
        .iter()
        .find(|k| k.id == key)
        .expect("key in snapshot");
    (k.status, k.reason.clone(), k.cooldown_until_ms)
}

async fn setup(s: &Subject, keys: &[(&str, u32, &str)]) {
    s.store.sync(&spec("p", keys)).await.unwrap();
}

const ABC: &[(&str, u32, &str)] = &[("a", 1, "stable"), ("b", 1, "stable"), ("c", 1, "stable")];

pub async fn rate_limited_key_cools_until_retry_after_then_recovers(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    assert_eq!(
        report(st, "b", Outcome::RateLimited, Some(2_000), T0).await,
        KeyState::Cooling
    );
    assert_eq!(selectable(st, T0 + 1_999).await, ["a", "c"]);
    assert_eq!(selectable(st, T0 + 2_000).await, ["a", "b", "c"]);
    assert_eq!(state_of(st, "b", T0 + 2_000).await.0, KeyState::Active);
}

pub async fn rate_limited_without_hint_backs_off_exponentially_up_to_the_max(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    // default 1 s, doubled per strike, capped at 60 s.
    let mut now = T0;
    for expected in [
        1_000u64, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000,
    ] {
        report(st, "a", Outcome::RateLimited, None, now).await;
        assert_eq!(state_of(st, "a", now).await.2, now + expected);
        now += expected;
        assert_eq!(selectable(st, now).await, ["a", "b", "c"]);
    }
    // A success resets the strikes.
    report(st, "a", Outcome::Success, None, now).await;
    report(st, "a", Outcome::RateLimited, None, now).await;
    assert_eq!(state_of(st, "a", now).await.2, now + 1_000);
}

pub async fn recooling_extends_a_deadline_and_never_shortens_it(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    report(st, "a", Outcome::RateLimited, Some(10_000), T0).await;
    report(st, "a", Outcome::RateLimited, Some(1_000), T0 + 100).await;
    assert_eq!(state_of(st, "a", T0 + 100).await.2, T0 + 10_000);
    report(st, "a", Outcome::RateLimited, Some(20_000), T0 + 200).await;
    assert_eq!(state_of(st, "a", T0 + 200).await.2, T0 + 20_200);
}

pub async fn retry_after_is_clamped_to_the_pool_max(s: &Subject) {
    setup(s, ABC).await;
    report(&*s.store, "a", Outcome::RateLimited, Some(10_000_000), T0).await;
    assert_eq!(state_of(&*s.store, "a", T0).await.2, T0 + 60_000);
}

pub async fn quota_exhaustion_disables_until_the_quota_cooldown(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    assert_eq!(
        report(st, "c", Outcome::QuotaExhausted, None, T0).await,
        KeyState::Disabled
    );
    assert_eq!(
        state_of(st, "c", T0).await,
        (KeyState::Disabled, "quota".into(), T0 + 100_000)
    );
    assert_eq!(selectable(st, T0 + 99_999).await, ["a", "b"]);
    assert_eq!(selectable(st, T0 + 100_000).await, ["a", "b", "c"]);
}

pub async fn unauthorized_disables_until_an_operator_enables(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    assert_eq!(
        report(st, "a", Outcome::Unauthorized, None, T0).await,
        KeyState::Disabled
    );
    assert_eq!(state_of(st, "a", T0).await.1, "unauthorized");
    assert_eq!(selectable(st, T0 + 10_000_000).await, ["b", "c"]);
    assert_eq!(
        st.set_state("p", &kid("a"), AdminState::Enable)
            .await
            .unwrap(),
        KeyState::Active
    );
    assert_eq!(selectable(st, T0 + 10_000_000).await, ["a", "b", "c"]);
}

pub async fn an_unconfirmed_401_benches_and_the_probes_401_disables(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    assert_eq!(
        report(st, "a", Outcome::Unauthorized, Some(30_000), T0).await,
        KeyState::Cooling
    );
    assert_eq!(
        state_of(st, "a", T0).await,
        (KeyState::Cooling, "auth_unconfirmed".into(), T0 + 30_000)
    );
    assert_eq!(selectable(st, T0 + 1).await, ["b", "c"]);
    // Another replica's late 401 neither disables nor shortens the bench.
    report(st, "a", Outcome::Unauthorized, Some(1_000), T0 + 2).await;
    assert_eq!(state_of(st, "a", T0 + 2).await.2, T0 + 30_000);
    assert_eq!(
        probe_report(st, "a", Outcome::Unauthorized, T0 + 3).await,
        KeyState::Disabled
    );
    assert_eq!(
        state_of(st, "a", T0 + 3).await,
        (KeyState::Disabled, "unauthorized".into(), 0)
    );
    assert_eq!(selectable(st, T0 + 10_000_000).await, ["b", "c"]);
}

pub async fn a_benched_key_whose_probe_succeeds_is_active_again(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    report(st, "b", Outcome::Unauthorized, Some(30_000), T0).await;
    assert_eq!(
        probe_report(st, "b", Outcome::Success, T0 + 5).await,
        KeyState::Active
    );
    assert_eq!(
        state_of(st, "b", T0 + 5).await,
        (KeyState::Active, "".into(), 0)
    );
    assert_eq!(selectable(st, T0 + 5).await, ["a", "b", "c"]);
    // Without an answer from its probe, the bench ends by its deadline.
    report(st, "c", Outcome::Unauthorized, Some(30_000), T0).await;
    assert_eq!(selectable(st, T0 + 29_999).await, ["a", "b"]);
    assert_eq!(selectable(st, T0 + 30_000).await, ["a", "b", "c"]);
}

pub async fn a_probe_answer_never_touches_a_key_that_is_no_longer_benched(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    // Benched, then an operator disables (a) or drains (b) it: the probe's answer is late.
    for (key, admin) in [("a", AdminState::Disable), ("b", AdminState::Drain)] {
        report(st, key, Outcome::Unauthorized, Some(30_000), T0).await;
        st.set_state("p", &kid(key), admin).await.unwrap();
        probe_report(st, key, Outcome::Success, T0 + 1).await;
        probe_report(st, key, Outcome::Unauthorized, T0 + 1).await;
    }
    assert_eq!(
        state_of(st, "a", T0 + 2).await,
        (KeyState::Disabled, "admin".into(), 0)
    );
    assert_eq!(
        state_of(st, "b", T0 + 2).await,
        (KeyState::Draining, "admin".into(), 0)
    );
    // An active key (its bench over, or never benched) is not disabled by a probe's 401, and a
    // rate-limited key is not re-activated by a probe's success.
    assert_eq!(
        probe_report(st, "c", Outcome::Unauthorized, T0).await,
        KeyState::Active
    );
    report(st, "c", Outcome::RateLimited, Some(5_000), T0).await;
    assert_eq!(
        probe_report(st, "c", Outcome::Success, T0 + 1).await,
        KeyState::Cooling
    );
    // A 401 on a key out of rotation for its quota leaves it there.
    st.set_state("p", &kid("a"), AdminState::Enable)
        .await
        .unwrap();
    report(st, "a", Outcome::QuotaExhausted, None, T0).await;
    report(st, "a", Outcome::Unauthorized, Some(30_000), T0 + 1).await;
    assert_eq!(state_of(st, "a", T0 + 1).await.1, "quota");
}

pub async fn server_errors_open_the_breaker_at_the_threshold_within_the_window(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    // Two errors, then the window (10 s) passes: the count starts again.
    report(st, "a", Outcome::ServerError, None, T0).await;
    report(st, "a", Outcome::Timeout, None, T0 + 1).await;
    assert_eq!(
        report(st, "a", Outcome::ConnectError, None, T0 + 10_000).await,
        KeyState::Active
    );
    report(st, "a", Outcome::ServerError, None, T0 + 10_001).await;
    assert_eq!(
        report(st, "a", Outcome::ServerError, None, T0 + 10_002).await,
        KeyState::Open
    );
    assert_eq!(
        state_of(st, "a", T0 + 10_002).await,
        (KeyState::Open, "breaker".into(), T0 + 15_002)
    );
    assert_eq!(selectable(st, T0 + 15_001).await, ["b", "c"]);
}

pub async fn a_success_resets_the_error_count(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    report(st, "a", Outcome::ServerError, None, T0).await;
    report(st, "a", Outcome::ServerError, None, T0 + 1).await;
    report(st, "a", Outcome::Success, None, T0 + 2).await;
    report(st, "a", Outcome::ServerError, None, T0 + 3).await;
    assert_eq!(
        report(st, "a", Outcome::ServerError, None, T0 + 4).await,
        KeyState::Active
    );
}

async fn open_breaker(st: &dyn KeyStore, key: &str, now: u64) {
    for i in 0..3 {
        report(st, key, Outcome::ServerError, None, now + i).await;
    }
    assert_eq!(state_of(st, key, now + 2).await.0, KeyState::Open);
}

pub async fn half_open_allows_one_probe_at_a_time_and_success_reactivates(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    open_breaker(st, "a", T0).await;
    let t = T0 + 2 + 5_000;
    // The first selection after the deadline is the probe, whatever the draw.
    match st
        .select("p", &req(0, Route::Stable, &[], t))
        .await
        .unwrap()
    {
        Selection::Key(c) => assert!(c.key.as_str() == "a" && c.probe, "{c:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(state_of(st, "a", t).await.0, KeyState::HalfOpen);
    // While the probe runs, nobody else gets the key.
    assert_eq!(selectable(st, t + 1).await, ["b", "c"]);
    // A non-probe (late) success does not close the breaker; the probe's does.
    report(st, "a", Outcome::Success, None, t + 2).await;
    assert_eq!(state_of(st, "a", t + 2).await.0, KeyState::HalfOpen);
    assert_eq!(
        probe_report(st, "a", Outcome::Success, t + 3).await,
        KeyState::Active
    );
    assert_eq!(selectable(st, t + 3).await, ["a", "b", "c"]);
}

pub async fn a_failed_probe_reopens_with_doubled_time(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    open_breaker(st, "a", T0).await;
    let t = T0 + 5_002;
    assert!(
        matches!(st.select("p", &req(0, Route::Stable, &[], t)).await.unwrap(), Selection::Key(c) if c.probe)
    );
    assert_eq!(
        probe_report(st, "a", Outcome::Timeout, t + 1).await,
        KeyState::Open
    );
    assert_eq!(state_of(st, "a", t + 1).await.2, t + 1 + 10_000);
    let t2 = t + 1 + 10_000;
    assert!(
        matches!(st.select("p", &req(0, Route::Stable, &[], t2)).await.unwrap(), Selection::Key(c) if c.probe)
    );
    probe_report(st, "a", Outcome::ServerError, t2).await;
    assert_eq!(state_of(st, "a", t2).await.2, t2 + 20_000);
}

pub async fn a_probe_lease_expires_when_its_replica_never_reports(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    open_breaker(st, "a", T0).await;
    let t = T0 + 5_002;
    assert!(
        matches!(st.select("p", &req(0, Route::Stable, &[], t)).await.unwrap(), Selection::Key(c) if c.probe)
    );
    assert_eq!(selectable(st, t + 1_999).await, ["b", "c"]);
    // Lease is 2 s: then another replica may probe.
    match st
        .select("p", &req(0, Route::Stable, &[], t + 2_000))
        .await
        .unwrap()
    {
        Selection::Key(c) => assert!(c.key.as_str() == "a" && c.probe),
        other => panic!("{other:?}"),
    }
}

pub async fn a_client_error_changes_nothing(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    let before = st.snapshot("p", Some(T0)).await.unwrap();
    for _ in 0..10 {
        assert_eq!(
            report(st, "a", Outcome::ClientError, None, T0).await,
            KeyState::Active
        );
    }
    assert_eq!(st.snapshot("p", Some(T0)).await.unwrap(), before);
}

pub async fn late_success_does_not_undo_a_cooldown_or_a_disable(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    report(st, "a", Outcome::RateLimited, Some(5_000), T0).await;
    report(st, "b", Outcome::Unauthorized, None, T0).await;
    report(st, "c", Outcome::QuotaExhausted, None, T0).await;
    for k in ["a", "b", "c"] {
        report(st, k, Outcome::Success, None, T0 + 1).await;
    }
    assert_eq!(state_of(st, "a", T0 + 1).await.0, KeyState::Cooling);
    assert_eq!(state_of(st, "b", T0 + 1).await.0, KeyState::Disabled);
    assert_eq!(state_of(st, "c", T0 + 1).await.0, KeyState::Disabled);
}

pub async fn an_admin_disable_or_drain_is_never_undone_by_traffic(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    st.set_state("p", &kid("a"), AdminState::Disable)
        .await
        .unwrap();
    st.set_state("p", &kid("b"), AdminState::Drain)
        .await
        .unwrap();
    for o in Outcome::ALL {
        report(st, "a", o, Some(1), T0).await;
        report(st, "b", o, Some(1), T0).await;
    }
    assert_eq!(
        state_of(st, "a", T0 + 10_000_000).await,
        (KeyState::Disabled, "admin".into(), 0)
    );
    assert_eq!(
        state_of(st, "b", T0 + 10_000_000).await,
        (KeyState::Draining, "admin".into(), 0)
    );
    assert_eq!(selectable(st, T0 + 10_000_000).await, ["c"]);
}

pub async fn excluded_keys_are_never_selected(s: &Subject) {
    setup(
        s,
        &[("a", 5, "stable"), ("b", 1, "stable"), ("c", 3, "stable")],
    )
    .await;
    let st = &*s.store;
    let ex = [kid("a"), kid("c")];
    for i in 0..50u64 {
        let rand = i * ((1u64 << 53) / 50);
        match st
            .select("p", &req(rand, Route::Stable, &ex, T0))
            .await
            .unwrap()
        {
            Selection::Key(c) => assert_eq!(c.key.as_str(), "b"),
            other => panic!("{other:?}"),
        }
    }
    let all = [kid("a"), kid("b"), kid("c")];
    assert!(matches!(
        st.select("p", &req(7, Route::Stable, &all, T0))
            .await
            .unwrap(),
        Selection::None(_)
    ));
}

pub async fn draining_and_zero_weight_keys_are_not_selected(s: &Subject) {
    setup(
        s,
        &[("a", 1, "stable"), ("b", 0, "stable"), ("c", 1, "stable")],
    )
    .await;
    let st = &*s.store;
    assert_eq!(selectable(st, T0).await, ["a", "c"]);
    st.set_state("p", &kid("c"), AdminState::Drain)
        .await
        .unwrap();
    assert_eq!(selectable(st, T0).await, ["a"]);
    st.set_weight("p", &kid("a"), 0).await.unwrap();
    assert_eq!(selectable(st, T0).await, Vec::<String>::new());
    st.set_weight("p", &kid("b"), 7).await.unwrap();
    assert_eq!(selectable(st, T0).await, ["b"]);
}

pub async fn an_empty_pool_has_nothing_to_select_and_nothing_to_wait_for(s: &Subject) {
    setup(s, &[]).await;
    match s
        .store
        .select("p", &req(1, Route::Bucket(50), &[], T0))
        .await
        .unwrap()
    {
        Selection::None(u) => {
            assert_eq!(u.retry_at_ms, None);
            assert_eq!(u.counts.active, 0);
        }
        other => panic!("{other:?}"),
    }
}

pub async fn an_unknown_pool_is_an_error(s: &Subject) {
    let r = s
        .store
        .select("nope", &req(1, Route::Stable, &[], T0))
        .await;
    assert!(matches!(r, Err(StoreError::UnknownPool(_))), "{r:?}");
    setup(s, ABC).await;
    let r = s
        .store
        .set_state("p", &kid("zz"), AdminState::Disable)
        .await;
    assert!(matches!(r, Err(StoreError::UnknownKey(_))), "{r:?}");
}

pub async fn none_says_the_earliest_recovery_and_counts_each_state(s: &Subject) {
    setup(
        s,
        &[
            ("a", 1, "stable"),
            ("b", 1, "stable"),
            ("c", 1, "stable"),
            ("d", 1, "stable"),
        ],
    )
    .await;
    let st = &*s.store;
    report(st, "a", Outcome::RateLimited, Some(7_000), T0).await;
    report(st, "b", Outcome::RateLimited, Some(3_000), T0).await;
    report(st, "c", Outcome::Unauthorized, None, T0).await;
    st.set_state("p", &kid("d"), AdminState::Drain)
        .await
        .unwrap();
    match st
        .select("p", &req(1, Route::Stable, &[], T0 + 10))
        .await
        .unwrap()
    {
        Selection::None(u) => {
            assert_eq!(u.retry_at_ms, Some(T0 + 3_000));
            assert_eq!(u.now_ms, T0 + 10);
            assert_eq!(
                (
                    u.counts.cooling,
                    u.counts.disabled,
                    u.counts.draining,
                    u.counts.active
                ),
                (2, 1, 1, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    // Only revoked and drained keys left: nothing recovers by itself.
    st.set_state("p", &kid("a"), AdminState::Disable)
        .await
        .unwrap();
    st.set_state("p", &kid("b"), AdminState::Disable)
        .await
        .unwrap();
    match st
        .select("p", &req(1, Route::Stable, &[], T0 + 20))
        .await
        .unwrap()
    {
        Selection::None(u) => assert_eq!(u.retry_at_ms, None),
        other => panic!("{other:?}"),
    }
}

pub async fn a_success_announcing_zero_remaining_requests_cools_until_the_reset(s: &Subject) {
    setup(s, ABC).await;
    let st = &*s.store;
    assert_eq!(
        report(st, "a", Outcome::Success, Some(1_500), T0).await,
        KeyState::Cooling
    );
    assert_eq!(selectable(st, T0 + 1_499).await, ["b", "c"]);
    assert_eq!(selectable(st, T0 + 1_500).await, ["a", "b", "c"]);
}

pub async fn canary_routing_follows_percent_force_and_falls_back_to_stable(s: &Subject) {
    setup(s, &[("s1", 1, "stable"), ("c1", 1, "canary")]).await;
    let st = &*s.store;
    // The key, group and fallback flag a request on `route` gets at T0.
    let chosen = async |route: Route| match st.select("p", &req(1, route, &[], T0)).await.unwrap() {
        Selection::Key(c) => (c.key.to_string(), c.group, c.fallback),
        other => panic!("{other:?}"),
    };
    // Percent 0 (from config): every bucket is stable; forcing reaches the canary.
    assert_eq!(chosen(Route::Bucket(0)).await.0, "s1");
    assert_eq!(chosen(Route::Canary).await.0, "c1");
    st.set_canary("p", 30).await.unwrap();
    assert_eq!(chosen(Route::Bucket(29)).await.0, "c1");
    assert_eq!(chosen(Route::Bucket(30)).await.0, "s1");
    assert_eq!(chosen(Route::Stable).await.0, "s1");
    // The canary key cools: canary traffic falls back to stable, and says so.
    report(st, "c1", Outcome::RateLimited, Some(1_000), T0).await;
    let (k, g, fb) = chosen(Route::Bucket(0)).await;
    assert_eq!((k.as_str(), g.as_str(), fb), ("s1", "stable", true));
}

pub async fn canary_without_fallback_returns_none(s: &Subject) {
    let mut sp = spec("p", &[("s1", 1, "stable"), ("c1", 1, "canary")]);
    sp.canary_fallback = false;
    s.store.sync(&sp).await.unwrap();
    let st = &*s.store;
    report(st, "c1", Outcome::Unauthorized, None, T0).await;
    assert!(matches!(
        st.select("p", &req(1, Route::Canary, &[], T0))
            .await
            .unwrap(),
        Selection::None(_)
    ));
}

pub async fn admin_weight_and_group_changes_move_selection(s: &Subject) {
    setup(s, &[("a", 1, "stable"), ("b", 1, "stable")]).await;
    let st = &*s.store;
    st.set_group("p", &kid("b"), "canary").await.unwrap();
    assert_eq!(selectable(st, T0).await, ["a"]);
    match st
        .select("p", &req(1, Route::Canary, &[], T0))
        .await
        .unwrap()
    {
        Selection::Key(c) => assert_eq!((c.key.as_str(), c.fallback), ("b", false)),
        other => panic!("{other:?}"),
    }
    st.set_weight("p", &kid("a"), 0).await.unwrap();
    assert_eq!(selectable(st, T0).await, Vec::<String>::new());
    assert!(st.set_weight("p", &kid("a"), 1001).await.is_err());
    assert!(st.set_canary("p", 101).await.is_err());
    st.reset_counters("p", &kid("a")).await.unwrap();
}

pub async fn sync_keeps_live_state_follows_config_and_drains_removed_keys(s: &Subject) {
    let st = &*s.store;
    let v1 = spec("p", &[("a", 1, "stable"), ("b", 1, "stable")]);
    assert_eq!(
        st.sync(&v1).await.unwrap(),
        SyncReceipt::Synced {
            created: 2,
            updated: 0,
            removed: 0
        }
    );
    assert_eq!(st.sync(&v1).await.unwrap(), SyncReceipt::Unchanged);
    report(st, "a", Outcome::RateLimited, Some(50_000), T0).await;
    report(st, "b", Outcome::Unauthorized, None, T0).await;
    // A restart of every replica (same config, sync again) keeps the live state.
    let mut v1b = v1.clone();
    v1b.policy.quota_cooldown_ms += 1; // a new fingerprint forces the script to run
    st.sync(&v1b).await.unwrap();
    assert_eq!(state_of(st, "a", T0 + 1).await.0, KeyState::Cooling);
    assert_eq!(state_of(st, "b", T0 + 1).await.0, KeyState::Disabled);
    // New config: a's weight changes, b is removed, c joins.
    let v2 = spec("p", &[("a", 4, "stable"), ("c", 2, "stable")]);
    assert_eq!(
        st.sync(&v2).await.unwrap(),
        SyncReceipt::Synced {
            created: 1,
            updated: 1,
            removed: 1
        }
    );
    let snap = st.snapshot("p", Some(T0 + 60_000)).await.unwrap();
    let by: HashMap<_, _> = snap.keys.iter().map(|k| (k.id.as_str(), k)).collect();
    assert_eq!(by["a"].weight, 4);
    assert_eq!(
        (by["b"].status, by["b"].reason.as_str()),
        (KeyState::Draining, "removed")
    );
    assert_eq!(selectable(st, T0 + 60_000).await, ["a", "c"]);
    // An operator's weight survives a re-sync of unchanged config values...
    st.set_weight("p", &kid("c"), 9).await.unwrap();
    let mut v2b = v2.clone();
    v2b.policy.probe_lease_ms += 1;
    st.sync(&v2b).await.unwrap();
    let snap = st.snapshot("p", Some(T0 + 60_000)).await.unwrap();
    assert_eq!(snap.keys.iter().find(|k| k.id == "c").unwrap().weight, 9);
}

/// A plan from the canary key `new` to the stable key `old`, as the rotation driver makes it
/// with the default `[pools.rotation]`.
pub(crate) fn plan(new: &str, old: &str) -> PlanSpec {
    plan_spec(
        &RotationConfig::default(),
        vec![new.into()],
        vec![old.into()],
    )
}

/// Every rotation operation through `apply`, with the typed reply each store decodes (the
/// plan's clock is the store's own, so only orders and fences are compared).
pub async fn a_rotation_plan_is_started_driven_only_by_its_lease_holder_and_read_back(s: &Subject) {
    setup(s, &[("old", 1, "stable"), ("new", 1, "canary")]).await;
    let st = &*s.store;
    let spec = plan("new", "old");
    assert!(matches!(
        st.rotation_start("nope", &spec).await,
        Err(StoreError::UnknownPool(_))
    ));
    let wrong = st.rotation_start("p", &plan("old", "new")).await.unwrap();
    assert!(
        matches!(&wrong, StartReply::BadKey { key, .. } if key == "old"),
        "{wrong:?}"
    );
    assert_eq!(st.rotation_read("p").await.unwrap().plan, None);
    let first = spec.steps[0];
    assert_eq!(
        st.rotation_start("p", &spec).await.unwrap(),
        StartReply::Started { percent: first }
    );
    assert_eq!(
        st.rotation_start("p", &spec).await.unwrap(),
        StartReply::Busy(PlanState::Running)
    );
    assert_eq!(st.snapshot("p", None).await.unwrap().canary_percent, first);
    // One replica takes the lease; another is told who holds it.
    let LeaseReply::Held { fence, .. } = st.rotation_lease("p", "r-a", 0, 60_000).await.unwrap()
    else {
        panic!("no lease taken");
    };
    let other = st.rotation_lease("p", "r-b", 0, 60_000).await.unwrap();
    assert!(
        matches!(&other, LeaseReply::Other(l) if l.holder == "r-a" && l.fence == fence),
        "{other:?}"
    );
    // Counts are kept for the current step only.
    let deltas = [("canary:requests".to_string(), 3)];
    assert_eq!(
        st.rotation_stats("p", 1, &deltas).await.unwrap(),
        StatsReply { applied: false }
    );
    assert_eq!(
        st.rotation_stats("p", 0, &deltas).await.unwrap(),
        StatsReply { applied: true }
    );
    // Only the holder's write with its fence changes the plan.
    let advance = |replica: &str, fence| PlanWrite {
        replica: replica.into(),
        fence,
        canary: Some(25),
        event: "advance".into(),
        detail: "to 25".into(),
        step: Some(1),
        restart_step: true,
        ..PlanWrite::default()
    };
    assert_eq!(
        st.rotation_write("p", &advance("r-b", fence + 1))
            .await
            .unwrap(),
        WriteReply::Fenced {
            fence,
            holder: "r-a".into()
        }
    );
    assert_eq!(st.snapshot("p", None).await.unwrap().canary_percent, first);
    assert_eq!(
        st.rotation_write("p", &advance("r-a", fence))
            .await
            .unwrap(),
        WriteReply::Ok
    );
    assert_eq!(st.snapshot("p", None).await.unwrap().canary_percent, 25);
    let view = st.rotation_read("p").await.unwrap();
    let p = view.plan.as_ref().expect("a plan");
    assert_eq!((&p.spec, p.state, p.step), (&spec, PlanState::Running, 1));
    assert_eq!(
        (view.lease.holder.as_str(), view.lease.fence),
        ("r-a", fence)
    );
    assert_eq!(view.counts_of(0, "canary").requests, 3);
    let events: Vec<(&str, &str)> = view
        .history
        .iter()
        .map(|h| (h.replica.as_str(), h.event.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            ("r-a", "advance"),
            ("r-b", "refused"),
            ("r-a", "lease"),
            ("admin", "start")
        ]
    );
    // An operator pauses (no lease while paused), resumes and aborts; an aborted plan stays so.
    let control = |action| st.rotation_control("p", action, "operator");
    assert_eq!(
        control(Control::Pause).await.unwrap(),
        ControlReply::Controlled(PlanState::Paused)
    );
    assert_eq!(
        st.rotation_lease("p", "r-a", fence, 60_000).await.unwrap(),
        LeaseReply::Idle
    );
    assert_eq!(
        control(Control::Resume).await.unwrap(),
        ControlReply::Controlled(PlanState::Running)
    );
    assert_eq!(
        control(Control::Abort).await.unwrap(),
        ControlReply::Controlled(PlanState::Aborted)
    );
    assert_eq!(st.snapshot("p", None).await.unwrap().canary_percent, 0);
    assert_eq!(
        control(Control::Resume).await.unwrap(),
        ControlReply::BadState(PlanState::Aborted)
    );
}

conformance!(
    rate_limited_key_cools_until_retry_after_then_recovers,
    rate_limited_without_hint_backs_off_exponentially_up_to_the_max,
    recooling_extends_a_deadline_and_never_shortens_it,
    retry_after_is_clamped_to_the_pool_max,
    quota_exhaustion_disables_until_the_quota_cooldown,
    unauthorized_disables_until_an_operator_enables,
    an_unconfirmed_401_benches_and_the_probes_401_disables,
    a_benched_key_whose_probe_succeeds_is_active_again,
    a_probe_answer_never_touches_a_key_that_is_no_longer_benched,
    server_errors_open_the_breaker_at_the_threshold_within_the_window,
    a_success_resets_the_error_count,
    half_open_allows_one_probe_at_a_time_and_success_reactivates,
    a_failed_probe_reopens_with_doubled_time,
    a_probe_lease_expires_when_its_replica_never_reports,
    a_client_error_changes_nothing,
    late_success_does_not_undo_a_cooldown_or_a_disable,
    an_admin_disable_or_drain_is_never_undone_by_traffic,
    excluded_keys_are_never_selected,
    draining_and_zero_weight_keys_are_not_selected,
    an_empty_pool_has_nothing_to_select_and_nothing_to_wait_for,
    an_unknown_pool_is_an_error,
    none_says_the_earliest_recovery_and_counts_each_state,
    a_success_announcing_zero_remaining_requests_cools_until_the_reset,
    canary_routing_follows_percent_force_and_falls_back_to_stable,
    canary_without_fallback_returns_none,
    admin_weight_and_group_changes_move_selection,
    sync_keeps_live_state_follows_config_and_drains_removed_keys,
    a_rotation_plan_is_started_driven_only_by_its_lease_holder_and_read_back,
);
