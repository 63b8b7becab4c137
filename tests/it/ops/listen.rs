//! Every listener keygate serves on takes `server::LISTEN_BACKLOG` connections ahead of accept
//! (the kernel caps it at `net.core.somaxconn`), not the 128 of tokio's `TcpListener::bind`: past
//! the backlog a burst of connections loses its SYNs and each client waits a second for the
//! retransmission.

use keygate::server::LISTEN_BACKLOG;

use crate::harness::gateway::{config_toml, key};
use crate::harness::processes::{KeygateProcess, MockProcess};

/// The backlog of the listening socket on `port`, as `ss` reports it (its Send-Q column).
fn backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {port}: {text}"));
    // State, Recv-Q, Send-Q (the backlog of a listener), local address, peer address.
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_gateway_and_the_mock_listen_with_a_backlog_of_thousands() {
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
    let gw = KeygateProcess::start(&config, &[]).await;
    assert_eq!(backlog(gw.addr.port()), expected, "keygate serve");
    assert_eq!(backlog(mock.addr.port()), expected, "keygate mock-upstream");
}
