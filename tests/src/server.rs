//! One real `redis-server` process per test, on a free loopback port, with
//! its own temporary data directory.
//!
//! The directory and port outlive [`RedisServer::kill`], so
//! [`RedisServer::restart`] brings the same server back: with
//! [`RedisOptions::aof`] the append-only file is replayed, which is how tests
//! check that acknowledged writes survive a crash.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::support::{Deadline, POLL_INTERVAL, file_len, find_binary, free_port, tail_from};

/// How long a server may take to answer PING after it was spawned. Generous
/// because two cores may be busy compiling or running other tests.
const READY_LIMIT: Duration = Duration::from_secs(10);

/// How many fresh ports [`RedisServer::start_with`] tries when another
/// process grabs the chosen port between our probe and redis-server's bind.
const START_ATTEMPTS: usize = 5;

/// How long SIGKILL plus reaping may take before we call it a hang.
const KILL_LIMIT: Duration = Duration::from_secs(10);

/// How long a server that found its port served by another gets to exit by itself (and log the
/// failed bind) before it is killed.
const STRANGER_EXIT_LIMIT: Duration = Duration::from_secs(2);

/// Timeouts of the readiness probe's own connection. Short, so a stuck
/// attempt does not eat the whole readiness deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Response timeout of [`RedisServer::client`]. redis-rs defaults to 500 ms,
/// which would cut off a test's `XREADGROUP ... BLOCK` longer than that; 10 s
/// still fails a test against a frozen server instead of hanging it.
const CLIENT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// File names inside the server's directory.
const LOG_FILE: &str = "redis.log";
const STDIO_FILE: &str = "stdio.log";

/// How a [`RedisServer`] is configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisOptions {
    /// `--appendonly yes --appendfsync always`: every acknowledged write is
    /// on disk before the reply, so it survives SIGKILL and
    /// [`RedisServer::restart`]. Off by default: no persistence at all
    /// (`--save "" --appendonly no`), which is faster and leaves nothing
    /// behind.
    pub aof: bool,
}

/// A running (or killed, awaiting restart) `redis-server` child process.
///
/// Dropping it kills the process, so no server outlives its test even when
/// the test panics.
#[derive(Debug)]
pub struct RedisServer {
    /// `None` after [`RedisServer::kill`] until [`RedisServer::restart`].
    child: Option<Child>,
    port: u16,
    /// Set for cluster nodes: the cluster bus port, chosen explicitly
    /// (`--cluster-port`) because the default `port + 10000` may be taken or
    /// above 65535 for ports from the ephemeral range.
    cluster_bus_port: Option<u16>,
    aof: bool,
    binary: PathBuf,
    /// Kept across kill/restart so the AOF (and a cluster node's nodes.conf)
    /// is found again. Removed when the server is dropped.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server without persistence and waits until it answers PING.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default()).await
    }

    /// Starts a server configured by `opts` and waits until it answers PING.
    pub async fn start_with(opts: RedisOptions) -> RedisServer {
        RedisServer::launch(opts.aof, false).await
    }

    /// Starts a cluster-mode node (no persistence) for [`crate::RedisCluster`].
    pub(crate) async fn start_cluster_node() -> RedisServer {
        RedisServer::launch(false, true).await
    }

    async fn launch(aof: bool, cluster: bool) -> RedisServer {
        let binary = find_binary("redis-server");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("ducks-redis-")
                .tempdir()
                .expect("create a temporary directory for redis-server");
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                cluster_bus_port: cluster.then(free_port),
                aof,
                binary: binary.clone(),
                dir,
            };
            match server.spawn_and_wait(Deadline::after(READY_LIMIT)).await {
                Ok(()) => return server,
                // Lost the race for the port: try again with another one.
                Err(port_taken) => failures.push(port_taken),
            }
        }
        panic!(
            "redis-server could not bind a free port in {START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        )
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The client port; unchanged by [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (AOF, nodes.conf, redis.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, or `None` while the server is killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The last lines of the server's log, for a test's own failure messages.
    pub fn log_tail(&self) -> String {
        tail_from(&self.dir.path().join(LOG_FILE), 0)
    }

    /// Kills the server with SIGKILL (no shutdown hook, no final fsync: a
    /// crash) and reaps it. Does nothing if it is already killed.
    pub async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        match tokio::time::timeout(KILL_LIMIT, child.kill()).await {
            Ok(Ok(())) => {}
            // The process may have died by itself and been reaped already;
            // only a process that is still running is a failure.
            Ok(Err(err)) => {
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    panic!("SIGKILL redis-server on port {}: {err}", self.port);
                }
            }
            Err(_) => panic!(
                "redis-server on port {} did not exit within {KILL_LIMIT:?} of SIGKILL",
                self.port
            ),
        }
    }

    /// Starts the server again on the same port and directory (so an AOF is
    /// replayed) and waits until it answers PING, which Redis only does once
    /// loading is over. A running server is killed first, as in a crash.
    pub async fn restart(&mut self) {
        self.kill().await;
        let deadline = Deadline::after(READY_LIMIT);
        loop {
            match self.spawn_and_wait(deadline).await {
                Ok(()) => return,
                Err(port_taken) if deadline.passed() => panic!(
                    "cannot restart redis-server on its own port {} within {READY_LIMIT:?}: {port_taken}",
                    self.port
                ),
                // The port may be held briefly (or by a process that is on its
                // way out); it must be this port, so poll until the deadline.
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// A fresh multiplexed connection with a 10 s response timeout (the
    /// redis-rs default of 500 ms would break blocking reads in tests).
    pub async fn client(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("harness URLs are valid redis URLs");
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(READY_LIMIT))
            .set_response_timeout(Some(CLIENT_RESPONSE_TIMEOUT));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "connect to redis-server at {}: {err}\n--- redis.log ---\n{}",
                    self.url(),
                    self.log_tail()
                )
            })
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--dir",
            &self.dir.path().to_string_lossy(),
            "--logfile",
            LOG_FILE,
            "--daemonize",
            "no",
            // Empty argument: disables RDB snapshots entirely.
            "--save",
            "",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        if self.aof {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        if let Some(bus_port) = self.cluster_bus_port {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    &bus_port.to_string(),
                ]
                .map(String::from),
            );
        }
        args
    }

    /// Spawns the process and waits for readiness. `Err` means the port was
    /// taken by someone else (the caller decides whether to pick another);
    /// any other failure panics with the log.
    async fn spawn_and_wait(&mut self, deadline: Deadline) -> Result<(), String> {
        let log_path = self.dir.path().join(LOG_FILE);
        let stdio_path = self.dir.path().join(STDIO_FILE);
        // Only output written by this run counts when deciding why it failed:
        // a restart appends to the same files.
        let log_offset = file_len(&log_path);
        let stdio_offset = file_len(&stdio_path);
        // Errors before the log file is open (a bad option) go to stderr, so
        // keep that too instead of losing it.
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .unwrap_or_else(|err| panic!("open {}: {err}", stdio_path.display()));
        let stderr: File = stdout.try_clone().unwrap_or_else(|err| {
            panic!("duplicate the handle of {}: {err}", stdio_path.display())
        });
        let child = Command::new(&self.binary)
            .args(self.args())
            // A relative --logfile resolves against the working directory.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Backstop for Drop: never leak a server past its handle.
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", self.binary.display()));
        self.child = Some(child);

        // Every pass of the loop either returns or records why the probe failed.
        let mut last_error: String;
        loop {
            let child = self
                .child
                .as_mut()
                .expect("the child was stored just above and only kill() takes it");
            let exited = child
                .try_wait()
                .unwrap_or_else(|err| panic!("poll the redis-server child process: {err}"));
            if let Some(status) = exited {
                self.child = None;
                let log = tail_from(&log_path, log_offset);
                if log.contains("Address already in use") {
                    return Err(format!("port {} or its bus port was in use", self.port));
                }
                panic!(
                    "redis-server on port {} exited during start-up ({status})\n--- redis.log ---\n{log}\n--- stdout/stderr ---\n{}",
                    self.port,
                    tail_from(&stdio_path, stdio_offset)
                );
            }
            let our_pid = child.id();
            match probe(self.port).await {
                Ok(pid) if Some(pid) == our_pid => return Ok(()),
                Ok(pid) => {
                    // Some other redis-server answered on "our" port, so ours
                    // cannot bind it and exits; do not mistake the stranger
                    // for our server. Let ours log why it exits (the stranger
                    // may answer before ours has tried), then make sure.
                    let _ = tokio::time::timeout(STRANGER_EXIT_LIMIT, child.wait()).await;
                    self.kill().await;
                    return Err(format!(
                        "port {} is served by another redis-server (pid {pid})",
                        self.port
                    ));
                }
                Err(err) => last_error = err,
            }
            if deadline.passed() {
                panic!(
                    "redis-server on port {} did not answer PING within {READY_LIMIT:?}; last error: {last_error}\n--- redis.log ---\n{}\n--- stdout/stderr ---\n{}",
                    self.port,
                    tail_from(&log_path, log_offset),
                    tail_from(&stdio_path, stdio_offset)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Drop cannot await the reap; tokio reaps killed children in the
            // background. An error only means the process is already gone.
            let _ = child.start_kill();
        }
    }
}

/// One readiness check: PING must succeed (Redis answers `-LOADING` while
/// it replays the AOF), then `INFO server` tells which process answered.
async fn probe(port: u16) -> Result<u32, String> {
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url).map_err(|err| err.to_string())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(Some(PROBE_TIMEOUT));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .map_err(|err| format!("PING: {err}"))?;
    if pong != "PONG" {
        return Err(format!("PING answered {pong:?}"));
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await
        .map_err(|err| format!("INFO server: {err}"))?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| "INFO server has no process_id".to_string())
}
