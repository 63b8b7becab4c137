//! The pool key never reaches a client in anything it receives: an upstream that echoes the key
//! it was sent in headers and bodies, plain, `\u`-escaped, split across SSE chunks and
//! gzip-encoded, on success and on error answers, streamed and not.

use keygate::mock::{Behavior, LeakForm, MockUpstream};

use super::leaks;
use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestGateway, TestKey};
use crate::harness::RedisServer;

const KEYS: [TestKey; 2] = [
    key("l1", "sk-leaky-Mz4Qw8Rt2Yu6Io1"),
    key("l2", "sk-leaky-Ab3Cd7Ef5Gh9Jk2"),
];

/// `text` with its JSON escapes undone (`\uXXXX`, `\/` and the like), so an escaped key shows.
fn unescaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let esc = &rest[at..];
        let hex = esc.get(2..6).filter(|_| esc[1..].starts_with('u'));
        match hex
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
        {
            Some(c) => {
                out.push(c);
                rest = &esc[6..];
            }
            None => {
                out.push_str(esc.get(1..2).unwrap_or("\\"));
                rest = esc.get(2..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

/// One answer as the client saw it: status, headers and body, as text.
async fn received(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let headers: String = (r.headers().iter())
        .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let body = String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned();
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_key_never_reaches_a_client_in_any_answer() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &KEYS, "");
    let gw = TestGateway::start(&toml).await;
    let c = http();
    let forms = [
        LeakForm::Plain,
        LeakForm::Escaped,
        LeakForm::Sse,
        LeakForm::Gzip,
    ];
    let mut cases = 0;
    for form in forms {
        // 200: success; 400: the client's error, passed through; 500: retried, then keygate's own.
        for status in [200, 400, 500] {
            for stream in [false, true] {
                for k in &KEYS {
                    mock.set_steady(k.secret, Behavior::Leak { form, status });
                }
                let r = post_chat(&c, &gw, &chat("m", stream), &[]).await;
                let (got, headers, body) = received(r).await;
                let what = format!("{form:?} {status} stream={stream}: {got}\n{headers}\n{body}");
                let seen = format!("{headers}\n{body}");
                for k in &KEYS {
                    for text in [seen.clone(), unescaped(&seen)] {
                        let found = leaks(k.secret, &text);
                        assert!(found.is_empty(), "{found:?} leaked in {what}");
                    }
                }
                assert!(!headers.contains("content-encoding"), "{what}");
                assert!(!headers.contains("openai-organization"), "{what}");
                match (form, status) {
                    (LeakForm::Gzip, _) => {
                        assert_eq!(got, 502, "{what}");
                        assert!(body.contains("upstream_encoding_unsupported"), "{what}");
                    }
                    (_, 200 | 400) => {
                        assert_eq!(got, status, "{what}");
                        // The key was there and was masked, not merely absent.
                        assert!(unescaped(&body).contains("sk-…"), "{what}");
                    }
                    _ => assert_eq!(got, 502, "{what}"),
                }
                cases += 1;
            }
        }
    }
    println!("FIGURES leak-answers: {cases} answers searched, plain and unescaped; 0 leaks");
    gw.shutdown().await;
}
