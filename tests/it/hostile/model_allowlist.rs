//! The `models` allowlist fails closed: every way of naming a model keygate cannot read as the
//! upstream would (another media type, no `model`, a case variant or a duplicate key, a multipart
//! field) gets a 400 naming the problem and never reaches the upstream.

use super::*;

fn allow_gpt_4_1(toml: String) -> String {
    strict_limits(toml).replacen(
        "max_attempts = 3\n",
        "max_attempts = 3\nmodels = [\"gpt-4.1\"]\n",
        1,
    )
}

fn multipart(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!(
            "--kgb\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    out + "--kgb--\r\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unreadable_or_ambiguous_model_is_refused_before_the_upstream() {
    let env = Isolated::start(allow_gpt_4_1).await;
    let before = env.keys().await;
    let json = "application/json";
    let form_data = "multipart/form-data; boundary=kgb";
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "chat/completions",
            "application/octet-stream",
            r#"{"model":"o1-pro","messages":[]}"#.into(),
            "model_unreadable",
        ),
        (
            "chat/completions",
            "application/x-www-form-urlencoded",
            "model=o1-pro".into(),
            "model_unreadable",
        ),
        (
            "chat/completions",
            json,
            r#"{"messages":[]}"#.into(),
            "missing_model",
        ),
        (
            "chat/completions",
            json,
            r#"{"model":"gpt-4.1","MODEL":"o1-pro","messages":[]}"#.into(),
            "ambiguous_model",
        ),
        (
            "chat/completions",
            json,
            r#"{"model":"gpt-4.1","model":"o1-pro","messages":[]}"#.into(),
            "ambiguous_model",
        ),
        (
            "chat/completions",
            json,
            r#"{"model":"o1-pro","messages":[]}"#.into(),
            "model_not_allowed",
        ),
        (
            "audio/transcriptions",
            form_data,
            multipart(&[("file", "RIFF"), ("model", "o1-pro")]),
            "model_not_allowed",
        ),
        (
            "audio/transcriptions",
            form_data,
            multipart(&[("file", "RIFF")]),
            "missing_model",
        ),
        (
            "audio/transcriptions",
            form_data,
            multipart(&[("model", "gpt-4.1"), ("Model", "o1-pro")]),
            "ambiguous_model",
        ),
        (
            "audio/transcriptions",
            "multipart/form-data",
            multipart(&[("model", "gpt-4.1")]),
            "model_unreadable",
        ),
    ];
    for (path, content_type, body, code) in cases {
        let before_upstream = env.mock().total_requests();
        let r = http()
            .post(env.gw().url(&format!("/v1/{path}")))
            .bearer_auth(CLIENT_TOKEN)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (status, answer["error"]["code"].as_str().unwrap_or_default()),
            (400, code),
            "{content_type} {body:?}: {answer}"
        );
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(
            env.mock().total_requests(),
            before_upstream,
            "{body:?} reached the upstream"
        );
    }
    assert_eq!(states(&env.keys().await), states(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_models_in_json_or_multipart_and_bodiless_requests_go_through() {
    let env = Isolated::start(allow_gpt_4_1).await;
    let r = post_chat(&http(), env.gw(), &chat("gpt-4.1", false), &[]).await;
    assert_eq!(r.status(), 200);
    let r = http()
        .get(env.gw().url("/v1/models"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = env.mock().total_requests();
    let r = http()
        .post(env.gw().url("/v1/audio/transcriptions"))
        .bearer_auth(CLIENT_TOKEN)
        .header("content-type", "multipart/form-data; boundary=kgb")
        .body(multipart(&[("file", "RIFF"), ("model", "gpt-4.1")]))
        .send()
        .await
        .unwrap();
    // The mock has no transcription endpoint: its 404 shows the request reached it.
    assert_eq!(r.status(), 404);
    assert_eq!(env.mock().total_requests(), before + 1);
}
