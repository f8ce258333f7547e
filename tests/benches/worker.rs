//! The worker benchmark: the worker's own overhead around a launch, with a launcher that finishes
//! at once (defined here, so no configuration can reach it), over 1,000 jobs one after another:
//! submit to launch start, and launcher result to the Succeeded event, p50 and p99. Then the
//! process's memory with the worker idle and with 500 jobs in flight, and, when a release build
//! is at hand, `ducks demo` from start to printed link. Run with `make bench-worker`; figures go
//! to BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ducks_contract::links::LinkConfig;
use ducks_contract::{Image, RunResult, RunTimings};
use ducks_contract::{JobId, JobRequest, Origin};
use ducks_queue::{EventReader, Queue, QueueConfig, RedisTarget, Submitted};
use ducks_tests::{RedisServer, tiny_bucket};
use ducks_worker::{
    Launch, LaunchError, LaunchSpec, Launcher, Outcome, RunningWorker, Update, WorkerConfig,
};
use tokio::sync::{mpsc, watch};

const JOBS: usize = 1_000;
const IN_FLIGHT: usize = 500;
const IMAGE_KEY: &str = "images/bench/0.png";

/// When each job's launch started and when its result was handed back.
#[derive(Default)]
struct Stamps {
    launched: HashMap<JobId, Instant>,
    finished: HashMap<JobId, Instant>,
}

/// A launcher that reports success at once, or, while `hold` is set, keeps every launch running
/// until released.
#[derive(Clone, Default)]
struct InstantLauncher {
    stamps: Arc<Mutex<Stamps>>,
    hold: Arc<Mutex<Option<watch::Receiver<bool>>>>,
}

impl Launcher for InstantLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launch, LaunchError> {
        let now = Instant::now();
        self.stamps
            .lock()
            .unwrap()
            .launched
            .insert(spec.job_id.clone(), now);
        let (tx, rx) = mpsc::channel(1);
        let result = Update::Finished(Outcome::Succeeded(RunResult {
            job_id: spec.job_id.to_string(),
            model: spec.job.model.clone(),
            images: vec![Image {
                key: IMAGE_KEY.into(),
                width: 64,
                height: 64,
                seed: 1,
                bytes: 3,
            }],
            timings: RunTimings::default(),
        }));
        let hold = self.hold.lock().unwrap().clone();
        let stamps = self.stamps.clone();
        let id = spec.job_id.clone();
        tokio::spawn(async move {
            if let Some(mut released) = hold {
                let _ = released.wait_for(|released| *released).await;
            }
            stamps.lock().unwrap().finished.insert(id, Instant::now());
            let _ = tx.send(result).await;
        });
        Ok(Launch {
            adopted: false,
            updates: rx,
        })
    }

    async fn cancel(&self, _: &JobId) -> Result<(), LaunchError> {
        Ok(())
    }

    async fn release(&self, _: &JobId) {}

    async fn running(&self) -> Vec<JobId> {
        Vec::new()
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn job(n: usize) -> JobRequest {
    let mut job = JobRequest::new(format!("duck {n}"), Origin::Cli);
    job.model = Some("tiny-sd".into());
    job
}

async fn submit(queue: &Queue, n: usize) -> JobId {
    match queue.submit(job(n)).await.expect("submit") {
        Submitted::Queued { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

/// Reads events as a front end does (one consumer group, connected once) and notes when each
/// job's terminal event was read.
struct Ends {
    reader: EventReader,
    seen: HashMap<JobId, Instant>,
}

impl Ends {
    /// When `id`'s terminal event was read, reading until it is.
    async fn of(&mut self, id: &JobId) -> Instant {
        loop {
            if let Some(at) = self.seen.get(id) {
                return *at;
            }
            let entries = self.reader.next(100, Duration::from_secs(1)).await.unwrap();
            let now = Instant::now();
            for entry in &entries {
                if let Ok(event) = &entry.event
                    && event.kind.is_terminal()
                {
                    self.seen.insert(event.job_id.clone(), now);
                }
            }
            let ids: Vec<String> = entries.into_iter().map(|e| e.entry_id).collect();
            self.reader.ack(&ids).await.unwrap();
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let redis = RedisServer::start().await;
    let (_s3, _, storage) = tiny_bucket().await;
    storage
        .put(IMAGE_KEY, b"png".to_vec(), "image/png", HashMap::new())
        .await
        .unwrap();
    let queue_config = QueueConfig {
        per_requester_in_flight: 0,
        per_requester_rate: 0,
        ..QueueConfig::default()
    };
    let target = RedisTarget::Single(redis.url());
    let queue = Queue::connect(target.clone(), queue_config.clone())
        .await
        .unwrap();

    let rss_before = rss_mib();
    let launcher = InstantLauncher::default();
    let config = WorkerConfig {
        concurrency: IN_FLIGHT,
        listen: String::new(),
        ..WorkerConfig::default()
    };
    let worker_queue = Queue::connect(target, queue_config).await.unwrap();
    let config = WorkerConfig {
        name: "bench".into(),
        ..config
    };
    let worker = RunningWorker::with_launcher(
        worker_queue,
        storage,
        launcher.clone(),
        config,
        &LinkConfig::default(),
    )
    .await
    .unwrap();

    let mut ends = Ends {
        reader: EventReader::new(&queue, "cli", "bench", "bench")
            .await
            .unwrap(),
        seen: HashMap::new(),
    };
    // Warm up: the first jobs pay for connections and the catalogue.
    for n in 0..20 {
        let id = submit(&queue, n).await;
        ends.of(&id).await;
    }
    let rss_idle = rss_mib();

    let mut to_launch = Vec::with_capacity(JOBS);
    let mut to_event = Vec::with_capacity(JOBS);
    let started = Instant::now();
    for n in 0..JOBS {
        let submitted = Instant::now();
        let id = submit(&queue, n).await;
        let ended = ends.of(&id).await;
        let stamps = launcher.stamps.lock().unwrap();
        to_launch.push((stamps.launched[&id] - submitted).as_secs_f64() * 1000.0);
        to_event.push((ended - stamps.finished[&id]).as_secs_f64() * 1000.0);
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Memory with many jobs in flight: launches held until released.
    let (release, released) = watch::channel(false);
    *launcher.hold.lock().unwrap() = Some(released);
    let mut held = Vec::new();
    for n in 0..IN_FLIGHT {
        held.push(submit(&queue, JOBS + n).await);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while launcher.stamps.lock().unwrap().launched.len() < 20 + JOBS + IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "the held jobs did not all launch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_busy = rss_mib();
    release.send_replace(true);
    for id in &held {
        ends.of(id).await;
    }
    worker.stop().await.unwrap();

    println!(
        "worker overhead, {JOBS} jobs one after another ({:.0} jobs/s end to end)",
        JOBS as f64 / elapsed
    );
    println!("| measure | p50 | p99 | target |");
    println!("|---|---:|---:|---:|");
    println!(
        "| submit → launch start | {:.2} ms | {:.2} ms | p99 < 5 ms |",
        percentile(&mut to_launch, 0.5),
        percentile(&mut to_launch, 0.99)
    );
    println!(
        "| launcher result → Succeeded event read | {:.2} ms | {:.2} ms | p99 < 5 ms |",
        percentile(&mut to_event, 0.5),
        percentile(&mut to_event, 0.99)
    );
    println!();
    println!("| memory (this process: worker, S3 server, client) | RSS |");
    println!("|---|---:|");
    println!("| before the worker started | {rss_before:.1} MiB |");
    println!("| worker idle | {rss_idle:.1} MiB |");
    println!("| {IN_FLIGHT} jobs in flight | {rss_busy:.1} MiB |");

    demo_timing();
}

/// `ducks demo` from start to its printed link, with the release binary, in a fresh folder
/// (tiny-sd created, weights downloaded) and again in the same folder (cached).
fn demo_timing() {
    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ducks");
    if !binary.exists() {
        println!(
            "\n(no target/release/ducks: build it with `cargo build --release -p ducks` to time `ducks demo`)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!("\n| `ducks demo` (release build) | seconds from start to exit |");
    println!("|---|---:|");
    for round in ["fresh folder", "second run, same folder"] {
        let started = Instant::now();
        let output = std::process::Command::new(&binary)
            .args(["demo", "a rubber duck flying over the clouds"])
            .env("DUCKS_WORKER__LISTEN", "")
            .env("RUST_LOG", "warn")
            .current_dir(dir.path())
            .output()
            .expect("run ducks demo");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        println!("| {round} | {:.2} |", started.elapsed().as_secs_f64());
    }
}
