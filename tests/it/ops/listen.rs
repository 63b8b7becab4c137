//! Every listener keygate serves on takes `server::LISTEN_BACKLOG` connections ahead of accept
//! (the kernel caps it at `net.core.somaxconn`), not the 128 of tokio's `TcpListener::bind`: past
//! the backlog a burst of connections loses its SYNs and each client waits a second for the
//! retransmission.

use std::time::Duration;

use keygate::server::LISTEN_BACKLOG;

use crate::harness::gateway::{config_toml, key};
use crate::harness::processes::{KeygateProcess, MockProcess};
use crate::harness::redis_server::free_port;
use crate::harness::wait_until;

/// `ss`'s line for the listening socket on `port`, if there is one.
fn listener_line(port: u16) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_string)
}

/// The backlog of the listening socket on `port`, as `ss` reports it (its Send-Q column).
fn backlog(port: u16) -> u32 {
    let line = listener_line(port).unwrap_or_else(|| panic!("no listener on {port}"));
    // State, Recv-Q, Send-Q (the backlog of a listener), local address, peer address.
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_gateway_its_metrics_port_and_the_mock_listen_with_a_backlog_of_thousands() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let expected = LISTEN_BACKLOG.min(somaxconn);
    assert!(
        expected > 128,
        "net.core.somaxconn is {somaxconn}: the test would show nothing"
    );
    let mock = MockProcess::start(&["sk-ok-0001=200"]).await;
    let config = config_toml(None, &mock.base_url(), &[key("k1", "sk-ok-0001")], "");
    let metrics = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let env = [("KEYGATE_SERVER__METRICS_LISTEN", metrics_addr.as_str())];
    let gw = KeygateProcess::start(&config, &env).await;
    assert_eq!(backlog(gw.addr.port()), expected, "keygate serve");
    assert_eq!(backlog(mock.addr.port()), expected, "keygate mock-upstream");
    // A side listener (metrics here, admin alike) is bound by its own path.
    let listening = || async move { listener_line(metrics).is_some() };
    wait_until(Duration::from_secs(5), "the metrics listener", listening).await;
    assert_eq!(backlog(metrics), expected, "server.metrics_listen");
}
