use super::*;
use crate::store::{KeySuccesses, ReportReceipt, SuccessBatch};

fn kid(s: &str) -> KeyId {
    KeyId::new(s).unwrap()
}

fn report(key: &KeyId, outcome: Outcome, cooldown_ms: Option<u64>) -> Op<'_> {
    Op::Report(Report {
        key,
        outcome,
        cooldown_ms,
        http_status: 429,
        probe: false,
        now_ms: None,
    })
}

fn answered(state: KeyState, cooldown_until_ms: u64, now_ms: u64) -> Receipt {
    Receipt::Report(ReportReceipt {
        state,
        changed: true,
        cooldown_until_ms,
        now_ms,
    })
}

#[test]
fn a_cooldown_memory_set_is_replayed_with_the_time_it_has_left() {
    let k = kid("a");
    let op = report(&k, Outcome::RateLimited, Some(30_000));
    let learned = OwnedOp::learned(&op, &answered(KeyState::Cooling, 31_000, 1_000)).unwrap();
    let Some(Op::Report(again)) = learned.as_op(11_000) else {
        panic!("{learned:?} replays no report");
    };
    assert_eq!(again.key, &k);
    assert_eq!(again.outcome, Outcome::RateLimited);
    assert_eq!(again.cooldown_ms, Some(20_000));
    assert_eq!(again.now_ms, None, "replayed on the store's clock");
    assert!(learned.as_op(31_000).is_none(), "a cooldown that ended");
}

#[test]
fn a_client_error_a_plain_success_and_a_batch_leave_nothing_to_journal() {
    let k = kid("a");
    let active = answered(KeyState::Active, 0, 1_000);
    for op in [
        report(&k, Outcome::ClientError, None),
        report(&k, Outcome::Success, None),
    ] {
        assert!(OwnedOp::learned(&op, &active).is_none(), "{op:?}");
    }
    let keys = [KeySuccesses {
        key: k.clone(),
        count: 3,
        http_status: 200,
        age_ms: 0,
    }];
    let batch = Op::Successes(SuccessBatch {
        keys: &keys,
        hints: &[],
        ended: &[],
        now_ms: None,
    });
    let receipt = Receipt::Successes(crate::store::BatchReceipt {
        applied: 1,
        held: 0,
        now_ms: 1_000,
    });
    assert!(OwnedOp::learned(&batch, &receipt).is_none());
}

#[test]
fn an_unauthorized_key_is_replayed_as_a_disable_without_a_deadline() {
    let k = kid("a");
    let op = report(&k, Outcome::Unauthorized, None);
    let learned = OwnedOp::learned(&op, &answered(KeyState::Disabled, 0, 1_000)).unwrap();
    let Some(Op::Report(again)) = learned.as_op(u64::MAX) else {
        panic!("{learned:?} replays no report");
    };
    assert_eq!(
        (again.outcome, again.cooldown_ms),
        (Outcome::Unauthorized, None)
    );
}

#[test]
fn admin_changes_are_replayed_as_they_were_made() {
    let k = kid("a");
    let ops = [
        Op::SetState {
            key: &k,
            state: AdminState::Drain,
        },
        Op::SetWeight { key: &k, weight: 7 },
        Op::SetGroup {
            key: &k,
            group: "canary",
        },
        Op::SetCanary { percent: 30 },
        Op::Reset { key: &k },
    ];
    for op in ops {
        let learned = OwnedOp::learned(&op, &Receipt::Done).unwrap();
        let again = learned.as_op(0).unwrap();
        assert_eq!(format!("{again:?}"), format!("{op:?}"));
    }
}

#[test]
fn a_lost_pool_gets_back_its_disables_cooldowns_weights_and_groups() {
    let k = kid("a");
    let rec = |status, reason: &str, until| KeyRecord {
        id: "a".into(),
        status,
        reason: reason.into(),
        weight: 1,
        group: "stable".into(),
        errors: 0,
        strikes: 0,
        cooldown_until_ms: until,
        last_status: 0,
        last_used_ms: 0,
        successes: 0,
        failures: 0,
        budget: None,
    };
    let names = |ops: Vec<OwnedOp>| -> Vec<String> {
        ops.iter()
            .filter_map(|o| o.as_op(1_000).map(|op| op.name().to_string()))
            .collect()
    };
    let admin = record_writes(&k, &rec(KeyState::Disabled, "admin", 0), 1, "stable", 1_000);
    assert_eq!(names(admin), ["set_state"]);
    let cooling = record_writes(
        &k,
        &rec(KeyState::Cooling, "rate_limited", 5_000),
        1,
        "stable",
        1_000,
    );
    assert_eq!(names(cooling), ["report"]);
    let ended = record_writes(
        &k,
        &rec(KeyState::Cooling, "rate_limited", 900),
        1,
        "stable",
        1_000,
    );
    assert!(ended.is_empty());
    let moved = record_writes(&k, &rec(KeyState::Active, "", 0), 3, "canary", 1_000);
    assert_eq!(names(moved), ["set_weight", "set_group"]);
}
