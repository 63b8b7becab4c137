//! What the official OpenAI SDKs do with keygate's own answers (README.md, "Errors keygate
//! answers itself"): which exception they raise and how many requests they make, with their
//! default two retries. Needs the SDKs: `scripts/test.sh` installs openai-python into
//! `target/sdk/venv` and openai-node into `target/sdk/node`, then runs these ignored tests.

use std::path::PathBuf;

use keygate::mock::{Behavior, MockUpstream};
use serde_json::Value;

use super::every_key;
use crate::admin::K3;
use crate::harness::gateway::{config_toml, CLIENT_TOKEN};
use crate::harness::processes::KeygateProcess;

const SECRETS: [&str; 3] = ["sk-test-one-1111", "sk-test-two-2222", "sk-test-three-3333"];

const PYTHON: &str = r#"
import json, sys, openai
attempts = 0
def count(request):
    global attempts
    attempts += 1
http = openai.DefaultHttpxClient(event_hooks={"request": [count]})
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], timeout=20, http_client=http)
try:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    result = "ok"
except openai.APIStatusError as e:
    result = type(e).__name__
print(json.dumps({"result": result, "attempts": attempts}))
"#;

const NODE: &str = r#"
const { OpenAI } = require("openai");
let attempts = 0;
const client = new OpenAI({
  baseURL: process.argv[2], apiKey: process.argv[3], timeout: 20000,
  fetch: (url, init) => { attempts++; return fetch(url, init); },
});
client.chat.completions.create({ model: "m", messages: [{ role: "user", content: "hi" }] })
  .then(() => console.log(JSON.stringify({ result: "ok", attempts })))
  .catch((e) => console.log(JSON.stringify({ result: e.constructor.name, attempts })));
"#;

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk")
}

/// Runs one SDK's script against `base_url`: the exception class (or `ok`) and its requests.
fn run_sdk(sdk: &str, base_url: &str) -> (String, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (program, script, file) = match sdk {
        "python" => (sdk_dir().join("venv/bin/python"), PYTHON, "sdk.py"),
        _ => (PathBuf::from("node"), NODE, "sdk.js"),
    };
    let path = dir.path().join(file);
    std::fs::write(&path, script).expect("write script");
    let out = std::process::Command::new(&program)
        .arg(&path)
        .args([base_url, CLIENT_TOKEN])
        .env("NODE_PATH", sdk_dir().join("node/node_modules"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/test.sh to install the SDKs)",
                program.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{sdk}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (
        v["result"].as_str().unwrap_or_default().to_string(),
        v["attempts"].as_u64().unwrap_or(0),
    )
}

/// A keygate process whose every key answers `b`; `base_url` for the SDKs.
async fn keygate_answering(mock: &MockUpstream, b: Behavior) -> KeygateProcess {
    every_key(mock, &SECRETS, b);
    KeygateProcess::start(&config_toml(None, &mock.base_url(), &K3, ""), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the OpenAI SDKs; scripts/test.sh installs them and runs it"]
async fn the_sdks_give_up_at_once_on_503_no_key_available() {
    let mock = MockUpstream::start().await;
    let gw = keygate_answering(&mock, Behavior::Unauthorized).await;
    // A 401 first benches a key while keygate's own probe confirms it (README.md, "Who is
    // blamed"): the SDKs are run once every key is confirmed revoked.
    let c = crate::harness::gateway::http();
    let url = gw.url("/v1/chat/completions");
    crate::harness::wait_until(
        std::time::Duration::from_secs(15),
        "every key confirmed revoked",
        || {
            let request = (c.post(&url))
                .bearer_auth(crate::harness::gateway::CLIENT_TOKEN)
                .json(&crate::harness::gateway::chat("m", false));
            async move { request.send().await.is_ok_and(|r| r.status() == 503) }
        },
    )
    .await;
    for sdk in ["python", "node"] {
        let got = run_sdk(sdk, &gw.url("/v1"));
        assert_eq!(got, ("InternalServerError".to_string(), 1), "{sdk}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the OpenAI SDKs; scripts/test.sh installs them and runs it"]
async fn the_sdks_give_up_at_once_when_the_wait_exceeds_the_cap() {
    let mock = MockUpstream::start().await;
    let retry_after = Some("300".to_string());
    let gw = keygate_answering(&mock, Behavior::RateLimited { retry_after }).await;
    for sdk in ["python", "node"] {
        let got = run_sdk(sdk, &gw.url("/v1"));
        assert_eq!(got, ("RateLimitError".to_string(), 1), "{sdk}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the OpenAI SDKs; scripts/test.sh installs them and runs it"]
async fn the_sdks_retry_twice_after_retry_after_within_the_cap() {
    let mock = MockUpstream::start().await;
    let retry_after = Some("1".to_string());
    let gw = keygate_answering(&mock, Behavior::RateLimited { retry_after }).await;
    for sdk in ["python", "node"] {
        let got = run_sdk(sdk, &gw.url("/v1"));
        assert_eq!(got, ("RateLimitError".to_string(), 3), "{sdk}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the OpenAI SDKs; scripts/test.sh installs them and runs it"]
async fn the_sdks_wait_out_429_pool_exhausted_and_then_succeed() {
    let mock = MockUpstream::start().await;
    // One key of 6 requests per minute (a slot every ~10 s), no waiting inside keygate: the
    // SDK's request after the test's first gets 429 pool_exhausted with `Retry-After` of up to
    // 11 s, which the SDK waits before its retry. A fresh gateway per SDK.
    let limits = "[pools.limits]\nrpm = 6\n";
    let toml = config_toml(None, &mock.base_url(), &K3[..1], limits);
    for sdk in ["python", "node"] {
        let gw = KeygateProcess::start(&toml, &[]).await;
        let c = crate::harness::gateway::http();
        let first = (c.post(gw.url("/v1/chat/completions")))
            .bearer_auth(CLIENT_TOKEN)
            .json(&crate::harness::gateway::chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 200);
        let got = run_sdk(sdk, &gw.url("/v1"));
        assert_eq!(got, ("ok".to_string(), 2), "{sdk}");
    }
}
