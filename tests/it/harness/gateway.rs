//! Whole gateways started in process on port 0, on a real Redis (or the embedded store), in
//! front of a real HTTP upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use keygate::config::{hash_token, Config};
use keygate::state::AppState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CLIENT_TOKEN: &str = "test-client-token";

/// One key of the test pool: id, secret, weight, group.
#[derive(Clone)]
pub struct TestKey {
    pub id: &'static str,
    pub secret: &'static str,
    pub weight: u32,
    pub group: &'static str,
}

pub const fn key(id: &'static str, secret: &'static str) -> TestKey {
    TestKey {
        id,
        secret,
        weight: 1,
        group: "stable",
    }
}

/// A config with one client (`CLIENT_TOKEN`) and one pool `p` of `keys` in front of
/// `upstream`; `extra` is appended inside the pool table (policy, timeouts, canary...).
pub fn config_toml(
    redis_url: Option<&str>,
    upstream: &str,
    keys: &[TestKey],
    pool_extra: &str,
) -> String {
    let store = match redis_url {
        Some(u) => format!("[store]\nredis_url = \"{u}\"\ntimeout_ms = 200\n"),
        None => String::new(),
    };
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\nshutdown_grace_s = 5\n\n{store}\n\
         [[clients]]\nname = \"tester\"\ntoken_sha256 = \"{}\"\npools = [\"p\"]\n\n\
         [[pools]]\nname = \"p\"\nbase_url = \"{upstream}\"\nmax_attempts = 3\n{pool_extra}\n",
        hash_token(CLIENT_TOKEN)
    );
    for k in keys {
        t.push_str(&format!(
            "[[pools.keys]]\nid = \"{}\"\nsecret = \"{}\"\nweight = {}\ngroup = \"{}\"\n\n",
            k.id, k.secret, k.weight, k.group
        ));
    }
    t
}

pub fn parse_config(toml: &str) -> Config {
    let env = |_: &str| None;
    Config::from_toml_str(toml, &env, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{toml}"))
}

/// A running in-process gateway; stops (gracefully) on drop.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start(toml: &str) -> TestGateway {
        TestGateway::start_config(parse_config(toml)).await
    }

    pub async fn start_config(config: Config) -> TestGateway {
        let state = keygate::gateway::build_state(config, None)
            .await
            .expect("gateway state");
        TestGateway::start_state(state).await
    }

    /// Serves a state built by the test (e.g. one with a `config_path`, for reload tests).
    pub async fn start_state(state: Arc<AppState>) -> TestGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keygate::gateway::run(state.clone(), listener, async move {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Asks for a graceful shutdown and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A chat completion request body.
pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "say hello to the test"}],
    });
    if stream {
        v["stream"] = true.into();
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// POSTs a chat completion with the test client's token.
pub async fn post_chat(
    c: &reqwest::Client,
    gw: &TestGateway,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut rb = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_TOKEN)
        .json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.expect("request to gateway")
}

/// A gateway's whole HTTP surface in process, over the embedded store: requests go through
/// `tower::ServiceExt::oneshot`, with no port and no accept loop. For what a bound socket adds
/// nothing to: routing, authentication, validation, error shapes.
pub struct InProcess {
    pub router: axum::Router,
    pub state: Arc<AppState>,
}

impl InProcess {
    pub async fn start(config: Config) -> InProcess {
        let state = keygate::gateway::build_state(config, None)
            .await
            .expect("gateway state");
        InProcess {
            router: keygate::routes::router(state.clone()),
            state,
        }
    }

    /// One request: its status and its body (JSON when it parses, else a JSON string).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (http::StatusCode, serde_json::Value) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(axum::body::Body::from(body.to_string()))
            .expect("request");
        let response = (self.router.clone().oneshot(request).await).expect("infallible router");
        let status = response.status();
        let bytes = (response.into_body().collect().await)
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned().into());
        (status, body)
    }
}
