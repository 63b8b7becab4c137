//! The HTTP surface in process (`routes::router` through `tower::ServiceExt::oneshot`, the
//! embedded store, an upstream that is never reached): routing, client and admin
//! authentication, the model allowlist and the error shape, none of which a bound port or a
//! network changes. Each refusal is checked to leave every key as it was.

use http::StatusCode;
use keygate::mock::MockUpstream;
use keygate::store::PoolSnapshot;
use serde_json::{json, Value};

use crate::admin::{admin_config, ADMIN_TOKEN, K3};
use crate::harness::gateway::{
    config_toml, http, parse_config, InProcess, TestGateway, CLIENT_TOKEN,
};

/// Never contacted: every request here is refused before any upstream attempt.
const UNREACHED_UPSTREAM: &str = "http://127.0.0.1:9/v1";

async fn gateway(pool_extra: &str) -> InProcess {
    let toml = config_toml(None, UNREACHED_UPSTREAM, &K3, pool_extra);
    InProcess::start(admin_config(&toml)).await
}

async fn snapshot(gw: &InProcess) -> PoolSnapshot {
    gw.state.store.snapshot("p", None).await.expect("snapshot")
}

/// No key was selected, reported or changed: every one active, weight 1, no traffic counted.
async fn assert_keys_untouched(gw: &InProcess) {
    for k in snapshot(gw).await.keys {
        assert_eq!(k.status.as_str(), "active", "{k:?}");
        assert_eq!(
            (k.weight, k.successes, k.failures, k.errors),
            (1, 0, 0, 0),
            "{k:?}"
        );
    }
}

/// `{"error":{"message","type","code","param"}}` with the given code.
fn assert_openai_error(body: &Value, code: &str) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert_eq!(e["code"], code, "{body}");
    assert!(e.get("param").is_some(), "{body}");
}

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn an_unknown_path_answers_404_in_the_openai_error_shape() {
    let gw = gateway("").await;
    for path in ["/", "/v2/chat/completions", "/admin-x", "/metricsz"] {
        let (status, body) = gw.send("GET", path, &[], "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_openai_error(&body, "not_found");
    }
}

#[tokio::test]
async fn a_request_without_a_valid_client_token_gets_401_and_touches_no_key() {
    let gw = gateway("").await;
    let json = ("content-type", "application/json");
    let wrong = format!("Bearer {CLIENT_TOKEN}x");
    for auth in [
        None,
        Some("Bearer "),
        Some(wrong.as_str()),
        Some("Basic abc"),
    ] {
        let mut headers = vec![json];
        headers.extend(auth.map(|a| ("authorization", a)));
        let (status, body) = gw
            .send("POST", "/v1/chat/completions", &headers, CHAT)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_openai_error(&body, "invalid_api_key");
    }
    assert_keys_untouched(&gw).await;
}

#[tokio::test]
async fn a_model_outside_the_pools_allowlist_gets_400_naming_the_allowed_ones_and_touches_no_key() {
    let gw = gateway("models = [\"gpt-allowed\"]").await;
    let auth = format!("Bearer {CLIENT_TOKEN}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, body) = gw
        .send("POST", "/v1/chat/completions", &headers, CHAT)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "model_not_allowed");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("gpt-test") && message.contains("gpt-allowed"),
        "{message}"
    );
    assert_keys_untouched(&gw).await;
}

#[tokio::test]
async fn without_an_admin_token_the_admin_api_answers_404_admin_disabled_naming_the_variable() {
    let toml = config_toml(None, UNREACHED_UPSTREAM, &K3, "");
    let gw = InProcess::start(parse_config(&toml)).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for (method, path) in [
        ("GET", "/admin/pools"),
        ("POST", "/admin/pools/p/keys/k1/disable"),
    ] {
        let (status, body) = gw
            .send(method, path, &[("authorization", &bearer)], "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_openai_error(&body, "admin_disabled");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("KEYGATE_ADMIN_TOKEN"),
            "{method} {path}: {body}"
        );
    }
    assert_keys_untouched(&gw).await;
}

#[tokio::test]
async fn an_admin_weight_out_of_range_gets_400_naming_the_field_and_changes_nothing() {
    let gw = gateway("").await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    for weight in [json!(1001), json!(-1), json!("3"), json!(null)] {
        let body = json!({ "weight": weight }).to_string();
        let path = "/admin/pools/p/keys/k1/weight";
        let (status, answer) = gw.send("PUT", path, &headers, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("weight"), "{body}: {answer}");
    }
    assert_keys_untouched(&gw).await;
}

#[tokio::test]
async fn health_endpoints_answer_without_a_token() {
    let gw = gateway("").await;
    let (status, body) = gw.send("GET", "/healthz", &[], "").await;
    assert_eq!((status, body), (StatusCode::OK, Value::from("ok")));
    let (status, body) = gw.send("GET", "/readyz", &[], "").await;
    assert_eq!((status, body), (StatusCode::OK, Value::from("ready\n")));
}

/// Status and body (JSON when it parses, else a JSON string; a chat completion's `id`, fresh
/// for each answer, left out) of one request to a listening gateway.
async fn over_the_wire(
    gw: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let method = http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http().request(method, gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body.to_string()).send().await.expect("send");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned().into());
    (status, without_id(body))
}

fn without_id(mut body: Value) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.remove("id");
    }
    body
}

/// A request: method, path, headers, body.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// A listener hands the requests `/v1/{*path}` matches to the proxy without the router
/// (`server::Routes`): each answer must be the router's. The same config in process and on a
/// port, the same requests to both, among them the paths next to the route's edge (`/v1/`,
/// `/v1`, an empty segment, an encoded slash) and the methods the router treats apart (HEAD,
/// whose answer it sends without a body, and OPTIONS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_answers_every_path_as_the_router_does() {
    let mock = MockUpstream::start().await;
    let toml = config_toml(None, &mock.base_url(), &K3, "");
    let routed = InProcess::start(admin_config(&toml)).await;
    let listening = TestGateway::start_config(admin_config(&toml)).await;
    let auth = format!("Bearer {CLIENT_TOKEN}");
    let with: &[(&str, &str)] = &[
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let cases: &[Case] = &[
        ("GET", "/v1/", with, ""),
        ("GET", "/v1", with, ""),
        ("POST", "/v1/chat/completions", &[], CHAT),
        ("POST", "/v1/chat/completions", with, CHAT),
        ("POST", "/v1/chat/completions", with, "{not json"),
        ("GET", "/v1/models", with, ""),
        ("HEAD", "/v1/models", with, ""),
        ("OPTIONS", "/v1/chat/completions", with, ""),
        ("POST", "/v1//chat/completions", with, CHAT),
        ("POST", "/v1/..%2fadmin/pools", with, CHAT),
        ("GET", "/v1x/models", with, ""),
    ];
    let mut statuses = Vec::new();
    for (method, path, headers, body) in cases {
        let (status, answer) = routed.send(method, path, headers, body).await;
        let expected = (status, without_id(answer));
        let got = over_the_wire(&listening, method, path, headers, body).await;
        assert_eq!(got, expected, "{method} {path}");
        if *method == "HEAD" {
            assert_eq!(got.1, Value::from(""), "an answer to HEAD has no body");
        }
        statuses.push(status.as_u16());
    }
    // The cases reach the proxy's answers and the router's own, not one refusal for all.
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&401), "{statuses:?}");
    assert!(statuses.contains(&404), "{statuses:?}");
}
