//! Checks of the `clients`, `pools` and `store` sections, each problem with its exact path.

use super::*;
use crate::config::check::ID_RULE;
use crate::config::check_pools::BASE_URL_RULE;

#[test]
fn client_problems_name_their_exact_paths() {
    let client = |name: &str, hash: &str, pools: &str| {
        format!("[[clients]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\npools = {pools}\n")
    };
    let good = hash_token("a");
    let text = format!("{}{MINIMAL}", client("bot", &good, "[\"dev\"]"));
    assert_problem(&text, "clients[0].pools[0]: unknown pool \"dev\"");
    let text = format!("{}{MINIMAL}", client("bot", "9f86d0", "[\"prod\"]"));
    assert_problem(&text, "clients[0].token_sha256: must be 64 hex characters");
    let text = format!(
        "{}{}{MINIMAL}",
        client("bot", &good, "[\"prod\"]"),
        client("bot", &hash_token("b"), "[\"prod\"]")
    );
    assert_problem(
        &text,
        "clients[1].name: duplicate client \"bot\" (also clients[0])",
    );
    let text = format!(
        "{}{}{MINIMAL}",
        client("a", &good, "[\"prod\"]"),
        client("b", &good, "[\"prod\"]")
    );
    assert_problem(&text, "clients[1].token_sha256: same token as clients[0]");
    let text = format!("{}{MINIMAL}", client("bot", &good, "[]"));
    assert_problem(&text, "clients[0].pools: at least one pool is required");
}

#[test]
fn pool_routing_problems_name_their_exact_paths() {
    let key = "id = \"k1\"\nsecret = \"sk-test-secret-1\"";
    assert_problem(
        &pool_with("[pools.canary]\npercent = 101", &[key]),
        "pools[0].canary.percent: must be 0..=100",
    );
    let canary_key = format!("{key}\ngroup = \"beta\"");
    let keys = [key, key, key, key, canary_key.as_str()].map(str::to_string);
    let keys: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| k.replace("k1", &format!("k{i}")))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_problem(
        &pool_with("", &keys),
        "pools[0].keys[4].group: must be \"stable\" or the pool's canary group \"canary\"",
    );
    let fallbacks = "models = [\"gpt-4.1\"]\nfallbacks = { \"gpt-4.1\" = [\"x\"] }";
    assert_problem(
        &pool_with(fallbacks, &[key]),
        "pools[0].fallbacks.gpt-4.1[0]: model \"x\" is not in pools[0].models",
    );
    let unchecked = "fallbacks = { \"gpt-4.1\" = [\"x\"] }";
    assert!(
        parse(&pool_with(unchecked, &[key]), &[]).is_ok(),
        "no allowlist, no check"
    );
    for url in [
        "ftp://x.test/v1",
        "https://x.test/v1?a=b",
        "https://x.test/v1#top",
        "https:///v1",
        "x.test",
        "https://[x.test/v1",
        "https://xn--a.test/v1",
    ] {
        let text = pool_with("", &[key]).replace("https://x.test/v1", url);
        assert_problem(&text, &format!("pools[0].base_url: {BASE_URL_RULE}"));
    }
}

#[test]
fn pool_names_and_limits_are_checked() {
    let key = "id = \"k1\"\nsecret = \"sk-test-secret-1\"";
    let text = format!("{}{}", pool_with("", &[key]), pool_with("", &[key]));
    assert_problem(
        &text,
        "pools[1].name: duplicate pool \"prod\" (also pools[0])",
    );
    for (extra, problem) in [
        ("max_attempts = 0", "pools[0].max_attempts: must be 1..=10"),
        ("max_attempts = 11", "pools[0].max_attempts: must be 1..=10"),
        (
            "[pools.timeouts]\nconnect_ms = 0",
            "pools[0].timeouts.connect_ms: must be at least 1",
        ),
        (
            "[pools.timeouts]\nidle_connections = 100001",
            "pools[0].timeouts.idle_connections: must be at most 100000",
        ),
        (
            "[pools.timeouts]\nidle_timeout_ms = 0",
            "pools[0].timeouts.idle_timeout_ms: must be 1..=3600000",
        ),
        (
            "upstream_http2 = \"h2c\"",
            "pools[0].upstream_http2: must be one of alpn, prior_knowledge, never",
        ),
    ] {
        assert_problem(&pool_with(extra, &[key]), problem);
    }
    let negative = problems(
        &pool_with("[pools.timeouts]\nidle_connections = -1", &[key]),
        &[],
    );
    assert!(
        negative.iter().any(|p| p.contains("idle_connections")),
        "{negative:?}"
    );
    let tuned = "upstream_http2 = \"prior_knowledge\"\n[pools.timeouts]\nidle_connections = 0\nidle_timeout_ms = 500";
    let config = parse(&pool_with(tuned, &[key]), &[]).expect("valid");
    let pool = &config.pools[0];
    assert_eq!(pool.upstream_http2, UpstreamHttp2::PriorKnowledge);
    let idle = (
        pool.timeouts.idle_connections,
        pool.timeouts.idle_timeout_ms,
    );
    assert_eq!(idle, (0, 500));
    let policy = "[pools.policy]\ncooldown_default_s = 60\ncooldown_max_s = 30\nbreaker_errors = 0";
    assert_problem(
        &pool_with(policy, &[key]),
        "pools[0].policy.cooldown_default_s: must not exceed cooldown_max_s (30)",
    );
    assert_problem(
        &pool_with(policy, &[key]),
        "pools[0].policy.breaker_errors: must be at least 1",
    );
    assert!(
        parse(&pool_with("", &[]), &[]).is_ok(),
        "a pool without keys is allowed"
    );
}

#[test]
fn store_problems_name_their_exact_paths() {
    let with_store = |store: &str| format!("[store]\n{store}\n{MINIMAL}");
    assert_problem(
        &with_store("prefix = \"k{g}\""),
        &format!("store.prefix: {ID_RULE}"),
    );
    assert_problem(
        &with_store("redis_url = \"http://r:6379\""),
        "store.redis_url: must start with redis://, rediss://, redis+unix:// or unix://",
    );
    let two = "redis_url = \"redis://r:6379\"\ncluster_nodes = [\"r1:6379\"]";
    assert_problem(
        &with_store(two),
        "store: set at most one of redis_url, sentinels, cluster_nodes",
    );
    assert_problem(
        &with_store("sentinels = [\"s1:26379\"]"),
        "store.sentinel_master: is required with store.sentinels",
    );
    assert_problem(
        &with_store("cluster_nodes = [\"r1\"]"),
        "store.cluster_nodes[0]: must be host:port or a redis:// URL",
    );
    assert_problem(
        &with_store("timeout_ms = 0"),
        "store.timeout_ms: must be at least 1",
    );
    assert_problem(
        &with_store("degraded_after_ms = 60001"),
        "store.degraded_after_ms: must be 0..=60000 (0: degraded_after_failures alone decides)",
    );
    let config = parse(&with_store("degraded_after_ms = 0"), &[]).expect("0: count alone");
    assert_eq!(config.store.degraded_after_ms, 0);
    assert_problem(
        &with_store("report_flush_ms = 60001"),
        "store.report_flush_ms: must be 0 (report every success at once) to 60000 ms",
    );
    let config = parse(&with_store("report_flush_ms = 0"), &[]).expect("0 reports at once");
    assert_eq!(config.store.report_flush_ms, 0);
    let sentinel = "sentinels = [\"s1:26379\", \"redis://s2:26379\", \"[::1]:26379\"]\nsentinel_master = \"main\"";
    let config = parse(&with_store(sentinel), &[]).expect("valid sentinel setup");
    assert_eq!(config.store.sentinels.len(), 3);
    let config = parse(&with_store("redis_url = \"\""), &[]).expect("empty url is no url");
    assert_eq!(config.store.redis_url, None);
}

#[test]
fn the_auth_probe_and_client_circuit_settings_are_checked() {
    let key = "id = \"k1\"\nsecret = \"sk-test-secret-1\"";
    for (policy, expected) in [
        (
            "auth_bench_s = 0",
            "pools[0].policy.auth_bench_s: must be at least 1",
        ),
        (
            "client_circuit_open_s = 0",
            "pools[0].policy.client_circuit_open_s: must be at least 1",
        ),
        (
            "client_circuit_window_s = 0",
            "pools[0].policy.client_circuit_window_s: must be at least 1",
        ),
    ] {
        assert_problem(
            &pool_with(&format!("[pools.policy]\n{policy}"), &[key]),
            expected,
        );
    }
    for path in ["/models", "../admin", "models?x=1", "a//b", ""] {
        let text = pool_with(
            &format!("[pools.policy]\nauth_probe_path = {path:?}"),
            &[key],
        );
        let found = problems(&text, &[]);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("pools[0].policy.auth_probe_path:")),
            "{path:?}: {found:?}"
        );
    }
    let text = pool_with(
        "[pools.policy]\nauth_probe_path = \"dashboard/billing/subscription\"\nclient_circuit_threshold = 0",
        &[key],
    );
    let policy = parse(&text, &[]).map(|c| c.pools[0].policy.clone());
    assert!(policy.is_ok_and(|p| p.client_circuit_threshold == 0));
}
