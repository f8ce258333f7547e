//! [`EventReader`]: how a front end reads the events of its origin through a consumer group of its
//! own, so a restarted front end picks up where it stopped and loses no result. The stream keeps
//! every event until each group has read it (see `trim_events` in scripts/lib.lua), so a front
//! end that was down through a busy hour still gets every result.

use std::collections::{HashSet, VecDeque};
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

/// Jobs whose terminal event this reader has passed on, remembered so that anything arriving for
/// them later (it cannot, by the scripts' ownership checks, but a reader must never let it
/// happen) never overwrites a result.
const ENDED_REMEMBERED: usize = 10_000;

pub struct EventReader {
    queue: Queue,
    blocking: Connection,
    stream: String,
    group: String,
    consumer: String,
    /// Pending entries of this consumer are read again after a start or a failed read.
    check_own_pending: bool,
    next_reclaim: Instant,
    ended: Ended,
}

/// A bounded set of job ids, oldest forgotten first.
#[derive(Default)]
struct Ended {
    ids: HashSet<JobId>,
    order: VecDeque<JobId>,
}

impl Ended {
    fn insert(&mut self, id: JobId) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > ENDED_REMEMBERED
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
        }
    }
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
        let blocking =
            retry_transient(queue.patience, || queue.target.connect_blocking(block)).await?;
        let reader = Self {
            queue: queue.clone(),
            blocking,
            stream: queue.keys.events(origin_kind),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            check_own_pending: true,
            next_reclaim: Instant::now() + claim_after(queue),
            ended: Ended::default(),
        };
        reader.create_group().await?;
        Ok(reader)
    }

    async fn create_group(&self) -> Result<()> {
        let conn = self.queue.connection();
        retry_transient(self.queue.patience, || {
            create_group(conn.clone(), &self.stream, &self.group)
        })
        .await?;
        Ok(())
    }

    /// Up to `count` events, waiting at most `block` (capped at the queue's `block_ms`, which the
    /// connection's response timeout is sized for) for new ones. Events of a job after its
    /// terminal event are acknowledged and left out.
    pub async fn next(&mut self, count: usize, block: Duration) -> Result<Vec<EventEntry>> {
        let entries = self.read(count, block).await?;
        let mut late = Vec::new();
        let mut fresh = Vec::with_capacity(entries.len());
        for entry in entries {
            match &entry.event {
                Ok(event) if event.kind.is_terminal() => {
                    self.ended.insert(event.job_id.clone());
                    fresh.push(entry);
                }
                Ok(event) if self.ended.ids.contains(&event.job_id) => late.push(entry.entry_id),
                _ => fresh.push(entry),
            }
        }
        self.ack(&late).await?;
        Ok(fresh)
    }

    async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<EventEntry>> {
        if Instant::now() >= self.next_reclaim {
            self.next_reclaim = Instant::now() + claim_after(&self.queue);
            let taken = self.take_abandoned(count).await?;
            let silent = Duration::from_secs(self.queue.config.dead_consumer_secs);
            prune_consumers(&self.queue, &self.stream, &self.group, silent).await?;
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        let block = block
            .min(Duration::from_millis(self.queue.config.block_ms))
            .max(Duration::from_millis(1));
        // Own pending entries first (a restart, a failed read); when there are none, new ones in
        // the same call, so an empty answer always means nothing came within `block`.
        if self.check_own_pending {
            let own = self.read_group(count, "0", None).await?;
            if own.len() < count {
                self.check_own_pending = false;
            }
            if !own.is_empty() {
                return Ok(own.into_iter().map(decode_event).collect());
            }
        }
        let entries = self.read_group(count, ">", Some(block)).await?;
        Ok(entries.into_iter().map(decode_event).collect())
    }

    async fn read_group(
        &mut self,
        count: usize,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<StreamId>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
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
                // The reply may have been lost after Redis delivered entries: read them again.
                self.check_own_pending = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(reply.keys.into_iter().flat_map(|k| k.ids).collect())
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
                    .arg(self.queue.config.event_claim_after_ms)
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

/// Events a front-end consumer read but did not acknowledge for this long go to another consumer.
fn claim_after(queue: &Queue) -> Duration {
    Duration::from_millis(queue.config.event_claim_after_ms.max(1))
}

pub(crate) fn decode_event(entry: StreamId) -> EventEntry {
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
