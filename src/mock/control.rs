//! `/_mock/...`: scripting and reading the mock from another process (compose, benchmarks).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::behavior::{parse_sequence, Behavior, ParseBehaviorError};
use super::openai::{bad_request, json_response};
use super::state::MockState;

/// `POST /_mock/keys/{secret}`: fields left out keep their value; `{}` only allows the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyUpdate {
    /// One behaviour, or `B1,...,Bn` as in a `--key` flag (one-shots then steady).
    steady: Option<String>,
    /// Replaces the one-shot queue.
    once: Option<Vec<String>>,
}

/// `POST /_mock/config`: fields left out keep their value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigUpdate {
    delay_ms: Option<u64>,
    strict: Option<bool>,
    missing_models: Option<Vec<String>>,
    organization: Option<String>,
    restricted_paths: Option<Vec<String>>,
    tpm_limit: Option<u64>,
}

fn ok() -> Response {
    json_response(StatusCode::OK, json!({"ok": true}).to_string())
}

/// The control request in `body`, or the 400 that says why it is not one.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|error| {
        let message = format!("invalid control request body: {error}");
        Box::new(bad_request(&message, None))
    })
}

fn invalid(field: &str, error: &ParseBehaviorError) -> Response {
    bad_request(&format!("invalid {field:?}: {error}"), Some(field))
}

pub(super) async fn update_key(
    State(state): State<Arc<MockState>>,
    Path(secret): Path<String>,
    body: Bytes,
) -> Response {
    let update: KeyUpdate = match parse_json(&body) {
        Ok(update) => update,
        Err(response) => return *response,
    };
    let steady = match update.steady.as_deref().map(parse_sequence).transpose() {
        Ok(steady) => steady,
        Err(error) => return invalid("steady", &error),
    };
    let once = update.once.map(|once| {
        let parsed = once.iter().map(|text| text.parse::<Behavior>());
        parsed.collect::<Result<Vec<_>, _>>()
    });
    let once = match once.transpose() {
        Ok(once) => once,
        Err(error) => return invalid("once", &error),
    };
    state.allow_key(&secret);
    // `steady` given as a sequence brings its own one-shots; an explicit `once` comes first.
    let mut one_shots = once;
    if let Some((leading, steady)) = steady {
        if !leading.is_empty() {
            one_shots.get_or_insert_with(Vec::new).extend(leading);
        }
        state.set_steady(&secret, steady);
    }
    if let Some(one_shots) = one_shots {
        state.script(&secret, one_shots);
    }
    ok()
}

/// `GET /_mock/stats`: `{"total": N, "keys": {"<secret>": N}}`.
pub(super) async fn stats(State(state): State<Arc<MockState>>) -> Response {
    let body = json!({"total": state.total_requests(), "keys": state.request_counts()});
    json_response(StatusCode::OK, body.to_string())
}

/// `POST /_mock/reset`: back to the options the mock started with, counts at zero.
pub(super) async fn reset(State(state): State<Arc<MockState>>) -> Response {
    state.reset();
    ok()
}

pub(super) async fn configure(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let update: ConfigUpdate = match parse_json(&body) {
        Ok(update) => update,
        Err(response) => return *response,
    };
    if let Some(ms) = update.delay_ms {
        state.set_delay_ms(ms);
    }
    if let Some(strict) = update.strict {
        state.set_strict(strict);
    }
    if let Some(models) = update.missing_models {
        let models: Vec<&str> = models.iter().map(String::as_str).collect();
        state.set_missing_models(&models);
    }
    let mut rules = state.rules();
    if let Some(org) = update.organization {
        rules.organization = Some(org).filter(|o| !o.is_empty());
    }
    if let Some(paths) = update.restricted_paths {
        rules.restricted_paths = paths;
    }
    if let Some(limit) = update.tpm_limit {
        rules.tpm_limit = Some(limit).filter(|l| *l > 0);
    }
    state.set_rules(rules);
    ok()
}
