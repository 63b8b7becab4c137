//! [`MockUpstream`]: a mock started in-process on a free port, scripted by tests and benchmarks,
//! stopped when dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::behavior::Behavior;
use super::state::{MockState, RecordedRequest};
use super::{serve, MockError, MockOptions};

/// How long [`MockUpstream::stop`] waits for open connections to finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running mock upstream on `127.0.0.1`, stopped when dropped.
#[derive(Debug)]
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<MockState>,
    /// Dropping or firing it starts the server's graceful shutdown.
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl MockUpstream {
    /// An open mock (every key answers ok) on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound: the test environment itself is broken then.
    #[allow(clippy::expect_used)]
    pub async fn start() -> MockUpstream {
        MockUpstream::start_with(MockOptions::default())
            .await
            .expect("mock upstream: bind 127.0.0.1:0")
    }

    /// A mock configured as the `mock-upstream` command would be, on a free loopback port.
    pub async fn start_with(opts: MockOptions) -> Result<MockUpstream, MockError> {
        let state = Arc::new(MockState::from_options(&opts)?);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let signal = async move {
            // A dropped sender stops the server too.
            let _ = stop.await;
        };
        let server = tokio::spawn(serve(Arc::clone(&state), listener, signal));
        Ok(MockUpstream {
            addr,
            state,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT/v1`, the `base_url` a pool points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The shared state, for what the shorthands below do not cover.
    pub fn state(&self) -> &Arc<MockState> {
        &self.state
    }

    /// Stops the server and waits (a bounded time) for its open connections to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            if tokio::time::timeout(STOP_GRACE, server).await.is_err() {
                tracing::warn!("mock upstream: connections still open after the grace period");
            }
        }
    }

    /// See [`MockState::script`].
    pub fn script(&self, key: &str, one_shots: Vec<Behavior>) {
        self.state.script(key, one_shots);
    }

    /// See [`MockState::set_steady`].
    pub fn set_steady(&self, key: &str, b: Behavior) {
        self.state.set_steady(key, b);
    }

    /// See [`MockState::set_strict`].
    pub fn set_strict(&self, strict: bool) {
        self.state.set_strict(strict);
    }

    pub fn requests(&self, key: &str) -> u64 {
        self.state.requests(key)
    }

    /// Paced SSE bodies still open (a cancelled client request drops its upstream body).
    pub fn open_streams(&self) -> u64 {
        self.state.open_streams()
    }

    pub fn total_requests(&self) -> u64 {
        self.state.total_requests()
    }

    pub fn reset_counts(&self) {
        self.state.reset_counts();
    }

    /// See [`MockState::set_rules`].
    pub fn set_rules(&self, rules: super::rules::ProviderRules) {
        self.state.set_rules(rules);
    }

    pub fn set_missing_models(&self, models: &[&str]) {
        self.state.set_missing_models(models);
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.state.set_delay_ms(ms);
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.last_request()
    }

    pub fn last_request_headers(&self) -> Option<HeaderMap> {
        self.state.last_request().map(|request| request.headers)
    }

    pub fn last_request_body(&self) -> Option<Bytes> {
        self.state.last_request().map(|request| request.body)
    }

    /// Path and query of the last request, e.g. `/v1/chat/completions`.
    pub fn last_request_uri(&self) -> Option<String> {
        self.state.last_request().map(|request| request.uri)
    }

    /// The `Host` the last request was sent to.
    pub fn last_request_host(&self) -> Option<String> {
        self.state.last_request().and_then(|request| request.host)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
