//! Checks of `[[pools.keys]]`: ids, weights, and where (and whether) each secret is found.

use super::*;
use crate::config::check::ID_RULE;

#[test]
fn key_problems_name_their_exact_paths() {
    let key = |id: &str| format!("id = \"{id}\"\nsecret = \"sk-test-secret-1\"");
    let mut text = pool_with("", &[&key("a-1")]);
    text.push_str(
        &pool_with(
            "",
            &[
                &key("b-1"),
                &key("b-2"),
                &key("b-3"),
                &format!("{}\nweight = 5000", key("b-4")),
            ],
        )
        .replace("\"prod\"", "\"other\""),
    );
    assert_problem(&text, "pools[1].keys[3].weight: must be 0..=1000");
    let text = pool_with("", &[&key("prod-001"), &key("prod-002"), &key("prod-001")]);
    assert_problem(
        &text,
        "pools[0].keys[2].id: duplicate id \"prod-001\" (also pools[0].keys[0])",
    );
    let text = pool_with("", &[&key("k1"), "id = \"k2\"\nsecret_env = \"HS_KEY_9\""]);
    assert_problem(
        &text,
        "pools[0].keys[1].secret_env: environment variable HS_KEY_9 is not set",
    );
    let text = pool_with(
        "",
        &[
            &key("k1"),
            "id = \"k2\"\nweight = -1\nsecret = \"sk-x-000000\"",
        ],
    );
    assert_problem(&text, "pools[0].keys[1].weight: must be 0..=1000");
    let text = pool_with("", &[&key("bad id")]);
    assert_problem(&text, &format!("pools[0].keys[0].id: {ID_RULE}"));
    assert_problem(
        &pool_with("", &["secret = \"sk-x-000000\""]),
        "pools[0].keys[0].id: is required",
    );
}

#[test]
fn unreadable_secret_file_names_the_file() {
    let text = pool_with(
        "",
        &[
            "id = \"k1\"\nsecret = \"sk-test-secret-1\"",
            "id = \"k2\"\nsecret_file = \"/kg-missing/hs1\"",
        ],
    );
    let found = problems(&text, &[]);
    let expected = "pools[0].keys[1].secret_file: cannot read /kg-missing/hs1: ";
    assert!(found.iter().any(|p| p.starts_with(expected)), "{found:#?}");
}

#[test]
fn a_key_needs_exactly_one_secret_source() {
    assert_problem(
        &pool_with("", &["id = \"k1\""]),
        "pools[0].keys[0]: needs one of secret_env or secret_file",
    );
    let both = "id = \"k1\"\nsecret_env = \"A\"\nsecret_file = \"/kg-missing/a\"";
    assert_problem(
        &pool_with("", &[both]),
        "pools[0].keys[0]: set only one of secret_env, secret_file and secret",
    );
}

#[test]
fn a_malformed_secret_is_reported_without_its_content() {
    let text = pool_with("", &["id = \"k1\"\nsecret_env = \"HS_KEY_1\""]);
    let found = problems(&text, &[("HS_KEY_1", "sk-leaky secret")]);
    assert_eq!(
        found,
        ["pools[0].keys[0].secret_env: the secret must be printable ASCII without spaces"]
    );
    let found = problems(&text, &[("HS_KEY_1", " ")]);
    assert_eq!(found, ["pools[0].keys[0].secret_env: the secret is empty"]);
}

#[test]
fn secret_file_is_read_relative_to_the_base_dir_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs1"), "sk-from-file-0001\n").unwrap();
    let text = pool_with("", &["id = \"k1\"\nsecret_file = \"hs1\""]);
    let config = Config::from_toml_str(&text, &|_| None, dir.path()).expect("valid");
    let key = &config.pools[0].keys[0];
    assert_eq!(key.secret.expose(), "sk-from-file-0001");
    assert_eq!(
        key.secret_file.as_deref(),
        Some(dir.path().join("hs1").as_path())
    );
}
