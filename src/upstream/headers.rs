//! Parsing of the rate-limit hints an upstream sends with its answers.
//!
//! OpenAI-compatible providers say when a key may be used again through `retry-after-ms`,
//! `retry-after` (delta-seconds or an HTTP date) and the `x-ratelimit-*` family, whose resets are
//! Go-style durations such as `6m0s`, `20ms` or `1h2m3.5s`. Everything here is pure and total:
//! garbage, non-UTF-8 and hostile values yield `None`, never a panic.
//!
//! Parsed durations saturate at [`MAX_HINT`] so that `now + hint` can never overflow in a caller;
//! clamping to the pool's own maximum cooldown is the store's job.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

/// The longest duration a hint can express (one year). Longer values saturate to it.
pub const MAX_HINT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The units of a Go-style duration with their length in nanoseconds, largest first. Go spells
/// microseconds three ways (ASCII, micro sign, Greek mu); they are one unit.
const RESET_UNITS: [(&str, u64); 8] = [
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", NANOS_PER_MILLI),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ns", 1),
];

/// The rate-limit hints of one upstream answer; each is `None` when absent or unparseable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHints {
    /// From `retry-after-ms`, else `retry-after`.
    pub retry_after: Option<Duration>,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-reset-requests`: how long until the request budget refills.
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-reset-tokens`: how long until the token budget refills.
    pub reset_tokens: Option<Duration>,
    /// `x-ratelimit-limit-requests`: the key's requests per minute, as the provider counts.
    pub limit_requests: Option<u64>,
    /// `x-ratelimit-limit-tokens`: the key's tokens per minute.
    pub limit_tokens: Option<u64>,
}

impl RateLimitHints {
    /// How long to cool a key that got a 429: the explicit `retry-after`, else the longer of the
    /// two budget resets that are known.
    pub fn cooldown_hint(&self) -> Option<Duration> {
        self.retry_after
            .or_else(|| self.reset_requests.max(self.reset_tokens))
    }

    /// How long a key that just succeeded has no budget left: the reset of every budget whose
    /// remaining count is exactly 0, the longest of them. `None` when no budget is spent or the
    /// spent budget's reset is unknown. Lets a key cool before the 429 happens.
    pub fn exhausted_for(&self) -> Option<Duration> {
        let requests = match self.remaining_requests {
            Some(0) => self.reset_requests,
            _ => None,
        };
        let tokens = match self.remaining_tokens {
            Some(0) => self.reset_tokens,
            _ => None,
        };
        requests.max(tokens)
    }
}

/// Where [`read_hints`] keeps each hint header's first value, by the header's name.
const RETRY_AFTER_MS: usize = 0;
const RETRY_AFTER: usize = 1;
const REMAINING_REQUESTS: usize = 2;
const RESET_REQUESTS: usize = 3;
const REMAINING_TOKENS: usize = 4;
const RESET_TOKENS: usize = 5;
const LIMIT_REQUESTS: usize = 6;
const LIMIT_TOKENS: usize = 7;

/// The slot of a hint header's name (names in a `HeaderMap` are lowercase).
fn hint_slot(name: &str) -> Option<usize> {
    if let Some(rest) = name.strip_prefix("x-ratelimit-") {
        return match rest {
            "remaining-requests" => Some(REMAINING_REQUESTS),
            "reset-requests" => Some(RESET_REQUESTS),
            "remaining-tokens" => Some(REMAINING_TOKENS),
            "reset-tokens" => Some(RESET_TOKENS),
            "limit-requests" => Some(LIMIT_REQUESTS),
            "limit-tokens" => Some(LIMIT_TOKENS),
            _ => None,
        };
    }
    match name {
        "retry-after-ms" => Some(RETRY_AFTER_MS),
        "retry-after" => Some(RETRY_AFTER),
        _ => None,
    }
}

/// Reads every rate-limit hint of `headers`; `now` turns a `retry-after` HTTP date into a delay.
/// Each hint comes from its header's first value, as `HeaderMap::get` answers it. One pass over
/// the headers rather than a `get` per hint: each `get` hashes the name, and eight of them cost
/// about 1,400 instructions on every answer (BENCHMARKS.md, "Where a request's CPU goes").
pub fn read_hints(headers: &HeaderMap, now: SystemTime) -> RateLimitHints {
    let mut first: [Option<&HeaderValue>; 8] = [None; 8];
    for (name, value) in headers {
        if let Some(slot) = hint_slot(name.as_str()) {
            first[slot].get_or_insert(value);
        }
    }
    let text = |slot: usize| first[slot].and_then(|v| v.to_str().ok());
    let retry_after_ms = text(RETRY_AFTER_MS).and_then(parse_retry_after_ms);
    RateLimitHints {
        retry_after: retry_after_ms
            .or_else(|| text(RETRY_AFTER).and_then(|v| parse_retry_after(v, now))),
        remaining_requests: text(REMAINING_REQUESTS).and_then(parse_count),
        reset_requests: text(RESET_REQUESTS).and_then(parse_reset_duration),
        remaining_tokens: text(REMAINING_TOKENS).and_then(parse_count),
        reset_tokens: text(RESET_TOKENS).and_then(parse_reset_duration),
        limit_requests: text(LIMIT_REQUESTS).and_then(parse_count),
        limit_tokens: text(LIMIT_TOKENS).and_then(parse_count),
    }
}

/// Parses a `Retry-After` value: delta-seconds (`"30"`, also decimal `"1.5"`) or an HTTP date,
/// which yields the time left until it (`Duration::ZERO` when it is already past).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(delay) = parse_decimal(value, NANOS_PER_SEC) {
        return Some(delay);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let delay = date.duration_since(now).unwrap_or(Duration::ZERO);
    Some(delay.min(MAX_HINT))
}

/// Parses a `retry-after-ms` value: milliseconds, possibly decimal (`"250"`, `"1.5"`).
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    parse_decimal(value.trim(), NANOS_PER_MILLI)
}

/// Parses an `x-ratelimit-reset-*` duration: Go-style components largest unit first (`1s`,
/// `6m0s`, `20ms`, `1h2m3.5s`, `0.5s`; units `h m s ms us µs ns`, each at most once), or a bare
/// number of seconds. Empty, out-of-order or repeated units and garbage yield `None`.
pub fn parse_reset_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Some(seconds) = parse_decimal(value, NANOS_PER_SEC) {
        return Some(seconds);
    }
    let mut rest = value;
    let mut total: u128 = 0;
    // The previous component's unit length: each unit must be strictly smaller than the last.
    let mut previous_unit = u64::MAX;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let (_, unit_nanos) = RESET_UNITS.iter().find(|(name, _)| *name == unit)?;
        if *unit_nanos >= previous_unit {
            return None;
        }
        previous_unit = *unit_nanos;
        total = total.saturating_add(decimal_nanos(number, *unit_nanos)?);
        rest = after;
    }
    (!value.is_empty()).then(|| saturate(total))
}

/// Parses a remaining-budget count such as `"0"` or `"149984"`.
/// Writes `ms` as a Go-style duration the way OpenAI's `x-ratelimit-reset-*` headers do
/// (`20ms`, `1.5s`, `6m0s`, `1h2m3.5s`), the inverse of [`parse_reset_duration`].
pub fn format_reset_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, ms / 60_000 % 60);
    let secs = format!("{}.{:03}", ms / 1000 % 60, ms % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

fn parse_count(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: an error can only be overflow, which means "plenty left".
    Some(value.parse().unwrap_or(u64::MAX))
}

/// Parses `digits[.digits]` as a number of `unit_nanos` units.
fn parse_decimal(value: &str, unit_nanos: u64) -> Option<Duration> {
    decimal_nanos(value, unit_nanos).map(saturate)
}

/// `digits[.digits]` times `unit_nanos`, in nanoseconds, exact to the nanosecond. Integer parts
/// beyond `u64` saturate (they are far beyond [`MAX_HINT`] anyway).
fn decimal_nanos(value: &str, unit_nanos: u64) -> Option<u128> {
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (value, None),
    };
    if !is_digits(whole) || fraction.is_some_and(|f| !is_digits(f)) {
        return None;
    }
    let whole: u128 = whole.parse::<u64>().unwrap_or(u64::MAX).into();
    let mut nanos = whole * u128::from(unit_nanos);
    if let Some(fraction) = fraction {
        // Nine fraction digits are far finer than any cooldown needs; ignore the rest.
        let digits = &fraction[..fraction.len().min(9)];
        let scale = 10u128.pow(u32::try_from(digits.len()).unwrap_or(9));
        let value: u128 = digits.parse().ok()?;
        nanos += value * u128::from(unit_nanos) / scale;
    }
    Some(nanos)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn saturate(nanos: u128) -> Duration {
    let max = MAX_HINT.as_nanos();
    let nanos = u64::try_from(nanos.min(max)).unwrap_or(u64::MAX);
    Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reset_durations_are_written_as_openai_writes_them_and_read_back() {
        for (ms, text) in [
            (0, "0ms"),
            (20, "20ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (360_000, "6m0s"),
            (3_723_500, "1h2m3.5s"),
        ] {
            assert_eq!(super::format_reset_duration(ms), text);
            let back = super::parse_reset_duration(text).unwrap();
            assert_eq!(back.as_millis() as u64, ms, "{text}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    fn millis(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.insert(*name, value);
            }
        }
        map
    }

    #[test]
    fn retry_after_accepts_integer_and_decimal_seconds() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(parse_retry_after("30", now), secs(30));
        assert_eq!(parse_retry_after(" 0 ", now), secs(0));
        assert_eq!(parse_retry_after("1.5", now), millis(1500));
        assert_eq!(parse_retry_after("0.001", now), millis(1));
    }

    #[test]
    fn retry_after_http_date_in_future_is_time_left_and_in_past_is_zero() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 21 Oct 2015 07:28:00
        let future = "Wed, 21 Oct 2015 07:28:30 GMT";
        assert_eq!(parse_retry_after(future, now), secs(30));
        let past = "Wed, 21 Oct 2015 07:27:00 GMT";
        assert_eq!(parse_retry_after(past, now), Some(Duration::ZERO));
        // The obsolete RFC 850 and asctime forms are HTTP dates too.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now),
            secs(10)
        );
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:20 2015", now), secs(20));
    }

    #[test]
    fn retry_after_rejects_negative_and_garbage() {
        let now = SystemTime::UNIX_EPOCH;
        for bad in [
            "", " ", "-1", "+5", "1.", ".5", "1e3", "soon", "1.5.2", "30s", "NaN",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn huge_retry_after_saturates_instead_of_overflowing() {
        let now = SystemTime::UNIX_EPOCH;
        let huge = "99999999999999999999999999999";
        assert_eq!(parse_retry_after(huge, now), Some(MAX_HINT));
        assert_eq!(
            parse_reset_duration("99999999999999999999h"),
            Some(MAX_HINT)
        );
    }

    #[test]
    fn reset_durations_in_go_format() {
        assert_eq!(parse_reset_duration("1s"), secs(1));
        assert_eq!(parse_reset_duration("6m0s"), secs(360));
        assert_eq!(parse_reset_duration("20ms"), millis(20));
        assert_eq!(parse_reset_duration("1h2m3.5s"), millis(3_723_500));
        assert_eq!(parse_reset_duration("0.5s"), millis(500));
        assert_eq!(parse_reset_duration("250ms"), millis(250));
        assert_eq!(
            parse_reset_duration("1.5µs"),
            Some(Duration::from_nanos(1500))
        );
        assert_eq!(
            parse_reset_duration("3us7ns"),
            Some(Duration::from_nanos(3007))
        );
        assert_eq!(parse_reset_duration("2h"), secs(7200));
        assert_eq!(parse_reset_duration("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn reset_duration_bare_number_means_seconds() {
        assert_eq!(parse_reset_duration("7"), secs(7));
        assert_eq!(parse_reset_duration("0.25"), millis(250));
    }

    #[test]
    fn reset_duration_rejects_garbage_and_disorder() {
        for bad in [
            "", "s", "ms", "1x", "1m5", "5s1m", "1s1s", "1ms1s", "1µs1us", "-1s", "1.s", ".5s",
            "1 s", "1h 2m", "1S", "abc", "1.2.3s",
        ] {
            assert_eq!(parse_reset_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let now = SystemTime::UNIX_EPOCH;
        let map = headers(&[("retry-after-ms", "1500.5"), ("retry-after", "30")]);
        let expected = Duration::from_micros(1_500_500);
        assert_eq!(read_hints(&map, now).retry_after, Some(expected));
        let map = headers(&[("retry-after-ms", "garbage"), ("Retry-After", "30")]);
        assert_eq!(read_hints(&map, now).retry_after, secs(30));
    }

    #[test]
    fn read_hints_reads_every_ratelimit_header() {
        let map = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("X-RateLimit-Reset-Requests", "1s"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-limit-tokens", "150000"),
        ]);
        let hints = read_hints(&map, SystemTime::UNIX_EPOCH);
        let expected = RateLimitHints {
            retry_after: None,
            remaining_requests: Some(0),
            reset_requests: secs(1),
            remaining_tokens: Some(149_984),
            reset_tokens: secs(360),
            limit_requests: Some(500),
            limit_tokens: Some(150_000),
        };
        assert_eq!(hints, expected);
    }

    #[test]
    fn read_hints_ignores_invalid_and_non_utf8_values() {
        let mut map = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(b"\xff\xfe") {
            map.insert("retry-after", value);
        }
        map.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("-3"),
        );
        map.insert(
            "x-ratelimit-reset-tokens",
            HeaderValue::from_static("later"),
        );
        let hints = read_hints(&map, SystemTime::UNIX_EPOCH);
        assert_eq!(hints, RateLimitHints::default());
    }

    #[test]
    fn cooldown_hint_prefers_retry_after_then_the_longer_reset() {
        let mut hints = RateLimitHints {
            retry_after: secs(5),
            reset_requests: secs(2),
            reset_tokens: secs(9),
            ..RateLimitHints::default()
        };
        assert_eq!(hints.cooldown_hint(), secs(5));
        hints.retry_after = None;
        assert_eq!(hints.cooldown_hint(), secs(9));
        hints.reset_tokens = None;
        assert_eq!(hints.cooldown_hint(), secs(2));
        assert_eq!(RateLimitHints::default().cooldown_hint(), None);
    }

    #[test]
    fn exhausted_for_uses_only_spent_budgets() {
        let mut hints = RateLimitHints {
            remaining_requests: Some(0),
            reset_requests: secs(1),
            remaining_tokens: Some(10),
            reset_tokens: secs(60),
            ..RateLimitHints::default()
        };
        assert_eq!(hints.exhausted_for(), secs(1));
        hints.remaining_tokens = Some(0);
        assert_eq!(hints.exhausted_for(), secs(60));
        hints.reset_tokens = None;
        assert_eq!(hints.exhausted_for(), secs(1));
        hints.remaining_requests = Some(3);
        assert_eq!(hints.exhausted_for(), None);
        hints.retry_after = secs(4); // retry-after alone does not mean the budget is spent
        assert_eq!(hints.exhausted_for(), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_text(value in any::<String>(), at in any::<u64>()) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(at % (1 << 40));
            let parsed = [
                parse_retry_after(&value, now),
                parse_retry_after_ms(&value),
                parse_reset_duration(&value),
            ];
            prop_assert!(parsed.iter().flatten().all(|d| *d <= MAX_HINT));
        }

        #[test]
        fn parsers_never_panic_on_duration_like_text(value in "[0-9.hmsunµ ]{0,24}") {
            let _ = parse_reset_duration(&value);
            let _ = parse_retry_after(&value, SystemTime::UNIX_EPOCH);
        }

        /// One pass over the headers reads what a `get` of each hint header reads: the first
        /// value of its name, whatever the order, the duplicates and the other headers.
        #[test]
        fn read_hints_reads_each_hints_first_value_as_get_does(
            entries in proptest::collection::vec(
                (0..10usize, prop_oneof![
                    Just("7".to_string()), Just("0".to_string()), Just("1.5".to_string()),
                    Just("6m0s".to_string()), Just("20ms".to_string()), Just("x".to_string()),
                    "[0-9]{1,4}",
                ]),
                0..24,
            ),
            at in 0u64..4_000_000_000,
        ) {
            let names = [
                "retry-after", "retry-after-ms", "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens", "x-ratelimit-limit-requests",
                "x-ratelimit-limit-tokens", "x-ratelimit-other", "content-type",
            ];
            let mut map = HeaderMap::new();
            for (name, value) in &entries {
                map.append(names[*name], HeaderValue::from_str(value).unwrap());
            }
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
            let text = |name: &str| map.get(name).and_then(|v| v.to_str().ok());
            let by_get = RateLimitHints {
                retry_after: text("retry-after-ms").and_then(parse_retry_after_ms)
                    .or_else(|| text("retry-after").and_then(|v| parse_retry_after(v, now))),
                remaining_requests: text("x-ratelimit-remaining-requests").and_then(parse_count),
                reset_requests: text("x-ratelimit-reset-requests").and_then(parse_reset_duration),
                remaining_tokens: text("x-ratelimit-remaining-tokens").and_then(parse_count),
                reset_tokens: text("x-ratelimit-reset-tokens").and_then(parse_reset_duration),
                limit_requests: text("x-ratelimit-limit-requests").and_then(parse_count),
                limit_tokens: text("x-ratelimit-limit-tokens").and_then(parse_count),
            };
            prop_assert_eq!(read_hints(&map, now), by_get);
        }

        #[test]
        fn read_hints_never_panics_on_arbitrary_header_values(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 7),
        ) {
            let names = [
                "retry-after", "retry-after-ms", "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens", "x-ratelimit-limit-requests",
            ];
            let mut map = HeaderMap::new();
            for (name, bytes) in names.iter().zip(&values) {
                if let Ok(value) = HeaderValue::from_bytes(bytes) {
                    map.insert(*name, value);
                }
            }
            let hints = read_hints(&map, SystemTime::now());
            let _ = (hints.cooldown_hint(), hints.exhausted_for());
        }

        #[test]
        fn milliseconds_and_seconds_round_trip(
            n in 0u64..=MAX_HINT.as_secs(),
            ms in 0u64..=MAX_HINT.as_secs() * 1000,
        ) {
            prop_assert_eq!(parse_reset_duration(&format!("{n}s")), secs(n));
            prop_assert_eq!(parse_reset_duration(&format!("{ms}ms")), millis(ms));
            prop_assert_eq!(parse_retry_after(&n.to_string(), SystemTime::UNIX_EPOCH), secs(n));
        }
    }
}
