//! The queue benchmark: DUCKS and BullMQ side by side on one redis-server that this program
//! starts. Prints one table with the ratio DUCKS/BullMQ per row. Run with `make bench-queue`.
//!
//! Scenarios (the same on both sides, payload about 300 bytes):
//! - drain: 50,000 preloaded jobs, no-op handler, at concurrency 1, 10 and 100;
//! - submit: one at a time (each awaited), and 50 at a time (DUCKS: 50 concurrent submits
//!   pipelined on one connection; BullMQ: `addBulk` of 50);
//! - latency: submit-to-dequeue p50 and p99 at a steady 1,000 jobs/s;
//! - memory: Redis `used_memory` per waiting job.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ducks_contract::{EventKind, JobId, JobRequest, Origin, Timings};
use ducks_queue::{Consumer, Queue, QueueConfig, RedisTarget};
use ducks_tests::RedisServer;
use futures_util::future::join_all;
use tokio::sync::Semaphore;

const DRAIN_JOBS: usize = 50_000;
const SUBMIT_JOBS: usize = 20_000;
const LATENCY_RATE: u64 = 1_000;
const LATENCY_SECONDS: u64 = 10;
const MEMORY_JOBS: usize = 20_000;
const PAYLOAD_BYTES: usize = 300;
const BATCH: usize = 50;
/// Throughput rows run this many rounds, DUCKS and BullMQ alternating, and report medians:
/// on two shared cores single runs swing by a factor of two.
const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn config() -> QueueConfig {
    QueueConfig {
        name: "bench".into(),
        max_backlog: 1_000_000,
        per_requester_in_flight: 0,
        per_requester_rate: 0,
        block_ms: 50,
        ..QueueConfig::default()
    }
}

/// A job whose encoded message is about `PAYLOAD_BYTES` long.
fn job(i: usize) -> JobRequest {
    let mut job = JobRequest::new(
        format!("{i:08} "),
        Origin::Api {
            client: None,
            webhook: None,
        },
    );
    let base = ducks_contract::wire::encode(&job).len();
    job.prompt
        .push_str(&"d".repeat(PAYLOAD_BYTES.saturating_sub(base + 60)));
    job
}

fn succeeded() -> EventKind {
    EventKind::Succeeded {
        images: Vec::new(),
        timings: Timings::default(),
    }
}

/// An empty server and a queue on it.
async fn fresh_queue(redis: &RedisServer) -> Queue {
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis.client().await)
        .await
        .unwrap();
    Queue::connect(RedisTarget::Single(redis.url()), config())
        .await
        .unwrap()
}

async fn preload(queue: &Queue, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let results = join_all(chunk.iter().map(|&i| queue.submit(job(i)))).await;
        for r in results {
            r.expect("preload submit");
        }
    }
}

/// The worker loop: take up to the free slots, finish each job in its own task.
/// Returns jobs per second over `n` jobs.
async fn drain(queue: &Queue, n: usize, concurrency: usize) -> f64 {
    let mut consumer = Consumer::new(queue.clone(), "bench").await.unwrap();
    let slots = Arc::new(Semaphore::new(concurrency));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    while done.load(Ordering::Relaxed) < n {
        let first = slots.clone().acquire_owned().await.unwrap();
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        for delivery in consumer.next_batch(permits.len()).await.unwrap() {
            let permit = permits.pop().expect("no more deliveries than permits");
            let done = done.clone();
            tokio::spawn(async move {
                delivery.complete(succeeded()).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn submit_rate(queue: &Queue, n: usize, batch: usize) -> f64 {
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch) {
        for r in join_all(chunk.iter().map(|&i| queue.submit(job(i)))).await {
            r.unwrap();
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Submit-to-dequeue latency at a steady rate, with a consumer at concurrency 10.
async fn latency(queue: &Queue) -> (f64, f64) {
    let total = (LATENCY_RATE * LATENCY_SECONDS) as usize;
    let sent: Arc<Mutex<HashMap<JobId, Instant>>> = Arc::default();
    let mut samples = Vec::with_capacity(total);
    let producer = {
        let (queue, sent) = (queue.clone(), sent.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let period = Duration::from_secs_f64(1.0 / LATENCY_RATE as f64);
            for i in 0..total {
                tokio::time::sleep_until(start + period * i as u32).await;
                let mut request = job(i);
                let id = JobId::generate();
                request.id = Some(id.clone());
                sent.lock().unwrap().insert(id, Instant::now());
                let queue = queue.clone();
                tokio::spawn(async move { queue.submit(request).await.unwrap() });
            }
        })
    };
    let mut consumer = Consumer::new(queue.clone(), "latency").await.unwrap();
    while samples.len() < total {
        for delivery in consumer.next_batch(10).await.unwrap() {
            let at = sent.lock().unwrap()[&delivery.id];
            samples.push(at.elapsed().as_secs_f64() * 1000.0);
            tokio::spawn(delivery.complete(succeeded()));
        }
    }
    producer.await.unwrap();
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (pick(0.50), pick(0.99))
}

async fn used_memory(redis: &RedisServer) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis.client().await)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

async fn memory_per_job(redis: &RedisServer, queue: &Queue) -> f64 {
    let before = used_memory(redis).await;
    preload(queue, MEMORY_JOBS).await;
    (used_memory(redis).await - before) / MEMORY_JOBS as f64
}

/// Runs one BullMQ scenario and returns the JSON object it prints last.
fn bullmq(redis: &RedisServer, args: &[&str]) -> serde_json::Value {
    if std::env::var_os("DUCKS_BENCH_NO_PEER").is_some() {
        return serde_json::json!({"jobs_per_sec": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "bytes_per_job": 0.0});
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/bullmq/bench.mjs");
    let output = Command::new("node")
        .arg(script)
        .args(args)
        .args(["--payload-bytes", &PAYLOAD_BYTES.to_string()])
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run node (make bench-queue installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "BullMQ {args:?} printed no result ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        value.get("error").is_none(),
        "BullMQ {args:?} failed: {value}"
    );
    value
}

fn field(value: &serde_json::Value, name: &str) -> f64 {
    value[name]
        .as_f64()
        .unwrap_or_else(|| panic!("no `{name}` in {value}"))
}

struct Row {
    what: String,
    unit: &'static str,
    ducks: f64,
    bullmq: f64,
}

/// `cargo bench -p ducks-tests --bench queue -- drain` runs only the scenarios named so.
fn selected(scenario: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| f == scenario)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let redis = RedisServer::start().await;
    let mut rows = Vec::new();
    let mut row = |what: String, unit, ducks, bullmq| {
        eprintln!("{what}: DUCKS {ducks:.1}, BullMQ {bullmq:.1} {unit}");
        rows.push(Row {
            what,
            unit,
            ducks,
            bullmq,
        });
    };

    for concurrency in [1, 10, 100] {
        if !selected(&format!("drain{concurrency}")) {
            continue;
        }
        let (mut ducks, mut peer) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let queue = fresh_queue(&redis).await;
            preload(&queue, DRAIN_JOBS).await;
            ducks.push(drain(&queue, DRAIN_JOBS, concurrency).await);
            let args = [
                "drain",
                "--jobs",
                &DRAIN_JOBS.to_string(),
                "--concurrency",
                &concurrency.to_string(),
            ];
            peer.push(field(&bullmq(&redis, &args), "jobs_per_sec"));
        }
        row(
            format!("drain {DRAIN_JOBS} jobs, concurrency {concurrency}"),
            "jobs/s",
            median(ducks),
            median(peer),
        );
    }
    for batch in [1, BATCH] {
        if !selected("submit") {
            continue;
        }
        let (mut ducks, mut peer) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let queue = fresh_queue(&redis).await;
            ducks.push(submit_rate(&queue, SUBMIT_JOBS, batch).await);
            let args = [
                "submit",
                "--jobs",
                &SUBMIT_JOBS.to_string(),
                "--batch",
                &batch.to_string(),
            ];
            peer.push(field(&bullmq(&redis, &args), "jobs_per_sec"));
        }
        row(
            format!("submit, {batch} at a time"),
            "jobs/s",
            median(ducks),
            median(peer),
        );
    }
    if selected("latency") {
        let queue = fresh_queue(&redis).await;
        let (p50, p99) = latency(&queue).await;
        let peer = bullmq(
            &redis,
            &[
                "latency",
                "--rate",
                &LATENCY_RATE.to_string(),
                "--seconds",
                &LATENCY_SECONDS.to_string(),
            ],
        );
        row(
            format!("submit-to-dequeue p50 at {LATENCY_RATE} jobs/s"),
            "ms",
            p50,
            field(&peer, "p50_ms"),
        );
        row(
            format!("submit-to-dequeue p99 at {LATENCY_RATE} jobs/s"),
            "ms",
            p99,
            field(&peer, "p99_ms"),
        );
    }

    if selected("memory") {
        let queue = fresh_queue(&redis).await;
        let ducks = memory_per_job(&redis, &queue).await;
        let peer = bullmq(&redis, &["memory", "--jobs", &MEMORY_JOBS.to_string()]);
        row(
            "memory per waiting job".into(),
            "bytes",
            ducks,
            field(&peer, "bytes_per_job"),
        );
    }

    println!("| scenario | unit | DUCKS | BullMQ | DUCKS/BullMQ |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2}× |",
            r.what,
            r.unit,
            r.ducks,
            r.bullmq,
            r.ducks / r.bullmq
        );
    }
}
