//! Tests of config loading, split by topic; this file holds the shared fixtures and helpers.

mod keys;
mod limits;
mod loading;
mod overrides;
mod secrets;
mod sections;

use std::collections::HashMap;
use std::path::Path;

use super::*;

/// The configuration example (README.md, "Configuration reference"), with a real token hash (of "test"); `tests/it/fuzz.rs`
/// builds its every-field config from it too.
const DESIGN_EXAMPLE: &str = include_str!("../../tests/fixtures/design-example.toml");

const DESIGN_ENV: [(&str, &str); 3] = [
    ("HS_KEY_001", "sk-abcdefghijk0001"),
    ("HS_KEY_004", "sk-abcdefghijk0004"),
    ("KEYGATE_ADMIN_TOKEN", "admin-token-0123456789abcdef012345"),
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
