//! Helpers shared by the suite's modules.

use std::collections::HashMap;
use std::time::Duration;

use ducks_contract::{EventKind, FailureCode, JobEvent, JobId, JobRequest, Origin, wire};
use ducks_queue::{Consumer, Delivery, JobWatch, Queue, QueueConfig, RedisTarget};
use ducks_queue::{Submitted, now_ms};
use ducks_tests::RedisServer;
pub use ducks_tests::{BUCKET, tiny_bucket};

/// Settings for tests: short leases and backoffs, no per-requester limits unless a test sets them.
pub fn config() -> QueueConfig {
    QueueConfig {
        lease_ms: 600,
        block_ms: 100,
        retry_base_ms: 50,
        retry_max_ms: 400,
        per_requester_in_flight: 0,
        per_requester_rate: 0,
        ..QueueConfig::default()
    }
}

pub async fn queue_on(server: &RedisServer, config: QueueConfig) -> Queue {
    Queue::connect(RedisTarget::Single(server.url()), config)
        .await
        .expect("connect to the test redis-server")
}

pub fn request(prompt: &str) -> JobRequest {
    JobRequest::new(prompt, Origin::Cli)
}

/// Reads deliveries until `n` arrived, failing after `deadline`.
pub async fn take(consumer: &mut Consumer, n: usize, deadline: Duration) -> Vec<Delivery> {
    let mut got = Vec::new();
    tokio::time::timeout(deadline, async {
        while got.len() < n {
            got.extend(
                consumer
                    .next_batch(n - got.len())
                    .await
                    .expect("next_batch"),
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} deliveries within {deadline:?}", got.len()));
    got
}

/// Every entry of a stream, oldest first, with its fields.
pub async fn stream_entries(queue: &Queue, key: String) -> Vec<(String, HashMap<String, String>)> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut queue.connection())
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(id, fields)| (id, fields.into_iter().collect()))
        .collect()
}

/// Every event in `origin`'s stream, by job, in order.
pub async fn events_by_job(queue: &Queue, origin: &str) -> HashMap<JobId, Vec<EventKind>> {
    let mut by_job: HashMap<JobId, Vec<EventKind>> = HashMap::new();
    for (_, fields) in stream_entries(queue, queue.keys().events(origin)).await {
        let event: JobEvent = wire::decode("event", &fields["event"]).expect("decodable event");
        by_job.entry(event.job_id).or_default().push(event.kind);
    }
    by_job
}

/// The terminal events of one job.
pub fn terminals(events: &[EventKind]) -> Vec<&EventKind> {
    events.iter().filter(|e| e.is_terminal()).collect()
}

pub fn succeeded() -> EventKind {
    EventKind::Succeeded {
        images: Vec::new(),
        timings: Default::default(),
    }
}

/// Polls `check` every 10 ms until it holds, failing after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "not within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long a job may take in the end-to-end tests: long enough for a debug-build runner on a
/// busy 2-core machine.
pub const JOB_LIMIT: Duration = Duration::from_secs(120);

/// A small, fast job.
pub fn quick(prompt: &str) -> JobRequest {
    let mut job = JobRequest::new(prompt, Origin::Cli);
    job.width = Some(64);
    job.height = Some(64);
    job.steps = Some(1);
    job.seed = Some(7);
    job
}

/// Steps of a slow job: about 5 s on an idle machine with a debug build.
const SLOW_STEPS: u32 = 120;

/// A job that runs long enough to act on while it runs (many steps at tiny-sd's largest size).
pub fn slow(prompt: &str) -> JobRequest {
    let mut job = quick(prompt);
    job.width = Some(128);
    job.height = Some(128);
    job.steps = Some(SLOW_STEPS);
    job
}

/// The job's events from its submit until its terminal event.
pub async fn events_until_end(queue: &Queue, id: &JobId, since: u64) -> Vec<EventKind> {
    let mut watch = JobWatch::new(queue, "cli", id, since).await.unwrap();
    let mut events = Vec::new();
    tokio::time::timeout(JOB_LIMIT, async {
        while !events.last().is_some_and(EventKind::is_terminal) {
            events.extend(
                watch
                    .next(Duration::from_secs(1))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.kind),
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no terminal event within {JOB_LIMIT:?}; saw {events:?}"));
    events
}

/// Waits until the job reports its first denoising step, so it is surely running.
pub async fn wait_until_running(queue: &Queue, id: &JobId, since: u64) {
    let mut watch = JobWatch::new(queue, "cli", id, since).await.unwrap();
    tokio::time::timeout(JOB_LIMIT, async {
        loop {
            let events = watch.next(Duration::from_secs(1)).await.unwrap();
            if let Some(end) = events.iter().find(|e| e.kind.is_terminal()) {
                panic!("the job ended before it was seen running: {:?}", end.kind);
            }
            if events
                .iter()
                .any(|e| matches!(e.kind, EventKind::Progress { .. }))
            {
                return;
            }
        }
    })
    .await
    .expect("the job starts running");
}

pub fn terminal(events: &[EventKind]) -> &EventKind {
    let ends: Vec<_> = events.iter().filter(|e| e.is_terminal()).collect();
    assert_eq!(ends.len(), 1, "exactly one terminal event: {events:?}");
    ends[0]
}

pub fn failure(events: &[EventKind]) -> (FailureCode, String, bool) {
    match terminal(events) {
        EventKind::Failed {
            code,
            message,
            retryable,
        } => (*code, message.clone(), *retryable),
        other => panic!("expected a failure, got {other:?} in {events:?}"),
    }
}

pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a PNG");
    let info = reader.info();
    (info.width, info.height)
}

/// Queue settings for worker tests: short leases, one retry.
pub fn worker_queue_config() -> QueueConfig {
    QueueConfig {
        lease_ms: 1_500,
        max_retries: 1,
        ..config()
    }
}

/// Submits `job`; its id and the time just before, for [`JobWatch`] to start from.
pub async fn submit(queue: &Queue, job: JobRequest) -> (JobId, u64) {
    let since = now_ms();
    match queue.submit(job).await.unwrap() {
        Submitted::Queued { id, .. } => (id, since),
        other => panic!("not queued: {other:?}"),
    }
}
