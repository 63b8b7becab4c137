//! Plain-text tables for the operator commands: columns padded to their widest cell (counted in
//! characters, so a fingerprint's `…` lines up), two spaces apart, no trailing blanks.

use crate::admin::{KeyView, PoolView};

/// The columns of `keygate keys list`.
pub const KEY_COLUMNS: [&str; 10] = [
    "ID",
    "STATE",
    "REASON",
    "WEIGHT",
    "GROUP",
    "ERRORS",
    "COOLDOWN",
    "LAST",
    "FINGERPRINT",
    "BUDGET",
];

/// `header` and `rows` as aligned text, one line each, ending in a newline.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One line per key, in the order of [`KEY_COLUMNS`]; `-` for an empty value.
pub fn keys_table(keys: &[KeyView]) -> String {
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.state.clone(),
                dash(k.reason.clone()),
                k.weight.to_string(),
                k.group.clone(),
                k.errors.to_string(),
                match k.cooldown_remaining_s {
                    0 => "-".to_string(),
                    s => format!("{s}s"),
                },
                match k.last_status {
                    0 => "-".to_string(),
                    s => s.to_string(),
                },
                dash(k.fingerprint.clone().unwrap_or_default()),
                k.budget.as_ref().map_or("-".to_string(), budget_cell),
            ]
        })
        .collect();
    render(&KEY_COLUMNS, &rows)
}

/// A key's limits and its current use, e.g. `rpm=60 tpm=6000 in_flight=1/2`; a limit learned
/// from the provider is marked, e.g. `rpm=500(learned)`.
fn budget_cell(b: &crate::store::budget::BudgetRecord) -> String {
    let (l, learned) = (&b.limits, &b.learned);
    let mut parts: Vec<String> = [
        ("rpm", l.rpm, learned.rpm > 0),
        ("tpm", l.tpm, learned.tpm > 0),
        ("rpd", l.rpd, false),
        ("tpd", l.tpd, false),
    ]
    .iter()
    .filter(|(_, v, _)| *v > 0)
    .map(|(n, v, learned)| {
        let mark = if *learned { "(learned)" } else { "" };
        format!("{n}={v}{mark}")
    })
    .collect();
    if l.conc > 0 {
        parts.push(format!("in_flight={}/{}", b.in_flight, l.conc));
    }
    parts.join(" ")
}

/// A pool's heading line, then its key table.
pub fn pool_section(pool: &PoolView) -> String {
    let c = &pool.counts;
    format!(
        "pool {}  canary {} {}%  active {} cooling {} open {} half_open {} disabled {} draining {}\n{}",
        pool.name,
        pool.canary_group,
        pool.canary_percent,
        c.active,
        c.cooling,
        c.open,
        c.half_open,
        c.disabled,
        c.draining,
        keys_table(&pool.keys)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, fingerprint: Option<&str>) -> KeyView {
        KeyView {
            id: id.into(),
            state: "active".into(),
            reason: String::new(),
            weight: 1,
            group: "stable".into(),
            errors: 0,
            strikes: 0,
            successes: 0,
            failures: 0,
            cooldown_remaining_s: 0,
            cooldown_until_ms: 0,
            last_status: 200,
            last_used_ms: 0,
            fingerprint: fingerprint.map(str::to_string),
            budget: None,
        }
    }

    #[test]
    fn columns_line_up_in_characters_even_with_an_ellipsis() {
        let mut long = key("prod-0001-long-id", None);
        long.reason = "removed".into();
        long.state = "draining".into();
        long.cooldown_remaining_s = 12;
        long.budget = Some(crate::store::budget::BudgetRecord {
            limits: crate::store::budget::KeyLimits {
                rpm: 60,
                tpm: 9000,
                conc: 2,
                ..Default::default()
            },
            learned: crate::store::budget::Learned { rpm: 0, tpm: 9000 },
            next_request_ms: 0,
            next_tokens_ms: 0,
            in_flight: 1,
        });
        let out = keys_table(&[key("k1", Some("sk-…9f3a")), long]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |line: &str, name: &str| {
            let at = lines[0].find(name).unwrap();
            let skip = lines[0][..at].chars().count();
            line.chars().skip(skip).collect::<String>()
        };
        assert!(col(lines[1], "STATE").starts_with("active "));
        assert!(col(lines[2], "STATE").starts_with("draining "));
        assert!(col(lines[2], "COOLDOWN").starts_with("12s "));
        assert!(col(lines[1], "FINGERPRINT").starts_with("sk-…9f3a"));
        assert!(col(lines[2], "FINGERPRINT").starts_with("- "));
        assert_eq!(
            col(lines[2], "BUDGET"),
            "rpm=60 tpm=9000(learned) in_flight=1/2"
        );
        assert_eq!(col(lines[1], "BUDGET"), "-");
        assert!(col(lines[1], "REASON").starts_with("- "));
        assert!(out.lines().all(|l| !l.ends_with(' ')));
    }
}
