//! Loading as a whole: the design example, defaults, file reading, syntax and decode errors
//! with their lines, and several problems reported together.

use std::net::SocketAddr;

use super::*;
use crate::config::check::ID_RULE;

#[test]
fn design_example_parses_with_its_values() {
    let config = parse(DESIGN_EXAMPLE, &DESIGN_ENV).expect("valid");
    assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.server.max_body_bytes, 16 * 1024 * 1024);
    assert_eq!(
        config.store.redis_url.as_deref(),
        Some("redis://127.0.0.1:6379/0")
    );
    assert_eq!(config.store.timeout_ms, 50);
    assert_eq!(
        config.admin.token,
        Some(Secret::new("admin-token-0123456789abcdef012345"))
    );
    assert_eq!(config.clients[0].name, "support-bot");
    assert_eq!(
        hex::encode(config.clients[0].token_sha256),
        hash_token("test")
    );
    assert_eq!(config.clients[0].pools, ["prod"]);
    let pool = config.pool("prod").expect("pool prod");
    assert_eq!(pool.base_url, "https://api.holysheep.ai/v1");
    assert_eq!(pool.max_attempts, 3);
    assert_eq!(pool.models, ["gpt-4.1", "deepseek-v3.2"]);
    assert_eq!(pool.fallbacks["gpt-4.1"], ["deepseek-v3.2"]);
    assert_eq!(pool.policy, Policy::default());
    assert_eq!(pool.timeouts, Timeouts::default());
    assert_eq!(
        (pool.canary.group.as_str(), pool.canary.percent),
        ("canary", 10)
    );
    assert!(pool.canary.fallback);
    let key = &pool.keys[1];
    assert_eq!(
        (key.id.as_str(), key.weight, key.group.as_str()),
        ("prod-004", 2, "canary")
    );
    assert_eq!(key.secret.expose(), "sk-abcdefghijk0004");
    assert_eq!(key.secret_env.as_deref(), Some("HS_KEY_004"));
    assert_eq!(pool.keys[0].group, STABLE_GROUP);
    assert!(config.pool("dev").is_none());
}

#[test]
fn omitted_fields_take_their_defaults() {
    let config = parse(MINIMAL, &[]).expect("valid");
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(
        config.server.listen,
        SocketAddr::from(([127, 0, 0, 1], 8080))
    );
    assert_eq!(config.store, StoreConfig::default());
    assert_eq!(config.store.prefix, "kg");
    assert_eq!(config.admin, AdminConfig::default());
    assert!(config.clients.is_empty());
    let pool = &config.pools[0];
    assert_eq!(
        pool.base_url, "https://api.example.com/v1",
        "trailing slash dropped"
    );
    assert_eq!(pool.max_attempts, 3);
    assert_eq!(pool.canary, CanaryConfig::default());
    assert_eq!(
        (pool.keys[0].weight, pool.keys[0].group.as_str()),
        (1, "stable")
    );
    assert_eq!(pool.keys[0].secret_env, None);
}

#[test]
fn load_reads_the_file_and_resolves_secrets_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs1"), "sk-from-file-0001").unwrap();
    let text = pool_with("", &["id = \"k1\"\nsecret_file = \"hs1\""]);
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).expect("valid");
    assert_eq!(config.pools[0].keys[0].secret.expose(), "sk-from-file-0001");
    let missing = Config::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(
        missing.to_string().contains("nope.toml: cannot read: "),
        "{missing}"
    );
}

#[test]
fn a_config_without_pools_is_rejected() {
    assert_eq!(problems("", &[]), ["pools: at least one pool is required"]);
}

#[test]
fn unknown_fields_and_bad_types_report_path_and_line() {
    let text = pool_with(
        "",
        &["id = \"k1\"\nsecret = \"sk-test-secret-1\"\nwieght = 3"],
    );
    let found = problems(&text, &[]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("pools[0].keys[0].wieght: unknown field; expected one of `id`"),
        "{found:#?}"
    );
    assert!(found[0].ends_with("(line 8)"), "{found:#?}");
    let text = format!("[server]\nmax_body_bytes = \"big\"\n{MINIMAL}");
    assert_eq!(
        problems(&text, &[]),
        ["server.max_body_bytes: invalid type: string \"big\", expected usize (line 2)"]
    );
    let text = format!("[servr]\nlisten = \"x\"\n{MINIMAL}");
    assert_eq!(
        problems(&text, &[]),
        ["servr: unknown section (expected server, store, admin, clients or pools) (line 1)"]
    );
    let text = format!("{MINIMAL}[pools.policy]\ncooldown = 3\n");
    let found = problems(&text, &[]);
    assert!(
        found[0].starts_with("pools[0].policy.cooldown: unknown field"),
        "{found:#?}"
    );
}

#[test]
fn a_syntax_error_reports_its_line() {
    let found = problems("[server]\nlisten = \"127.0.0.1:8080\n", &[]);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("TOML syntax error at line 2, column "),
        "{found:#?}"
    );
}

#[test]
fn several_problems_are_reported_together() {
    let text = format!(
        "[server]\nmax_body_bytes = 0\n[store]\nprefix = \".kg\"\n{}",
        pool_with(
            "max_attempts = 20\n[pools.canary]\npercent = 200",
            &["id = \"k1\"\nsecret_env = \"NOPE\"\nweight = 1001"]
        )
    );
    assert_eq!(
        problems(&text, &[]),
        [
            "server.max_body_bytes: must be at least 1".to_string(),
            format!("store.prefix: {ID_RULE}"),
            "pools[0].max_attempts: must be 1..=10".to_string(),
            "pools[0].canary.percent: must be 0..=100".to_string(),
            "pools[0].keys[0].weight: must be 0..=1000".to_string(),
            "pools[0].keys[0].secret_env: environment variable NOPE is not set".to_string(),
        ]
    );
}

#[test]
fn config_error_displays_one_problem_per_line() {
    let error = ConfigError {
        problems: vec![Problem::new("a.b", "x"), Problem::new("", "syntax")],
    };
    assert_eq!(error.to_string(), "a.b: x\nsyntax");
}
