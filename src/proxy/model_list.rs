//! `GET /v1/models` of a pool with a model allowlist: the models a client may ask for (the
//! allowlist, then the fallback targets), in OpenAI's list shape, answered without an upstream
//! call. A pool without an allowlist passes the request to the upstream like any other.

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::PoolConfig;

/// The answer to `method path` when it is the model list of a pool with an allowlist.
pub fn allowlist_answer(method: &Method, path: &str, pool: &PoolConfig) -> Option<Response> {
    if method != Method::GET || path.trim_end_matches('/') != "models" || pool.models.is_empty() {
        return None;
    }
    Some(axum::Json(model_list(pool)).into_response())
}

/// The allowlist, then every fallback target not already listed, each once.
fn listed_models(pool: &PoolConfig) -> Vec<&str> {
    let mut ids: Vec<&str> = Vec::new();
    let targets = pool.fallbacks.values().flatten();
    for id in pool.models.iter().chain(targets) {
        if !ids.contains(&id.as_str()) {
            ids.push(id);
        }
    }
    ids
}

fn model_list(pool: &PoolConfig) -> serde_json::Value {
    let data: Vec<serde_json::Value> = listed_models(pool)
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "keygate"}))
        .collect();
    json!({"object": "list", "data": data})
}
