//! Canary identity: `X-User-Id`, else the body's `user`, else a draw per request, so one
//! application token splits by percent; `sticky_by = "client"` keeps the token-name behaviour.

use std::collections::HashMap;

use keygate::mock::MockUpstream;

use super::ask;
use crate::harness::gateway::{chat, config_toml, http, key, TestGateway, TestKey};
use crate::harness::RedisServer;

fn keys() -> [TestKey; 2] {
    let mut canary = key("c1", "sk-test-canary-9999");
    canary.group = "canary";
    [key("s1", "sk-test-stable-1111"), canary]
}

fn canary_section(percent: u8, sticky_by: &str) -> String {
    format!(
        "[pools.canary]\ngroup = \"canary\"\npercent = {percent}\nsticky_by = \"{sticky_by}\"\n"
    )
}

async fn start(redis: &RedisServer, mock: &MockUpstream, sticky_by: &str) -> TestGateway {
    let section = canary_section(25, sticky_by);
    TestGateway::start(&config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        &keys(),
        &section,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_token_without_user_ids_splits_by_the_canary_percent() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start(&redis, &mock, "user").await;
    let c = http();
    let mut canary = 0;
    for _ in 0..400 {
        let a = ask(&c, &gw, &chat("m", false), &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        canary += usize::from(a.group.as_deref() == Some("canary"));
    }
    // Binomial(400, 0.25): mean 100, sd 8.7; 60..=140 is more than 4.5 sd either way.
    assert!(
        (60..=140).contains(&canary),
        "{canary} of 400 went to canary at 25%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_body_user_always_lands_in_the_same_group() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start(&redis, &mock, "user").await;
    let c = http();
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..4 {
        for u in 0..25 {
            let user = format!("end-user-{u}");
            let mut body = chat("m", false);
            body["user"] = user.clone().into();
            let a = ask(&c, &gw, &body, &[]).await;
            assert_eq!(a.status, 200, "round {round}: {}", a.body);
            groups
                .entry(user)
                .or_default()
                .push(a.group.unwrap_or_default());
        }
    }
    for (user, seen) in &groups {
        assert!(seen.iter().all(|g| g == &seen[0]), "{user}: {seen:?}");
    }
    let in_canary = groups.values().filter(|g| g[0] == "canary").count();
    assert!(
        in_canary > 0 && in_canary < 25,
        "users split across groups: {in_canary} of 25 in canary"
    );
    // X-User-Id wins over the body's user.
    let mut body = chat("m", false);
    body["user"] = "end-user-0".into();
    let expected = &groups["end-user-1"][0];
    let a = ask(&c, &gw, &body, &[("x-user-id", "end-user-1")]).await;
    assert_eq!(a.group.as_ref(), Some(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_by_client_keeps_every_request_of_one_token_in_one_group() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start(&redis, &mock, "client").await;
    let c = http();
    let mut seen = Vec::new();
    for u in 0..40 {
        let mut body = chat("m", false);
        body["user"] = format!("end-user-{u}").into();
        let a = ask(&c, &gw, &body, &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        seen.push(a.group.unwrap_or_default());
    }
    assert!(seen.iter().all(|g| g == &seen[0]), "{seen:?}");
}

#[test]
fn an_unknown_sticky_by_is_refused_naming_the_field() {
    let toml = config_toml(
        None,
        "http://127.0.0.1:9/v1",
        &keys(),
        &canary_section(5, "session"),
    );
    let err =
        keygate::config::Config::from_toml_str(&toml, &|_: &str| None, std::path::Path::new("."))
            .expect_err("sticky_by = \"session\" is not a choice");
    assert!(
        err.to_string().contains("pools[0].canary.sticky_by"),
        "{err}"
    );
}
