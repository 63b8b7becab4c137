//! `GET /v1/models` of a pool with an allowlist answers the allowlist and the fallback targets,
//! in OpenAI's list shape, without an upstream call; without an allowlist it is proxied.

use keygate::mock::MockUpstream;
use serde_json::Value;

use crate::admin::K3;
use crate::harness::gateway::{config_toml, http, TestGateway, CLIENT_TOKEN};

async fn list_models(c: &reqwest::Client, gw: &TestGateway) -> (u16, Value) {
    let r = c
        .get(gw.url("/v1/models"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .expect("GET /v1/models");
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn models_lists_the_allowlist_and_fallbacks_without_calling_the_upstream() {
    let mock = MockUpstream::start().await;
    let pool = "models = [\"gpt-4.1\", \"deepseek-v3.2\", \"qwen-3\"]\n\
                fallbacks = { \"gpt-4.1\" = [\"qwen-3\", \"deepseek-v3.2\"] }\n";
    let gw = TestGateway::start(&config_toml(None, &mock.base_url(), &K3, pool)).await;
    let (status, body) = list_models(&http(), &gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = (body["data"].as_array().expect("data"))
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model", "{m}");
            m["id"].as_str().expect("id")
        })
        .collect();
    // Fallback targets are allowlisted too (check-config insists): each listed once.
    assert_eq!(ids, ["gpt-4.1", "deepseek-v3.2", "qwen-3"]);
    assert_eq!(mock.total_requests(), 0);
}

#[tokio::test]
async fn without_an_allowlist_models_is_the_upstreams_answer() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_toml(None, &mock.base_url(), &K3, "")).await;
    let (status, body) = list_models(&http(), &gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.total_requests(), 1);
}
