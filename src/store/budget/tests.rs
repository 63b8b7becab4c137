//! The budget arithmetic's unit tests: spacing, settlement, provider hints.

use super::*;

#[test]
fn a_provider_with_less_headroom_moves_the_schedule_later_and_never_earlier() {
    let mut b = rpm(60);
    let h = ProviderHints {
        remaining_requests: Some(9),
        reset_requests_ms: Some(20_000),
        ..ProviderHints::default()
    };
    b.learn(&h, 1_000, false, 0);
    // 9 left (+1 slack) until the reset in 20 s: the last 10 intervals of it.
    assert_eq!(b.tat_r, 1_000 + 20_000 - 10 * 1_010);
    let plenty = ProviderHints {
        remaining_requests: Some(59),
        ..ProviderHints::default()
    };
    b.learn(&plenty, 2_000, false, 0);
    assert_eq!(
        b.tat_r, 10_900,
        "more headroom than keygate's changes nothing"
    );
    // Without a reset, a provider limit tells how soon the spent part refills: 1 of 10,000
    // spent refills in 6 ms, far less than one of keygate's intervals.
    let full = ProviderHints {
        remaining_requests: Some(9_999),
        limit_requests: Some(10_000),
        ..ProviderHints::default()
    };
    let mut fast = rpm(1_000_000);
    fast.learn(&full, 5_000, false, 0);
    assert_eq!(fast.tat_r, 5_000);
}

#[test]
fn announced_limits_fill_in_only_what_the_config_leaves_unset_and_only_when_learning() {
    let h = ProviderHints {
        limit_requests: Some(30),
        limit_tokens: Some(5_000),
        ..ProviderHints::default()
    };
    let mut b = rpm(60);
    b.learn(&h, 0, false, 1_000);
    assert!(b.learned.is_empty());
    b.learn(&h, 0, true, 1_000);
    assert_eq!(
        b.learned,
        Learned { rpm: 0, tpm: 5_000 },
        "rpm is configured"
    );
    assert_eq!((b.effective().rpm, b.effective().tpm), (60, 5_000));
    let mut small = KeyBudget::default();
    small.learn(&h, 0, true, 8_192);
    assert_eq!(
        small.learned,
        Learned { rpm: 30, tpm: 0 },
        "a tpm below one request is no budget"
    );
}

fn rpm(n: u64) -> KeyBudget {
    KeyBudget {
        limits: KeyLimits {
            rpm: n,
            ..KeyLimits::default()
        },
        ..KeyBudget::default()
    }
}

fn tpm(n: u64) -> KeyBudget {
    KeyBudget {
        limits: KeyLimits {
            tpm: n,
            ..KeyLimits::default()
        },
        ..KeyBudget::default()
    }
}

#[test]
fn rpm_spacing_bounds_every_minute_window() {
    let mut b = rpm(60);
    let mut starts = Vec::new();
    let mut now = 1_000;
    for _ in 0..200 {
        let h = b.headroom(now);
        let start = h.at.max(now);
        b.spend(start, 0, 0, None);
        starts.push(start);
        now = start + 7;
    }
    for (i, s) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().take_while(|t| **t < s + 60_000).count();
        assert!(in_window <= 60, "{in_window} starts in the minute from {s}");
    }
}

#[test]
fn settle_credits_never_before_now() {
    let mut b = tpm(10_000);
    b.spend(100, 1000, 0, None);
    assert_eq!(b.tat_t, 100 + 6060);
    b.settle(-100_000, 0, 500);
    assert_eq!(b.tat_t, 500);
}

#[test]
fn settling_less_leaves_a_schedule_at_or_before_now_where_it_is() {
    let mut b = tpm(10_000);
    b.spend(100, 1000, 0, None);
    let tat = b.tat_t;
    // Settled after the schedule passed: it stays (not pulled up to now)...
    b.settle(-500, 0, tat + 2_000);
    assert_eq!(b.tat_t, tat);
    // ...while using more still books from now on.
    b.settle(100, 0, tat + 2_000);
    assert_eq!(b.tat_t, tat + 2_000 + 606);
}

#[test]
fn hints_that_bind_keep_only_what_moves_a_configured_schedule() {
    let limits = KeyLimits {
        rpm: 60,
        tpm: 100_000,
        ..KeyLimits::default()
    };
    // What OpenAI and the bundled mock announce on nearly every answer: plenty left.
    let plenty = ProviderHints {
        remaining_requests: Some(59),
        reset_requests_ms: Some(1_000),
        remaining_tokens: Some(99_000),
        reset_tokens_ms: Some(600),
        limit_requests: Some(60),
        limit_tokens: Some(100_000),
    };
    assert!(plenty.that_bind(&limits, 1_000).is_empty());
    // 9 requests left for 20 s is fewer than 60 rpm would start: kept, the tokens dropped.
    let few = ProviderHints {
        remaining_requests: Some(9),
        reset_requests_ms: Some(20_000),
        ..plenty
    };
    let kept = few.that_bind(&limits, 1_000);
    assert_eq!(
        (
            kept.remaining_requests,
            kept.reset_requests_ms,
            kept.limit_requests
        ),
        (Some(9), Some(20_000), Some(60))
    );
    assert_eq!((kept.remaining_tokens, kept.limit_tokens), (None, None));
    // A dimension the config leaves unset is kept whole: its limit may be learned.
    let unset = KeyLimits {
        rpm: 60,
        ..KeyLimits::default()
    };
    let kept = plenty.that_bind(&unset, 1_000);
    assert_eq!(kept.remaining_requests, None);
    assert_eq!(
        (
            kept.remaining_tokens,
            kept.reset_tokens_ms,
            kept.limit_tokens
        ),
        (Some(99_000), Some(600), Some(100_000))
    );
}

mod hints_that_bind {
    use super::*;
    use proptest::prelude::*;

    fn opt(max: u64) -> impl Strategy<Value = Option<u64>> {
        prop_oneof![Just(None), (0..max).prop_map(Some)]
    }

    fn hints() -> impl Strategy<Value = ProviderHints> {
        (
            opt(2_000),
            opt(120_000),
            opt(2_000_000),
            opt(120_000),
            opt(20_000),
            opt(4_000_000),
        )
            .prop_map(|(rr, rsr, rt, rst, lr, lt)| ProviderHints {
                remaining_requests: rr,
                reset_requests_ms: rsr,
                remaining_tokens: rt,
                reset_tokens_ms: rst,
                limit_requests: lr,
                limit_tokens: lt,
            })
    }

    proptest! {
        /// Learning the filtered hints leaves a budget as learning them all would, but for a
        /// schedule moved to the answer's arrival, a moment already past (every reader takes a
        /// schedule in the past as now). `near` moves each announced reset to within a few ms
        /// of what the remaining count lasts at the configured pace, where the two answers
        /// part; schedules start at or before the arrival, where a move shows.
        #[test]
        fn learning_what_binds_is_learning_everything(
            mut h in hints(),
            rpm in prop_oneof![Just(0u64), 1..200_000u64],
            tpm in prop_oneof![Just(0u64), 1..20_000_000u64],
            near in proptest::option::of(proptest::array::uniform2(-3i64..=3)),
            back in proptest::array::uniform2(0..200u64),
            seen in 1_000..100_000u64,
            learn in any::<bool>(),
            max_request in 1..10_000u64,
        ) {
            if let Some([dr, dt]) = near {
                let at = |free: u64, d: i64| Some(free.saturating_add_signed(d));
                if let (Some(r), true) = (h.remaining_requests, rpm > 0) {
                    h.reset_requests_ms = at((r + 1) * MINUTE_MS.div_ceil(rpm), dr);
                }
                if let (Some(r), true) = (h.remaining_tokens, tpm > 0) {
                    h.reset_tokens_ms = at((r + max_request) * MINUTE_MS / tpm, dt);
                }
            }
            let limits = KeyLimits { rpm, tpm, ..KeyLimits::default() };
            let b = KeyBudget {
                limits,
                tat_r: seen - back[0],
                tat_t: seen - back[1],
                ..KeyBudget::default()
            };
            let (mut all, mut bound) = (b.clone(), b);
            all.learn(&h, seen, learn, max_request);
            bound.learn(&h.that_bind(&limits, max_request), seen, learn, max_request);
            prop_assert_eq!(all.learned, bound.learned);
            let past = |t: u64| t <= seen;
            for (a, f) in [(all.tat_r, bound.tat_r), (all.tat_t, bound.tat_t)] {
                prop_assert!(a == f || (past(a) && past(f)), "{} against {}", a, f);
            }
        }
    }
}
