//! Secrets never print: masking, URL redaction, fingerprints, comparison and token hashes.

use super::*;

#[test]
fn secrets_never_print() {
    let config = parse(DESIGN_EXAMPLE, &DESIGN_ENV).expect("valid");
    let shown = format!("{config:?} {:#?}", config);
    for (_, secret) in DESIGN_ENV {
        assert!(!shown.contains(secret), "{secret} leaked");
    }
    let secret = Secret::new("sk-abcdefghijk9f3a");
    assert_eq!(format!("{secret} {secret:?}"), "***** *****");
    assert_eq!(serde_json::to_string(&secret).unwrap(), "\"*****\"");
}

#[test]
fn store_debug_hides_url_passwords() {
    let text = format!("[store]\nredis_url = \"redis://:hunter2@r:6379/0\"\n{MINIMAL}");
    let config = parse(&text, &[]).expect("valid");
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("redis://*****@r:6379/0"),
        "{shown}"
    );
    assert_eq!(
        redact_url("rediss://u:p@w@h:1/2?x=@"),
        "rediss://*****@h:1/2?x=@"
    );
    assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    assert_eq!(redact_url("h:6379"), "h:6379");
}

#[test]
fn fingerprint_shows_a_known_prefix_and_the_last_four_chars() {
    assert_eq!(Secret::new("sk-abcdefghijk9f3a").fingerprint(), "sk-…9f3a");
    assert_eq!(Secret::new("abcdefghijklmnop").fingerprint(), "…mnop");
    assert_eq!(Secret::new("sk-short").fingerprint(), "…");
    assert_eq!(Secret::new("").fingerprint(), "…");
    assert_eq!(Secret::new("ключключключключ").fingerprint(), "…ключ");
}

#[test]
fn secrets_compare_by_value() {
    assert_eq!(Secret::new("sk-a"), Secret::new("sk-a"));
    assert_ne!(Secret::new("sk-a"), Secret::new("sk-b"));
    assert_ne!(Secret::new("sk-a"), Secret::new("sk-ab"));
}

#[test]
fn hash_token_is_lowercase_sha256_hex() {
    assert_eq!(
        hash_token("test"),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}
