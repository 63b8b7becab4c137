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
