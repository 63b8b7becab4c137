//! Connection budgets: idle and half-opened HTTP/2 connections are closed on a deadline, the
//! connection cap refuses new connections cleanly while the open ones keep being served, and
//! h2c can be turned off.

use super::*;

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const IDLE_H2C_CONNECTIONS: usize = 3_000;
const FIRST_REQUEST_TIMEOUT_MS: u64 = 1_000;

/// An empty SETTINGS frame, then a HEADERS frame on stream 1 (`:method GET`) without
/// END_HEADERS: the header block is never finished.
fn unfinished_headers() -> Vec<u8> {
    let mut frames = H2_PREFACE.to_vec();
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&[0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x82]);
    frames
}

/// Reads until the server closes the connection (EOF or reset).
async fn wait_for_close(mut s: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn with_server_lines(lines: &'static str) -> impl FnOnce(String) -> String {
    move |toml| {
        toml.replace(
            "shutdown_grace_s = 5\n",
            &format!("shutdown_grace_s = 5\n{lines}"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_idle_h2c_connections_are_closed_within_the_first_request_timeout() {
    let env = Isolated::start(with_server_lines(
        "header_read_timeout_ms = 1000\nidle_timeout_ms = 1000\n",
    ))
    .await;
    let addr = env.addr();
    let mut sockets = Vec::with_capacity(IDLE_H2C_CONNECTIONS + 10);
    for i in 0..IDLE_H2C_CONNECTIONS + 10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The last ten go further: SETTINGS and a HEADERS frame that never ends.
        let first = if i < IDLE_H2C_CONNECTIONS {
            H2_PREFACE.to_vec()
        } else {
            unfinished_headers()
        };
        s.write_all(&first).await.unwrap();
        sockets.push(s);
    }
    let all_open = Instant::now();
    let closes: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(wait_for_close(s)))
        .collect();
    let limit = Duration::from_millis(FIRST_REQUEST_TIMEOUT_MS) + Duration::from_secs(20);
    let all_closed = tokio::time::timeout(limit, futures::future::join_all(closes)).await;
    let took = all_open.elapsed();
    assert!(
        all_closed.is_ok(),
        "some connections still open after {limit:?}"
    );
    println!(
        "FIGURES idle_h2c: {} preface-only + 10 unfinished-HEADERS connections, all closed {:.2} s \
         after the last was opened (first-request timeout {FIRST_REQUEST_TIMEOUT_MS} ms)",
        IDLE_H2C_CONNECTIONS,
        took.as_secs_f64()
    );
    let open = &env.gw().state.metrics.limits.connections_open;
    wait_until(
        Duration::from_secs(5),
        "the open-connection gauge back to 0",
        || async { open.get() == 0 },
    )
    .await;
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let env = Isolated::start(with_server_lines("idle_timeout_ms = 300\n")).await;
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: keygate\r\n\r\n";
    s.write_all(request).await.unwrap();
    let reply = read_reply(&mut s, Instant::now(), WAIT).await;
    assert_eq!(reply.status, Some(200), "{reply:?}");
    assert!(
        !reply.closed,
        "a keep-alive connection stays open after its answer: {reply:?}"
    );
    let closed = tokio::time::timeout(WAIT, wait_for_close(s)).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_are_refused_and_open_ones_keep_being_served() {
    const CAP: usize = 20;
    let env = Isolated::start(with_server_lines(
        "max_connections = 20\nheader_read_timeout_ms = 60000\nidle_timeout_ms = 60000\n",
    ))
    .await;
    let limits = &env.gw().state.metrics.limits;
    let request = raw_post("/v1/chat/completions", "", &chat_body());
    let keep_alive = String::from_utf8(request)
        .unwrap()
        .replace("Connection: close\r\n", "");
    let mut served = TcpStream::connect(env.addr()).await.unwrap();
    served.write_all(keep_alive.as_bytes()).await.unwrap();
    let first = read_reply(&mut served, Instant::now(), WAIT).await;
    assert_eq!(first.status, Some(200), "{first:?}");
    let mut idle = Vec::new();
    for _ in 1..CAP {
        idle.push(TcpStream::connect(env.addr()).await.unwrap());
    }
    wait_until(Duration::from_secs(5), "the cap reached", || async {
        limits.connections_open.get() == CAP as i64
    })
    .await;
    for _ in 0..3 {
        let mut refused = TcpStream::connect(env.addr()).await.unwrap();
        let reply = read_reply(&mut refused, Instant::now(), WAIT).await;
        // The 503 (when the socket took it before the close), then the close.
        if let Some(status) = reply.status {
            assert_eq!(status, 503, "{reply:?}");
            assert!(reply.body.contains("too_many_connections"), "{reply:?}");
        }
        let closed = tokio::time::timeout(WAIT, wait_for_close(refused)).await;
        assert!(closed.is_ok(), "a connection over the cap must be closed");
    }
    assert_eq!(limits.connections_rejected.get(), 3);
    assert_eq!(limits.connections_open.get(), CAP as i64);
    // The connection it holds is still served.
    served.write_all(keep_alive.as_bytes()).await.unwrap();
    let again = read_reply(&mut served, Instant::now(), WAIT).await;
    assert_eq!(again.status, Some(200), "{again:?}");
    // Places free up as connections close.
    drop(idle);
    wait_until(Duration::from_secs(5), "places freed", || async {
        limits.connections_open.get() == 1
    })
    .await;
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http2_off_an_h2c_client_gets_no_http2_and_http11_still_works() {
    let env = Isolated::start(with_server_lines("http2 = false\n")).await;
    let (answer, closed) = raw_all(env.addr(), H2_PREFACE, WAIT).await;
    assert!(closed, "the connection must be closed");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "an HTTP/1.1 refusal or nothing, never HTTP/2 frames: {answer:?}"
    );
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert!(h2.get(env.gw().url("/healthz")).send().await.is_err());
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_is_served_and_its_connection_closed_once_idle() {
    let env = Isolated::start(with_server_lines("idle_timeout_ms = 300\n")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(env.gw().url("/healthz")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    // The client keeps its connection pooled; the gateway closes it once idle.
    let open = &env.gw().state.metrics.limits.connections_open;
    wait_until(WAIT, "the idle h2 connection closed", || async {
        open.get() == 0
    })
    .await;
    let again = h2.get(env.gw().url("/healthz")).send().await.unwrap();
    assert_eq!(again.status(), 200, "a new connection is served");
}

/// The gateway peeks at a connection's first bytes to tell h2c from HTTP/1.1 (src/server/conn.rs):
/// whether it sees the whole preface or only its start (then hyper's own detection waits for the
/// rest; the unit tests there show a partial preface is seen as such), the client gets HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_preface_sent_in_two_pieces_is_served_as_http2() {
    let env = Isolated::start(|toml| toml).await;
    let open = &env.gw().state.metrics.limits.connections_open;
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(&H2_PREFACE[..10]).await.unwrap();
    wait_until(WAIT, "the connection accepted", || async {
        open.get() == 1
    })
    .await;
    s.write_all(&H2_PREFACE[10..]).await.unwrap();
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap(); // an empty SETTINGS frame
                                                                // The server's first frame: SETTINGS (type 4) on stream 0; HTTP/1.1 would answer a 400.
    let mut head = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("an answer within the wait")
        .expect("nine bytes: a frame header");
    assert_eq!(head[3], 0x4, "an HTTP/2 SETTINGS frame first, got {head:?}");
    assert_eq!(&head[5..9], &[0, 0, 0, 0], "on stream 0");
    env.assert_still_serving().await;
}
