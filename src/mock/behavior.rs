//! What the mock does with one request for a key ([`Behavior`]), the per-key script given on the
//! command line ([`KeyFlag`]), and the text form both are written in.

use std::str::FromStr;

pub use super::leak::LeakForm;

/// What the mock does with one request for a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Behavior {
    /// A normal answer for the endpoint.
    #[default]
    Ok,
    /// Any status, with these headers and this body (sent as `application/json`).
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// 429 with OpenAI's rate-limit error, and a `retry-after` header when given.
    RateLimited { retry_after: Option<String> },
    /// 429 whose type and code are `insufficient_quota`.
    Quota,
    /// 401 `invalid_api_key`.
    Unauthorized,
    /// This (5xx) status with OpenAI's server-error body.
    ServerError(u16),
    /// Waits `ms` before answering headers, then behaves as `then`.
    Delay { ms: u64, then: Box<Behavior> },
    /// A 200 whose body sends `events` SSE events (non-streaming: half of the JSON) and then
    /// aborts the connection mid-body. `[DONE]` is never sent.
    StreamThenDrop { events: usize },
    /// A normal answer whose SSE events each come `interval_ms` after the previous one
    /// (non-streaming requests get a normal answer).
    SlowStream { interval_ms: u64 },
    /// Never answers; the request is released only when the mock shuts down.
    Hang,
    /// A normal answer with `x-ratelimit-remaining-requests: 0` and
    /// `x-ratelimit-reset-requests: <reset>`.
    RemainingZero { reset: String },
    /// This status (200 unless given) with the key echoed in headers and body, in `form`
    /// (see `leak.rs`).
    Leak { form: LeakForm, status: u16 },
}

/// Why a behaviour or a `--key` flag could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseBehaviorError(String);

/// The behaviours the text form knows, for error messages.
const EXPECTED: &str = "expected ok, 429, 429:SECS, 401, quota, 4xx, 5xx, delay:MS[:BEHAVIOR], \
                        remaining0:RESET, slow:MS, drop:EVENTS, leak:FORM[:STATUS] or hang";

impl FromStr for Behavior {
    type Err = ParseBehaviorError;

    /// Reads one behaviour in the text form (see the module documentation).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (head, arg) = match text.split_once(':') {
            Some((head, arg)) => (head, Some(arg)),
            None => (text, None),
        };
        match (head.to_ascii_lowercase().as_str(), arg) {
            ("ok", None) => Ok(Behavior::Ok),
            ("quota", None) => Ok(Behavior::Quota),
            ("hang", None) => Ok(Behavior::Hang),
            ("429", retry_after) => Ok(Behavior::RateLimited {
                retry_after: retry_after
                    .map(|value| non_empty(value, text))
                    .transpose()?,
            }),
            ("delay", Some(arg)) => parse_delay(arg, text),
            ("slow", Some(ms)) => Ok(Behavior::SlowStream {
                interval_ms: number(ms, text)?,
            }),
            ("drop", Some(events)) => Ok(Behavior::StreamThenDrop {
                events: number(events, text)?,
            }),
            ("leak", Some(arg)) => parse_leak(arg, text),
            ("remaining0", Some(reset)) => Ok(Behavior::RemainingZero {
                reset: non_empty(reset, text)?,
            }),
            (code, None) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
                status_behavior(number(code, text)?, text)
            }
            _ => Err(ParseBehaviorError(format!(
                "unknown behaviour {text:?} ({EXPECTED})"
            ))),
        }
    }
}

/// `delay:MS` (then ok) or `delay:MS:BEHAVIOR`.
fn parse_delay(arg: &str, text: &str) -> Result<Behavior, ParseBehaviorError> {
    let (ms, then) = match arg.split_once(':') {
        Some((ms, then)) => (ms, then.parse()?),
        None => (arg, Behavior::Ok),
    };
    Ok(Behavior::Delay {
        ms: number(ms, text)?,
        then: Box::new(then),
    })
}

/// `leak:FORM` (200) or `leak:FORM:STATUS`; FORM is plain, escaped, sse or gzip.
fn parse_leak(arg: &str, text: &str) -> Result<Behavior, ParseBehaviorError> {
    let (form, status) = match arg.split_once(':') {
        Some((form, status)) => (form, number(status, text)?),
        None => (arg, 200),
    };
    let form = LeakForm::parse(form).ok_or_else(|| {
        ParseBehaviorError(format!(
            "unknown leak form in {text:?} (plain, escaped, sse or gzip)"
        ))
    })?;
    if !(200..=599).contains(&status) {
        return Err(ParseBehaviorError(format!(
            "unsupported status in {text:?}"
        )));
    }
    Ok(Behavior::Leak { form, status })
}

/// A bare status code: 200 is ok, 401 and 5xx have their own variants, other 4xx are generic.
fn status_behavior(status: u16, text: &str) -> Result<Behavior, ParseBehaviorError> {
    match status {
        200 => Ok(Behavior::Ok),
        401 => Ok(Behavior::Unauthorized),
        500..=599 => Ok(Behavior::ServerError(status)),
        400..=499 => Ok(Behavior::Status {
            status,
            headers: Vec::new(),
            body: super::openai::error_body(
                &format!("Mock upstream answered {status}."),
                "invalid_request_error",
                None,
            ),
        }),
        _ => Err(ParseBehaviorError(format!(
            "unsupported status in {text:?}: only 200, 4xx and 5xx"
        ))),
    }
}

fn number<T: FromStr>(digits: &str, text: &str) -> Result<T, ParseBehaviorError> {
    digits
        .trim()
        .parse()
        .map_err(|_| ParseBehaviorError(format!("{digits:?} in {text:?} is not a number")))
}

fn non_empty(value: &str, text: &str) -> Result<String, ParseBehaviorError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ParseBehaviorError(format!(
            "empty value after ':' in {text:?}"
        )));
    }
    Ok(value.to_owned())
}

/// Reads `B1,B2,...,Bn`: `B1..Bn-1` are one-shots, `Bn` the steady behaviour.
pub fn parse_sequence(text: &str) -> Result<(Vec<Behavior>, Behavior), ParseBehaviorError> {
    let mut behaviors = text
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<Behavior>, _>>()?;
    match behaviors.pop() {
        Some(steady) => Ok((behaviors, steady)),
        None => Err(ParseBehaviorError(format!("no behaviour in {text:?}"))),
    }
}

/// One `--key SECRET=B1,...,Bn` flag: the key's one-shots (`B1..Bn-1`) and steady behaviour (`Bn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFlag {
    pub secret: String,
    pub once: Vec<Behavior>,
    pub steady: Behavior,
}

impl FromStr for KeyFlag {
    type Err = ParseBehaviorError;

    fn from_str(flag: &str) -> Result<Self, Self::Err> {
        // Behaviours never contain '=', secrets (base64 padding) might.
        let Some((secret, script)) = flag.rsplit_once('=') else {
            return Err(ParseBehaviorError(
                "expected SECRET=BEHAVIOR[,BEHAVIOR...]".to_owned(),
            ));
        };
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(ParseBehaviorError("empty secret before '='".to_owned()));
        }
        let (once, steady) = parse_sequence(script)?;
        Ok(KeyFlag {
            secret: secret.to_owned(),
            once,
            steady,
        })
    }
}
