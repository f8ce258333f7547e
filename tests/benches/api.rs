//! The HTTP API benchmark (`make bench-api`): the release `ducks api` as a process of its own, on
//! a `redis-server` of the benchmark's own, driven by a load generator written here (reqwest over
//! loopback; no outside address).
//!
//! 1. `POST /v1/jobs` at 64 connections in a closed loop, beside `Queue::submit` alone at 64 in
//!    flight on the same Redis in the same run (target: at least 70% of the raw rate); then
//!    p50/p99 latency at a fixed open-loop rate of half the API's throughput (target: p99 under
//!    5 ms), timed from each request's scheduled start, so a stall counts against the API.
//! 2. 5,000 server-sent-event watchers over 5,000 jobs: the API process's RSS, the Redis
//!    connections it holds (target: a handful, not one per watcher), and the delay from an
//!    event's writing to its arrival at its watcher at 500 events/s (target: p99 under 10 ms;
//!    the event's own time has millisecond resolution).
//! 3. `POST /v1/images/generations` with tiny-sd through a worker and the real runner: the wall
//!    time the client sees minus the job's own `total_ms` (target: p99 under 20 ms).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ducks_api::auth::{KeyOptions, create_key};
use ducks_contract::{EventKind, JobId, JobRequest, Origin, Secret};
use ducks_queue::{Consumer, Queue, QueueConfig, RedisTarget, now_ms};
use ducks_tests::measure::{cpu_secs, percentile, rss_mib};
use ducks_tests::{RedisServer, ducks_binary, s3_env, tiny_bucket};
use ducks_worker::config::LocalConfig;
use ducks_worker::{RunningWorker, WorkerConfig};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

const CONNECTIONS: usize = 64;
const CLOSED_LOOP: Duration = Duration::from_secs(5);
const OPEN_LOOP: Duration = Duration::from_secs(5);
const WATCHERS: usize = 5_000;
const EVENTS_PER_SECOND: u64 = 500;
const EVENT_SECONDS: u64 = 10;
const GENERATIONS: usize = 30;
const PEPPER: &str = "bench-pepper";

fn queue_config() -> QueueConfig {
    QueueConfig {
        max_backlog: 10_000_000,
        per_requester_in_flight: 0,
        per_requester_rate: 0,
        block_ms: 250,
        ..QueueConfig::default()
    }
}

/// `ducks api` (the release build) on a free port, pointed at this Redis and S3.
struct ApiProcess {
    child: Child,
    base: String,
}

impl ApiProcess {
    async fn start(redis: &RedisServer, s3: &ducks_models::S3Config) -> ApiProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(ducks_binary())
            .arg("api")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("DUCKS_REDIS__URL", redis.url())
            .env("DUCKS_QUEUE__MAX_BACKLOG", "10000000")
            .env("DUCKS_QUEUE__PER_REQUESTER_IN_FLIGHT", "0")
            .env("DUCKS_QUEUE__PER_REQUESTER_RATE", "0")
            .env("DUCKS_QUEUE__BLOCK_MS", "250")
            .env("DUCKS_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("DUCKS_API__PEPPER", PEPPER)
            .env("DUCKS_API__KEY_CACHE_SECS", "60")
            .envs(s3_env(s3))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("ducks api starts");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while reqwest::get(format!("{base}/readyz"))
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ducks api did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ApiProcess { child, base }
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.id())
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id().expect("running"))
    }
}

async fn redis_clients(queue: &Queue) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut queue.connection())
        .await
        .unwrap();
    list.lines().count()
}

fn job_body() -> Value {
    json!({"prompt": "a rubber duck", "size": "64x64"})
}

fn raw_job(client: &str) -> JobRequest {
    let mut job = JobRequest::new(
        "a rubber duck",
        Origin::Api {
            client: Some(client.into()),
            webhook: None,
        },
    );
    job.requester.id = client.into();
    job.width = Some(64);
    job.height = Some(64);
    job
}

/// Submits per second with `Queue::submit` at [`CONNECTIONS`] in flight.
async fn raw_rate(queue: &Queue, client: &str) -> f64 {
    let until = Instant::now() + CLOSED_LOOP;
    let mut tasks = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (queue, client) = (queue.clone(), client.to_owned());
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                queue.submit(raw_job(&client)).await.expect("submit");
                done += 1;
            }
            done
        });
    }
    let total: u64 = tasks.join_all().await.into_iter().sum();
    total as f64 / CLOSED_LOOP.as_secs_f64()
}

/// `POST /v1/jobs` per second at [`CONNECTIONS`] connections in a closed loop.
async fn api_rate(http: &reqwest::Client, base: &str, key: &str) -> f64 {
    let until = Instant::now() + CLOSED_LOOP;
    let mut tasks = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (http, url, key) = (http.clone(), format!("{base}/v1/jobs"), key.to_owned());
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                let response = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&job_body())
                    .send()
                    .await;
                assert_eq!(response.expect("a response").status(), 202);
                done += 1;
            }
            done
        });
    }
    let total: u64 = tasks.join_all().await.into_iter().sum();
    total as f64 / CLOSED_LOOP.as_secs_f64()
}

/// Latencies (ms) of `POST /v1/jobs` sent at `rate` per second, each from its scheduled start.
async fn open_loop(http: &reqwest::Client, base: &str, key: &str, rate: f64) -> Vec<f64> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let count = (rate * OPEN_LOOP.as_secs_f64()) as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (http, url, key) = (http.clone(), format!("{base}/v1/jobs"), key.to_owned());
        tasks.spawn(async move {
            let response = http
                .post(&url)
                .bearer_auth(&key)
                .json(&job_body())
                .send()
                .await;
            assert_eq!(response.expect("a response").status(), 202);
            due.elapsed().as_secs_f64() * 1000.0
        });
    }
    let mut latencies = tasks.join_all().await;
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// A key for the benchmark's client (again after each section flushes Redis).
async fn bench_key(queue: &Queue) -> ducks_api::auth::NewKey {
    let options = KeyOptions {
        name: "bench".into(),
        ..KeyOptions::default()
    };
    create_key(queue, &Secret::new(PEPPER), options)
        .await
        .unwrap()
}

async fn flush(queue: &Queue) {
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut queue.connection())
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let redis = RedisServer::start().await;
    let (_s3, s3_config, storage) = tiny_bucket().await;
    let queue = Queue::connect(RedisTarget::Single(redis.url()), queue_config())
        .await
        .unwrap();
    let key = bench_key(&queue).await;
    let (key_text, client) = (key.key.expose().to_owned(), key.client.id.clone());
    let clients_before_api = redis_clients(&queue).await;
    let api = ApiProcess::start(&redis, &s3_config).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS * 2)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let api_idle_clients = redis_clients(&queue).await - clients_before_api;

    println!(
        "# 1. POST /v1/jobs beside Queue::submit (64 in flight, {} s each, order raw API API raw)",
        CLOSED_LOOP.as_secs()
    );
    let mut raw = Vec::new();
    let mut through_api = Vec::new();
    raw.push(raw_rate(&queue, &client).await);
    let (api_cpu, own_cpu) = (api.cpu_secs(), cpu_secs(None));
    through_api.push(api_rate(&http, &api.base, &key_text).await);
    through_api.push(api_rate(&http, &api.base, &key_text).await);
    let api_jobs = (through_api[0] + through_api[1]) * CLOSED_LOOP.as_secs_f64();
    let api_cpu_us = (api.cpu_secs() - api_cpu) / api_jobs * 1e6;
    let client_cpu_us = (cpu_secs(None) - own_cpu) / api_jobs * 1e6;
    raw.push(raw_rate(&queue, &client).await);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (raw_mean, api_mean) = (mean(&raw), mean(&through_api));
    let latencies = open_loop(&http, &api.base, &key_text, api_mean / 2.0).await;
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!(
        "| Queue::submit alone, 64 in flight | {raw_mean:.0} jobs/s ({:.0}, {:.0}) | |",
        raw[0], raw[1]
    );
    println!(
        "| POST /v1/jobs, 64 connections | {api_mean:.0} jobs/s ({:.0}, {:.0}) | |",
        through_api[0], through_api[1]
    );
    println!(
        "| API / raw | {:.0} % | ≥ 70 % |",
        api_mean / raw_mean * 100.0
    );
    println!("| API process CPU per POST | {api_cpu_us:.0} µs | |");
    println!("| load generator CPU per POST (this process) | {client_cpu_us:.0} µs | |");
    println!(
        "| open loop at {:.0}/s: p50 | {:.2} ms | |",
        api_mean / 2.0,
        percentile(&latencies, 0.5)
    );
    println!(
        "| open loop: p99 | {:.2} ms | < 5 ms |",
        percentile(&latencies, 0.99)
    );
    flush(&queue).await;

    println!(
        "\n# 2. {WATCHERS} server-sent-event watchers, {EVENTS_PER_SECOND} events/s for {EVENT_SECONDS} s"
    );
    // The key (flushed above) again, then 5,000 of its jobs, queued straight into Redis.
    let key = bench_key(&queue).await;
    let (key_text, client) = (key.key.expose().to_owned(), key.client.id.clone());
    let mut ids = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut job = raw_job(&client);
        let id = JobId::generate();
        job.id = Some(id.clone());
        queue.submit(job).await.unwrap();
        ids.push(id);
    }
    let rss_idle = api.rss_mib();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let opened = Arc::new(tokio::sync::Semaphore::new(0));
    let mut watchers = JoinSet::new();
    let streams = reqwest::Client::builder().build().unwrap();
    for id in &ids {
        let url = format!("{}/v1/jobs/{id}/events", api.base);
        let (streams, key, latencies, opened) = (
            streams.clone(),
            key_text.clone(),
            latencies.clone(),
            opened.clone(),
        );
        watchers.spawn(async move {
            let mut response = streams
                .get(&url)
                .bearer_auth(&key)
                .send()
                .await
                .expect("a stream");
            assert_eq!(response.status(), 200);
            opened.add_permits(1);
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let received = now_ms();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if block.contains("event: progress") {
                        let data = block
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .unwrap_or("{}");
                        let event: Value = serde_json::from_str(data).unwrap_or_default();
                        if let Some(at) = event["at_ms"].as_u64() {
                            latencies
                                .lock()
                                .unwrap()
                                .push(received.saturating_sub(at) as f64);
                        }
                    }
                }
            }
        });
    }
    let all_open = tokio::time::timeout(
        Duration::from_secs(120),
        opened.acquire_many(WATCHERS as u32),
    )
    .await
    .expect("every watcher's stream opens");
    all_open.unwrap().forget();
    let rss_watching = api.rss_mib();
    let api_watching_clients = redis_clients(&queue).await - clients_before_api;

    // The writer: a real consumer takes the jobs, then publishes progress at a steady rate.
    let mut consumer = Consumer::new(queue.clone(), "bench").await.unwrap();
    let mut deliveries = Vec::with_capacity(WATCHERS);
    while deliveries.len() < WATCHERS {
        deliveries.extend(consumer.next_batch(1_000).await.unwrap());
    }
    let total = EVENTS_PER_SECOND * EVENT_SECONDS;
    let interval = Duration::from_secs_f64(1.0 / EVENTS_PER_SECOND as f64);
    let start = tokio::time::Instant::now();
    for i in 0..total as usize {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let delivery = &deliveries[i % deliveries.len()];
        let step = (i / deliveries.len()) as u32 + 1;
        delivery
            .publish(EventKind::Progress { step, total: 100 })
            .await
            .unwrap();
    }
    let received = async {
        while latencies.lock().unwrap().len() < total as usize {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let complete = tokio::time::timeout(Duration::from_secs(30), received)
        .await
        .is_ok();
    let mut delays = latencies.lock().unwrap().clone();
    delays.sort_by(f64::total_cmp);
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!("| API RSS, idle with {WATCHERS} jobs queued | {rss_idle:.1} MiB | |");
    println!(
        "| API RSS, {WATCHERS} streams open | {rss_watching:.1} MiB ({:.1} KiB per stream) | |",
        (rss_watching - rss_idle) * 1024.0 / WATCHERS as f64
    );
    println!(
        "| Redis connections the API holds, idle / {WATCHERS} streams | {api_idle_clients} / {api_watching_clients} | a handful |"
    );
    println!(
        "| progress events delivered | {} of {total}{} | |",
        delays.len(),
        if complete {
            ""
        } else {
            " (not all within 30 s)"
        }
    );
    println!(
        "| write → watcher, p50 | {:.0} ms | |",
        percentile(&delays, 0.5)
    );
    println!(
        "| write → watcher, p99 | {:.0} ms | < 10 ms |",
        percentile(&delays, 0.99)
    );
    watchers.abort_all();
    drop(deliveries);
    drop(consumer);
    flush(&queue).await;

    println!(
        "\n# 3. images.generate with tiny-sd: what the API adds to a job ({GENERATIONS} sequential, after 2 warm-ups)"
    );
    let key = bench_key(&queue).await;
    let key_text = key.key.expose().to_owned();
    let scratch = tempfile::tempdir().unwrap();
    let worker = RunningWorker::start(
        Queue::connect(RedisTarget::Single(redis.url()), queue_config())
            .await
            .unwrap(),
        &s3_config,
        WorkerConfig {
            concurrency: 2,
            listen: String::new(),
            progress_interval_ms: 0,
            local: LocalConfig {
                runner_program: ducks_binary(),
                runs_dir: scratch.path().join("runs"),
                cache_dir: scratch.path().join("cache"),
            },
            ..WorkerConfig::default()
        },
        &Default::default(),
        "images",
    )
    .await
    .unwrap();
    let mut overheads = Vec::new();
    for i in 0..GENERATIONS + 2 {
        let started = Instant::now();
        let response = http
            .post(format!("{}/v1/images/generations", api.base))
            .bearer_auth(&key_text)
            .json(&json!({"model": "tiny-sd", "prompt": "a rubber duck", "size": "64x64"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await;
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        let jobs: Value = http
            .get(format!("{}/v1/jobs?limit=1", api.base))
            .bearer_auth(&key_text)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let total_ms = jobs["data"][0]["timings"]["total_ms"]
            .as_f64()
            .expect("the job's timings");
        if i >= 2 {
            overheads.push(wall_ms - total_ms);
        }
    }
    overheads.sort_by(f64::total_cmp);
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!(
        "| wall − total_ms, p50 | {:.1} ms | |",
        percentile(&overheads, 0.5)
    );
    println!(
        "| wall − total_ms, p99 | {:.1} ms | < 20 ms |",
        percentile(&overheads, 0.99)
    );
    worker.stop().await.unwrap();
    let _ = storage;
}
