//! Request bodies: malformed, of the wrong type, too large (declared, chunked, or lied
//! about), and requests too slow or too large in their head.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_a_clear_400_or_415_and_never_reach_the_upstream() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let c = http();
    let url = env.gw().url("/v1/chat/completions");
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid JSON",
            "application/json",
            b"{\"model\": ".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "trailing garbage",
            "application/json",
            b"{\"model\":\"m\"} x".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "JSON array",
            "application/json",
            b"[1,2]".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "model not a string",
            "application/json",
            b"{\"model\":7}".to_vec(),
            400,
            "invalid_model",
        ),
        (
            "invalid UTF-8",
            "application/json",
            b"{\"model\":\"\xff\xfe\xfd\"}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "UTF-16 BOM",
            "application/json",
            b"\xff\xfe{\x00}\x00".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "deep nesting",
            "application/json",
            "[".repeat(10_000).into_bytes(),
            400,
            "invalid_json",
        ),
        (
            "text/plain",
            "text/plain",
            chat_body().into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            "xml",
            "application/xml",
            b"<model>m</model>".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "bad media type",
            "\x01json",
            chat_body().into_bytes(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, ct, body, want, code) in cases {
        let mut rb = c.post(&url).bearer_auth(CLIENT_TOKEN).body(body);
        if let Ok(v) = reqwest::header::HeaderValue::from_bytes(ct.as_bytes()) {
            rb = rb.header("content-type", v);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{what}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // No Content-Type at all with a body: refused the same way.
    let r = raw(
        env.addr(),
        format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}")
        .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(r.status, Some(415), "{r:?}");
    assert_eq!(
        env.mock().total_requests(),
        0,
        "bad input reached the upstream"
    );
    assert_eq!(states(&env.keys().await), states(&before));
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_with_or_without_content_length() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let big = format!(
        "{{\"model\":\"m\",\"pad\":\"{}\"}}",
        "x".repeat(MAX_BODY_BYTES + 10)
    );
    // Declared too large: refused from the header, before the body is read.
    let started = Instant::now();
    let r = raw(
        env.addr(),
        &raw_post("/v1/chat/completions", "", &big),
        WAIT,
    )
    .await;
    assert_eq!(r.status, Some(413), "{r:?}");
    assert!(r.body.contains("request_too_large"), "{r:?}");
    let declared = started.elapsed();
    // A lie: Content-Length says 10, the client sends the whole oversize body. The first 10
    // bytes are the request's body (not JSON: 400); the rest is read as the next request on
    // the connection, which is garbage: 400 or closed. Never served, never sent upstream.
    let lie = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{big}"
    );
    let (answers, _) = raw_all(env.addr(), lie.as_bytes(), Duration::from_secs(2)).await;
    assert!(answers.starts_with("HTTP/1.1 400"), "{answers}");
    assert!(!answers.contains("HTTP/1.1 2"), "{answers}");
    // Chunked, no length at all: cut when the limit is crossed.
    let mut chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in big.as_bytes().chunks(4096) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw(env.addr(), &chunked, WAIT).await;
    assert_eq!(r.status, Some(413), "{r:?}");
    // The same through a streaming client body (reqwest sends it chunked).
    let stream = futures::stream::iter(
        big.clone()
            .into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = http()
        .post(env.gw().url("/v1/chat/completions"))
        .bearer_auth(CLIENT_TOKEN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // Exactly at the limit passes the size check.
    let at_limit = format!(
        "{{\"model\":\"m\",\"pad\":\"{}\"}}",
        "x".repeat(MAX_BODY_BYTES - 22)
    );
    assert_eq!(at_limit.len(), MAX_BODY_BYTES);
    let r = raw(
        env.addr(),
        &raw_post("/v1/chat/completions", "", &at_limit),
        WAIT,
    )
    .await;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert_eq!(
        env.mock().total_requests(),
        1,
        "only the request within the limit"
    );
    assert_eq!(states(&env.keys().await), states(&before));
    println!("FIGURES body-limit: 413 for a declared oversize body in {declared:?}");
    env.assert_still_serving().await;
}

// ---------------------------------------------------------------------------------------------
// Slow and oversized requests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_after_the_header_read_timeout() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let mut cut = Vec::new();
    // Several at once: one stalled client must not delay the others' cut.
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let addr = env.addr();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                let partial =
                    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nX-Slow-{i}: ");
                s.write_all(partial.as_bytes()).await.unwrap();
                // Trickle one byte now and then, never finishing the head.
                let mut reply = None;
                for _ in 0..40 {
                    let mut b = [0u8; 1024];
                    match tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await {
                        Err(_) => {
                            if s.write_all(b"a").await.is_err() {
                                break;
                            }
                        }
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => {
                            reply = Some(String::from_utf8_lossy(&b[..n]).into_owned());
                        }
                    }
                }
                (started.elapsed(), reply)
            })
        })
        .collect();
    for t in tasks {
        let (took, reply) = t.await.unwrap();
        if let Some(reply) = &reply {
            assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        }
        assert!(
            took >= Duration::from_millis(HEADER_READ_TIMEOUT_MS - 50)
                && took < Duration::from_millis(HEADER_READ_TIMEOUT_MS + 1_000),
            "slow header connection closed after {took:?}"
        );
        cut.push(took);
    }
    // Idle on a keep-alive connection after a full request: cut as well.
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    let body = chat_body();
    let keep_alive = String::from_utf8(raw_post("/v1/chat/completions", "", &body))
        .unwrap()
        .replace("Connection: close\r\n", "");
    s.write_all(keep_alive.as_bytes()).await.unwrap();
    let first = read_reply(&mut s, Instant::now(), WAIT).await;
    assert_eq!(
        (first.status, first.closed),
        (Some(200), false),
        "{first:?}"
    );
    let idle = read_reply(&mut s, Instant::now(), WAIT).await;
    assert!(idle.closed && idle.status.is_none(), "{idle:?}");
    assert!(idle.elapsed < Duration::from_millis(HEADER_READ_TIMEOUT_MS + 1_000));
    // Idle after connecting, not one byte sent: cut as well.
    let r = raw(env.addr(), b"", WAIT).await;
    assert!(r.closed && r.status.is_none_or(|s| s == 408), "{r:?}");
    assert!(r.elapsed < Duration::from_millis(HEADER_READ_TIMEOUT_MS + 1_000));
    assert_eq!(
        env.mock().total_requests(),
        1,
        "only the keep-alive request"
    );
    assert_eq!(states(&env.keys().await), states(&before));
    println!("FIGURES slowloris-headers: cut after {cut:?} (timeout {HEADER_READ_TIMEOUT_MS} ms)");
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_body_gets_408_after_the_body_read_timeout() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let started = Instant::now();
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\": "
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let r = read_reply(&mut s, started, WAIT).await;
    assert_eq!(r.status, Some(408), "{r:?}");
    assert!(r.body.contains("request_timeout"), "{r:?}");
    assert!(
        r.elapsed >= Duration::from_millis(BODY_READ_TIMEOUT_MS - 50)
            && r.elapsed < Duration::from_millis(BODY_READ_TIMEOUT_MS + 1_000),
        "{:?}",
        r.elapsed
    );
    assert_eq!(env.mock().total_requests(), 0);
    assert_eq!(states(&env.keys().await), states(&before));
    println!("FIGURES slowloris-body: 408 after {:?}", r.elapsed);
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_or_a_closed_connection() {
    let env = Isolated::start(strict_limits).await;
    let before = env.keys().await;
    let huge = "a".repeat(MAX_HEADER_BYTES * 4);
    let many: String = (0..2_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_target = format!("/v1/{}", "p".repeat(MAX_HEADER_BYTES * 4));
    for (what, req) in [
        (
            "one huge header",
            raw_post(
                "/v1/chat/completions",
                &format!("X-Big: {huge}\r\n"),
                &chat_body(),
            ),
        ),
        (
            "many headers",
            raw_post("/v1/chat/completions", &many, &chat_body()),
        ),
        (
            "huge request target",
            raw_post(&long_target, "", &chat_body()),
        ),
    ] {
        let r = raw(env.addr(), &req, WAIT).await;
        assert!(r.refused(), "{what}: {r:?}");
        if let Some(s) = r.status {
            assert!(s == 431 || s == 400 || s == 414, "{what}: {s}");
        }
    }
    assert_eq!(env.mock().total_requests(), 0);
    assert_eq!(states(&env.keys().await), states(&before));
    env.assert_still_serving().await;
}
