//! Paths, hosts and tokens: the pool key goes to the configured upstream or nowhere.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_are_refused_and_never_reach_another_host() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let evil = env.evil().addr;
    let body = chat_body();
    let targets = [
        "/v1/../admin".to_string(),
        "/v1/../../etc/passwd".to_string(),
        "/v1/%2e%2e/admin".to_string(),
        "/v1/%2E%2E/%2E%2E/x".to_string(),
        "/v1/.%2e/x".to_string(),
        "/v1/./chat/completions".to_string(),
        "/v1/chat/../../x".to_string(),
        "/v1/chat%2fcompletions".to_string(),
        "/v1/chat%2F..%2F..%2Fx".to_string(),
        "/v1/..\\admin".to_string(),
        "/v1/chat\\completions".to_string(),
        "/v1/%5c..%5cx".to_string(),
        format!("//{evil}/v1/chat/completions"),
        format!("/v1//{evil}/v1/chat/completions"),
        format!("/v1/http://{evil}/x"),
        format!("/v1/http:%2f%2f{evil}/x"),
        format!("/v1/@{evil}/x"),
        "/v1/%00".to_string(),
        "/v1/chat/completions%00.json".to_string(),
        "/V1/chat/completions".to_string(),
        "/v1".to_string(),
        "/admin/../v1/chat/completions".to_string(),
        "*".to_string(),
    ];
    let mut seen = Vec::new();
    for t in &targets {
        let r = raw(env.addr(), &raw_post(t, "", &body), WAIT).await;
        seen.push((t.clone(), r.status));
        // Refused by keygate, or (a path keygate may legally forward, such as `%00`) answered
        // by the real upstream: never a 2xx for a path outside the API, never another host.
        assert!(r.refused() || r.status == Some(404), "{t}: {r:?}");
        assert_eq!(env.evil().total_requests(), 0, "{t} reached the evil host");
        if let Some(up) = env.mock().last_request() {
            assert!(up.uri.starts_with("/v1/"), "{t} → upstream {}", up.uri);
            assert!(!up.uri.contains(".."), "{t} → upstream {}", up.uri);
            assert_eq!(
                up.host.as_deref(),
                Some(env.mock().addr.to_string().as_str())
            );
        }
    }
    println!("FIGURES path-tricks: {seen:?}");
    assert_eq!(states(&env.keys().await), states(&before));
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_urls_host_headers_and_forwarding_headers_cannot_steer_a_pool_key() {
    let env = Isolated::start(strict_limits).await;
    let evil = env.evil().addr;
    let mock_host = env.mock().addr.to_string();
    let body = chat_body();
    let path = "/v1/chat/completions";
    let spoofed_host = String::from_utf8(raw_post(path, "", &body))
        .unwrap()
        .replace("Host: keygate", &format!("Host: {evil}"));
    let forwarded_host = format!("X-Forwarded-Host: {evil}\r\nX-Forwarded-Proto: http\r\n");
    let forwarded = format!("Forwarded: host={evil};proto=http\r\n");
    let rewrite = format!("X-Original-URL: http://{evil}{path}\r\nX-Rewrite-URL: //{evil}/x\r\n");
    let attempts = [
        (
            "absolute-form",
            raw_post(&format!("http://{evil}{path}"), "", &body),
        ),
        (
            "absolute-form https",
            raw_post(&format!("https://{evil}{path}"), "", &body),
        ),
        ("spoofed Host", spoofed_host.into_bytes()),
        ("X-Forwarded-Host", raw_post(path, &forwarded_host, &body)),
        ("Forwarded", raw_post(path, &forwarded, &body)),
        ("X-Original-URL", raw_post(path, &rewrite, &body)),
    ];
    for (what, req) in attempts {
        let r = raw(env.addr(), &req, WAIT).await;
        // Served, but only ever by the configured upstream, with its own Host.
        assert_eq!(r.status, Some(200), "{what}: {r:?}");
        let up = env.mock().last_request().unwrap();
        assert_eq!(up.host.as_deref(), Some(mock_host.as_str()), "{what}");
        assert_eq!(up.uri, "/v1/chat/completions", "{what}");
        for h in ["x-forwarded-host", "forwarded", "x-forwarded-proto"] {
            assert!(
                up.headers.get(h).is_none(),
                "{what}: {h} forwarded upstream"
            );
        }
        assert_eq!(
            env.evil().total_requests(),
            0,
            "{what}: the evil host was called"
        );
    }
    // CONNECT and an authority-form target: refused, no tunnel.
    let r = raw(
        env.addr(),
        format!(
        "CONNECT {evil} HTTP/1.1\r\nHost: {evil}\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\r\n")
        .as_bytes(),
        WAIT,
    )
    .await;
    assert!(
        r.refused() || r.status == Some(404) || r.status == Some(405),
        "{r:?}"
    );
    assert_ne!(r.status, Some(200));
    // An unknown or unlisted pool name: 403, never another upstream.
    let r = post_chat(
        &http(),
        env.gw(),
        &chat("m", false),
        &[("x-keygate-pool", "evil")],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(env.evil().total_requests(), 0);
    // Every upstream request carried a pool key and never the client's token.
    let mock = env.mock();
    let total: u64 = KEYS.iter().map(|k| mock.requests(k.secret)).sum();
    assert_eq!(
        total,
        mock.total_requests(),
        "a request without a pool key went upstream"
    );
    let auth = mock.last_request_headers().unwrap();
    assert!(!auth["authorization"]
        .to_str()
        .unwrap()
        .contains(CLIENT_TOKEN));
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_or_empty_tokens_get_401_on_the_proxy_and_nothing_on_admin() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let body = chat_body();
    let bad = [
        None,
        Some("".to_string()),
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some("Bearer    ".to_string()),
        Some(format!("Basic {CLIENT_TOKEN}")),
        Some(format!("Token {CLIENT_TOKEN}")),
        Some(format!("Bearer {CLIENT_TOKEN}x")),
        Some(format!("Bearer x{CLIENT_TOKEN}")),
        Some(format!(
            "Bearer {}",
            &CLIENT_TOKEN[..CLIENT_TOKEN.len() - 1]
        )),
        Some(format!("Bearer {}", CLIENT_TOKEN.to_uppercase())),
        Some(format!("Bearer{CLIENT_TOKEN}")),
        Some(format!("Bearer {}", KEYS[0].secret)),
        Some("Bearer \u{00e9}\u{00e9}".to_string()),
    ];
    for auth in &bad {
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        )
        .into_bytes();
        if let Some(a) = auth {
            req.extend_from_slice(b"Authorization: ");
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body.as_bytes());
        let r = raw(env.addr(), &req, WAIT).await;
        assert!(
            r.status == Some(401) || (r.status == Some(400) && auth.is_some()),
            "{auth:?}: {r:?}"
        );
        if r.status == Some(401) {
            assert!(r.body.contains("invalid_api_key"), "{r:?}");
        }
    }
    // The admin API and anything under /admin: never served without the admin token.
    let c = http();
    for path in [
        "/admin",
        "/admin/",
        "/admin/pools",
        "/admin/pools/p/keys",
        "/admin/pools/p/keys/h1",
        "/admin/pools/p/keys/h1/disable",
        "/admin/pools/p/keys/..%2f..%2fx/disable",
        "/admin/pools/p/keys/h1%00/enable",
        "/admin/pools/%7Bp%7D/keys/*/disable",
        "/admin/reload",
    ] {
        let admin_prefix = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
        let admin_longer = format!("{ADMIN_TOKEN}x");
        for token in [
            None,
            Some(""),
            Some("wrong"),
            Some(CLIENT_TOKEN),
            Some(admin_prefix),
            Some(admin_longer.as_str()),
            Some(KEYS[0].secret),
        ] {
            for post in [false, true] {
                let url = env.gw().url(path);
                let mut rb = if post { c.post(&url) } else { c.get(&url) };
                if let Some(t) = token {
                    rb = rb.header("authorization", format!("Bearer {t}"));
                }
                let r = rb.send().await.unwrap();
                let s = r.status().as_u16();
                // 429: this address made too many admin attempts with a wrong token.
                assert!(
                    [401, 404, 405, 429].contains(&s),
                    "{path} with {token:?}: {s}"
                );
            }
        }
    }
    assert_eq!(env.mock().total_requests(), 0);
    assert_eq!(states(&env.keys().await), states(&before));
    env.assert_still_serving().await;
}
