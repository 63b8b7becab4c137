//! An OpenAI-compatible mock provider with scripted per-key behaviour: the upstream of the
//! integration tests and benchmarks (in-process, through [`MockUpstream`]) and of the
//! `keygate mock-upstream` command ([`run`] with [`MockOptions`]).
//!
//! Endpoints (the upstream key is the request's `Authorization: Bearer <secret>`):
//! - `POST /v1/chat/completions`: a JSON completion, or with `"stream": true` a
//!   `text/event-stream` of `chat.completion.chunk` events (role, one chunk per answer word,
//!   finish, and with `stream_options.include_usage` a last chunk with `usage` and
//!   `choices: []`) ending in `data: [DONE]`.
//! - `POST /v1/responses` (the Responses API): a `response` object, or with `"stream": true`
//!   its named SSE events from `response.created` to `response.completed` (see `responses`).
//! - `POST /v1/embeddings` (floats, or with `"encoding_format": "base64"` each vector as the
//!   base64 of its little-endian `f32` bytes), `GET /v1/models`, `GET /v1/models/{id}`.
//! - Any other path: 404 `not_found`; a model in the "missing" set: 404 `model_not_found`;
//!   malformed JSON or no `model`: 400. All in OpenAI's error shape. Answers echo the `model`.
//!
//! Usage numbers are deterministic: `prompt_tokens` is the number of whitespace-separated words
//! in every message's content (embeddings: in every input string, or the count of token ids),
//! at least 1; `completion_tokens` is 5, the five words of the fixed answer, which streaming
//! sends as five content chunks; `total_tokens` is the sum (embeddings: `prompt_tokens`).
//!
//! Each key keeps an exact request count and a script: a FIFO queue of one-shot [`Behavior`]s,
//! then a steady behaviour (ok unless set). Keys never scripted answer ok, or 401 when the mock
//! is strict. The text form of a behaviour, used by `--key SECRET=B1,...,Bn` (one-shots
//! `B1..Bn-1`, then steady `Bn`) and by the control API:
//!
//! | text | behaviour |
//! |---|---|
//! | `ok` / `200` | [`Behavior::Ok`] |
//! | `429`, `429:5` | [`Behavior::RateLimited`] (`retry-after: 5`; no `,` in the value) |
//! | `401` | [`Behavior::Unauthorized`] |
//! | `quota` | [`Behavior::Quota`] (429 `insufficient_quota`) |
//! | `500`..`599` | [`Behavior::ServerError`] |
//! | other `4xx` | [`Behavior::Status`] with an OpenAI error body |
//! | `delay:200`, `delay:200:429` | [`Behavior::Delay`] (then ok, or then the rest) |
//! | `remaining0:1s` | [`Behavior::RemainingZero`] |
//! | `slow:100` | [`Behavior::SlowStream`] |
//! | `drop:3` | [`Behavior::StreamThenDrop`] |
//! | `hang` | [`Behavior::Hang`] |
//! | `leak:sse`, `leak:gzip:400` | [`Behavior::Leak`] (forms: plain, escaped, sse, gzip) |
//!
//! Control API, for other processes: `POST /_mock/keys/{secret}` with
//! `{"steady": "429:5", "once": ["401", "ok"]}` (either field), `GET /_mock/stats` →
//! `{"total": N, "keys": {"<secret>": N}}` (the mock's own, fake, secrets), `POST /_mock/reset`
//! (back to the start options), `POST /_mock/config` with `{"delay_ms", "strict",
//! "missing_models", "organization", "restricted_paths", "tpm_limit"}` (any of them).
//!
//! Provider rules (`rules.rs`, off until configured) answer as OpenAI documents for requests a
//! valid key cannot serve: a foreign `OpenAI-Organization` → 401 `mismatched_organization`, a
//! restricted path → 401 "Missing scopes", prompt words + `max_tokens` above `tpm_limit` → 429
//! "Request too large ... (TPM)". They apply to keys whose behaviour is `ok`.

mod behavior;
mod control;
mod handle;
mod leak;
mod openai;
mod pace;
mod responses;
mod rules;
mod state;
#[cfg(test)]
mod tests;
mod v1;

use std::future::Future;
use std::sync::Arc;

use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

pub use behavior::{parse_sequence, Behavior, KeyFlag, LeakForm, ParseBehaviorError};
pub use handle::MockUpstream;
pub use rules::ProviderRules;
pub use state::{MockState, RecordedRequest};

/// Help of `--key`: every behaviour of the text form (the table above).
const KEY_FLAG_HELP: &str = "A key's script, SECRET=B1,...,Bn: one-shot behaviours B1..Bn-1, \
then Bn for every later request (repeatable). Behaviours: ok | 429 | 429:SECS (retry-after) | \
401 | quota (429 insufficient_quota) | 4xx | 5xx | delay:MS[:BEHAVIOR] (wait, then ok or \
BEHAVIOR) | remaining0:RESET (ok, x-ratelimit-remaining-requests: 0) | slow:MS (one SSE event \
every MS) | drop:EVENTS (send EVENTS events, then cut the connection) | hang (never answer).";

/// Options of the mock, shaped for the `keygate mock-upstream` command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MockOptions {
    /// Delay before every answer, in milliseconds (the benchmarks' delay mode).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    #[arg(long = "key", value_name = "SECRET=BEHAVIOR,...", help = KEY_FLAG_HELP)]
    pub keys: Vec<String>,
    /// Answer 401 to keys not given with `--key`.
    #[arg(long)]
    pub strict: bool,
    /// A model that answers 404 `model_not_found` (repeatable).
    #[arg(long = "missing-model", value_name = "MODEL")]
    pub missing_models: Vec<String>,
}

/// Why the mock could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("invalid --key {flag:?}: {reason}")]
    KeyFlag {
        flag: String,
        reason: ParseBehaviorError,
    },
    #[error("mock upstream server: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the mock described by `opts` on `listener` until `shutdown` completes, then lets open
/// requests finish (hanging and slow ones are cut off).
pub async fn run(
    opts: MockOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MockError> {
    let state = Arc::new(MockState::from_options(&opts)?);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, keys = opts.keys.len(), strict = opts.strict, "mock upstream listening");
    serve(state, listener, shutdown).await?;
    Ok(())
}

/// The mock's routes over `state`.
pub fn app(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/{*path}", any(v1::serve_v1))
        .route("/_mock/keys/{secret}", post(control::update_key))
        .route("/_mock/stats", get(control::stats))
        .route("/_mock/reset", post(control::reset))
        .route("/_mock/config", post(control::configure))
        .fallback(v1::fallback)
        .with_state(state)
}

async fn serve(
    state: Arc<MockState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = Arc::clone(&state);
    let signal = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    // No Nagle delay: slow streams must leave event by event.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "mock upstream: TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .await
}
