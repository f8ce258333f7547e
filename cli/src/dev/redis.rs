//! A `redis-server` child on a free loopback port, for the local stack.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long a fresh `redis-server` may take to answer.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct RedisChild {
    child: Child,
    port: u16,
}

impl RedisChild {
    /// Starts `redis-server` with its data (append-only file) under `dir`, so the local queue
    /// survives a restart of the stack.
    pub async fn start(dir: &Path) -> Result<Self, String> {
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
        let redis = Self { child, port };
        redis.wait_until_ready().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn wait_until_ready(&self) -> Result<(), String> {
        let started = Instant::now();
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        loop {
            let ping = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match tokio::time::timeout(Duration::from_secs(1), ping).await {
                Ok(Ok(_)) => return Ok(()),
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
