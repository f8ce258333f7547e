//! [`EventReader`]: how a front end reads the events of its origin through a consumer group of its
//! own, so a restarted front end picks up where it stopped and loses no result.

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{FromRedisValue, Value};

use tokio::time::Instant;

use crate::connection::{Connection, is_missing_group, is_transient};
use crate::consumer::prune_consumers;
use crate::queue::{create_group, retry_transient};
use crate::{Queue, Result};
use ducks_contract::{ContractError, JobEvent, JobId, wire};

/// One event as read from a stream. Acknowledge it with [`EventReader::ack`] once handled.
#[derive(Debug)]
pub struct EventEntry {
    pub entry_id: String,
    /// An event this build cannot read is handed over as an error rather than dropped silently.
    pub event: Result<JobEvent, ContractError>,
}

/// Events a front-end consumer has read but not acknowledged for this long are handed to another
/// consumer of the same group (its owner is presumed dead).
const ABANDONED_AFTER: Duration = Duration::from_secs(60);
/// Consumers silent this long with nothing pending are removed from the group.
const DEAD_CONSUMER_AFTER: Duration = Duration::from_secs(3600);

pub struct EventReader {
    queue: Queue,
    blocking: Connection,
    stream: String,
    group: String,
    consumer: String,
    /// Pending entries of this consumer are read again after a start or a failed read.
    check_own_pending: bool,
    next_reclaim: Instant,
}

impl EventReader {
    /// Reads `origin_kind`'s events in consumer group `group` as `consumer`. The group is created
    /// at the start of the stream, so events written before the front end first ran are read too.
    pub async fn new(
        queue: &Queue,
        origin_kind: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Self> {
        let block = Duration::from_millis(queue.config.block_ms);
        let blocking = retry_transient(|| queue.target.connect_blocking(block)).await?;
        let reader = Self {
            queue: queue.clone(),
            blocking,
            stream: queue.keys.events(origin_kind),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            check_own_pending: true,
            next_reclaim: Instant::now() + ABANDONED_AFTER,
        };
        reader.create_group().await?;
        Ok(reader)
    }

    async fn create_group(&self) -> Result<()> {
        let conn = self.queue.connection();
        retry_transient(|| create_group(conn.clone(), &self.stream, &self.group)).await?;
        Ok(())
    }

    /// Up to `count` events, waiting at most `block` (capped at the queue's `block_ms`, which the
    /// connection's response timeout is sized for) for new ones.
    pub async fn next(&mut self, count: usize, block: Duration) -> Result<Vec<EventEntry>> {
        if Instant::now() >= self.next_reclaim {
            self.next_reclaim = Instant::now() + ABANDONED_AFTER;
            let taken = self.take_abandoned(count).await?;
            prune_consumers(&self.queue, &self.stream, &self.group, DEAD_CONSUMER_AFTER).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        let block = block
            .min(Duration::from_millis(self.queue.config.block_ms))
            .max(Duration::from_millis(1));
        let from = if self.check_own_pending { "0" } else { ">" };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if from == ">" {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: StreamReadReply = match cmd.query_async(&mut self.blocking).await {
            Ok(reply) => reply,
            Err(e) if is_missing_group(&e) => {
                self.create_group().await?;
                return Ok(Vec::new());
            }
            Err(e) if is_transient(&e) => {
                self.check_own_pending = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if from == "0" && entries.len() < count {
            self.check_own_pending = false;
        }
        Ok(entries.into_iter().map(decode_event).collect())
    }

    /// Events that another consumer of this group read long ago and never acknowledged.
    async fn take_abandoned(&self, count: usize) -> Result<Vec<EventEntry>> {
        let reply: StreamAutoClaimReply = self
            .queue
            .with_retry(|mut conn, _| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(ABANDONED_AFTER.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(reply.claimed.into_iter().map(decode_event).collect())
    }

    /// Marks events as handled. Entries stay in the stream for other front-end groups; the stream
    /// is bounded by its approximate length cap.
    pub async fn ack(&self, entry_ids: &[String]) -> Result<()> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let _: u64 = self
            .queue
            .with_retry(|mut conn, _| async move {
                redis::cmd("XACK")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(entry_ids)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }
}

fn decode_event(entry: StreamId) -> EventEntry {
    let json = entry
        .map
        .get("event")
        .and_then(|v: &Value| String::from_redis_value(v.clone()).ok());
    let event = match json {
        Some(json) => wire::decode("event", &json),
        None => Err(ContractError::Malformed {
            what: "event",
            detail: "the entry has no `event` field".into(),
        }),
    };
    EventEntry {
        entry_id: entry.id,
        event,
    }
}

/// Follows the events of one job without a consumer group, as `ducks submit --wait` does: many
/// clients can watch their own jobs on one origin's stream without taking events from the front
/// end's group.
pub struct JobWatch {
    queue: Queue,
    blocking: Connection,
    stream: String,
    job_id: JobId,
    /// The last entry read; the next read starts after it.
    after: String,
}

/// How far before the submit time the watch starts reading, for clocks that disagree.
const CLOCK_SKEW: Duration = Duration::from_secs(5);

impl JobWatch {
    /// Watches `job_id`'s events on its origin's stream, from shortly before `since_ms` (the
    /// submit time) so no event written since is missed.
    pub async fn new(
        queue: &Queue,
        origin_kind: &str,
        job_id: &JobId,
        since_ms: u64,
    ) -> Result<Self> {
        let block = Duration::from_millis(queue.config.block_ms);
        let blocking = retry_transient(|| queue.target.connect_blocking(block)).await?;
        let start = since_ms.saturating_sub(CLOCK_SKEW.as_millis() as u64);
        Ok(Self {
            queue: queue.clone(),
            blocking,
            stream: queue.keys.events(origin_kind),
            job_id: job_id.clone(),
            after: format!("{start}-0"),
        })
    }

    /// The job's next events, waiting at most `block` (capped at the queue's block time).
    /// Returns an empty list when nothing came, and on a passing connection error.
    pub async fn next(&mut self, block: Duration) -> Result<Vec<JobEvent>> {
        let block = block
            .min(Duration::from_millis(self.queue.config.block_ms))
            .max(Duration::from_millis(1));
        let reply: StreamReadReply = match redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(&self.after)
            .query_async(&mut self.blocking)
            .await
        {
            Ok(reply) => reply,
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let entries: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if let Some(last) = entries.last() {
            self.after = last.id.clone();
        }
        Ok(entries
            .into_iter()
            .filter_map(|entry| decode_event(entry).event.ok())
            .filter(|event| event.job_id == self.job_id)
            .collect())
    }
}
