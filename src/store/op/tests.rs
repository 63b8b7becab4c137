use super::*;
use crate::store::rotation::PlanState;
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

/// One of each rotation op, borrowing `spec` and `write`.
fn rotation_ops<'a>(spec: &'a PlanSpec, write: &'a PlanWrite) -> Vec<Op<'a>> {
    vec![
        Op::RotationStart(spec),
        Op::RotationControl {
            action: Control::Pause,
            reason: "look",
        },
        Op::RotationLease {
            replica: "r-1",
            fence: 0,
            lease_ms: 1_000,
        },
        Op::RotationWrite(write),
        Op::RotationStats {
            step: 0,
            deltas: &[],
        },
        Op::RotationRead,
    ]
}

#[test]
fn rotation_ops_keep_their_metric_labels_and_are_the_only_ones_kept_from_memory() {
    let spec = PlanSpec::example("new", "old");
    let write = PlanWrite::default();
    let ops = rotation_ops(&spec, &write);
    let names: Vec<&str> = ops.iter().map(Op::name).collect();
    assert_eq!(
        names,
        [
            "rotation_start",
            "rotation_control",
            "rotation_lease",
            "rotation_write",
            "rotation_stats",
            "rotation_read"
        ]
    );
    for op in &ops {
        assert!(op.is_rotation(), "{op:?}");
        assert_eq!((op.key(), op.now_ms()), (None, None), "{op:?}");
        assert!(op.validate().is_ok(), "{op:?}");
    }
    let k = kid("a");
    assert!(every_op(&k).iter().all(|op| !op.is_rotation()));
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
    assert_eq!(
        Receipt::RotationLease(LeaseReply::Idle)
            .into_lease()
            .unwrap(),
        LeaseReply::Idle
    );
    assert_eq!(
        Receipt::RotationControl(ControlReply::BadState(PlanState::Done))
            .into_control()
            .unwrap(),
        ControlReply::BadState(PlanState::Done)
    );
    let view = RotationView::default();
    assert_eq!(
        *Receipt::RotationView(Box::new(view.clone()))
            .into_view()
            .unwrap(),
        view
    );
    for wrong in [
        Receipt::Done.into_report().map(|_| ()),
        Receipt::Done.into_successes().map(|_| ()),
        Receipt::Done.into_state().map(|_| ()),
        Receipt::State(KeyState::Active).into_done(),
        Receipt::RotationWrite(WriteReply::Ok)
            .into_start()
            .map(|_| ()),
        Receipt::RotationStats(StatsReply { applied: true })
            .into_write()
            .map(|_| ()),
        Receipt::Done.into_view().map(|_| ()),
    ] {
        assert!(matches!(wrong, Err(StoreError::Script(_))), "{wrong:?}");
    }
}
