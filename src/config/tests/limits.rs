//! `[pools.limits]` and a key's `limits`: defaults, overrides, and every refusal by path.

use super::*;

const KEY: &str = "id = \"k1\"\nsecret = \"sk-inline-test-0001\"";

#[test]
fn no_limits_means_no_budgets() {
    let config = parse(MINIMAL, &[]).unwrap();
    assert!(config.pools[0].limits.keys.is_empty());
    assert!(config.pools[0].keys[0].limits.is_empty());
}

#[test]
fn a_key_overrides_the_pool_limits_field_by_field() {
    let text = pool_with(
        "[pools.limits]\nrpm = 500\ntpm = 200000\nmax_wait_ms = 2000",
        &[&format!(
            "{KEY}\nlimits = {{ rpm = 1000, max_concurrent = 4 }}"
        )],
    );
    let config = parse(&text, &[]).unwrap();
    let pool = &config.pools[0];
    assert_eq!(pool.limits.max_wait_ms, 2000);
    let effective = pool.keys[0].limits.over(pool.limits.keys);
    assert_eq!(
        (effective.rpm, effective.tpm, effective.max_concurrent),
        (Some(1000), Some(200000), Some(4))
    );
}

#[test]
fn nonsense_limits_are_refused_by_path() {
    let pool = |extra: &str| pool_with(&format!("[pools.limits]\n{extra}"), &[KEY]);
    assert_problem(&pool("rpm = 0"), "pools[0].limits.rpm: must be at least 1");
    assert_problem(&pool("tpd = -5"), "pools[0].limits.tpd: must be at least 1");
    assert_problem(
        &pool("lease_s = 0"),
        "pools[0].limits.lease_s: must be at least 1",
    );
    assert_problem(
        &pool("max_wait_ms = 70000"),
        "pools[0].limits.max_wait_ms: must be 0..=60000",
    );
    assert_problem(
        &pool("tpm = 5000"),
        "pools[0].limits.tpm: 5000 must exceed max_request_tokens (8192), one request's largest reservation",
    );
    assert_problem(
        &pool("max_request_tokens = 100"),
        "pools[0].limits.default_completion_tokens: must not exceed max_request_tokens (100)",
    );
    let key = pool_with("", &[&format!("{KEY}\nlimits = {{ max_concurrent = 0 }}")]);
    assert_problem(
        &key,
        "pools[0].keys[0].limits.max_concurrent: must be at least 1",
    );
    let problems = problems(&pool("rpn = 5"), &[]);
    assert!(problems.iter().any(|p| p.contains("rpn")), "{problems:?}");
    let learn = super::problems(&pool("learn_limits = \"yes\""), &[]);
    assert!(
        (learn.iter()).any(|p| p.contains("pools[0].limits") && p.contains("learn_limits")),
        "{learn:?}"
    );
}
