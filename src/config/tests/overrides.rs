//! `KEYGATE_*` environment overrides and the admin token lookup.

use super::*;
use crate::config::env::stray_overrides;

#[test]
fn env_overrides_replace_server_store_and_admin_fields() {
    let env = [
        ("HS_KEY_001", "sk-abcdefghijk0001"),
        ("HS_KEY_004", "sk-abcdefghijk0004"),
        ("KEYGATE_SERVER__LISTEN", "0.0.0.0:9090"),
        ("KEYGATE_SERVER__METRICS_LISTEN", "0.0.0.0:9091"),
        ("KEYGATE_STORE__TIMEOUT_MS", "80"),
        ("KEYGATE_STORE__REDIS_URL", ""),
        ("KEYGATE_STORE__CLUSTER_NODES", "r1:6379, r2:6379,"),
        ("KEYGATE_ADMIN__TOKEN_ENV", "MY_ADMIN"),
        ("MY_ADMIN", "my-admin-token-0123456789abcdef0123"),
    ];
    let config = parse(DESIGN_EXAMPLE, &env).expect("valid");
    assert_eq!(config.server.listen, "0.0.0.0:9090".parse().unwrap());
    assert_eq!(
        config.server.metrics_listen,
        Some("0.0.0.0:9091".parse().unwrap())
    );
    assert_eq!(config.store.timeout_ms, 80);
    assert_eq!(
        config.store.redis_url, None,
        "empty override selects the embedded store"
    );
    assert_eq!(config.store.cluster_nodes, ["r1:6379", "r2:6379"]);
    assert_eq!(config.admin.token_env.as_deref(), Some("MY_ADMIN"));
    assert_eq!(
        config.admin.token.as_ref().map(Secret::expose),
        Some("my-admin-token-0123456789abcdef0123")
    );
}

#[test]
fn bad_env_overrides_name_the_variable() {
    let found = problems(MINIMAL, &[("KEYGATE_STORE__TIMEOUT_MS", "fast")]);
    assert_eq!(
        found,
        ["store.timeout_ms: KEYGATE_STORE__TIMEOUT_MS=\"fast\" is not a non-negative integer"]
    );
    let found = problems(MINIMAL, &[("KEYGATE_STORE__TIMEOUT_MS", "0")]);
    assert_eq!(
        found,
        ["store.timeout_ms: must be at least 1 (set by KEYGATE_STORE__TIMEOUT_MS)"]
    );
    let found = problems(MINIMAL, &[("KEYGATE_SERVER__LISTEN", "nowhere")]);
    assert_eq!(
        found,
        ["server.listen: invalid socket address syntax (set by KEYGATE_SERVER__LISTEN)"]
    );
    let names = [
        "KEYGATE_STORE__REDIS_ULR",
        "KEYGATE_STORE__REDIS_URL",
        "KEYGATE_ADMIN_TOKEN",
        "PATH",
    ];
    let stray = stray_overrides(names.into_iter().map(String::from));
    assert_eq!(stray.len(), 1);
    assert_eq!(stray[0].path, "KEYGATE_STORE__REDIS_ULR");
}

#[test]
fn admin_api_is_off_without_a_token() {
    let admin = |text: &str, env: &[(&str, &str)]| parse(text, env).expect("valid").admin;
    assert_eq!(admin(MINIMAL, &[]).token, None);
    assert_eq!(admin(MINIMAL, &[("KEYGATE_ADMIN_TOKEN", "")]).token, None);
    let long = "t0k3n-admin-0123456789abcdef-0123";
    let token = admin(MINIMAL, &[("KEYGATE_ADMIN_TOKEN", long)]).token;
    assert_eq!(token, Some(Secret::new(long)));
    let custom = format!("[admin]\ntoken_env = \"OPS_TOKEN\"\n{MINIMAL}");
    assert_eq!(admin(&custom, &[("KEYGATE_ADMIN_TOKEN", "x")]).token, None);
    let off = format!("[admin]\ntoken_env = \"\"\n{MINIMAL}");
    assert_eq!(
        admin(&off, &[("KEYGATE_ADMIN_TOKEN", "x")]),
        AdminConfig {
            token_env: None,
            token: None,
            listen: None,
        }
    );
}

#[test]
fn a_short_admin_token_is_refused_naming_its_variable_not_its_value() {
    let custom = format!("[admin]\ntoken_env = \"OPS_TOKEN\"\n{MINIMAL}");
    let error = parse(&custom, &[("OPS_TOKEN", "short-admin-token")]).unwrap_err();
    let shown = error.to_string();
    assert!(shown.contains("admin.token_env"), "{shown}");
    assert!(shown.contains("OPS_TOKEN is 17 characters"), "{shown}");
    assert!(shown.contains("at least 32"), "{shown}");
    assert!(!shown.contains("short-admin-token"), "{shown}");
    let exactly = "a".repeat(32);
    assert!(parse(&custom, &[("OPS_TOKEN", exactly.as_str())]).is_ok());
}

#[test]
fn new_server_and_admin_fields_take_env_overrides() {
    let env = [
        ("KEYGATE_SERVER__HTTP2", "false"),
        ("KEYGATE_SERVER__MAX_CONNECTIONS", "77"),
        ("KEYGATE_SERVER__IDLE_TIMEOUT_MS", "1500"),
        ("KEYGATE_ADMIN__LISTEN", "127.0.0.1:9901"),
    ];
    let config = parse(MINIMAL, &env).expect("valid");
    assert!(!config.server.http2);
    assert_eq!(config.server.max_connections, 77);
    assert_eq!(config.server.idle_timeout_ms, 1500);
    assert_eq!(config.admin.listen, Some("127.0.0.1:9901".parse().unwrap()));
    let bad = parse(MINIMAL, &[("KEYGATE_SERVER__HTTP2", "maybe")]).unwrap_err();
    assert!(bad.to_string().contains("is not true or false"), "{bad}");
}
