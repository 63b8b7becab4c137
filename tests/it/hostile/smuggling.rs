//! Request smuggling shapes (conflicting lengths and encodings) and header injection.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_and_transfer_encodings_are_refused() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let body = chat_body();
    let n = body.len();
    let head = |extra: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             Content-Type: application/json\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let smuggled = "GET /v1/models HTTP/1.1\r\nHost: k\r\n\r\n";
    let refused = [
        (
            "conflicting Content-Length",
            format!(
                "{}{body}",
                head(&format!(
                    "Content-Length: {n}\r\nContent-Length: {}\r\n",
                    n + 1
                ))
            ),
        ),
        (
            "list of lengths",
            format!(
                "{}{body}",
                head(&format!("Content-Length: {n}, {}\r\n", n + 1))
            ),
        ),
        (
            "negative length",
            format!("{}{body}", head("Content-Length: -1\r\n")),
        ),
        (
            "non-numeric length",
            format!("{}{body}", head("Content-Length: 12abc\r\n")),
        ),
        (
            "TE not ending in chunked",
            format!("{}{body}", head("Transfer-Encoding: chunked, identity\r\n")),
        ),
        (
            "unknown TE",
            format!("{}{body}", head("Transfer-Encoding: xchunked\r\n")),
        ),
        (
            "space before colon",
            format!("{}{body}", head(&format!("Content-Length : {n}\r\n"))),
        ),
        (
            "bad chunk size",
            format!(
                "{}zz\r\n{body}\r\n0\r\n\r\n",
                head("Transfer-Encoding: chunked\r\n")
            ),
        ),
    ];
    for (what, req) in &refused {
        let r = raw(env.addr(), req.as_bytes(), WAIT).await;
        assert!(r.refused(), "{what}: {r:?}");
    }
    // Content-Length and chunked together (the classic smuggling shape): RFC 9112 6.1 lets a
    // server refuse it or frame by the chunks alone, and then it must close the connection. So
    // the request hidden behind the body must never be answered, whatever the framing chosen.
    // (A keep-alive request: the server decides whether the connection lives on.)
    let auth = format!("Authorization: Bearer {CLIENT_TOKEN}\r\n");
    let hidden = format!("GET /v1/models HTTP/1.1\r\nHost: k\r\n{auth}\r\n");
    let clte = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\n{hidden}"
    );
    let (answers, closed) = raw_all(env.addr(), clte.as_bytes(), Duration::from_secs(2)).await;
    let responses = answers.matches("HTTP/1.1 ").count();
    assert!(responses <= 1, "the hidden request was answered: {answers}");
    assert!(
        closed,
        "the connection stayed open after CL + TE: {answers}"
    );
    let served_clte = answers.starts_with("HTTP/1.1 200");
    assert!(
        served_clte || answers.is_empty() || answers.starts_with("HTTP/1.1 4"),
        "{answers}"
    );
    let upstream_before = env.mock().total_requests();
    assert_eq!(
        upstream_before,
        u64::from(served_clte),
        "the hidden request went upstream"
    );
    // Two equal lengths are one length (RFC 9112 6.3): either refused, or served with exactly
    // that body and one Content-Length upstream. Nothing is smuggled behind it either way.
    let twice = format!(
        "{}{body}{smuggled}",
        head(&format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"))
    );
    let r = raw(env.addr(), twice.as_bytes(), WAIT).await;
    if r.status == Some(200) {
        let up = env.mock().last_request().unwrap();
        assert_eq!(up.uri, "/v1/chat/completions");
        assert_eq!(up.body.len(), n);
        assert_eq!(up.headers.get_all("content-length").iter().count(), 1);
        let want = upstream_before + 1;
        assert_eq!(
            env.mock().total_requests(),
            want,
            "a smuggled request went upstream"
        );
    } else {
        assert!(r.refused(), "{r:?}");
        assert_eq!(env.mock().total_requests(), upstream_before);
    }
    assert_eq!(states(&env.keys().await), states(&before));
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_lf_in_header_values_is_refused_and_never_reflected_or_split() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let body = chat_body();
    // On the wire: a bare CR or a NUL inside a value, an obsolete line folding, a header line
    // without a colon. The parser refuses each.
    for (what, extra) in [
        ("bare CR", "X-User-Id: a\rX-Injected: 1\r\n"),
        ("NUL", "X-User-Id: a\0b\r\n"),
        ("obs-fold", "X-User-Id: a\r\n X-Injected: 1\r\n"),
        ("no colon", "X-Injected\r\n"),
    ] {
        let r = raw(
            env.addr(),
            &raw_post("/v1/chat/completions", extra, &body),
            WAIT,
        )
        .await;
        assert!(r.refused(), "{what}: {r:?}");
        assert!(r.header("x-injected").is_none(), "{what}: {r:?}");
    }
    assert_eq!(env.mock().total_requests(), 0);
    // Values that keygate could reflect: the request id, the model, the pool name, the path.
    // Percent-encoded or JSON-escaped CR/LF must never become a header line in the answer.
    let reflect = [
        (
            "request id",
            "X-Request-Id: abc%0d%0aX-Injected: 1\r\n".to_string(),
            body.clone(),
            "/v1/chat/completions",
        ),
        (
            "model",
            String::new(),
            serde_json::json!({"model": "m\r\nX-Injected: 1", "messages": []}).to_string(),
            "/v1/chat/completions",
        ),
        (
            "pool",
            "X-Keygate-Pool: p%0d%0aX-Injected: 1\r\n".to_string(),
            body.clone(),
            "/v1/chat/completions",
        ),
        (
            "path",
            String::new(),
            body.clone(),
            "/v1/chat%0d%0aX-Injected:%201",
        ),
    ];
    for (what, extra, body, target) in reflect {
        let r = raw(env.addr(), &raw_post(target, &extra, &body), WAIT).await;
        assert!(r.status.is_some(), "{what}: {r:?}");
        assert!(
            r.header("x-injected").is_none(),
            "{what}: header split: {r:?}"
        );
        let id = r.header("x-request-id").unwrap_or_default();
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
            "{what}: {id}"
        );
        if let Some(m) = r.header("x-keygate-model") {
            assert!(!m.contains('\r') && !m.contains('\n'), "{what}: {m:?}");
        }
    }
    // The JSON-escaped model did reach the upstream (as JSON, where it is harmless); nothing
    // else failed on a key.
    assert_eq!(states(&env.keys().await), states(&before));
    env.assert_still_serving().await;
}
