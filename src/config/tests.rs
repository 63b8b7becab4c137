//! Tests of config loading, split by topic; this file holds the shared fixtures and helpers.

mod keys;
mod loading;
mod overrides;
mod secrets;
mod sections;

use std::collections::HashMap;
use std::path::Path;

use super::*;

/// The example of DESIGN section 7, with a real token hash (of "test").
const DESIGN_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 16777216
shutdown_grace_s = 30

[store]
redis_url = "redis://127.0.0.1:6379/0"
prefix = "kg"
timeout_ms = 50

[admin]
token_env = "KEYGATE_ADMIN_TOKEN"

[[clients]]
name = "support-bot"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
pools = ["prod"]

[[pools]]
name = "prod"
base_url = "https://api.holysheep.ai/v1"
max_attempts = 3
models = ["gpt-4.1", "deepseek-v3.2"]
fallbacks = { "gpt-4.1" = ["deepseek-v3.2"] }

[pools.policy]
cooldown_default_s = 60
cooldown_max_s = 900
breaker_errors = 5
breaker_window_s = 60
breaker_open_s = 30
quota_cooldown_s = 3600

[pools.timeouts]
connect_ms = 2000
first_byte_ms = 30000
total_ms = 300000

[pools.canary]
group = "canary"
percent = 10

[[pools.keys]]
id = "prod-001"
secret_env = "HS_KEY_001"
weight = 3

[[pools.keys]]
id = "prod-004"
secret_env = "HS_KEY_004"
weight = 2
group = "canary"
"#;

const DESIGN_ENV: [(&str, &str); 3] = [
    ("HS_KEY_001", "sk-abcdefghijk0001"),
    ("HS_KEY_004", "sk-abcdefghijk0004"),
    ("KEYGATE_ADMIN_TOKEN", "admin-token-0123456789"),
];

const MINIMAL: &str = r#"
[[pools]]
name = "prod"
base_url = "https://api.example.com/v1/"

[[pools.keys]]
id = "prod-001"
secret = "sk-inline-test-0001"
"#;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml_str(
        text,
        &|name| vars.get(name).cloned(),
        Path::new("/kg-test-base"),
    )
}

fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match parse(text, env) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(error) => error.problems.iter().map(ToString::to_string).collect(),
    }
}

#[track_caller]
fn assert_problem(text: &str, expected: &str) {
    let found = problems(text, &[]);
    assert!(
        found.iter().any(|p| p == expected),
        "{expected:?} not in {found:#?}"
    );
}

/// A pool `prod` with the given extra pool lines and keys (one TOML table per key body).
fn pool_with(extra: &str, keys: &[&str]) -> String {
    let mut text =
        format!("[[pools]]\nname = \"prod\"\nbase_url = \"https://x.test/v1\"\n{extra}\n");
    for key in keys {
        text.push_str(&format!("[[pools.keys]]\n{key}\n"));
    }
    text
}
