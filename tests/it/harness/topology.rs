//! Real Redis topologies for the store tests, no Docker: a Sentinel group (a master, a replica
//! started with `--replicaof`, and `redis-server --sentinel` processes with generated configs in
//! temp dirs) and a Redis Cluster (masters with `--cluster-enabled yes`, joined with
//! `redis-cli --cluster create`). Everything is killed on drop; every wait polls a condition.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{dies_with_test, free_port, redis_server_binary, RedisServer};

/// The master name every Sentinel monitors.
pub const MASTER_NAME: &str = "m";

/// Polls `cond` (blocking) until it holds, failing after `limit`.
pub fn poll(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client(port: u16) -> redis::Client {
    redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client")
}

/// Runs one command on `127.0.0.1:port` with short timeouts; `None` if it fails.
pub fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let mut c = client(port)
        .get_connection_with_timeout(Duration::from_millis(300))
        .ok()?;
    c.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    cmd.query(&mut c).ok()
}

/// `INFO <section>` as field → value.
pub fn info(port: u16, section: &str) -> HashMap<String, String> {
    let text: String = query(port, redis::cmd("INFO").arg(section)).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// One `redis-server --sentinel` process.
pub struct SentinelProcess {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SentinelProcess {
    fn start(master_port: u16) -> SentinelProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds {MASTER_NAME} 500\n\
             sentinel failover-timeout {MASTER_NAME} 2000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.path().display()
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = dies_with_test(&mut Command::new(redis_server_binary()))
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let s = SentinelProcess {
            port,
            child,
            _dir: dir,
        };
        poll(Duration::from_secs(10), "sentinel answers PING", || {
            query::<String>(port, &redis::cmd("PING")).is_some()
        });
        s
    }

    /// The master's port as this Sentinel sees it.
    pub fn master_port(&self) -> Option<u16> {
        let addr: Vec<String> = query(
            self.port,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME),
        )?;
        addr.get(1)?.parse().ok()
    }

    fn replicas_known(&self) -> Vec<HashMap<String, String>> {
        query(
            self.port,
            redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
        )
        .unwrap_or_default()
    }

    fn sentinels_known(&self) -> usize {
        query::<Vec<redis::Value>>(
            self.port,
            redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER_NAME),
        )
        .map_or(0, |v| v.len())
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master, one replica and `n` Sentinels monitoring them as [`MASTER_NAME`] (quorum 1,
/// down after 500 ms, failover timeout 2 s).
pub struct SentinelGroup {
    /// The data nodes by port; a killed one stays here, stopped.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
}

impl SentinelGroup {
    pub fn start(n: usize) -> SentinelGroup {
        let master = RedisServer::start();
        let port = master.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        let sentinels = (0..n)
            .map(|_| SentinelProcess::start(master.port))
            .collect();
        let group = SentinelGroup {
            servers: vec![master, replica],
            sentinels,
        };
        group.wait_settled(Duration::from_secs(20));
        group
    }

    /// `host:port` of every Sentinel (the `store.sentinels` list).
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master's port, as the first Sentinel sees it.
    pub fn master_port(&self) -> u16 {
        self.sentinels[0]
            .master_port()
            .expect("sentinel names a master")
    }

    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server of the group")
    }

    /// Waits until the master has a linked replica that every Sentinel knows and considers
    /// healthy, and the Sentinels know each other: a failover can start.
    pub fn wait_settled(&self, limit: Duration) {
        let n = self.sentinels.len();
        poll(limit, "sentinel group settled", || {
            let Some(master) = self.sentinels[0].master_port() else {
                return false;
            };
            let replica_up = self
                .servers
                .iter()
                .filter(|s| s.port != master && s.is_running())
                .any(|s| {
                    let i = info(s.port, "replication");
                    i.get("role").map(String::as_str) == Some("slave")
                        && i.get("master_port") == Some(&master.to_string())
                        && i.get("master_link_status").map(String::as_str) == Some("up")
                });
            replica_up
                && self.sentinels.iter().all(|s| {
                    s.master_port() == Some(master)
                        && s.sentinels_known() + 1 >= n
                        && s.replicas_known().iter().any(|r| {
                            r.get("flags").map(String::as_str) == Some("slave")
                                && r.get("master-link-status").map(String::as_str) == Some("ok")
                        })
                })
        });
    }

    /// `SENTINEL FAILOVER` on the first Sentinel (a forced failover, no agreement needed).
    pub fn force_failover(&self) {
        let ok: Option<String> = query(
            self.sentinels[0].port,
            redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME),
        );
        assert_eq!(ok.as_deref(), Some("OK"), "SENTINEL FAILOVER refused");
    }

    /// Waits until every Sentinel names a master other than `old`, and it says it is master.
    pub fn wait_new_master(&self, old: u16, limit: Duration) -> u16 {
        let mut new = 0;
        poll(limit, "sentinels name a new master", || {
            let ports: Vec<Option<u16>> = self.sentinels.iter().map(|s| s.master_port()).collect();
            match ports.first() {
                Some(Some(p)) if *p != old && ports.iter().all(|q| *q == Some(*p)) => {
                    new = *p;
                    info(new, "replication").get("role").map(String::as_str) == Some("master")
                }
                _ => false,
            }
        });
        new
    }
}

/// A Redis Cluster of masters only, every slot assigned, `cluster_state:ok` on every node.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_with(&args))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create (apt-get install redis-tools)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        poll(
            Duration::from_secs(20),
            "cluster_state:ok on every node",
            || {
                cluster.nodes.iter().all(|n| {
                    let text: String =
                        query(n.port, redis::cmd("CLUSTER").arg("INFO")).unwrap_or_default();
                    text.contains("cluster_state:ok")
                        && text.contains(&format!("cluster_known_nodes:{masters}"))
                })
            },
        );
        cluster
    }

    /// `host:port` of every node (the `store.cluster_nodes` list).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        query(
            self.nodes[0].port,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .expect("CLUSTER KEYSLOT")
    }

    /// The node serving `key` (the owner of its slot in `CLUSTER NODES`).
    pub fn node_of(&self, key: &str) -> &RedisServer {
        let owner = self.owner_id(self.keyslot(key));
        self.nodes
            .iter()
            .find(|n| {
                let id: Option<String> = query(n.port, redis::cmd("CLUSTER").arg("MYID"));
                id.is_some() && id == owner
            })
            .expect("a node owns the slot")
    }

    fn owner_id(&self, slot: u16) -> Option<String> {
        let text: String = query(self.nodes[0].port, redis::cmd("CLUSTER").arg("NODES"))?;
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let owns = f.iter().skip(8).any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.parse::<u16>().ok(), b.parse::<u16>().ok());
                    matches!((a, b), (Some(a), Some(b)) if a <= slot && slot <= b)
                }
                None => r.parse::<u16>().ok() == Some(slot),
            });
            owns.then(|| f[0].to_string())
        })
    }
}
