//! Scripts: one-shots and steady behaviours, counts, the text form, strictness, the control API
//! and `run`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn one_shots_are_answered_in_order_then_the_steady_behavior() {
    let mock = MockUpstream::start().await;
    mock.script("k", vec![Behavior::ServerError(503), Behavior::Ok]);
    mock.set_steady("k", Behavior::Unauthorized);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(chat_status(&mock, "k").await);
    }
    assert_eq!(statuses, [503, 200, 401, 401]);
    assert_eq!(mock.requests("k"), 4);
}

#[tokio::test]
async fn requests_are_counted_per_key_and_reset_to_zero() {
    let mock = MockUpstream::start().await;
    for key in ["a", "a", "b"] {
        assert_eq!(chat_status(&mock, key).await, 200, "unknown keys answer ok");
    }
    assert_eq!((mock.requests("a"), mock.requests("b")), (2, 1));
    assert_eq!(mock.requests("never-seen"), 0);
    assert_eq!(mock.total_requests(), 3);
    mock.reset_counts();
    assert_eq!((mock.requests("a"), mock.total_requests()), (0, 0));
}

#[tokio::test]
async fn rate_limited_answers_429_with_retry_after_and_openai_body() {
    let mock = MockUpstream::start().await;
    let retry_after = Some("5".to_owned());
    mock.script(
        "k",
        vec![
            Behavior::RateLimited { retry_after },
            Behavior::RateLimited { retry_after: None },
        ],
    );
    let response = post_chat(&mock, "k", &chat_body(false, false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["message"], "Rate limit reached");
    let response = post_chat(&mock, "k", &chat_body(false, false)).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn quota_unauthorized_and_server_errors_use_openai_codes() {
    let mock = MockUpstream::start().await;
    mock.script(
        "sk-abcd1234",
        vec![
            Behavior::Quota,
            Behavior::Unauthorized,
            Behavior::ServerError(502),
        ],
    );
    let expected = [
        (429, "insufficient_quota", "insufficient_quota"),
        (401, "invalid_api_key", "invalid_request_error"),
        (502, "", "server_error"),
    ];
    for (status, code, kind) in expected {
        let response = post_chat(&mock, "sk-abcd1234", &chat_body(false, false)).await;
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], kind);
        if !code.is_empty() {
            assert_eq!(body["error"]["code"], code);
        }
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("abcd1234"),
            "the secret is masked: {message}"
        );
    }
}

#[test]
fn text_form_reads_every_documented_behavior() {
    let cases = [
        ("ok", Behavior::Ok),
        ("200", Behavior::Ok),
        ("429", Behavior::RateLimited { retry_after: None }),
        (
            "429:5",
            Behavior::RateLimited {
                retry_after: Some("5".into()),
            },
        ),
        ("401", Behavior::Unauthorized),
        ("QUOTA", Behavior::Quota),
        ("500", Behavior::ServerError(500)),
        ("503", Behavior::ServerError(503)),
        (
            "delay:200",
            Behavior::Delay {
                ms: 200,
                then: Box::new(Behavior::Ok),
            },
        ),
        (
            "delay:50:429:1",
            Behavior::Delay {
                ms: 50,
                then: Box::new(Behavior::RateLimited {
                    retry_after: Some("1".into()),
                }),
            },
        ),
        (
            "remaining0:1s",
            Behavior::RemainingZero { reset: "1s".into() },
        ),
        ("slow:100", Behavior::SlowStream { interval_ms: 100 }),
        ("drop:3", Behavior::StreamThenDrop { events: 3 }),
        ("hang", Behavior::Hang),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<Behavior>(), Ok(expected), "{text}");
    }
    assert!(matches!(
        "403".parse(),
        Ok(Behavior::Status { status: 403, .. })
    ));
    let flag: KeyFlag = "sk-a==x=401,429:5,ok".parse().unwrap();
    assert_eq!(flag.secret, "sk-a==x");
    assert_eq!(
        flag.once,
        [
            Behavior::Unauthorized,
            Behavior::RateLimited {
                retry_after: Some("5".into())
            }
        ]
    );
    assert_eq!(flag.steady, Behavior::Ok);
    let flag: KeyFlag = "k=quota".parse().unwrap();
    assert_eq!((flag.once.len(), flag.steady), (0, Behavior::Quota));
}

#[test]
fn text_form_rejects_bad_flags_and_names_them() {
    for bad in [
        "k=teapot",
        "k=",
        "=ok",
        "no-equals",
        "k=429:",
        "k=delay:x",
        "k=delay",
        "k=302",
        "k=ok,,ok",
        "k=drop:-1",
    ] {
        assert!(bad.parse::<KeyFlag>().is_err(), "{bad} should not parse");
    }
    let opts = MockOptions {
        keys: vec!["good=ok".into(), "bad=teapot".into()],
        ..MockOptions::default()
    };
    let error = MockState::from_options(&opts).unwrap_err().to_string();
    assert!(error.contains("--key \"bad=teapot\""), "{error}");
    assert!(error.contains("unknown behaviour \"teapot\""), "{error}");
}

#[tokio::test]
async fn control_endpoints_script_keys_report_stats_and_reset() {
    let mock = MockUpstream::start().await;
    let control = |path: &str| format!("http://{}/_mock/{path}", mock.addr);
    let script = json!({"once": ["401", "ok"], "steady": "429:5"});
    let response = client()
        .post(control("keys/k"))
        .json(&script)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let statuses = [chat_status(&mock, "k").await, chat_status(&mock, "k").await];
    assert_eq!(statuses, [401, 200]);
    let response = post_chat(&mock, "k", &chat_body(false, false)).await;
    assert_eq!(
        (
            response.status().as_u16(),
            &response.headers()["retry-after"]
        ),
        (429, &"5".parse().unwrap())
    );
    let stats: Value = client()
        .get(control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, json!({"total": 3, "keys": {"k": 3}}));

    let bad = client()
        .post(control("keys/k"))
        .json(&json!({"steady": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"steady\""),
        "{body}"
    );

    let config = json!({"missing_models": [MODEL]});
    client()
        .post(control("config"))
        .json(&config)
        .send()
        .await
        .unwrap();
    assert_eq!(chat_status(&mock, "other").await, 404);
    client().post(control("reset")).send().await.unwrap();
    let stats: Value = client()
        .get(control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, json!({"total": 0, "keys": {}}));
    assert_eq!(
        chat_status(&mock, "k").await,
        200,
        "reset returns to the start options"
    );
}

#[tokio::test]
async fn strict_mode_refuses_keys_that_were_never_scripted() {
    let opts = MockOptions {
        strict: true,
        keys: vec!["known=ok".into()],
        ..MockOptions::default()
    };
    let mock = MockUpstream::start_with(opts).await.unwrap();
    assert_eq!(chat_status(&mock, "known").await, 200);
    assert_eq!(chat_status(&mock, "stranger").await, 401);
    mock.set_steady("stranger", Behavior::Ok);
    assert_eq!(chat_status(&mock, "stranger").await, 200);
    mock.set_strict(false);
    assert_eq!(chat_status(&mock, "anyone").await, 200);
}

#[tokio::test]
async fn delays_postpone_the_answer() {
    let mock = MockUpstream::start().await;
    mock.set_delay_ms(30);
    mock.set_steady(
        "k",
        Behavior::Delay {
            ms: 30,
            then: Box::new(Behavior::ServerError(500)),
        },
    );
    let started = Instant::now();
    assert_eq!(chat_status(&mock, "k").await, 500);
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn a_hanging_request_is_released_only_when_the_mock_stops() {
    let mock = MockUpstream::start().await;
    mock.set_steady("k", Behavior::Hang);
    let url = format!("{}/chat/completions", mock.base_url());
    let request = client()
        .post(url)
        .bearer_auth("k")
        .json(&chat_body(false, false))
        .send();
    let pending = tokio::spawn(request);
    wait_until("the hanging request to arrive", || mock.requests("k") == 1).await;
    assert!(!pending.is_finished());
    mock.stop().await;
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn run_serves_the_command_line_options_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = MockOptions {
        keys: vec!["a=429:7".into(), "b=401,ok".into()],
        ..MockOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(
        opts,
        listener,
        async move { stopped.await.unwrap_or(()) },
    ));
    let url = format!("http://{addr}/v1/chat/completions");
    let send = |key: &'static str| {
        client()
            .post(&url)
            .bearer_auth(key)
            .json(&chat_body(false, false))
            .send()
    };
    let response = send("a").await.unwrap();
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "7")
    );
    assert_eq!(send("b").await.unwrap().status(), 401);
    assert_eq!(send("b").await.unwrap().status(), 200);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = MockOptions {
        keys: vec!["a=429:".into()],
        ..MockOptions::default()
    };
    let error = run(opts, listener, async {}).await.unwrap_err();
    assert!(
        matches!(error, MockError::KeyFlag { ref flag, .. } if flag == "a=429:"),
        "{error}"
    );
}
