//! The Kubernetes launcher benchmark: 1,000 jobs through the Kubernetes API simulator with
//! instant phases (each pod exits at once with a result), 100 in flight, for DUCKS'
//! `KubeLauncher` (one shared watcher) and, in the same run, a naive launcher that waits on each
//! Job with its own watch (kube-runtime's `await_condition`), defined only here.
//!
//! Per launcher: API requests per job (all verbs and resources the worker used), the most watch
//! streams open at once, the CPU time of the worker's runtime threads per job (the simulator and
//! this driver run on other threads), and submit → terminal event p50 and p99. Run with
//! `make bench-kube`; figures go to BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ducks_contract::links::LinkConfig;
use ducks_contract::{JobId, JobRequest, Origin};
use ducks_models::{S3Config, Storage};
use ducks_queue::{EventReader, Queue, QueueConfig, RedisTarget, Submitted};
use ducks_tests::{KubeApi, PodBehaviour, RedisServer, S3Server, tiny_bucket};
use ducks_worker::kube::classify::{Observed, Seen, classify};
use ducks_worker::kube::{KubeConfig, KubeLauncher, spec};
use ducks_worker::{
    JobFailure, Launch, LaunchError, LaunchSpec, Launcher, Outcome, RunningWorker, Update,
    WorkerConfig,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use tokio::sync::mpsc;

const JOBS: usize = 1_000;
const IN_FLIGHT: usize = 100;
const NS: &str = "ducks";
const IMAGE_KEY: &str = "images/bench/0.png";
/// The name prefix of the worker runtime's threads, whose CPU time is measured.
const WORKER_THREADS: &str = "ducks-worker-rt";
/// The thread name of the simulator's runtime: the cost of the test cluster, shown apart.
const SIMULATOR_THREADS: &str = "kube-simulator";

/// A launcher that waits on each Job with a watch of its own, then lists its pod for the result,
/// and deletes the Job when released: what a first Kubernetes launcher usually looks like.
#[derive(Clone)]
struct NaiveLauncher {
    jobs: Api<Job>,
    pods: Api<Pod>,
    config: KubeConfig,
    s3: S3Config,
}

impl Launcher for NaiveLauncher {
    async fn launch(&self, launch: &LaunchSpec) -> Result<Launch, LaunchError> {
        let job = spec::job_for(launch, &self.s3, "images", &self.config);
        let name = spec::job_name(&launch.job_id);
        let adopted = match self.jobs.create(&PostParams::default(), &job).await {
            Ok(_) => false,
            Err(kube::Error::Api(status)) if status.is_already_exists() => true,
            Err(e) => return Err(LaunchError::Unavailable(e.to_string())),
        };
        let (tx, rx) = mpsc::channel(4);
        let (jobs, pods) = (self.jobs.clone(), self.pods.clone());
        tokio::spawn(async move {
            let ended = |job: Option<&Job>| {
                job.and_then(|j| j.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.status == "True" && matches!(c.type_.as_str(), "Complete" | "Failed")
                        })
                    })
            };
            let outcome = match await_condition(jobs, &name, ended).await {
                Ok(job) => {
                    let listed = pods
                        .list(&ListParams::default().labels(&format!("job-name={name}")))
                        .await;
                    let pod = listed.ok().and_then(|l| l.items.into_iter().next());
                    let observed = Observed {
                        job: job.as_ref(),
                        pod: pod.as_ref(),
                        ..Observed::default()
                    };
                    match classify(observed, &KubeConfig::default().budgets()) {
                        Seen::Finished(outcome) => outcome,
                        other => lost(&format!("{other:?}")),
                    }
                }
                Err(e) => lost(&e.to_string()),
            };
            let _ = tx.send(Update::Finished(outcome)).await;
        });
        Ok(Launch {
            adopted,
            updates: rx,
        })
    }

    async fn cancel(&self, job_id: &JobId) -> Result<(), LaunchError> {
        let _ = self
            .jobs
            .delete(&spec::job_name(job_id), &DeleteParams::background())
            .await;
        Ok(())
    }

    async fn release(&self, job_id: &JobId) {
        let _ = self
            .jobs
            .delete(&spec::job_name(job_id), &DeleteParams::background())
            .await;
    }

    async fn running(&self) -> Vec<JobId> {
        Vec::new()
    }
}

fn lost(why: &str) -> Outcome {
    Outcome::Failed(JobFailure::new(
        ducks_contract::FailureCode::Internal,
        why,
        true,
    ))
}

/// The runner's result line, as every pod's termination message.
fn result_line() -> String {
    serde_json::json!({
        "event": "result",
        "job_id": "bench",
        "model": "tiny-sd",
        "images": [{"key": IMAGE_KEY, "width": 64, "height": 64, "seed": 1, "bytes": 3}],
        "timings": {"download_ms": 0, "load_ms": 0, "generate_ms": 1, "upload_ms": 1, "total_ms": 2, "files_downloaded": 0},
    })
    .to_string()
}

/// CPU seconds (user and system) of this process's threads whose name starts with `prefix`.
fn threads_cpu_secs(prefix: &str) -> f64 {
    // USER_HZ, the unit of /proc's CPU times, is 100 on every Linux architecture we run on.
    let ticks_per_sec = 100.0;
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(task) = task else { continue };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    ticks as f64 / ticks_per_sec
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

struct Report {
    requests_per_job: f64,
    by_kind: Vec<(String, usize)>,
    max_watches: usize,
    cpu_ms_per_job: f64,
    simulator_cpu_ms_per_job: f64,
    to_start_p99_ms: f64,
    start_to_end_p50_ms: f64,
    start_to_end_p99_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    succeeded: usize,
}

impl Report {
    /// Two rounds of one launcher: means of the rates and times, the most watches, all jobs.
    fn mean(a: &Report, b: &Report) -> Report {
        let mean = |x: f64, y: f64| (x + y) / 2.0;
        let by_kind = a
            .by_kind
            .iter()
            .map(|(kind, n)| {
                let other = b
                    .by_kind
                    .iter()
                    .find(|(k, _)| k == kind)
                    .map_or(0, |(_, m)| *m);
                (kind.clone(), n + other)
            })
            .collect();
        Report {
            requests_per_job: mean(a.requests_per_job, b.requests_per_job),
            by_kind,
            max_watches: a.max_watches.max(b.max_watches),
            cpu_ms_per_job: mean(a.cpu_ms_per_job, b.cpu_ms_per_job),
            simulator_cpu_ms_per_job: mean(a.simulator_cpu_ms_per_job, b.simulator_cpu_ms_per_job),
            to_start_p99_ms: mean(a.to_start_p99_ms, b.to_start_p99_ms),
            start_to_end_p50_ms: mean(a.start_to_end_p50_ms, b.start_to_end_p50_ms),
            start_to_end_p99_ms: mean(a.start_to_end_p99_ms, b.start_to_end_p99_ms),
            p50_ms: mean(a.p50_ms, b.p50_ms),
            p99_ms: mean(a.p99_ms, b.p99_ms),
            succeeded: a.succeeded + b.succeeded,
        }
    }
}

struct Stage {
    redis: RedisServer,
    _s3: S3Server,
    s3_config: S3Config,
    storage: Storage,
}

async fn stage() -> Stage {
    let redis = RedisServer::start().await;
    let (s3, s3_config, storage) = tiny_bucket().await;
    storage
        .put(IMAGE_KEY, b"png".to_vec(), "image/png", HashMap::new())
        .await
        .unwrap();
    Stage {
        redis,
        _s3: s3,
        s3_config,
        storage,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Ducks,
    Naive,
}

/// One launcher's round on a fresh simulator and a fresh queue prefix.
fn round(
    which: Which,
    number: usize,
    stage: &Stage,
    driver: &tokio::runtime::Runtime,
    sim: &tokio::runtime::Runtime,
) -> Report {
    let api = Arc::new(sim.block_on(KubeApi::start()));
    sim.block_on(async {
        api.set_default_pod_behaviour(PodBehaviour::Exit {
            code: 0,
            log: String::new(),
            message: result_line(),
        })
    });
    let worker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKER_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let prefix = match which {
        Which::Ducks => format!("bench-ducks-{number}"),
        Which::Naive => format!("bench-naive-{number}"),
    };
    let queue_config = QueueConfig {
        name: prefix,
        per_requester_in_flight: 0,
        per_requester_rate: 0,
        ..QueueConfig::default()
    };
    let target = RedisTarget::Single(stage.redis.url());
    let kube_config = KubeConfig {
        namespace: NS.into(),
        ..KubeConfig::default()
    };
    let config = WorkerConfig {
        concurrency: IN_FLIGHT,
        progress_interval_ms: 0,
        listen: String::new(),
        kubernetes: kube_config.clone(),
        ..WorkerConfig::default()
    };
    let config = WorkerConfig {
        name: "bench".into(),
        ..config
    };
    // The worker runs on a runtime of its own, so the driver's load does not slow it.
    let worker = {
        let client = api.client();
        let worker_queue = worker_rt
            .block_on(Queue::connect(target.clone(), queue_config.clone()))
            .unwrap();
        let storage = stage.storage.clone();
        let started = match which {
            Which::Ducks => worker_rt.block_on(async {
                let launcher = KubeLauncher::start(
                    client,
                    kube_config,
                    stage.s3_config.clone(),
                    "images".into(),
                );
                assert!(launcher.synced(Duration::from_secs(10)).await);
                RunningWorker::with_launcher(
                    worker_queue,
                    storage,
                    launcher,
                    config,
                    &LinkConfig::default(),
                )
                .await
            }),
            Which::Naive => worker_rt.block_on(async {
                let launcher = NaiveLauncher {
                    jobs: Api::namespaced(client.clone(), NS),
                    pods: Api::namespaced(client, NS),
                    config: kube_config,
                    s3: stage.s3_config.clone(),
                };
                RunningWorker::with_launcher(
                    worker_queue,
                    storage,
                    launcher,
                    config,
                    &LinkConfig::default(),
                )
                .await
            }),
        };
        started.unwrap()
    };

    let report = driver.block_on(async {
        let queue = Queue::connect(target, queue_config).await.unwrap();
        let mut reader = EventReader::new(&queue, "cli", "bench", "bench")
            .await
            .unwrap();
        // The most watch streams open at once, sampled while the jobs run.
        let max_watches = Arc::new(AtomicUsize::new(0));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (max_watches, sampling) = (max_watches.clone(), sampling.clone());
            let api = api.clone();
            tokio::spawn(async move {
                while sampling.load(Ordering::Relaxed) {
                    max_watches.fetch_max(api.open_watches(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        api.reset_requests();
        let cpu_before = threads_cpu_secs(WORKER_THREADS);
        let simulator_cpu_before = threads_cpu_secs(SIMULATOR_THREADS);
        let mut submitted: HashMap<JobId, Instant> = HashMap::new();
        let mut latencies = Vec::with_capacity(JOBS);
        // Submit → the worker's first Starting event (taken, about to launch), and from there to
        // the end: which side of the launch the time goes to.
        let mut taken: HashMap<JobId, Instant> = HashMap::new();
        let (mut to_start, mut start_to_end) = (Vec::new(), Vec::new());
        let mut succeeded = 0;
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_secs(600);
        while latencies.len() < JOBS {
            assert!(Instant::now() < deadline, "the round did not finish");
            // Keep IN_FLIGHT jobs submitted and unfinished.
            while next < JOBS && submitted.len() < IN_FLIGHT {
                let mut job = JobRequest::new(format!("duck {next}"), Origin::Cli);
                job.model = Some("tiny-sd".into());
                let at = Instant::now();
                match queue.submit(job).await.unwrap() {
                    Submitted::Queued { id, .. } => submitted.insert(id, at),
                    other => panic!("{other:?}"),
                };
                next += 1;
            }
            let entries = reader.next(200, Duration::from_secs(1)).await.unwrap();
            let now = Instant::now();
            for entry in &entries {
                if let Ok(event) = &entry.event
                    && matches!(event.kind, ducks_contract::EventKind::Starting { .. })
                    && !taken.contains_key(&event.job_id)
                    && let Some(at) = submitted.get(&event.job_id)
                {
                    to_start.push((now - *at).as_secs_f64() * 1000.0);
                    taken.insert(event.job_id.clone(), now);
                }
                if let Ok(event) = &entry.event
                    && event.kind.is_terminal()
                    && let Some(at) = submitted.remove(&event.job_id)
                {
                    latencies.push((now - at).as_secs_f64() * 1000.0);
                    if let Some(started) = taken.remove(&event.job_id) {
                        start_to_end.push((now - started).as_secs_f64() * 1000.0);
                    }
                    if matches!(event.kind, ducks_contract::EventKind::Succeeded { .. }) {
                        succeeded += 1;
                    }
                }
            }
            let ids: Vec<String> = entries.into_iter().map(|e| e.entry_id).collect();
            reader.ack(&ids).await.unwrap();
        }
        let cpu = threads_cpu_secs(WORKER_THREADS) - cpu_before;
        let simulator_cpu = threads_cpu_secs(SIMULATOR_THREADS) - simulator_cpu_before;
        sampling.store(false, Ordering::Relaxed);
        let _ = sampler.await;
        let mut by_kind = Vec::new();
        let mut total = 0;
        for resource in [
            "jobs",
            "pods",
            "pods/log",
            "events",
            "selfsubjectaccessreviews",
        ] {
            for verb in ["create", "get", "list", "watch", "delete"] {
                let n = api.requests(verb, resource);
                if n > 0 {
                    by_kind.push((format!("{verb} {resource}"), n));
                    total += n;
                }
            }
        }
        Report {
            requests_per_job: total as f64 / JOBS as f64,
            by_kind,
            max_watches: max_watches.load(Ordering::Relaxed),
            cpu_ms_per_job: cpu * 1000.0 / JOBS as f64,
            simulator_cpu_ms_per_job: simulator_cpu * 1000.0 / JOBS as f64,
            to_start_p99_ms: percentile(&mut to_start, 0.99),
            start_to_end_p50_ms: percentile(&mut start_to_end, 0.5),
            start_to_end_p99_ms: percentile(&mut start_to_end, 0.99),
            p50_ms: percentile(&mut latencies, 0.5),
            p99_ms: percentile(&mut latencies, 0.99),
            succeeded,
        }
    });
    let metrics = worker_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), worker.stop()).await })
        .expect("the worker stops")
        .unwrap();
    worker_rt.shutdown_timeout(Duration::from_secs(5));
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for line in metrics
            .render()
            .lines()
            .filter(|l| l.contains("_total") && !l.starts_with('#'))
        {
            eprintln!("{line}");
        }
    }
    drop(api);
    report
}

fn main() {
    let driver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-driver")
        .enable_all()
        .build()
        .unwrap();
    let sim = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(SIMULATOR_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let stage = driver.block_on(stage());
    // A B B A: each launcher runs once early and once late, so warm-up and drift fall on both.
    let first_ducks = round(Which::Ducks, 1, &stage, &driver, &sim);
    let first_naive = round(Which::Naive, 1, &stage, &driver, &sim);
    let second_naive = round(Which::Naive, 2, &stage, &driver, &sim);
    let second_ducks = round(Which::Ducks, 2, &stage, &driver, &sim);
    let ducks = Report::mean(&first_ducks, &second_ducks);
    let naive = Report::mean(&first_naive, &second_naive);

    println!(
        "Kubernetes launcher, {JOBS} jobs through the API simulator with instant phases, {IN_FLIGHT} in flight; \
         each launcher twice (A B B A), means shown; requests are totals of both rounds"
    );
    println!("| measure | DUCKS (one shared watcher) | naive (await_condition per Job) | target |");
    println!("|---|---:|---:|---:|");
    println!(
        "| API requests per job | {:.2} | {:.2} | ≤ 3 |",
        ducks.requests_per_job, naive.requests_per_job
    );
    println!(
        "| most watch streams open at once | {} | {} | constant |",
        ducks.max_watches, naive.max_watches
    );
    println!(
        "| worker CPU per job | {:.2} ms | {:.2} ms | |",
        ducks.cpu_ms_per_job, naive.cpu_ms_per_job
    );
    println!(
        "| API simulator CPU per job (the test cluster, not the worker) | {:.2} ms | {:.2} ms | |",
        ducks.simulator_cpu_ms_per_job, naive.simulator_cpu_ms_per_job
    );
    println!(
        "| submit → terminal event p50 | {:.1} ms | {:.1} ms | |",
        ducks.p50_ms, naive.p50_ms
    );
    println!(
        "| submit → terminal event p99 | {:.1} ms | {:.1} ms | |",
        ducks.p99_ms, naive.p99_ms
    );
    println!(
        "| submit → taken (first Starting event) p99 | {:.1} ms | {:.1} ms | |",
        ducks.to_start_p99_ms, naive.to_start_p99_ms
    );
    println!(
        "| taken → terminal event p50 | {:.1} ms | {:.1} ms | |",
        ducks.start_to_end_p50_ms, naive.start_to_end_p50_ms
    );
    println!(
        "| taken → terminal event p99 | {:.1} ms | {:.1} ms | |",
        ducks.start_to_end_p99_ms, naive.start_to_end_p99_ms
    );
    println!(
        "| jobs succeeded (both rounds) | {} | {} | {} |",
        ducks.succeeded,
        naive.succeeded,
        2 * JOBS
    );
    println!();
    for (name, report) in [("DUCKS", &ducks), ("naive", &naive)] {
        let kinds: Vec<String> = report
            .by_kind
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        println!("{name} requests: {}", kinds.join(", "));
    }
}
