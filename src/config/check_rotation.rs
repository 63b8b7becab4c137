//! Checks of `[pools.rotation]` and of the keys' `expires` and `successor` fields.

use super::decode::Ctx;
use super::{KeyConfig, RotationConfig};

pub(super) fn check_rotation(r: &RotationConfig, path: &str, ctx: &mut Ctx) {
    let rising = r.steps.windows(2).all(|w| w[0] < w[1]);
    let in_range = r.steps.iter().all(|s| (1..=100).contains(s));
    if r.steps.is_empty() || !rising || !in_range || r.steps.last() != Some(&100) {
        ctx.problem(
            format!("{path}.steps"),
            "must be rising canary percents in 1..=100 ending at 100, e.g. [5, 25, 50, 100]",
        );
    }
    for (field, value) in [
        ("eval_interval_ms", r.eval_interval_ms),
        ("lease_ms", r.lease_ms),
        ("max_p99_ratio_pct", u64::from(r.max_p99_ratio_pct)),
    ] {
        if value == 0 {
            ctx.problem(format!("{path}.{field}"), "must be at least 1");
        }
    }
    if r.lease_ms > 0 && r.lease_ms < 2 * r.eval_interval_ms.min(1000) {
        ctx.problem(
            format!("{path}.lease_ms"),
            "must be at least twice the driver's renewal interval (2 × min(eval_interval_ms, 1000))",
        );
    }
    if r.max_error_increase_pct > 100 {
        ctx.problem(format!("{path}.max_error_increase_pct"), "must be 0..=100");
    }
}

/// Each `successor` names another key of the pool, in the canary group.
pub(super) fn check_successors(
    keys: &[KeyConfig],
    pool_path: &str,
    canary_group: Option<&str>,
    ctx: &mut Ctx,
) {
    for (i, key) in keys.iter().enumerate() {
        let Some(successor) = &key.successor else {
            continue;
        };
        let path = format!("{pool_path}.keys[{i}].successor");
        match keys.iter().find(|k| &k.id == successor) {
            None => ctx.problem(path, format!("names no key of this pool: {successor:?}")),
            Some(k) if Some(k.group.as_str()) != canary_group || k.id == key.id => ctx.problem(
                path,
                format!("{successor:?} must be another key, in the pool's canary group"),
            ),
            Some(_) => {}
        }
    }
}

/// `"YYYY-MM-DD"` (midnight UTC) or `"YYYY-MM-DDTHH:MM:SSZ"`, as Unix ms.
pub(crate) fn parse_expiry(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || y < 1970 {
        return None;
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let mut p = t.splitn(3, ':').map(|p| p.parse::<i64>().ok());
            let (h, mi, s) = (p.next()??, p.next()??, p.next()??);
            if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&s) {
                return None;
            }
            h * 3600 + mi * 60 + s
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from((days * 86_400 + secs_of_day) * 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_expiry;

    #[test]
    fn expiry_dates_are_read_as_utc_and_nonsense_is_refused() {
        assert_eq!(parse_expiry("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_expiry("2027-03-01"), Some(1_803_859_200_000));
        assert_eq!(
            parse_expiry("2027-03-01T12:00:00Z"),
            Some(1_803_859_200_000 + 12 * 3_600_000)
        );
        for bad in [
            "2027-13-01",
            "2027-03",
            "soon",
            "2027-03-01T25:00:00Z",
            "2027-03-01T12:00:00",
        ] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }
}
