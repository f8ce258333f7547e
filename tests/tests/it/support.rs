//! Helpers shared by the suite's modules.

use std::collections::HashMap;
use std::time::Duration;

use ducks_queue::{
    Consumer, Delivery, EventKind, JobEvent, JobId, JobRequest, Origin, Queue, QueueConfig,
    RedisTarget, wire,
};
use ducks_runner::diffusion::{self, Family};
use ducks_runner::import::{ImportSpec, import_folder};
use ducks_runner::storage::{S3Config, Storage};
use ducks_tests::{RedisServer, S3Server};

/// The bucket every test world uses.
pub const BUCKET: &str = "ducks";

/// An S3 server with the bucket and tiny-sd in it (its files made under `scratch`), the client
/// settings for it, and a storage client.
pub async fn tiny_bucket(scratch: &std::path::Path) -> (S3Server, S3Config, Storage) {
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let config = S3Config {
        endpoint: s3.endpoint(),
        region: s3.region().into(),
        bucket: BUCKET.into(),
        access_key_id: s3.access_key().into(),
        secret_access_key: ducks_queue::Redacted(s3.secret_key().into()),
        force_path_style: true,
    };
    let storage = Storage::connect(&config).await;
    let model_dir = scratch.join("tiny-model");
    diffusion::create_tiny(&model_dir).unwrap();
    let spec = ImportSpec {
        id: "tiny-sd".into(),
        family: Family::Tiny,
        name: None,
        description: Some("Random weights: draws noise.".into()),
        tags: vec![],
    };
    import_folder(&storage, &model_dir, spec).await.unwrap();
    (s3, config, storage)
}

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
