use super::*;
use crate::store::KeySuccesses;

fn kid(s: &str) -> KeyId {
    KeyId::new(s).unwrap()
}

fn every_op(key: &KeyId) -> Vec<Op<'_>> {
    vec![
        Op::Report(Report {
            key,
            outcome: crate::pool::Outcome::Success,
            cooldown_ms: None,
            http_status: 200,
            probe: false,
            now_ms: Some(7),
        }),
        Op::Successes(SuccessBatch {
            keys: &[],
            hints: &[],
            ended: &[],
            now_ms: Some(8),
        }),
        Op::SetState {
            key,
            state: AdminState::Drain,
        },
        Op::SetWeight { key, weight: 3 },
        Op::SetGroup {
            key,
            group: "canary",
        },
        Op::SetCanary { percent: 5 },
        Op::Reset { key },
    ]
}

#[test]
fn op_names_are_the_store_metric_labels_dashboards_read() {
    let k = kid("a");
    let names: Vec<&str> = every_op(&k).iter().map(Op::name).collect();
    assert_eq!(
        names,
        [
            "report",
            "report_batch",
            "set_state",
            "set_weight",
            "set_group",
            "set_canary",
            "reset"
        ]
    );
}

#[test]
fn an_op_names_its_key_and_its_virtual_clock() {
    let k = kid("a");
    let ops = every_op(&k);
    let keyed: Vec<bool> = ops.iter().map(|op| op.key() == Some(&k)).collect();
    assert_eq!(keyed, [true, false, true, true, true, false, true]);
    let clocks: Vec<Option<u64>> = ops.iter().map(Op::now_ms).collect();
    assert_eq!(clocks, [Some(7), Some(8), None, None, None, None, None]);
}

#[test]
fn a_weight_above_1000_or_a_percent_above_100_is_refused_naming_the_field() {
    let k = kid("a");
    let weight = Op::SetWeight {
        key: &k,
        weight: 1001,
    }
    .validate();
    assert!(
        matches!(&weight, Err(StoreError::InvalidArgument(m)) if m.contains("weight")),
        "{weight:?}"
    );
    let percent = Op::SetCanary { percent: 101 }.validate();
    assert!(
        matches!(&percent, Err(StoreError::InvalidArgument(m)) if m.contains("percent")),
        "{percent:?}"
    );
    for op in every_op(&k) {
        assert!(op.validate().is_ok(), "{op:?}");
    }
    let batch = [KeySuccesses {
        key: k.clone(),
        count: 1,
        http_status: 200,
        age_ms: 0,
    }];
    let full = Op::Successes(SuccessBatch {
        keys: &batch,
        hints: &[],
        ended: &[],
        now_ms: None,
    });
    assert!(full.validate().is_ok());
}

#[test]
fn a_receipt_unpacks_to_its_own_answer_and_refuses_another() {
    let report = ReportReceipt {
        state: KeyState::Cooling,
        changed: true,
        cooldown_until_ms: 9,
        now_ms: 1,
    };
    assert_eq!(
        Receipt::Report(report.clone()).into_report().unwrap(),
        report
    );
    assert_eq!(
        Receipt::State(KeyState::Draining).into_state().unwrap(),
        KeyState::Draining
    );
    assert!(Receipt::Done.into_done().is_ok());
    let batch = BatchReceipt {
        applied: 2,
        held: 1,
        now_ms: 3,
    };
    assert_eq!(Receipt::Successes(batch).into_successes().unwrap(), batch);
    for wrong in [
        Receipt::Done.into_report().map(|_| ()),
        Receipt::Done.into_successes().map(|_| ()),
        Receipt::Done.into_state().map(|_| ()),
        Receipt::State(KeyState::Active).into_done(),
    ] {
        assert!(matches!(wrong, Err(StoreError::Script(_))), "{wrong:?}");
    }
}
