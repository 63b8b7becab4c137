//! The allowlists both ways: which request headers reach the upstream, where the provider
//! account headers come from, which response headers reach the client, and which paths a pool
//! serves (the others get a 404 before any key is chosen).

use keygate::mock::{Behavior, LeakForm};

use super::*;

/// Every header a client must not be able to send upstream, with a value that says so.
const FORBIDDEN: [(&str, &str); 16] = [
    ("X-Api-Key", CLIENT_TOKEN),
    ("Api-Key", CLIENT_TOKEN),
    ("Cookie", "session=client"),
    ("True-Client-IP", "10.9.8.7"),
    ("X-Original-URL", "/v1/organization/users"),
    ("X-Rewrite-URL", "/v1/organization/users"),
    ("X-Forwarded-For", "10.9.8.7"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Real-IP", "10.9.8.7"),
    ("Forwarded", "for=10.9.8.7"),
    ("X-Keygate-Pool", "p"),
    ("X-Gray-Group", "canary"),
    ("X-User-Id", "someone"),
    ("OpenAI-Organization", "org-someone-else"),
    ("OpenAI-Project", "proj_someone_else"),
    ("X-Custom-Anything", "1"),
];

fn with_accounts(toml: String) -> String {
    toml.replace(
        "max_attempts = 3\n",
        "max_attempts = 3\norganization = \"org-pool\"\nproject = \"proj_pool\"\n\
         [pools.headers]\nforward = [\"x-stainless-*\"]\nexpose = [\"x-ratelimit-*\"]\n",
    )
    .replace(
        "id = \"h2\"\n",
        "id = \"h2\"\norganization = \"org-key-two\"\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_request_headers_never_reach_the_upstream() {
    let env = Isolated::start(|t| t).await;
    let mut extra: Vec<(&str, &str)> = FORBIDDEN.to_vec();
    extra.extend([
        ("OpenAI-Beta", "assistants=v2"),
        ("Idempotency-Key", "idem-1"),
        ("X-Stainless-Lang", "python"),
        ("Accept-Encoding", "gzip, br"),
    ]);
    let r = post_chat(&http(), env.gw(), &chat("m", false), &extra).await;
    assert_eq!(r.status(), 200);
    let up = env.mock().last_request_headers().unwrap();
    for (name, _) in FORBIDDEN {
        if name.starts_with("OpenAI-") {
            continue; // checked below: absent without config
        }
        assert!(up.get(name).is_none(), "{name} reached the upstream");
    }
    assert!(up.get("openai-organization").is_none());
    assert!(up.get("openai-project").is_none());
    assert!(
        up.get("x-stainless-lang").is_none(),
        "not in the default list"
    );
    assert_eq!(up["openai-beta"], "assistants=v2");
    assert_eq!(up["idempotency-key"], "idem-1");
    assert_eq!(up["accept-encoding"], "identity");
    let auth = up["authorization"].to_str().unwrap();
    assert!(
        KEYS.iter().any(|k| auth == format!("Bearer {}", k.secret)),
        "{auth}"
    );
    assert_eq!(up.get_all("authorization").iter().count(), 1);
    let values: String = (up.iter())
        .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    for bad in [
        CLIENT_TOKEN,
        "10.9.8.7",
        "someone",
        "evil.example",
        "organization/users",
    ] {
        assert!(
            !values.contains(bad),
            "{bad} reached the upstream:\n{values}"
        );
    }
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_and_project_come_from_config_never_from_the_client() {
    let env = Isolated::start(with_accounts).await;
    let client_says = [
        ("OpenAI-Organization", "org-someone-else"),
        ("OpenAI-Project", "proj_someone_else"),
        ("X-Stainless-Lang", "python"),
    ];
    let mut orgs = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = post_chat(&http(), env.gw(), &chat("m", false), &client_says).await;
        assert_eq!(r.status(), 200);
        let up = env.mock().last_request_headers().unwrap();
        let auth = up["authorization"].to_str().unwrap().to_string();
        let org = up["openai-organization"].to_str().unwrap().to_string();
        let expected = if auth.ends_with(KEYS[1].secret) {
            "org-key-two"
        } else {
            "org-pool"
        };
        assert_eq!(org, expected, "key {auth}");
        assert_eq!(up["openai-project"], "proj_pool");
        assert_eq!(up.get_all("openai-organization").iter().count(), 1);
        assert_eq!(
            up["x-stainless-lang"], "python",
            "added by [pools.headers] forward"
        );
        orgs.insert(org);
    }
    assert_eq!(orgs.len(), 2, "both keys were used: {orgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_reach_the_client_only_from_the_allowlist() {
    for (tweak, ratelimit_exposed) in [(None, false), (Some(with_accounts), true)] {
        let env = match tweak {
            Some(t) => Isolated::start(t).await,
            None => Isolated::start(|t| t).await,
        };
        let r = post_chat(&http(), env.gw(), &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().contains_key("x-ratelimit-remaining-requests"),
            ratelimit_exposed
        );
        for k in &KEYS {
            let leak = Behavior::Leak {
                form: LeakForm::Plain,
                status: 200,
            };
            env.mock().set_steady(k.secret, leak);
        }
        let r = post_chat(&http(), env.gw(), &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        for gone in [
            "openai-organization",
            "openai-project",
            "set-cookie",
            "x-debug-key",
        ] {
            assert!(h.get(gone).is_none(), "{gone} reached the client");
        }
        assert_eq!(h["content-type"], "application/json");
        let disposition = h["content-disposition"].as_bytes();
        let shown = String::from_utf8_lossy(disposition);
        assert!(shown.starts_with("attachment; filename=\"sk-…"), "{shown}");
        assert!(KEYS.iter().all(|k| !shown.contains(k.secret)), "{shown}");
        assert!(h.contains_key("x-keygate-key") && h.contains_key("x-request-id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_allowlist_get_404_without_touching_a_key() {
    let env = Isolated::start(|t| t).await;
    let before = env.keys().await;
    let c = http();
    let paths = [
        ("GET", "/v1/organization/users"),
        ("POST", "/v1/files"),
        ("GET", "/v1/batches"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/v1/models/"),
        ("POST", "/v1/chat/completions/extra"),
        ("DELETE", "/v1/organization/projects/proj_1"),
    ];
    for (method, path) in paths {
        let r = c
            .request(method.parse().unwrap(), env.gw().url(path))
            .bearer_auth(CLIENT_TOKEN)
            .json(&chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "not_found",
            "{method} {path}: {body}"
        );
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert_eq!(env.mock().total_requests(), 0);
    assert_eq!(format!("{:?}", env.keys().await), format!("{before:?}"));
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_the_paths_it_configures() {
    let files = |t: String| {
        t.replace(
            "max_attempts = 3\n",
            "max_attempts = 3\npaths = [\"files\", \"files/*\"]\n",
        )
    };
    let env = Isolated::start(files).await;
    let c = http();
    let get = |path: &'static str| c.get(env.gw().url(path)).bearer_auth(CLIENT_TOKEN).send();
    let r = get("/v1/files/file-1").await.unwrap();
    // The mock knows no files endpoint: its own 404, passed through (not keygate's).
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-keygate-key"));
    assert_eq!(env.mock().total_requests(), 1);
    let r = post_chat(&c, env.gw(), &chat("m", false), &[]).await;
    assert_eq!(r.status(), 404, "chat is not in this pool's list");
    assert!(!r.headers().contains_key("x-keygate-key"));
    assert_eq!(env.mock().total_requests(), 1);
}
