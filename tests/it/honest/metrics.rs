//! Every metric family of README.md's list is exported by a fresh gateway, before any event,
//! with its known label values at 0.

use keygate::mock::MockUpstream;

use crate::admin::K3;
use crate::harness::exposition::Exposition;
use crate::harness::gateway::{config_toml, http, TestGateway};
use crate::harness::RedisServer;

/// The `keygate_*` names of README.md's metric list (section "Metrics, dashboards and alerts").
fn readme_families() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("### Metrics, dashboards and alerts")
        .expect("the metrics section");
    let section = &readme[start..];
    let end = section[4..].find("\n##").map_or(section.len(), |e| e + 4);
    let mut names: Vec<String> = section[..end]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("keygate_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_exports_every_readme_family_with_zero_samples() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    // A budget that never binds and a key that expires far ahead: the families README lists
    // for pools with budgets and for expiring keys exist too.
    let extra =
        "[pools.canary]\ngroup = \"canary\"\npercent = 10\n\n[pools.limits]\nrpm = 100000\n";
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K3, extra)
        .replace("id = \"k1\"\n", "id = \"k1\"\nexpires = \"2099-01-01\"\n");
    let gw = TestGateway::start(&toml).await;
    let m = Exposition::scrape(&http(), &gw.url("/metrics")).await;
    let families = readme_families();
    assert!(families.len() >= 13, "README lists {families:?}");
    for family in &families {
        assert!(
            m.types.contains_key(family),
            "{family} has no # TYPE before any event:\n{}",
            m.text
        );
    }
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            m.value(name, labels),
            Some(0.0),
            "{name}{labels:?}:\n{}",
            m.text
        );
    };
    zero("keygate_no_key_available_total", &[("pool", "p")]);
    for reason in [
        "rate_limited",
        "server_error",
        "timeout",
        "connect_error",
        "unauthorized",
        "quota_exhausted",
    ] {
        zero(
            "keygate_retries_total",
            &[("pool", "p"), ("reason", reason)],
        );
        for k in ["k1", "k2", "k3"] {
            zero(
                "keygate_cooldowns_total",
                &[("pool", "p"), ("key", k), ("reason", reason)],
            );
        }
    }
    for op in [
        "select",
        "report",
        "report_batch",
        "sync",
        "snapshot",
        "ping",
    ] {
        zero("keygate_store_errors_total", &[("op", op)]);
    }
    for (group, fallback) in [("stable", "false"), ("stable", "true"), ("canary", "false")] {
        let labels = [("pool", "p"), ("group", group), ("fallback", fallback)];
        zero("keygate_canary_requests_total", &labels);
    }
    zero("keygate_store_degraded", &[]);
}
