//! [`EventTail`]: one reader of an origin's event stream per process, handing each job's events
//! to whoever watches that job. Thousands of watchers (the API's server-sent-event clients,
//! `ducks submit --wait`) cost one blocking connection and one `XREAD` per batch of events,
//! not one of each per watcher.
//!
//! A watch that starts after its job did begins with the job's newest event from its status, so
//! a late watcher still sees where the job is; a front end that knows the job id before it
//! submits (it sets the id itself) watches first and sees every event.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ducks_contract::{JobEvent, JobId, JobStatus};
use redis::streams::StreamReadReply;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::connection::is_transient;
use crate::events::decode_event;
use crate::queue::retry_transient;
use crate::{Queue, QueueError, Result};

/// Entries one read takes at most.
const READ_COUNT: usize = 1_000;
/// The pause after a failed read.
const READ_RETRY: Duration = Duration::from_millis(100);

/// One event as the tail read it: its entry id orders it against a job's status.
struct Seen {
    entry_id: String,
    event: JobEvent,
}

type Senders = Vec<(u64, mpsc::UnboundedSender<Arc<Seen>>)>;

#[derive(Default)]
struct Watchers {
    by_job: Mutex<HashMap<JobId, Senders>>,
    next_id: AtomicU64,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Senders>> {
        // The map is changed one whole entry at a time: a panic leaves nothing to repair.
        self.by_job.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand_out(&self, seen: Seen) {
        let mut by_job = self.lock();
        if let Some(senders) = by_job.get_mut(&seen.event.job_id) {
            let seen = Arc::new(seen);
            senders.retain(|(_, sender)| sender.send(seen.clone()).is_ok());
            if senders.is_empty() {
                by_job.remove(&seen.event.job_id);
            }
        }
    }

    fn remove(&self, job_id: &JobId, watcher: u64) {
        let mut by_job = self.lock();
        if let Some(senders) = by_job.get_mut(job_id) {
            senders.retain(|(id, _)| *id != watcher);
            if senders.is_empty() {
                by_job.remove(job_id);
            }
        }
    }
}

/// The tail of one origin's event stream. Dropping it stops the reader; its watches then end.
pub struct EventTail {
    queue: Queue,
    watchers: Arc<Watchers>,
    reader: JoinHandle<()>,
}

impl Drop for EventTail {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl EventTail {
    /// Starts reading `origin_kind`'s events from now on.
    pub async fn start(queue: &Queue, origin_kind: &str) -> Result<Self> {
        let block = Duration::from_millis(queue.config.block_ms);
        let mut blocking =
            retry_transient(queue.patience, || queue.target.connect_blocking(block)).await?;
        let stream = queue.keys.events(origin_kind);
        let newest: Vec<(String, Vec<(String, String)>)> = queue
            .with_retry(|mut conn, _| {
                let stream = stream.clone();
                async move {
                    redis::cmd("XREVRANGE")
                        .arg(stream)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut after = newest
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
        let watchers = Arc::new(Watchers::default());
        let handed = Arc::downgrade(&watchers);
        let reader = tokio::spawn(async move {
            loop {
                let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&after)
                    .query_async(&mut blocking)
                    .await;
                let Some(watchers) = Weak::upgrade(&handed) else {
                    return;
                };
                let entries = match read {
                    Ok(reply) => reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids),
                    Err(e) => {
                        if !is_transient(&e) {
                            warn!(message = "Reading events failed; retrying.", error = %e);
                        }
                        tokio::time::sleep(READ_RETRY).await;
                        continue;
                    }
                };
                for entry in entries {
                    after = entry.id.clone();
                    let decoded = decode_event(entry);
                    // Watchers are display paths: they never see the origin's credentials.
                    if let Ok(event) = decoded.event {
                        watchers.hand_out(Seen {
                            entry_id: decoded.entry_id,
                            event: event.without_secrets(),
                        });
                    }
                }
            }
        });
        Ok(Self {
            queue: queue.clone(),
            watchers,
            reader,
        })
    }

    /// Watches one job: its newest event so far (when it has a status), then each new one, until
    /// its terminal event.
    pub async fn watch(&self, job_id: &JobId) -> Result<JobWatch> {
        Ok(self.watch_status(job_id).await?.0)
    }

    /// [`EventTail::watch`], with the job's status as the watch read it (`None` for a job not
    /// known yet), so a front end can check who may watch without reading it twice. The status
    /// has no queue position: counting it costs a read of up to 1,001 entries, which thousands
    /// of watchers opening at once must not pay.
    pub async fn watch_status(&self, job_id: &JobId) -> Result<(JobWatch, Option<JobStatus>)> {
        let (sender, events) = mpsc::unbounded_channel();
        let watcher = self.watchers.next_id.fetch_add(1, Ordering::Relaxed);
        self.watchers
            .lock()
            .entry(job_id.clone())
            .or_default()
            .push((watcher, sender));
        let mut watch = JobWatch {
            job_id: job_id.clone(),
            watcher,
            watchers: Arc::downgrade(&self.watchers),
            events,
            backlog: VecDeque::new(),
            seen_up_to: None,
            ended: false,
        };
        // Registered first, read second: what the status does not hold yet, the tail brings.
        let status = match self.queue.status_and_entry(job_id, false).await {
            Ok((status, entry)) => {
                watch.backlog.extend(
                    status
                        .last_event
                        .clone()
                        .map(|event| (entry.clone(), event)),
                );
                watch.seen_up_to = entry;
                Some(status)
            }
            Err(QueueError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        Ok((watch, status))
    }
}

/// The events of one job, as [`EventTail::watch`] hands them out.
pub struct JobWatch {
    job_id: JobId,
    watcher: u64,
    watchers: Weak<Watchers>,
    events: mpsc::UnboundedReceiver<Arc<Seen>>,
    /// The newest event from the job's status, with its stream entry, handed out first.
    backlog: VecDeque<(Option<String>, JobEvent)>,
    /// The stream entry of that event: older entries the tail brings are not news.
    seen_up_to: Option<String>,
    ended: bool,
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        if let Some(watchers) = self.watchers.upgrade() {
            watchers.remove(&self.job_id, self.watcher);
        }
    }
}

impl JobWatch {
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// The job's next event; `None` after its terminal event, or when the tail stopped. Wrap
    /// it in a timeout: a job can take long.
    pub async fn next(&mut self) -> Option<JobEvent> {
        self.next_entry().await.map(|(_, event)| event)
    }

    /// [`JobWatch::next`] with the event's stream entry id (`<ms>-<seq>`), which orders events
    /// of one origin: the API's server-sent events use it as their `id:`. `None` only for a
    /// status written before entry ids were recorded.
    pub async fn next_entry(&mut self) -> Option<(Option<String>, JobEvent)> {
        if self.ended {
            return None;
        }
        let (entry, event) = match self.backlog.pop_front() {
            Some(backlog) => backlog,
            None => loop {
                let seen = self.events.recv().await?;
                if self
                    .seen_up_to
                    .as_deref()
                    .is_some_and(|up_to| !entry_after(&seen.entry_id, up_to))
                {
                    continue;
                }
                break (Some(seen.entry_id.clone()), seen.event.clone());
            },
        };
        self.ended = event.kind.is_terminal();
        Some((entry, event))
    }
}

/// Whether stream entry id `a` comes after `b` (`<ms>-<seq>`, compared as numbers).
pub fn entry_after(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) > parse(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_ids_compare_as_numbers() {
        use super::entry_after;
        assert!(entry_after("10-0", "9-5"));
        assert!(entry_after("9-10", "9-9"));
        assert!(!entry_after("9-9", "9-9"));
        assert!(!entry_after("1-0", "10-0"));
    }
}
