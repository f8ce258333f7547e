//! Connections to a single Redis server or a Redis Cluster, behind one type.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How long an ordinary command may take before the client gives up on it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where Redis is: one URL, or seed URLs of a cluster.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// A reconnecting connection, cheap to clone; clones share one multiplexed socket.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisTarget {
    /// The connection for ordinary commands.
    pub async fn connect(&self) -> RedisResult<Connection> {
        self.connect_with_timeout(RESPONSE_TIMEOUT).await
    }

    /// A connection of its own for blocking reads. The client's response timeout must outlast the
    /// block, or every long `XREADGROUP … BLOCK` would fail (redis-rs defaults to 500 ms).
    pub async fn connect_blocking(&self, block: Duration) -> RedisResult<Connection> {
        self.connect_with_timeout(block + RESPONSE_TIMEOUT).await
    }

    async fn connect_with_timeout(&self, response_timeout: Duration) -> RedisResult<Connection> {
        match self {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_max_delay(Duration::from_secs(2));
                Ok(Connection::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTarget::Cluster(urls) => {
                let client = ClusterClient::builder(urls.clone())
                    .response_timeout(response_timeout)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether an error is worth trying again: the connection broke, timed out, or Redis is loading.
/// Every queue script is safe to repeat (they check ownership or existence first).
pub fn is_transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || !matches!(error.retry_method(), redis::RetryMethod::NoRetry)
}

/// Whether Redis lost the consumer group (it restarted without persistence).
pub fn is_missing_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}
