//! The harness's own promise: the servers a test starts do not outlive the test binary, even
//! when it is killed with SIGKILL and runs no destructor (before, each such kill left a
//! `redis-server` running).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::redis_server::signal_quiet;
use crate::harness::topology::poll;
use crate::harness::RedisServer;

/// Set in the copy of this test binary that the test starts and kills.
const CHILD_ENV: &str = "KEYGATE_TEST_KILLED_CHILD";
const THIS_TEST: &str =
    "harness::tests::a_test_binary_killed_with_sigkill_leaves_no_redis_server_behind";

#[test]
fn a_test_binary_killed_with_sigkill_leaves_no_redis_server_behind() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: start a server, say which process it is, and wait to be killed.
        let server = RedisServer::start();
        println!("redis-pid={}", server.pid());
        std::io::stdout().flush().expect("flush");
        loop {
            std::thread::park();
        }
    }
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([THIS_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the test binary");
    // libtest prints "test <name> ... " first, without a newline: look inside the line. A
    // reader thread, so a child that never prints fails the test instead of hanging it.
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pid = BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                let (_, rest) = l.split_once("redis-pid=")?;
                rest.trim().parse::<u32>().ok()
            });
        let _ = tx.send(pid);
    });
    let pid = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(pid)) => pid,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child test did not print its redis-server's pid: {other:?}");
        }
    };
    assert!(
        runs(pid),
        "redis-server {pid} runs while its test binary does"
    );

    let _leftover = KillIfRunning(pid);
    child.kill().expect("SIGKILL the test binary");
    child.wait().expect("reap the test binary");
    poll(
        Duration::from_secs(5),
        &format!("redis-server {pid} to die with its SIGKILLed test binary"),
        || !runs(pid),
    );
}

/// Kills the server the test is about if it is still running when the test ends (it failed).
struct KillIfRunning(u32);

impl Drop for KillIfRunning {
    fn drop(&mut self) {
        if runs(self.0) {
            signal_quiet(self.0, "-9");
        }
    }
}

/// Whether `pid` is a live process: gone, or a zombie (killed, not yet reaped by whoever
/// inherited it), counts as dead.
fn runs(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}
