//! Script replies, decoded: every script but `rotation_read` and `select` answers a flat array
//! of words (see the reply line at the top of each `lua/*.lua`; `select` answers one line of
//! words per request, all in one string), read here and nowhere else into typed
//! answers: a [`Receipt`] per [`Op`], a [`Selection`], a [`SyncReceipt`], a snapshot page.

use std::collections::BTreeMap;

use redis::Value;

use crate::pool::{KeyId, KeyState};
use crate::store::rotation::plan::{
    counts_from_fields, plan_from_fields, ControlReply, HistoryEntry, LeaseInfo, LeaseReply,
    PlanState, RotationView, StartReply, StatsReply, WriteReply,
};
use crate::store::{
    BatchReceipt, Chosen, KeyRecord, Op, Receipt, ReportReceipt, Selection, StateCounts,
    StoreError, SyncReceipt, Unavailable,
};

/// A script reply flattened to strings (Lua numbers arrive as integers, strings as bulk).
pub(super) fn words(v: Value) -> Result<Vec<String>, StoreError> {
    let items = match v {
        Value::Array(items) => items,
        other => vec![other],
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::Int(i) => Ok(i.to_string()),
            Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Value::SimpleString(s) => Ok(s),
            Value::Okay => Ok("OK".into()),
            Value::Nil => Ok(String::new()),
            other => Err(StoreError::Script(format!("unexpected reply {other:?}"))),
        })
        .collect()
}

fn num<T: std::str::FromStr>(w: &[String], i: usize) -> Result<T, StoreError> {
    w.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Script(format!("bad reply field {i}: {w:?}")))
}

pub(super) fn now_arg(now: Option<u64>) -> String {
    now.unwrap_or(0).to_string()
}

/// The reply of the script an [`Op`] runs, as that op's [`Receipt`]: the one place that reads
/// the words of `report.lua`, `report_batch.lua`, the admin scripts and the rotation scripts
/// (`rotation_read`'s nested reply: [`rotation_receipt`]).
pub(super) fn receipt(op: &Op<'_>, pool: &str, w: &[String]) -> Result<Receipt, StoreError> {
    let first = w.first().map(String::as_str);
    match (first, op.key()) {
        (Some("nokey"), Some(key)) => return Err(StoreError::UnknownKey(key.to_string())),
        (Some("nopool"), _) => return Err(StoreError::UnknownPool(pool.to_string())),
        _ => {}
    }
    let text = |i: usize| w.get(i).cloned().unwrap_or_default();
    Ok(match (op, first) {
        // {"ok", status, changed 0|1, cooldown_until_ms, now_ms}
        (Op::Report(_), Some("ok")) => Receipt::Report(ReportReceipt {
            state: state(w, 1)?,
            changed: w.get(2).map(String::as_str) == Some("1"),
            cooldown_until_ms: num(w, 3)?,
            now_ms: num(w, 4)?,
        }),
        // {"ok", applied, held, now_ms}
        (Op::Successes(_), Some("ok")) => Receipt::Successes(BatchReceipt {
            applied: num(w, 1)?,
            held: num(w, 2)?,
            now_ms: num(w, 3)?,
        }),
        // {"ok", status}
        (Op::SetState { .. }, Some("ok")) => Receipt::State(state(w, 1)?),
        // {"ok", ...}: the value set, which the caller already knows.
        (
            Op::SetWeight { .. }
            | Op::SetGroup { .. }
            | Op::SetCanary { .. }
            | Op::Reset { .. }
            | Op::Settle(_),
            Some("ok"),
        ) => Receipt::Done,
        // {"ok", first percent} | {"busy", state} | {"badkey", id, why}
        (Op::RotationStart(_), Some("ok")) => Receipt::RotationStart(StartReply::Started {
            percent: num(w, 1)?,
        }),
        (Op::RotationStart(_), Some("busy")) => {
            Receipt::RotationStart(StartReply::Busy(plan_state(w, 1)?))
        }
        (Op::RotationStart(_), Some("badkey")) => Receipt::RotationStart(StartReply::BadKey {
            key: text(1),
            why: text(2),
        }),
        // {"ok", new state} | {"noplan"} | {"badstate", state}
        (Op::RotationControl { .. }, Some("ok")) => {
            Receipt::RotationControl(ControlReply::Controlled(plan_state(w, 1)?))
        }
        (Op::RotationControl { .. }, Some("noplan")) => {
            Receipt::RotationControl(ControlReply::NoPlan)
        }
        (Op::RotationControl { .. }, Some("badstate")) => {
            Receipt::RotationControl(ControlReply::BadState(plan_state(w, 1)?))
        }
        // {"held", fence, until_ms} | {"other" | "lost", holder, fence, until_ms} | {"idle"}
        (Op::RotationLease { .. }, Some("held")) => Receipt::RotationLease(LeaseReply::Held {
            fence: num(w, 1)?,
            until_ms: num(w, 2)?,
        }),
        (Op::RotationLease { .. }, Some("other")) => {
            Receipt::RotationLease(LeaseReply::Other(lease(w)?))
        }
        (Op::RotationLease { .. }, Some("lost")) => {
            Receipt::RotationLease(LeaseReply::Lost(lease(w)?))
        }
        (Op::RotationLease { .. }, Some("idle")) => Receipt::RotationLease(LeaseReply::Idle),
        // {"ok"} | {"noplan"} | {"fenced", lease fence, holder}
        (Op::RotationWrite(_), Some("ok")) => Receipt::RotationWrite(WriteReply::Ok),
        (Op::RotationWrite(_), Some("noplan")) => Receipt::RotationWrite(WriteReply::NoPlan),
        (Op::RotationWrite(_), Some("fenced")) => Receipt::RotationWrite(WriteReply::Fenced {
            fence: num(w, 1)?,
            holder: text(2),
        }),
        // {"ok"} | {"stale"}
        (Op::RotationStats { .. }, Some(word @ ("ok" | "stale"))) => {
            Receipt::RotationStats(StatsReply {
                applied: word == "ok",
            })
        }
        _ => return Err(StoreError::Script(format!("unexpected reply {w:?}"))),
    })
}

/// The reply of a rotation op's script: `rotation_read`'s nested reply as a view, any other's
/// words as in [`receipt`].
pub(super) fn rotation_receipt(op: &Op<'_>, pool: &str, v: Value) -> Result<Receipt, StoreError> {
    match op {
        Op::RotationRead => Ok(Receipt::RotationView(Box::new(view(v)?))),
        _ => receipt(op, pool, &words(v)?),
    }
}

fn plan_state(w: &[String], i: usize) -> Result<PlanState, StoreError> {
    w.get(i)
        .and_then(|s| PlanState::parse(s))
        .ok_or_else(|| StoreError::Script(format!("bad plan state in {w:?}")))
}

/// `{word, holder, fence, until_ms}` of `rotation_lease.lua`.
fn lease(w: &[String]) -> Result<LeaseInfo, StoreError> {
    Ok(LeaseInfo {
        holder: w.get(1).cloned().unwrap_or_default(),
        fence: num(w, 2)?,
        until_ms: num(w, 3)?,
    })
}

/// A flat name/value array (`HGETALL`) as a map.
fn fields(v: Value) -> Result<BTreeMap<String, String>, StoreError> {
    let w = words(v)?;
    Ok(w.chunks(2)
        .filter_map(|c| match c {
            [k, v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect())
}

/// `rotation_read.lua`: {now_ms, plan fields, lease fields, history, counts}.
fn view(v: Value) -> Result<RotationView, StoreError> {
    let Value::Array(parts) = v else {
        return Err(StoreError::Script("rotation_read: not an array".into()));
    };
    let mut it = parts.into_iter();
    let mut next = || it.next().unwrap_or(Value::Nil);
    let now = words(next())?;
    let plan = fields(next())?;
    let lease = fields(next())?;
    let history = words(next())?;
    let stats: BTreeMap<String, u64> = fields(next())?
        .into_iter()
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();
    let field = |k: &str| lease.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(RotationView {
        now_ms: num(&now, 0)?,
        plan: plan_from_fields(&plan),
        lease: LeaseInfo {
            holder: lease.get("holder").cloned().unwrap_or_default(),
            until_ms: field("until_ms"),
            fence: field("fence"),
        },
        history: history
            .iter()
            .filter_map(|l| HistoryEntry::parse(l))
            .collect(),
        counts: counts_from_fields(&stats),
    })
}

fn state(w: &[String], i: usize) -> Result<KeyState, StoreError> {
    w.get(i)
        .and_then(|s| KeyState::parse(s))
        .ok_or_else(|| StoreError::Script(format!("bad state in {w:?}")))
}

/// `sync.lua`: {"unchanged"} or {"synced", created, updated, removed}.
pub(super) fn parse_sync(w: &[String]) -> Result<SyncReceipt, StoreError> {
    match w.first().map(String::as_str) {
        Some("unchanged") => Ok(SyncReceipt::Unchanged),
        Some("synced") => Ok(SyncReceipt::Synced {
            created: num(w, 1)?,
            updated: num(w, 2)?,
            removed: num(w, 3)?,
        }),
        _ => Err(StoreError::Script(format!("sync reply {w:?}"))),
    }
}

/// `select.lua`, one request's line: `key <id> <group> <fallback 0|1> <probe 0|1> <wait_ms>
/// <lease> <crowded 0|1>` or `none <earliest_ms or -1> <now_ms> <six state counts> <budget
/// 0|1>`. Read in place: no word is copied but the key id and the group.
/// The words of a line split at each space, when there are at most 10. A loop over the bytes:
/// `str::split` set up a search per word, about 500 instructions a request more for a select
/// reply's few short words.
fn line_words(line: &str) -> Option<([&str; 10], usize)> {
    let mut w = [""; 10];
    let mut n = 0;
    let mut start = 0;
    for (i, b) in line.bytes().enumerate().chain([(line.len(), b' ')]) {
        if b == b' ' {
            *w.get_mut(n)? = &line[start..i];
            n += 1;
            start = i + 1;
        }
    }
    Some((w, n))
}

pub(super) fn parse_selection(line: &str) -> Result<Selection, StoreError> {
    let bad = || StoreError::Script(format!("unexpected select reply {line:?}"));
    let (w, n) = line_words(line).ok_or_else(bad)?;
    let int = |i: usize| w[i].parse::<i64>().map_err(|_| bad());
    match &w[..n] {
        ["key", id, group, fallback, probe, wait_ms, lease, crowded] => {
            Ok(Selection::Key(Chosen {
                key: KeyId::new(id).ok_or_else(bad)?,
                group: group.to_string(),
                fallback: *fallback == "1",
                probe: *probe == "1",
                wait_ms: wait_ms.parse().map_err(|_| bad())?,
                lease: lease.parse().map_err(|_| bad())?,
                crowded: *crowded == "1",
            }))
        }
        ["none", _, _, _, _, _, _, _, _, budget] => {
            let earliest = int(1)?;
            let mut counts = [0u64; 6];
            for (i, c) in counts.iter_mut().enumerate() {
                *c = int(3 + i)?.max(0) as u64;
            }
            Ok(Selection::None(Unavailable {
                retry_at_ms: (earliest >= 0).then_some(earliest as u64),
                now_ms: int(2)?.max(0) as u64,
                counts: StateCounts::from_array(counts),
                budget_bound: *budget == "1",
            }))
        }
        _ => Err(bad()),
    }
}

/// One page of `lua/snapshot.lua`: `{next_cursor, json}`.
pub(super) struct SnapshotPage {
    pub cursor: String,
    pub body: PageBody,
}

#[derive(serde::Deserialize)]
pub(super) struct PageBody {
    pub now_ms: u64,
    /// The pool's change counter (meta field `ver`) when the page was read.
    pub ver: u64,
    pub canary_group: String,
    pub canary_percent: u8,
    pub keys: Vec<KeyRecord>,
}

pub(super) fn parse_snapshot_page(w: &[String]) -> Result<SnapshotPage, StoreError> {
    let [cursor, json] = w else {
        return Err(StoreError::Script(format!("snapshot reply {w:?}")));
    };
    let body = serde_json::from_str(json)
        .map_err(|e| StoreError::Script(format!("snapshot page: {e}")))?;
    Ok(SnapshotPage {
        cursor: cursor.clone(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_line_reads_every_field() {
        let Selection::Key(c) = parse_selection("key k-1.a canary 1 0 250 77 1").unwrap() else {
            panic!("expected a key");
        };
        assert_eq!(c.key.as_str(), "k-1.a");
        assert_eq!(c.group, "canary");
        assert!(c.fallback && !c.probe && c.crowded);
        assert_eq!((c.wait_ms, c.lease), (250, 77));
        let Selection::Key(c) = parse_selection("key k2 stable 0 1 0 0 0").unwrap() else {
            panic!("expected a key");
        };
        assert!(!c.fallback && c.probe && !c.crowded);
        assert_eq!((c.wait_ms, c.lease), (0, 0));
    }

    #[test]
    fn a_none_line_reads_the_counts_and_the_earliest_recovery() {
        let Selection::None(u) =
            parse_selection("none 1700000000123 1700000000000 1 2 3 4 5 6 1").unwrap()
        else {
            panic!("expected none");
        };
        assert_eq!(u.retry_at_ms, Some(1_700_000_000_123));
        assert_eq!(u.now_ms, 1_700_000_000_000);
        assert_eq!(u.counts, StateCounts::from_array([1, 2, 3, 4, 5, 6]));
        assert!(u.budget_bound);
        let Selection::None(u) = parse_selection("none -1 5 0 0 0 0 0 0 0").unwrap() else {
            panic!("expected none");
        };
        assert_eq!(u.retry_at_ms, None);
        assert!(!u.budget_bound);
    }

    proptest::proptest! {
        /// The loop over bytes finds the words `str::split` finds, empty ones and non-ASCII
        /// included, and refuses more than 10.
        #[test]
        fn a_lines_words_are_those_split_finds(line in "[a é1-]{0,24}") {
            let by_split: Vec<&str> = line.split(' ').collect();
            match line_words(&line) {
                Some((w, n)) => proptest::prop_assert_eq!(&w[..n], &by_split[..]),
                None => proptest::prop_assert!(by_split.len() > 10),
            }
        }
    }

    #[test]
    fn a_malformed_line_is_a_script_error_not_a_guess() {
        for line in [
            "",
            "key",
            "key k1 stable 0 0 0 0",
            "key k1 stable 0 0 0 0 0 extra",
            "key bad/id stable 0 0 0 0 0",
            "key k1 stable 0 0 x 0 0",
            "none 1 2 3",
            "none 1 2 a 0 0 0 0 0 0",
            "none 1 2 0 0 0 0 0 0 0 0 0",
            "maybe k1",
        ] {
            assert!(
                matches!(parse_selection(line), Err(StoreError::Script(_))),
                "{line:?}"
            );
        }
    }
}
