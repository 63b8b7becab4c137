//! Classification of one upstream answer into an [`Outcome`] for the key that produced it.
//!
//! This is the outcome table of README.md's "Key states" as code: the status code decides, the
//! body only tells a spent quota (`insufficient_quota`) from a plain rate limit, and the
//! rate-limit headers say how long a key should cool. Before any of that, `cause.rs` picks out
//! the error answers the client's request caused (passed through, the key untouched). Pure
//! functions: no I/O, no clock of their own.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::headers::{read_hints, RateLimitHints};
use crate::pool::Outcome;

mod cause;
pub use cause::{client_cause, is_inference_path, ClientCause};

/// The error code (or type) with which providers say a key's quota or credit is spent.
const INSUFFICIENT_QUOTA: &str = "insufficient_quota";

/// The error code with which providers say a requested model does not exist.
const MODEL_NOT_FOUND: &str = "model_not_found";

/// What one upstream answer means for its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// How long the key should rest, from the upstream's own hints. For `RateLimited` it is the
    /// 429's cooldown hint (`None`: use the pool's backoff). For `Success` it is set only when
    /// the answer says a budget is spent (`x-ratelimit-remaining-*: 0`). Always `None` otherwise:
    /// quota and breaker times come from the pool's policy.
    pub cooldown: Option<Duration>,
}

/// How a request failed before any upstream answer could be classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportError {
    /// The TCP/TLS connection could not be established.
    Connect,
    /// No (complete) answer within the configured connect, first-byte or total timeout.
    Timeout,
    /// The connection was reset or closed before the first response byte. The request may never
    /// have reached the upstream, so this counts as a connect error.
    Reset,
    /// The connection broke after the response head arrived, in the middle of the body: the
    /// upstream accepted the request and then failed, which is a server error.
    Aborted,
}

/// Classifies an upstream answer. `body` is the (possibly partial) body when the caller read it,
/// needed only to tell a 429 quota exhaustion from a rate limit; `now` resolves an HTTP-date
/// `Retry-After`.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Verdict {
    let verdict = |outcome| Verdict {
        outcome,
        cooldown: None,
    };
    match status.as_u16() {
        200..=299 => success_verdict(&read_hints(headers, now)),
        429 if body.is_some_and(says_insufficient_quota) => verdict(Outcome::QuotaExhausted),
        429 => Verdict {
            outcome: Outcome::RateLimited,
            cooldown: read_hints(headers, now).cooldown_hint(),
        },
        // 402 Payment Required: out of credit, with or without an `insufficient_quota` body.
        402 => verdict(Outcome::QuotaExhausted),
        401 | 403 => verdict(Outcome::Unauthorized),
        408 => verdict(Outcome::Timeout),
        // Includes 529 "overloaded" and other non-standard 5xx codes.
        500..=599 => verdict(Outcome::ServerError),
        // 400, 404, 409, 413, 422, every other 4xx, and 1xx/3xx passed through: not the key's fault.
        _ => verdict(Outcome::ClientError),
    }
}

/// What [`classify`] answers for a 2xx whose headers carry `hints`: a success, cooling the key
/// only when the answer says none of a budget is left (`exhausted_for`). A caller that also
/// passes the hints on (a pool with budgets) reads them once and calls this.
pub fn success_verdict(hints: &RateLimitHints) -> Verdict {
    Verdict {
        outcome: Outcome::Success,
        cooldown: hints.exhausted_for(),
    }
}

/// The outcome for the key when the request failed at the transport level.
pub fn outcome_for_transport_error(kind: TransportError) -> Outcome {
    match kind {
        TransportError::Connect | TransportError::Reset => Outcome::ConnectError,
        TransportError::Timeout => Outcome::Timeout,
        TransportError::Aborted => Outcome::ServerError,
    }
}

/// Whether a 404 or 400 answer says the requested model does not exist (error code
/// `model_not_found`, or a message such as "The model `x` does not exist or you do not have
/// access to it."). Lets the proxy try a configured fallback model.
pub fn is_model_not_found(status: StatusCode, body: &[u8]) -> bool {
    if status != StatusCode::NOT_FOUND && status != StatusCode::BAD_REQUEST {
        return false;
    }
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => envelope.error.is_some_and(|error| {
            error.has_code(MODEL_NOT_FOUND)
                || error
                    .message
                    .as_deref()
                    .is_some_and(message_says_model_missing)
        }),
        Err(_) => {
            contains_ignore_ascii_case(body, MODEL_NOT_FOUND)
                || message_says_model_missing(&String::from_utf8_lossy(body))
        }
    }
}

/// The OpenAI error shape `{"error":{"message":…,"type":…,"code":…}}`; other fields ignored.
#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    // `serde_json::Value` rather than `String`: some providers send numeric codes.
    #[serde(default, rename = "type")]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

impl ErrorBody {
    fn has_code(&self, wanted: &str) -> bool {
        [&self.kind, &self.code]
            .into_iter()
            .any(|field| field.as_ref().and_then(|v| v.as_str()) == Some(wanted))
    }
}

/// Whether a body says the key's quota is spent: `error.type` or `error.code` is
/// `insufficient_quota`, or, for any other body (plain text, odd JSON), the string appears in it.
fn says_insufficient_quota(body: &[u8]) -> bool {
    let structured = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|envelope| envelope.error)
        .is_some_and(|error| error.has_code(INSUFFICIENT_QUOTA));
    structured || contains_ignore_ascii_case(body, INSUFFICIENT_QUOTA)
}

/// Matches OpenAI's "The model `x` does not exist…", DeepSeek's "Model Not Exist" and the common
/// "model not found" / "no such model" / "unknown model" phrasings.
fn message_says_model_missing(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    (message.contains("model") && message.contains("not exist"))
        || ["model not found", "no such model", "unknown model"]
            .iter()
            .any(|phrase| message.contains(phrase))
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const QUOTA_JSON: &[u8] = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const RATE_JSON: &[u8] = br#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT)
    }

    fn outcome(code: u16, body: Option<&[u8]>) -> Outcome {
        classify(status(code), &HeaderMap::new(), body, now()).outcome
    }

    fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn every_2xx_is_success_without_cooldown_when_budget_remains() {
        for code in [200, 201, 204, 299] {
            let verdict = classify(status(code), &HeaderMap::new(), None, now());
            let expected = Verdict {
                outcome: Outcome::Success,
                cooldown: None,
            };
            assert_eq!(verdict, expected, "{code}");
        }
    }

    #[test]
    fn success_with_zero_remaining_requests_cools_until_reset() {
        let headers = header_map(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
        ]);
        let verdict = classify(StatusCode::OK, &headers, None, now());
        let expected = Verdict {
            outcome: Outcome::Success,
            cooldown: Some(Duration::from_secs(1)),
        };
        assert_eq!(verdict, expected);
    }

    #[test]
    fn rate_limit_429_cools_by_the_upstream_hint() {
        let headers = header_map(&[("retry-after", "7"), ("x-ratelimit-reset-tokens", "6m0s")]);
        let verdict = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            Some(RATE_JSON),
            now(),
        );
        assert_eq!(verdict.outcome, Outcome::RateLimited);
        assert_eq!(verdict.cooldown, Some(Duration::from_secs(7)));

        let headers = header_map(&[("x-ratelimit-reset-requests", "20ms")]);
        let verdict = classify(StatusCode::TOO_MANY_REQUESTS, &headers, None, now());
        assert_eq!(verdict.cooldown, Some(Duration::from_millis(20)));
    }

    #[test]
    fn rate_limit_429_without_hint_leaves_backoff_to_the_pool() {
        let verdict = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            None,
            now(),
        );
        let expected = Verdict {
            outcome: Outcome::RateLimited,
            cooldown: None,
        };
        assert_eq!(verdict, expected);
    }

    #[test]
    fn quota_429_is_detected_in_json_type_or_code() {
        assert_eq!(outcome(429, Some(QUOTA_JSON)), Outcome::QuotaExhausted);
        let type_only = br#"{"error":{"type":"insufficient_quota","code":null}}"#;
        assert_eq!(outcome(429, Some(type_only)), Outcome::QuotaExhausted);
        let code_only = br#"{"error":{"type":"billing","code":"insufficient_quota"}}"#;
        assert_eq!(outcome(429, Some(code_only)), Outcome::QuotaExhausted);
        let escaped = br#"{"error":{"code":"insufficient\u005fquota"}}"#;
        assert_eq!(outcome(429, Some(escaped)), Outcome::QuotaExhausted);
    }

    #[test]
    fn quota_429_is_detected_in_plain_text_and_odd_json() {
        let text = b"Error: insufficient_quota - top up your account";
        assert_eq!(outcome(429, Some(text)), Outcome::QuotaExhausted);
        let string_error = br#"{"error":"INSUFFICIENT_QUOTA"}"#;
        assert_eq!(outcome(429, Some(string_error)), Outcome::QuotaExhausted);
        assert_eq!(outcome(429, Some(b"")), Outcome::RateLimited);
        assert_eq!(outcome(429, Some(b"slow down")), Outcome::RateLimited);
    }

    #[test]
    fn quota_verdict_ignores_rate_limit_hints() {
        let headers = header_map(&[("retry-after", "7")]);
        let verdict = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            Some(QUOTA_JSON),
            now(),
        );
        assert_eq!(verdict.cooldown, None);
    }

    #[test]
    fn payment_required_402_is_quota_exhausted() {
        assert_eq!(outcome(402, Some(QUOTA_JSON)), Outcome::QuotaExhausted);
        assert_eq!(outcome(402, None), Outcome::QuotaExhausted);
    }

    #[test]
    fn unauthorized_forbidden_timeout_and_server_errors() {
        assert_eq!(outcome(401, None), Outcome::Unauthorized);
        assert_eq!(outcome(403, Some(b"forbidden")), Outcome::Unauthorized);
        assert_eq!(outcome(408, None), Outcome::Timeout);
        for code in [500, 502, 503, 504, 529, 599] {
            assert_eq!(outcome(code, None), Outcome::ServerError, "{code}");
        }
    }

    #[test]
    fn caller_mistakes_and_pass_through_codes_are_client_errors() {
        for code in [
            400, 404, 405, 409, 413, 415, 422, 451, 499, 100, 101, 301, 304, 399,
        ] {
            assert_eq!(
                outcome(code, Some(QUOTA_JSON)),
                Outcome::ClientError,
                "{code}"
            );
        }
    }

    #[test]
    fn transport_errors_map_to_their_outcomes() {
        let cases = [
            (TransportError::Connect, Outcome::ConnectError),
            (TransportError::Reset, Outcome::ConnectError),
            (TransportError::Timeout, Outcome::Timeout),
            (TransportError::Aborted, Outcome::ServerError),
        ];
        for (kind, expected) in cases {
            assert_eq!(outcome_for_transport_error(kind), expected, "{kind:?}");
        }
    }

    #[test]
    fn model_not_found_by_code_or_message() {
        let openai = br#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
        assert!(is_model_not_found(StatusCode::NOT_FOUND, openai));
        assert!(is_model_not_found(StatusCode::BAD_REQUEST, openai));
        let message_only = br#"{"error":{"message":"The model `x` does not exist","code":null}}"#;
        assert!(is_model_not_found(StatusCode::NOT_FOUND, message_only));
        let deepseek = br#"{"error":{"message":"Model Not Exist","type":"invalid_request_error"}}"#;
        assert!(is_model_not_found(StatusCode::BAD_REQUEST, deepseek));
        assert!(is_model_not_found(
            StatusCode::NOT_FOUND,
            b"model not found"
        ));
    }

    #[test]
    fn other_errors_are_not_model_not_found() {
        let openai = br#"{"error":{"code":"model_not_found"}}"#;
        assert!(!is_model_not_found(StatusCode::TOO_MANY_REQUESTS, openai));
        assert!(!is_model_not_found(StatusCode::OK, openai));
        let invalid =
            br#"{"error":{"message":"Invalid 'messages': empty","code":"invalid_value"}}"#;
        assert!(!is_model_not_found(StatusCode::BAD_REQUEST, invalid));
        assert!(!is_model_not_found(StatusCode::NOT_FOUND, b"Not Found"));
        assert!(!is_model_not_found(StatusCode::NOT_FOUND, b""));
    }

    proptest! {
        #[test]
        fn classify_never_panics(
            code in 100u16..=599,
            body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
            retry_after in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&retry_after) {
                headers.insert("retry-after", value.clone());
                headers.insert("x-ratelimit-reset-requests", value);
            }
            let Ok(status) = StatusCode::from_u16(code) else {
                return Ok(());
            };
            let verdict = classify(status, &headers, body.as_deref(), now());
            let body = body.unwrap_or_default();
            let _ = is_model_not_found(status, &body);
            if verdict.cooldown.is_some() {
                prop_assert!(matches!(verdict.outcome, Outcome::Success | Outcome::RateLimited));
            }
        }

        #[test]
        fn classify_never_panics_on_quota_like_text(body in "[a-z_{}\":]{0,64}") {
            let _ = classify(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), Some(body.as_bytes()), now());
            let _ = is_model_not_found(StatusCode::NOT_FOUND, body.as_bytes());
        }
    }
}
