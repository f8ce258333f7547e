//! A real Redis Cluster of N masters (no replicas), for checking that the
//! queue's keys share a hash slot and its scripts run in cluster mode.
//!
//! Built the way operators build one: cluster-enabled `redis-server` nodes
//! joined by `redis-cli --cluster create`, then polled until every node says
//! `cluster_state:ok` with all 16384 slots assigned. Only then do clients get
//! a consistent slot map; before that, commands can fail with CLUSTERDOWN.

use std::process::Stdio;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::process::Command;

use crate::server::RedisServer;
use crate::support::{Deadline, POLL_INTERVAL, find_binary};

/// `redis-cli --cluster create` sleeps about a second while the nodes meet;
/// allow for a busy machine.
const CREATE_LIMIT: Duration = Duration::from_secs(60);

/// How long the nodes may take to agree on the slot map after creation.
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);

/// Response timeout of [`RedisCluster::client`]; see `RedisServer::client`.
const CLIENT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// All hash slots of a Redis Cluster.
const SLOTS: u32 = 16384;

/// Cluster-mode masters owned by the test; dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as `redis-cli --cluster create`
    /// requires), joins them, and waits until the cluster is usable.
    pub async fn start(masters: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters (redis-cli --cluster create refuses fewer), got {masters}"
        );
        let cli = find_binary("redis-cli");
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(RedisServer::start_cluster_node().await);
        }
        let cluster = RedisCluster { nodes };

        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            // Timing out drops the future, which must not leave redis-cli behind.
            .kill_on_drop(true);
        let output = match tokio::time::timeout(CREATE_LIMIT, create.output()).await {
            Ok(result) => {
                result.unwrap_or_else(|err| panic!("run {} --cluster create: {err}", cli.display()))
            }
            Err(_) => panic!(
                "redis-cli --cluster create did not finish within {CREATE_LIMIT:?}\n{}",
                cluster.logs()
            ),
        };
        if !output.status.success() {
            panic!(
                "redis-cli --cluster create failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                cluster.logs()
            );
        }

        cluster.wait_until_converged().await;
        cluster
    }

    /// One `redis://127.0.0.1:PORT/` URL per node, usable as the seed list of
    /// a `ClusterClient`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, e.g. to connect to one directly.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably, e.g. to kill and restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// A cluster connection over all nodes with a 10 s response timeout.
    pub async fn client(&self) -> ClusterConnection {
        let client = ClusterClient::builder(self.urls())
            .response_timeout(CLIENT_RESPONSE_TIMEOUT)
            .build()
            .expect("harness URLs form a valid cluster client configuration");
        client
            .get_async_connection()
            .await
            .unwrap_or_else(|err| panic!("connect to the cluster: {err}\n{}", self.logs()))
    }

    /// Polls `CLUSTER INFO` on every node until each one reports
    /// `cluster_state:ok`, all slots assigned and every other node known.
    async fn wait_until_converged(&self) {
        let deadline = Deadline::after(CONVERGE_LIMIT);
        let mut connections = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            connections.push(node.client().await);
        }
        loop {
            let mut pending = Vec::new();
            for (node, con) in self.nodes.iter().zip(connections.iter_mut()) {
                let info: Result<String, _> =
                    redis::cmd("CLUSTER").arg("INFO").query_async(con).await;
                match info {
                    Ok(info) if converged(&info, self.nodes.len()) => {}
                    Ok(info) => pending.push(format!("node {}:\n{info}", node.port())),
                    Err(err) => pending.push(format!("node {}: CLUSTER INFO: {err}", node.port())),
                }
            }
            if pending.is_empty() {
                return;
            }
            if deadline.passed() {
                panic!(
                    "cluster did not converge within {CONVERGE_LIMIT:?}; not ready:\n{}\n{}",
                    pending.join("\n"),
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Every node's log tail, for panic messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| {
                format!(
                    "--- redis.log of node {} ---\n{}",
                    node.port(),
                    node.log_tail()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether one node's `CLUSTER INFO` shows a usable cluster of `nodes` nodes.
fn converged(info: &str, nodes: usize) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("cluster_state") == Some("ok")
        && field("cluster_slots_assigned").and_then(|v| v.parse::<u32>().ok()) == Some(SLOTS)
        && field("cluster_known_nodes").and_then(|v| v.parse::<usize>().ok()) == Some(nodes)
}
