//! Helpers shared by the suite's modules.

use std::collections::HashMap;
use std::time::Duration;

use ducks_contract::{
    EventKind, FailureCode, GpuNeed, JobEvent, JobId, JobRequest, ModelInfo, Origin, Size, wire,
};
use ducks_queue::connection::is_transient;
use ducks_queue::{Consumer, Delivery, Queue, QueueConfig, RedisTarget, Submitted};
use ducks_tests::RedisServer;
pub use ducks_tests::{BUCKET, tiny_bucket};

/// Settings for tests: short backoffs, no per-requester limits unless a test sets them, and
/// leases short enough to wait out but long enough that a loaded 2-core machine stalling for a
/// second never lets one lapse (it is renewed every third).
pub fn config() -> QueueConfig {
    QueueConfig {
        lease_ms: 2_000,
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
    // Through a Redis restart the connection reports the broken pipe once, then reconnects.
    let started = tokio::time::Instant::now();
    let entries: Vec<(String, Vec<(String, String)>)> = loop {
        match redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut queue.connection())
            .await
        {
            Ok(entries) => break entries,
            Err(e) if is_transient(&e) && started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("XRANGE {key}: {e}"),
        }
    };
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

/// The key of a tiny-sd weight file that every cold run fetches: a test holds a runner in the
/// middle of its run by closing an S3 gate on it (`S3Server::gate`), and knows the runner is
/// still there while the gate holds its request.
pub const WEIGHT_KEY: &str = "models/tiny-sd/unet.safetensors";

/// How long a gated runner may take to reach its gate.
pub const GATE_LIMIT: Duration = Duration::from_secs(60);

/// Every event of the job on its origin's stream so far, oldest first.
pub async fn events_of(queue: &Queue, id: &JobId) -> Vec<EventKind> {
    events_by_job(queue, "cli")
        .await
        .remove(id)
        .unwrap_or_default()
}

/// The job's events once it has a terminal event: every event on the stream, so a second
/// terminal event written by then is there too (and `terminal` refuses it).
pub async fn events_until_end(queue: &Queue, id: &JobId) -> Vec<EventKind> {
    let started = tokio::time::Instant::now();
    loop {
        let events = events_of(queue, id).await;
        if events.iter().any(EventKind::is_terminal) {
            return events;
        }
        assert!(
            started.elapsed() < JOB_LIMIT,
            "no terminal event within {JOB_LIMIT:?}; saw {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        lease_ms: 3_000,
        max_retries: 1,
        ..config()
    }
}

/// Submits `job`; its id.
pub async fn submit(queue: &Queue, job: JobRequest) -> JobId {
    match queue.submit(job).await.unwrap() {
        Submitted::Queued { id, .. } => id,
        other => panic!("not queued: {other:?}"),
    }
}

/// The platform cargo builds for by default, from `cargo -vV`: `cargo metadata --offline` needs
/// `--filter-platform` with it, or it wants every platform's dependencies downloaded.
///
/// # Panics
/// If cargo cannot be run or does not name its host.
pub fn host_triple() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let output = std::process::Command::new(env!("CARGO"))
            .arg("-vV")
            .output()
            .expect("cargo -vV runs");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("host: "))
            .expect("cargo -vV names its host")
            .to_owned()
    })
}

/// The length of a stream.
pub async fn xlen(queue: &Queue, key: String) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut queue.connection())
        .await
        .expect("XLEN")
}

/// Adds an entry to the work stream as a raw Redis client would.
pub async fn xadd_raw(queue: &Queue, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(queue.keys().jobs()).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(&mut queue.connection())
        .await
        .expect("XADD")
}

/// tiny-sd as the catalogue shows it, for tests that publish a catalogue themselves.
pub fn tiny_info() -> ModelInfo {
    ModelInfo {
        id: "tiny-sd".into(),
        name: "Tiny SD".into(),
        description: String::new(),
        family: "tiny-sd".into(),
        default_width: 64,
        default_height: 64,
        default_steps: 2,
        default_guidance: 7.5,
        max_width: 128,
        max_height: 128,
        max_steps: 150,
        max_images: 4,
        sizes: vec![Size::new(64, 64)],
        gpu: GpuNeed::default(),
        added_at_secs: None,
        tags: Vec::new(),
    }
}

/// A worker in this process as the front ends' tests use one: the local launcher running the
/// real runner (tiny-sd) from `scratch`, four jobs at once, every progress step published. It
/// returns once the worker has published the catalogue, which front ends check requests against.
pub async fn front_end_worker(
    redis: &RedisServer,
    s3_config: &ducks_models::S3Config,
    scratch: &std::path::Path,
    links: &ducks_contract::links::LinkConfig,
) -> ducks_worker::RunningWorker {
    use ducks_worker::config::LocalConfig;
    let config = ducks_worker::WorkerConfig {
        concurrency: 4,
        progress_interval_ms: 0,
        job_timeout_secs: JOB_LIMIT.as_secs(),
        listen: String::new(),
        local: LocalConfig {
            runner_program: ducks_tests::ducks_binary(),
            runs_dir: scratch.join("runs"),
            cache_dir: scratch.join("cache"),
        },
        ..ducks_worker::WorkerConfig::default()
    };
    let queue = queue_on(redis, worker_queue_config()).await;
    let worker =
        ducks_worker::RunningWorker::start(queue.clone(), s3_config, config, links, "images")
            .await
            .expect("the worker starts");
    eventually(
        Duration::from_secs(30),
        "the catalogue is published",
        || async { !queue.models().await.unwrap().models.is_empty() },
    )
    .await;
    worker
}
