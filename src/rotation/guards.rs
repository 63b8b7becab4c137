//! What the driver decides at each evaluation of a running plan, from the cluster-wide counts of
//! the current step. Pure: no I/O, no clock of its own.

use crate::metrics::steps::BUCKETS_MS;
use crate::store::rotation::plan::{Plan, StepCounts};

/// The decision for a running plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Stay at this step; why, for `rotate status` and `--dry-run`.
    Wait(String),
    /// Move to the next step.
    Advance { to_step: usize, percent: u8 },
    /// The last step (100%) held: move the new keys to stable and retire the old ones.
    Finish,
    /// The canary did worse than a guard allows.
    Rollback(String),
}

/// How a new key stands, as far as the guards care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKeyState {
    pub id: String,
    /// Taken out by the provider's answer: the key's reason (`unauthorized`, `quota`, or
    /// `auth_unconfirmed` while keygate's own probe confirms a 401/403); `None` otherwise.
    pub revoked: Option<String>,
    /// Its breaker opened (`open`, `half_open`): it failed `breaker_errors` times in the window,
    /// and the canary's traffic now falls back to stable, so its error ratio stops growing.
    pub broken: bool,
}

/// The error ratio of a group's counts (0 with no requests).
pub fn error_ratio(c: &StepCounts) -> f64 {
    if c.requests == 0 {
        0.0
    } else {
        c.errors as f64 / c.requests as f64
    }
}

/// The p99 latency from the bucket counts: the upper bound of the bucket holding the 99th
/// percentile (the overflow bucket counts as twice the last bound); `None` with no requests.
pub fn p99_ms(c: &StepCounts) -> Option<u64> {
    let n: u64 = c.latency.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = (n * 99).div_ceil(100);
    let mut seen = 0;
    for (i, count) in c.latency.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let last = BUCKETS_MS[BUCKETS_MS.len() - 1];
            return Some(BUCKETS_MS.get(i).copied().unwrap_or(last * 2));
        }
    }
    None
}

/// Evaluates `plan` at `now_ms` with the step's counts of the canary and stable groups.
pub fn evaluate(
    plan: &Plan,
    now_ms: u64,
    canary: &StepCounts,
    stable: &StepCounts,
    new_keys: &[NewKeyState],
) -> Decision {
    let spec = &plan.spec;
    if let Some((k, why)) = new_keys.iter().find_map(|k| Some((k, k.revoked.as_ref()?))) {
        return Decision::Rollback(format!(
            "new key {} was taken out by the provider's answer ({why})",
            k.id
        ));
    }
    if let Some(k) = new_keys.iter().find(|k| k.broken) {
        return Decision::Rollback(format!(
            "new key {}'s breaker opened after repeated errors (error ratio {:.3})",
            k.id,
            error_ratio(canary)
        ));
    }
    if canary.auth_errors > 0 {
        return Decision::Rollback(format!(
            "the canary got {} unauthorized or quota answers",
            canary.auth_errors
        ));
    }
    let (ce, se) = (error_ratio(canary), error_ratio(stable));
    // Errors are judged as soon as there is a minimum of evidence, not only at the step's end:
    // a failing key is rolled back within one evaluation period.
    let evidence = spec.min_requests.clamp(1, 20);
    if canary.requests >= evidence && ce > se + spec.max_error_increase {
        return Decision::Rollback(format!(
            "canary error ratio {ce:.3} against stable {se:.3} (allowed +{})",
            spec.max_error_increase
        ));
    }
    if canary.requests >= spec.min_requests && stable.requests >= spec.min_requests {
        if let (Some(cp), Some(sp)) = (p99_ms(canary), p99_ms(stable)) {
            let allowed = (sp as f64 * spec.max_p99_ratio) as u64 + spec.p99_slack_ms;
            if cp > allowed {
                return Decision::Rollback(format!(
                    "canary p99 {cp} ms against stable {sp} ms (allowed {allowed} ms)"
                ));
            }
        }
    }
    let dwell = now_ms.saturating_sub(plan.step_started_ms);
    if dwell < spec.min_dwell_ms {
        return Decision::Wait(format!(
            "step {}% has dwelt {} of {} ms",
            plan.percent(),
            dwell,
            spec.min_dwell_ms
        ));
    }
    if canary.requests < spec.min_requests {
        return Decision::Wait(format!(
            "step {}% has {} of {} canary requests",
            plan.percent(),
            canary.requests,
            spec.min_requests
        ));
    }
    match spec.steps.get(plan.step + 1) {
        Some(&percent) => Decision::Advance {
            to_step: plan.step + 1,
            percent,
        },
        None => Decision::Finish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rotation::plan::{PlanSpec, PlanState};

    fn plan(step: usize, started: u64) -> Plan {
        Plan {
            spec: PlanSpec {
                id: "p".into(),
                new_keys: vec!["new".into()],
                old_keys: vec!["old".into()],
                steps: vec![5, 25, 50, 100],
                min_requests: 10,
                min_dwell_ms: 1000,
                max_error_increase: 0.05,
                max_p99_ratio: 2.0,
                p99_slack_ms: 50,
                auto_for: String::new(),
            },
            state: PlanState::Running,
            step,
            step_started_ms: started,
            reason: String::new(),
            started_ms: 0,
            updated_ms: 0,
        }
    }

    fn counts(requests: u64, errors: u64, bucket: usize) -> StepCounts {
        let mut latency = vec![0; BUCKETS_MS.len() + 1];
        latency[bucket] = requests;
        StepCounts {
            requests,
            errors,
            auth_errors: 0,
            latency,
        }
    }

    #[test]
    fn a_healthy_step_advances_after_its_dwell_and_requests() {
        let p = plan(1, 0);
        let ok = counts(10, 0, 2);
        assert!(matches!(
            evaluate(&p, 999, &ok, &ok, &[]),
            Decision::Wait(_)
        ));
        assert!(matches!(
            evaluate(&p, 1000, &counts(9, 0, 2), &ok, &[]),
            Decision::Wait(_)
        ));
        assert_eq!(
            evaluate(&p, 1000, &ok, &ok, &[]),
            Decision::Advance {
                to_step: 2,
                percent: 50
            }
        );
        assert_eq!(evaluate(&plan(3, 0), 1000, &ok, &ok, &[]), Decision::Finish);
    }

    #[test]
    fn errors_roll_back_before_the_dwell_is_over() {
        let p = plan(1, 0);
        let d = evaluate(&p, 10, &counts(10, 5, 2), &counts(10, 0, 2), &[]);
        assert!(matches!(d, Decision::Rollback(_)), "{d:?}");
        // Within the allowed increase: no rollback.
        let d = evaluate(&p, 10, &counts(100, 6, 2), &counts(100, 2, 2), &[]);
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
    }

    #[test]
    fn auth_answers_and_revoked_keys_roll_back_at_once() {
        let p = plan(0, 0);
        let mut c = counts(1, 0, 2);
        c.auth_errors = 1;
        assert!(matches!(
            evaluate(&p, 0, &c, &counts(0, 0, 0), &[]),
            Decision::Rollback(_)
        ));
        for (revoked, broken) in [(Some("unauthorized".to_string()), false), (None, true)] {
            let keys = [NewKeyState {
                id: "new".into(),
                revoked,
                broken,
            }];
            assert!(matches!(
                evaluate(&p, 0, &counts(0, 0, 0), &counts(0, 0, 0), &keys),
                Decision::Rollback(_)
            ));
        }
    }

    #[test]
    fn a_slow_canary_rolls_back_once_both_groups_have_enough_requests() {
        let p = plan(1, 0);
        // Canary in the 1000 ms bucket, stable in the 25 ms bucket.
        let d = evaluate(&p, 5000, &counts(10, 0, 7), &counts(10, 0, 2), &[]);
        assert!(matches!(d, Decision::Rollback(_)), "{d:?}");
        assert_eq!(p99_ms(&counts(10, 0, 7)), Some(1000));
        assert_eq!(p99_ms(&counts(0, 0, 0)), None);
    }
}
