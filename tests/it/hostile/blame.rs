//! Blaming the right party: with one ordinary client token, an outsider tries to take the pool's
//! keys away from the other clients through answers the upstream gives about its own requests (a
//! foreign organisation, a path outside the key's scopes, one request above the key's TPM), and
//! through 401/403s keygate cannot blame on the request. The upstream is the real mock answering
//! as OpenAI documents. After each attack every key is `active` (read through the store), another
//! client's request succeeds, and the attacker got the upstream's answer (or keygate's refusal),
//! each attack request with exactly one upstream attempt.

use keygate::config::hash_token;
use keygate::mock::{Behavior, ProviderRules};
use keygate::pool::KeyState;

use super::*;
use crate::harness::wait_until_or_explain;

const ATTACKER_TOKEN: &str = "attacker-client-token";

/// The hostile config plus an `attacker` client on the same pool, and `pool_extra` (pool
/// fields, then tables such as `[pools.policy]`) after `max_attempts`.
fn with_attacker(pool_extra: &'static str) -> impl FnOnce(String) -> String + Send + 'static {
    move |toml: String| {
        let attacker = format!(
            "[[clients]]\nname = \"attacker\"\ntoken_sha256 = \"{}\"\npools = [\"p\"]\n\n[[pools]]\n",
            hash_token(ATTACKER_TOKEN)
        );
        strict_limits(toml)
            .replacen("[[pools]]\n", &attacker, 1)
            .replacen(
                "max_attempts = 3\n",
                &format!("max_attempts = 3\n{pool_extra}\n"),
                1,
            )
    }
}

/// A request with the attacker's token, and how many upstream requests it caused.
async fn attack(env: &Isolated, rb: reqwest::RequestBuilder) -> (reqwest::Response, u64) {
    let before = env.mock().total_requests();
    let r = rb.bearer_auth(ATTACKER_TOKEN).send().await.unwrap();
    (r, env.mock().total_requests() - before)
}

fn chat_request(env: &Isolated) -> reqwest::RequestBuilder {
    http().post(env.gw().url("/v1/chat/completions"))
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Every key `active`, and the other client (`tester`) served.
async fn assert_keys_active_and_others_served(env: &Isolated) {
    for k in env.keys().await {
        assert_eq!(
            (k.id.as_str(), k.status),
            (k.id.as_str(), KeyState::Active),
            "{k:?}"
        );
    }
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_organization_takes_no_key_away_and_is_not_retried() {
    let env = Isolated::start(with_attacker("")).await;
    env.mock().set_rules(ProviderRules {
        organization: Some("org-keygate".into()),
        ..ProviderRules::default()
    });
    for _ in 0..8 {
        let rb = chat_request(&env)
            .header("OpenAI-Organization", "org-someone-else")
            .json(&chat("gpt-4.1", false));
        let (r, upstream) = attack(&env, rb).await;
        assert_eq!(upstream, 1, "one upstream attempt per attack request");
        assert_eq!(r.headers()["x-keygate-attempts"], "1");
        // The upstream's own 401 passed through; or, when keygate no longer forwards a
        // client's organisation, the upstream's answer to a request without one.
        let (status, code) = error_code(r).await;
        assert!(
            (status, code.as_str()) == (401, "mismatched_organization") || status == 200,
            "{status} {code}"
        );
    }
    assert_keys_active_and_others_served(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_organization_answer_is_passed_through_and_leaves_the_key_active() {
    let env = Isolated::start(with_attacker("")).await;
    let body = r#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
    let answer = Behavior::Status {
        status: 401,
        headers: Vec::new(),
        body: body.to_string(),
    };
    for k in &KEYS {
        env.mock().set_steady(k.secret, answer.clone());
    }
    for _ in 0..8 {
        let (r, upstream) = attack(&env, chat_request(&env).json(&chat("gpt-4.1", false))).await;
        assert_eq!(upstream, 1, "one upstream attempt per attack request");
        assert_eq!(error_code(r).await, (401, "mismatched_organization".into()));
    }
    for k in &KEYS {
        env.mock().set_steady(k.secret, Behavior::Ok);
    }
    assert_keys_active_and_others_served(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_outside_the_keys_scopes_takes_no_key_away_and_is_not_retried() {
    // A pool that serves every path (`paths = ["*"]`): with the default path allowlist keygate
    // answers 404 itself before any key is used (hostile::wire), so the provider's answer is only
    // seen where an operator opened the path.
    let env = Isolated::start(with_attacker("paths = [\"*\"]")).await;
    env.mock().set_rules(ProviderRules {
        restricted_paths: vec!["organization/".into()],
        ..ProviderRules::default()
    });
    for _ in 0..8 {
        let rb = http().get(env.gw().url("/v1/organization/users"));
        let (r, upstream) = attack(&env, rb).await;
        assert_eq!(upstream, 1, "one upstream attempt per attack request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("Missing scopes"), "{text}");
    }
    assert_keys_active_and_others_served(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_above_the_keys_tpm_cool_no_key_and_are_not_retried() {
    let env = Isolated::start(with_attacker("")).await;
    env.mock().set_rules(ProviderRules {
        tpm_limit: Some(30_000),
        ..ProviderRules::default()
    });
    let mut huge = chat("gpt-4.1", false);
    huge["max_tokens"] = 1_000_000.into();
    for _ in 0..3 {
        let (r, upstream) = attack(&env, chat_request(&env).json(&huge)).await;
        assert_eq!(upstream, 1, "one upstream attempt per attack request");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 429);
        assert_eq!(body["error"]["type"], "tokens");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Request too large for gpt-4.1"),
            "{message}"
        );
    }
    for k in env.keys().await {
        assert_eq!((k.strikes, k.cooldown_until_ms), (0, 0), "{k:?}");
    }
    assert_keys_active_and_others_served(&env).await;
}

/// Sends the tester's requests until `key` has been tried, each of them served (by the other
/// key when `key` refuses).
async fn traffic_until_tried(env: &Isolated, key: &str) {
    for _ in 0..200 {
        if env.mock().requests(key) > 0 {
            return;
        }
        let r = post_chat(&http(), env.gw(), &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200, "the other key serves the request");
    }
    panic!("the key was never selected");
}

fn requests_seen(env: &Isolated, secret: &str) -> String {
    format!(
        "mock saw {} requests with the key",
        env.mock().requests(secret)
    )
}

async fn record(env: &Isolated, id: &str) -> KeyRecord {
    env.keys().await.into_iter().find(|k| k.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_disabled_once_keygate_s_own_probe_confirms_it() {
    let env = Isolated::start(with_attacker("")).await;
    let revoked = &KEYS[0];
    env.mock()
        .set_steady(revoked.secret, Behavior::Unauthorized);
    traffic_until_tried(&env, revoked.secret).await;
    wait_until_or_explain(
        Duration::from_secs(10),
        "the probe's 401 disables the key",
        || async { record(&env, revoked.id).await.status == KeyState::Disabled },
        || requests_seen(&env, revoked.secret),
    )
    .await;
    let k = record(&env, revoked.id).await;
    assert_eq!(
        (k.status, k.reason.as_str()),
        (KeyState::Disabled, "unauthorized")
    );
    // The request that met the 401, and keygate's probe.
    assert!(env.mock().requests(revoked.secret) >= 2);
    assert_eq!(record(&env, KEYS[1].id).await.status, KeyState::Active);
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benched_key_whose_probe_succeeds_is_active_again() {
    let env = Isolated::start(with_attacker("")).await;
    let flaky = &KEYS[0];
    env.mock()
        .script(flaky.secret, vec![Behavior::Unauthorized]);
    traffic_until_tried(&env, flaky.secret).await;
    wait_until_or_explain(
        Duration::from_secs(10),
        "the probe answered and the key is active",
        || async {
            let k = record(&env, flaky.id).await;
            env.mock().requests(flaky.secret) >= 2 && k.status == KeyState::Active
        },
        || requests_seen(&env, flaky.secret),
    )
    .await;
    let k = record(&env, flaky.id).await;
    // The 401 was counted against the key, then its probe's success brought it back.
    assert_eq!((k.failures, k.last_status, k.reason.as_str()), (1, 200, ""));
    assert_keys_active_and_others_served(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_requests_keep_getting_keys_refused_is_cut_off_by_its_circuit() {
    let policy = "[pools.policy]\nclient_circuit_threshold = 2\nclient_circuit_open_s = 600\n";
    let env = Isolated::start(with_attacker(policy)).await;
    // Missing scopes on an inference path: keygate cannot blame the request, so each answer
    // benches a key; keygate's probe (GET models) then finds the key fine.
    env.mock().set_rules(ProviderRules {
        restricted_paths: vec!["chat/".into()],
        ..ProviderRules::default()
    });
    // Both keys refuse it: benched, then brought back by keygate's probes, which count the
    // damage against the client that caused it.
    let (r, _) = attack(&env, chat_request(&env).json(&chat("gpt-4.1", false))).await;
    assert_eq!(error_code(r).await, (429, "all_keys_cooling".into()));
    wait_until(
        Duration::from_secs(10),
        "the probes bring both keys back",
        || async {
            env.keys()
                .await
                .iter()
                .all(|k| k.status == KeyState::Active)
        },
    )
    .await;
    let (r, upstream) = attack(&env, chat_request(&env).json(&chat("gpt-4.1", false))).await;
    assert_eq!(upstream, 0, "a refused client reaches no key");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (429, "client_circuit_open".into()));
    env.mock().set_rules(ProviderRules::default());
    assert_keys_active_and_others_served(&env).await;
    let (r, _) = attack(&env, chat_request(&env).json(&chat("gpt-4.1", false))).await;
    assert_eq!(error_code(r).await, (429, "client_circuit_open".into()));
    let metrics = env.gw().state.metrics.render();
    let line = |client: &str| {
        let prefix =
            format!("keygate_client_rejections_total{{client=\"{client}\",reason=\"client_circuit_open\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
    };
    assert_eq!(line("attacker").as_deref(), Some("2"), "{metrics}");
    assert_eq!(line("tester").as_deref(), Some("0"), "initialised at 0");
}
