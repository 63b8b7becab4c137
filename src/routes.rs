//! The HTTP surface: which path goes to which handler (`/v1/*` to the proxy, health, metrics,
//! admin). Handlers live with what they serve; this module only routes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::server::{Direct, Routes};
use crate::state::AppState;

/// The main listener's routes: [`router`], with every request it would send to
/// `/v1/{*path}` going to the proxy without it (`server::Routes`; BENCHMARKS.md, "The proxy's
/// requests skip the router").
pub fn public(state: Arc<AppState>) -> Routes {
    let proxy = state.clone();
    Routes {
        router: router(state),
        direct: Some(Direct::new("/v1/", move |remote, req| {
            Box::pin(crate::proxy::serve(proxy.clone(), remote, req))
        })),
    }
}

/// The whole public HTTP surface: `/v1/*` proxy, health, and `/metrics` and `/admin` unless
/// `server.metrics_listen` / `admin.listen` give them listeners of their own.
pub fn router(state: Arc<AppState>) -> Router {
    let config = state.gateway().config.clone();
    let mut router = Router::new()
        .route("/v1/{*path}", any(crate::proxy::handle))
        .route("/v1", any(crate::proxy::handle_root))
        .route("/healthz", get(healthz))
        .route("/readyz", get(crate::health::readyz));
    if config.server.metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    if config.admin.listen.is_none() {
        router = router.nest("/admin", crate::admin::router(state.clone()));
    }
    router.fallback(not_found).with_state(state)
}

/// Only `/metrics` (for `server.metrics_listen`).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Only `/admin` (for `admin.listen`).
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .nest("/admin", crate::admin::router(state.clone()))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> Response {
    crate::error::ApiError::unknown_path().into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    crate::health::refresh_key_gauges(&state).await;
    (
        StatusCode::OK,
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        axum::body::Body::from_stream(futures::stream::iter(
            state
                .metrics
                .render_chunks()
                .map(|chunk| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(chunk))),
        )),
    )
        .into_response()
}
