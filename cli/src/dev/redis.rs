//! A `redis-server` child on a free loopback port, for the local stack.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long a fresh `redis-server` may take to answer.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Ports tried before giving up.
const PORT_ATTEMPTS: usize = 3;
/// Part of the error when the chosen port went to another server.
const PORT_TAKEN: &str = "port taken";

pub struct RedisChild {
    child: Child,
    port: u16,
}

impl RedisChild {
    /// Starts `redis-server` with its data (append-only file) under `dir`, so the local queue
    /// survives a restart of the stack.
    async fn start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}). Install it (`make demo` does, or `apt install redis-server`), \
                     or point DUCKS_REDIS__URL at a Redis server."
                )
            })?;
        let mut redis = Self { child, port };
        redis.wait_until_ready().await?;
        Ok(redis)
    }

    /// [`RedisChild::start`], again on another port when another server took the chosen one
    /// between choosing and binding.
    pub async fn start_on_a_free_port(dir: &Path) -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::start(dir).await {
                Ok(redis) => return Ok(redis),
                Err(e) if e.contains(PORT_TAKEN) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Waits until this child answers. The port was free a moment before the child took it; the
    /// answering server must be this child, not another that took the port first.
    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let pid = self.child.id().unwrap_or_default();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "redis-server exited at start ({status}): {PORT_TAKEN}? (port {})",
                    self.port
                ));
            }
            let info = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn)
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(1), info).await {
                Ok(Ok(info)) if info.contains(&format!("process_id:{pid}\r")) => return Ok(()),
                Ok(Ok(_)) => {
                    return Err(format!(
                        "{PORT_TAKEN}: port {} answers for another Redis server",
                        self.port
                    ));
                }
                _ if started.elapsed() > START_LIMIT => {
                    return Err(format!(
                        "redis-server did not answer on port {} within {START_LIMIT:?}",
                        self.port
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Asks Redis to stop (it flushes its append-only file), killing it if it does not.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A port nothing listens on right now (the OS picks it).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
