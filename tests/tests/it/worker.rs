//! The worker end to end: real Redis, the embedded S3 server, the real `ducks runner` with tiny-sd
//! through the local launcher.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ducks_contract::links::LinkConfig;
use ducks_contract::{
    Caller, EventKind, FailureCode, JobId, JobPhase, JobRequest, RunnerJob, Secret,
};
use ducks_models::{S3Config, Storage};
use ducks_queue::{Cancelled, Queue};
use ducks_tests::{RedisOptions, RedisServer, S3Server, ducks_binary, http_get, s3_env};
use ducks_worker::config::LocalConfig;
use ducks_worker::{RunningWorker, WorkerConfig};

use crate::support::{
    GATE_LIMIT, JOB_LIMIT, WEIGHT_KEY, events_of, events_until_end, eventually, failure, png_size,
    queue_on, quick, stream_entries, submit, terminal, tiny_bucket, worker_queue_config, xadd_raw,
    xlen,
};

/// Redis, S3 with tiny-sd, and the folders the local launcher shares between workers.
struct World {
    redis: RedisServer,
    s3: S3Server,
    s3_config: S3Config,
    storage: Storage,
    queue: Queue,
    scratch: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        Self::with_redis(RedisServer::start().await).await
    }

    async fn with_redis(redis: RedisServer) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let (s3, s3_config, storage) = tiny_bucket().await;
        let queue = queue_on(&redis, worker_queue_config()).await;
        Self {
            redis,
            s3,
            s3_config,
            storage,
            queue,
            scratch,
        }
    }

    fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            concurrency: 2,
            progress_interval_ms: 0,
            shutdown_grace_secs: 30,
            job_timeout_secs: JOB_LIMIT.as_secs(),
            cancel_grace_secs: 2,
            listen: String::new(),
            local: LocalConfig {
                runner_program: ducks_binary(),
                runs_dir: self.scratch.path().join("runs"),
                cache_dir: self.scratch.path().join("cache"),
            },
            ..WorkerConfig::default()
        }
    }

    /// A worker in this process, on its own Redis connection, started as `ducks worker` starts
    /// one.
    async fn start_worker(&self, config: WorkerConfig, name: &str) -> RunningWorker {
        let queue = queue_on(&self.redis, worker_queue_config()).await;
        let config = WorkerConfig {
            name: name.into(),
            ..config
        };
        RunningWorker::start(
            queue,
            &self.s3_config,
            config,
            &LinkConfig::default(),
            "images",
        )
        .await
        .unwrap()
    }

    async fn submit(&self, job: JobRequest) -> JobId {
        submit(&self.queue, job).await
    }

    /// `ducks worker` as a process of its own, on this world's Redis, S3 and runner folders,
    /// logging at `level`.
    fn worker_process(&self, level: &str) -> tokio::process::Command {
        let config = self.worker_config();
        let mut command = tokio::process::Command::new(ducks_binary());
        command
            .arg("worker")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DUCKS_REDIS__URL", self.redis.url())
            .env(
                "DUCKS_QUEUE__LEASE_MS",
                worker_queue_config().lease_ms.to_string(),
            )
            .envs(s3_env(&self.s3_config))
            .env("DUCKS_WORKER__LISTEN", "")
            .env("RUST_LOG", level)
            .env("DUCKS_WORKER__LOCAL__RUNS_DIR", &config.local.runs_dir)
            .env("DUCKS_WORKER__LOCAL__CACHE_DIR", &config.local.cache_dir)
            .current_dir(self.scratch.path())
            .kill_on_drop(true);
        command
    }

    /// A script standing in for the runner, to inject a fault the real one cannot be made to show.
    fn fake_runner(&self, name: &str, body: &str) -> PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

#[tokio::test]
async fn a_job_goes_from_submit_to_a_working_link() {
    let world = World::new().await;
    let config = WorkerConfig {
        listen: "127.0.0.1:0".into(),
        ..world.worker_config()
    };
    let worker = world.start_worker(config, "w1").await;
    let probes = worker.probes.expect("the probes are served");

    let mut job = quick("a duck in space");
    job.width = Some(96);
    let id = world.submit(job).await;
    let events = events_until_end(&world.queue, &id).await;

    assert!(
        matches!(events[0], EventKind::Queued { position: 1 }),
        "{events:?}"
    );
    // Where the job is, as codes a front end renders its own way, each while it happens.
    let phases: Vec<JobPhase> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Starting { phase, .. } => Some(*phase),
            _ => None,
        })
        .collect();
    assert_eq!(
        phases,
        [
            JobPhase::Launching,
            JobPhase::LoadingWeights,
            JobPhase::LoadingWeights,
            JobPhase::Generating,
            JobPhase::Uploading
        ],
        "{events:?}"
    );
    let generating = events
        .iter()
        .position(|e| {
            matches!(
                e,
                EventKind::Starting {
                    phase: JobPhase::Generating,
                    ..
                }
            )
        })
        .unwrap();
    let step = events
        .iter()
        .position(|e| matches!(e, EventKind::Progress { step: 1, total: 1 }))
        .expect("the step is reported");
    assert!(generating < step, "{events:?}");
    let EventKind::Succeeded { images, timings } = terminal(&events) else {
        panic!("not a success: {events:?}");
    };
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!((image.width, image.height, image.seed), (96, 64, 7));
    assert!(
        image.key.starts_with("images/") && image.key.contains(id.as_str()),
        "{}",
        image.key
    );
    assert!(
        image.url.contains("X-Amz-Signature="),
        "a presigned link: {}",
        image.url
    );
    let response = http_get(&image.url).await.unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(png_size(&response.body), (96, 64));
    assert!(
        timings.generate_ms > 0 && timings.total_ms >= timings.generate_ms,
        "{timings:?}"
    );
    assert_eq!(timings.gpu_seconds, 0.0, "tiny-sd holds no GPU");

    // The worker published the catalogue for front ends, and reports through its probes.
    let catalogue = world.queue.models().await.unwrap();
    assert_eq!(catalogue.default_model.as_deref(), Some("tiny-sd"));
    let ready = http_get(&format!("http://{probes}/readyz")).await.unwrap();
    assert_eq!(ready.status, 200);
    let metrics = String::from_utf8(
        http_get(&format!("http://{probes}/metrics"))
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        metrics.contains(r#"ducks_worker_jobs_total{outcome="succeeded",code=""} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("ducks_worker_end_to_end_seconds_count 1"),
        "{metrics}"
    );
    let metrics = worker.stop().await.unwrap();
    assert_eq!(
        (metrics.launches_total(false), metrics.launches_total(true)),
        (1, 0)
    );
}

#[tokio::test]
async fn two_workers_run_twenty_jobs_exactly_once() {
    let world = World::new().await;
    let a = world.start_worker(world.worker_config(), "a").await;
    let b = world.start_worker(world.worker_config(), "b").await;
    let mut jobs = Vec::new();
    for n in 0..20 {
        jobs.push(world.submit(quick(&format!("duck {n}"))).await);
    }
    for id in &jobs {
        events_until_end(&world.queue, id).await;
    }
    let (a, b) = (a.stop().await.unwrap(), b.stop().await.unwrap());
    // With both workers stopped, the whole stream: a second end written late would be here.
    for id in &jobs {
        let events = events_of(&world.queue, id).await;
        let EventKind::Succeeded { images, .. } = terminal(&events) else {
            panic!("{id}: {events:?}");
        };
        assert_eq!(images.len(), 1, "{id}");
    }
    assert_eq!(
        a.launches_total(false) + b.launches_total(false),
        20,
        "one launch per job"
    );
    assert!(
        a.launches_total(false) > 0 && b.launches_total(false) > 0,
        "both workers took jobs"
    );
}

#[tokio::test]
async fn a_worker_killed_mid_job_is_finished_by_another_that_adopts_its_runner() {
    let world = World::new().await;
    let config = world.worker_config();
    let mut killed = world.worker_process("warn").spawn().unwrap();
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let id = world.submit(quick("a duck that outlives its worker")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    killed.kill().await.unwrap(); // SIGKILL
    killed.wait().await.unwrap();
    assert_eq!(gate.held(), 1, "the runner outlived its worker");

    let adopter = world.start_worker(config, "adopter").await;
    gate.open();
    events_until_end(&world.queue, &id).await;
    let metrics = adopter.stop().await.unwrap();
    let events = events_of(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    assert_eq!(
        (metrics.launches_total(true), metrics.launches_total(false)),
        (1, 0),
        "the second worker adopted the running runner instead of starting another"
    );
}

#[tokio::test]
async fn requests_that_cannot_run_never_reach_a_launcher() {
    let world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w").await;

    let mut unknown = quick("a duck");
    unknown.model = Some("sd-nonexistent".into());
    let id = world.submit(unknown).await;
    let (code, message, retryable) = failure(&events_until_end(&world.queue, &id).await);
    assert_eq!((code, retryable), (FailureCode::UnknownModel, false));
    assert_eq!(
        message,
        "There is no model `sd-nonexistent`. Available models: tiny-sd."
    );

    let mut too_big = quick("a huge duck");
    too_big.width = Some(512);
    let id = world.submit(too_big).await;
    let (code, message, retryable) = failure(&events_until_end(&world.queue, &id).await);
    assert_eq!((code, retryable), (FailureCode::InvalidRequest, false));
    assert!(message.contains("larger than tiny-sd allows"), "{message}");

    let metrics = worker.stop().await.unwrap();
    assert_eq!(metrics.launches_total(false), 0);
}

/// Each runner fault, injected through a stand-in runner, gives its own code and retry decision.
#[tokio::test]
async fn runner_faults_give_distinct_codes_and_retry_decisions() {
    let world = World::new().await;
    let cases = [
        (
            "crash",
            "kill -SEGV $$",
            (
                FailureCode::RunnerCrashed,
                "The image generator crashed (signal 11). (gave up after 2 attempts)",
            ),
            true,
        ),
        (
            "oom",
            r#"echo '{"event":"error","failure":"out_of_memory","exit_code":4,"message":"The image generator ran out of memory.","detail":"CUDA out of memory."}'; exit 4"#,
            (
                FailureCode::OutOfMemory,
                "The image generator ran out of memory.",
            ),
            false,
        ),
        (
            "phantom",
            r#"echo '{"event":"result","job_id":"x","model":"tiny-sd","images":[{"key":"images/nowhere/0.png","width":64,"height":64,"seed":1,"bytes":10}],"timings":{"download_ms":0,"load_ms":0,"generate_ms":1,"upload_ms":1,"total_ms":2,"files_downloaded":0}}'"#,
            (
                FailureCode::OutputMissing,
                "The image was made but did not arrive in storage. (gave up after 2 attempts)",
            ),
            true,
        ),
    ];
    for (name, script, expected, retried) in cases {
        let mut config = world.worker_config();
        config.local.runner_program = world.fake_runner(name, script);
        let worker = world.start_worker(config, name).await;
        let id = world.submit(quick(name)).await;
        let events = events_until_end(&world.queue, &id).await;
        let (code, message, _) = failure(&events);
        assert_eq!((code, message.as_str()), expected, "{name}: {events:?}");
        let retries = events
            .iter()
            .filter(|e| matches!(e, EventKind::Retrying { .. }))
            .count();
        assert_eq!(retries, usize::from(retried), "{name}: {events:?}");
        worker.stop().await.unwrap();
    }
}

#[tokio::test]
async fn storage_down_is_retried_then_reported() {
    let mut world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w").await;
    // One job first, so the catalogue is loaded and the weights are cached.
    let id = world.submit(quick("before")).await;
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );

    world.s3.stop().await;
    let id = world.submit(quick("after")).await;
    let events = events_until_end(&world.queue, &id).await;
    let (code, message, retryable) = failure(&events);
    assert_eq!(
        (code, retryable),
        (FailureCode::StorageUnavailable, false),
        "{events:?}"
    );
    // The person reads what happened; the SDK's words and the keys stay in the worker's log.
    assert_eq!(
        message,
        "Image storage is unavailable right now. (gave up after 2 attempts)"
    );
    let retries = events
        .iter()
        .filter(|e| matches!(e, EventKind::Retrying { .. }))
        .count();
    assert_eq!(retries, 1, "retried once (max_retries = 1): {events:?}");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_queued_and_running_jobs() {
    let world = World::new().await;
    // Queued: cancelled before any worker runs, so it never starts.
    let queued = world.submit(quick("never drawn")).await;
    assert!(matches!(
        world
            .queue
            .cancel(&queued, &Caller::Operator)
            .await
            .unwrap(),
        Cancelled::Cancelled
    ));

    let worker = world.start_worker(world.worker_config(), "w").await;
    let events = events_until_end(&world.queue, &queued).await;
    assert_eq!(terminal(&events), &EventKind::Cancelled);

    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let running = world.submit(quick("stopped halfway")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    let run_dir = world.scratch.path().join("runs").join(running.as_str());
    let pid: i32 = std::fs::read_to_string(run_dir.join("pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        world
            .queue
            .cancel(&running, &Caller::Operator)
            .await
            .unwrap(),
        Cancelled::Requested,
        "cancelled while its runner fetched weights"
    );
    let events = events_until_end(&world.queue, &running).await;
    assert_eq!(terminal(&events), &EventKind::Cancelled, "{events:?}");
    drop(gate);
    // The runner was stopped, not left to finish: it is gone, and it uploaded nothing.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the runner still runs: {stat}"
    );
    let uploaded = world.storage.list("images/").await.unwrap();
    assert!(
        !uploaded.iter().any(|key| key.contains(running.as_str())),
        "{uploaded:?}"
    );
    let metrics = worker.stop().await.unwrap();
    // The runner is gone and its folder released.
    let runs = world.scratch.path().join("runs").join(running.as_str());
    assert!(!runs.exists(), "{} is left behind", runs.display());
    assert_eq!(
        metrics.launches_total(false),
        1,
        "the queued job never launched"
    );
}

#[tokio::test]
async fn graceful_shutdown_leaves_unfinished_jobs_to_another_worker() {
    let world = World::new().await;
    let mut config = world.worker_config();
    config.shutdown_grace_secs = 0;
    let leaving = world.start_worker(config.clone(), "leaving").await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let id = world.submit(quick("a duck handed over")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    let left = leaving.stop().await.unwrap();
    assert_eq!(left.launches_total(false), 1);
    assert_eq!(
        gate.held(),
        1,
        "the runner still runs after its worker left"
    );

    let status = world.queue.status(&id).await.unwrap();
    assert!(!status.state.is_terminal(), "left unfinished: {status:?}");
    let taker = world.start_worker(config, "taker").await;
    gate.open();
    events_until_end(&world.queue, &id).await;
    let took = taker.stop().await.unwrap();
    let events = events_of(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    assert_eq!(
        (took.launches_total(true), took.launches_total(false)),
        (1, 0),
        "the runner kept running and was adopted"
    );
}

#[tokio::test]
async fn a_redis_restart_under_a_running_worker_loses_nothing() {
    let redis = RedisServer::start_with(RedisOptions { aof: true }).await;
    let mut world = World::with_redis(redis).await;
    let worker = world.start_worker(world.worker_config(), "w").await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let through = world.submit(quick("through a restart")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    world.redis.restart().await;
    assert_eq!(
        gate.held(),
        1,
        "the job was still running when Redis came back"
    );
    gate.open();
    events_until_end(&world.queue, &through).await;

    // And the worker carries on taking jobs.
    let id = world.submit(quick("after the restart")).await;
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    let metrics = worker.stop().await.unwrap();
    assert_eq!(metrics.launches_total(false), 2, "no job ran twice");
    let events = events_of(&world.queue, &through).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
}

#[tokio::test]
async fn ducks_demo_prints_a_link_and_saves_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(ducks_binary())
        .args([
            "demo",
            "a rubber duck flying over the clouds",
            "--timeout",
            "120",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("ducks demo ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let link = stdout
        .lines()
        .find(|l| l.starts_with("http://127.0.0.1:"))
        .expect("a link");
    assert!(
        link.contains("/i/"),
        "a permanent link to the stack's API: {link}"
    );
    let saved = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Saved "))
        .expect("the saved file");
    let bytes = std::fs::read(dir.path().join(saved)).unwrap();
    assert_eq!(png_size(&bytes), (64, 64));
    assert!(Path::new(&dir.path().join(".ducks/s3")).exists());
    // Once the stack has stopped: where the image is, why the link no longer opens, and that
    // tiny-sd's noise is not what a real model draws, with the command that draws one.
    let absolute = dir.path().canonicalize().unwrap().join(saved);
    let notes: Vec<&str> = stderr.lines().rev().take(2).collect();
    assert_eq!(
        notes[1],
        format!(
            "The image is saved as {}. Its link opens only while a stack runs: start one with \
             `ducks dev` in this folder.",
            absolute.display()
        ),
        "{stderr}"
    );
    assert!(
        notes[0].starts_with(
            "tiny-sd is a test model, so the image is noise: `make demo MODEL=sd-turbo`"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn ducks_dev_serves_ducks_submit_until_interrupted() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut dev = tokio::process::Command::new(ducks_binary())
        .arg("dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The settings it prints for other terminals.
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut exports = Vec::new();
    let mut api = None;
    tokio::time::timeout(JOB_LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("API") {
                api = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some((key, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('='))
            {
                exports.push((key.to_owned(), value.to_owned()));
            }
            if line.starts_with("ducks submit") {
                return;
            }
        }
        panic!("ducks dev ended before it was ready");
    })
    .await
    .expect("ducks dev starts");
    assert!(
        exports.iter().any(|(k, _)| k == "DUCKS_REDIS__URL"),
        "{exports:?}"
    );
    // The API it serves, open on this machine: the catalogue without a key.
    let api = api.expect("ducks dev prints the API's address");
    let models = http_get(&format!("{api}v1/models")).await.unwrap();
    assert_eq!(models.status, 200, "{api}");
    assert!(
        String::from_utf8_lossy(&models.body).contains("\"id\":\"tiny-sd\""),
        "{}",
        String::from_utf8_lossy(&models.body)
    );

    let out = dir.path().join("out");
    let submit = tokio::process::Command::new(ducks_binary())
        .args([
            "submit",
            "a duck from another terminal",
            "--wait",
            "--size",
            "96x96",
            "--out",
        ])
        .arg(&out)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(exports.clone())
        .current_dir(dir.path())
        .output();
    let submit = tokio::time::timeout(JOB_LIMIT, submit)
        .await
        .expect("submit --wait ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&submit.stdout);
    let stderr = String::from_utf8_lossy(&submit.stderr);
    assert!(
        submit.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("step 2 of 2"), "the progress bar: {stderr}");
    let saved = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Saved "))
        .expect("a saved file");
    assert_eq!(png_size(&std::fs::read(saved).unwrap()), (96, 96));

    // The redis-cli lines of docs/job-contract.md, run as written against this stack (its Redis
    // port, its catalogue): the documented job draws.
    let redis_url = exports
        .iter()
        .find(|(k, _)| k == "DUCKS_REDIS__URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    let port = redis_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/job-contract.md"
    ))
    .expect("docs/job-contract.md");
    let lines: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("redis-cli "))
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "create group, add a job, read events: {lines:?}"
    );
    let run = |line: &str| {
        let line = line.replacen("redis-cli ", &format!("redis-cli -p {port} "), 1);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(lines[0]);
    run(lines[1]);
    let started = std::time::Instant::now();
    loop {
        let events = run(lines[2]);
        assert!(!events.contains("\"event\":\"failed\""), "{events}");
        if events.contains("\"event\":\"succeeded\"") {
            assert!(events.contains("\"job_id\":\"my-first-duck\""), "{events}");
            break;
        }
        assert!(
            started.elapsed() < JOB_LIMIT,
            "no result for the documented job: {events}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = nix::unistd::Pid::from_raw(dev.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .expect("ducks dev stops on SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_catalogue_rereads_only_changed_manifests_and_publishes_changes() {
    use ducks_models::bucket;
    use ducks_models::manifest::manifest_key;
    let world = World::new().await;
    let known = ducks_models::ManifestIndex::default();
    assert!(
        known.refresh(&world.storage).await.unwrap(),
        "the first read is a change"
    );
    world.s3.reset_counts();
    assert!(!known.refresh(&world.storage).await.unwrap());
    assert_eq!(
        world.s3.requests("GET", "models/"),
        0,
        "nothing changed, nothing re-read"
    );

    // A second model appears, then the first one's manifest changes.
    let mut other = bucket::load(&world.storage, "tiny-sd").await.unwrap();
    other.id = "tiny-two".into();
    let put = async |manifest: &ducks_models::ModelManifest| {
        world
            .storage
            .put(
                &manifest_key(&manifest.id),
                manifest.to_toml().into_bytes(),
                "application/toml",
                HashMap::new(),
            )
            .await
            .unwrap()
    };
    put(&other).await;
    world.s3.reset_counts();
    assert!(known.refresh(&world.storage).await.unwrap());
    assert_eq!(world.s3.requests("GET", "models/tiny-two/model.toml"), 1);
    assert_eq!(world.s3.requests("GET", "models/tiny-sd/model.toml"), 0);
    assert_eq!(known.ids(), ["tiny-sd", "tiny-two"]);

    let mut changed = bucket::load(&world.storage, "tiny-sd").await.unwrap();
    changed.description = "Changed.".into();
    put(&changed).await;
    world.s3.reset_counts();
    ducks_worker::worker::sync_catalogue(&known, &world.storage, &world.queue, "")
        .await
        .unwrap();
    assert_eq!(world.s3.requests("GET", "models/tiny-sd/model.toml"), 1);
    assert_eq!(world.s3.requests("GET", "models/tiny-two/model.toml"), 0);
    let published = world.queue.models().await.unwrap();
    assert_eq!(published.get("tiny-sd").unwrap().description, "Changed.");
    assert_eq!(
        published.default_model, None,
        "two models and no default set"
    );
}

#[tokio::test]
async fn a_retried_job_draws_with_the_seed_its_first_attempt_had() {
    let world = World::new().await;
    // The first attempt records the job it was given and crashes; the second runs for real.
    let first = world.scratch.path().join("first-attempt.json");
    let script = format!(
        "if [ ! -f {first} ]; then echo \"$DUCKS_RUNNER__JOB\" > {first}; exit 1; fi\nexec {ducks} runner",
        first = first.display(),
        ducks = ducks_binary().display(),
    );
    let mut config = world.worker_config();
    config.local.runner_program = world.fake_runner("crash-once", &script);
    let worker = world.start_worker(config, "w").await;
    let mut job = quick("a duck drawn twice");
    job.seed = None;
    let id = world.submit(job).await;
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::Retrying { .. })),
        "{events:?}"
    );
    let EventKind::Succeeded { images, .. } = terminal(&events) else {
        panic!("{events:?}");
    };
    let first: RunnerJob = ducks_contract::wire::decode(
        "runner job",
        std::fs::read_to_string(&first).unwrap().trim(),
    )
    .unwrap();
    assert_eq!(
        images[0].seed, first.params.seed,
        "the retry drew with the seed the worker settled before the first launch"
    );
    worker.stop().await.unwrap();
}

/// A second entry with the id of a job that is running, then one with the id of a job that
/// finished (a redis-cli user following docs/job-contract.md can add either): neither launches,
/// neither writes an event, and the finished job's image stays its own.
#[tokio::test]
async fn a_job_id_is_one_job_whatever_is_added_with_it() {
    let world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w").await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let id = world.submit(quick("the one duck")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    let twin = format!(r#"{{"v":1,"id":"{id}","prompt":"an impostor","width":64,"height":64}}"#);
    xadd_raw(&world.queue, &[("job", &twin)]).await;
    eventually(JOB_LIMIT, "the running job's twin is set aside", || async {
        xlen(&world.queue, world.queue.keys().dead_letters()).await == 1
    })
    .await;
    gate.open();
    events_until_end(&world.queue, &id).await;
    let image_key = |events: &[EventKind]| match terminal(events) {
        EventKind::Succeeded { images, .. } => images[0].key.clone(),
        other => panic!("{other:?}"),
    };
    let key = image_key(&events_of(&world.queue, &id).await);
    let first_image = world.storage.get_bytes(&key).await.unwrap();

    xadd_raw(&world.queue, &[("job", &twin)]).await;
    eventually(
        JOB_LIMIT,
        "the finished job's twin is set aside",
        || async { xlen(&world.queue, world.queue.keys().dead_letters()).await == 2 },
    )
    .await;
    let metrics = worker.stop().await.unwrap();
    assert_eq!(
        metrics.launches_total(false),
        1,
        "one launch for one job id"
    );
    assert_eq!(metrics.launches_total(true), 0);
    let events = events_of(&world.queue, &id).await;
    assert_eq!(image_key(&events), key, "one end, with the first image");
    let images = world.storage.list("images/").await.unwrap();
    let of_job: Vec<&String> = images.iter().filter(|k| k.contains(id.as_str())).collect();
    assert_eq!(of_job, [&key], "no second image under the job's id");
    assert_eq!(world.storage.get_bytes(&key).await.unwrap(), first_image);
    for (_, fields) in stream_entries(&world.queue, world.queue.keys().dead_letters()).await {
        assert_eq!(fields["job_id"], id.as_str());
        assert!(
            fields["reason"].contains("a job id is one job (docs/job-contract.md)"),
            "{fields:?}"
        );
    }
}

/// A Discord interaction token is a credential: it may ride to the bot on its own event stream,
/// and nowhere else. Every other output path is read for it: the worker's log at debug level,
/// the runner's environment and files, `ducks status` in both forms, what a watcher sees.
#[tokio::test]
async fn an_interaction_token_never_leaves_its_event_stream() {
    const TOKEN: &str = "aW50ZXJhY3Rpb24tdG9rZW4tbmV2ZXItc2hvd24";
    let world = World::new().await;
    let config = world.worker_config();
    let mut worker = world
        .worker_process("debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tail = ducks_queue::EventTail::start(&world.queue, "discord")
        .await
        .unwrap();
    let id = JobId::generate();
    let mut watch = tail.watch(&id).await.unwrap();
    let mut job = quick("a duck for a Discord channel");
    job.id = Some(id.clone());
    job.origin = ducks_contract::Origin::Discord {
        application_id: "1".into(),
        interaction_token: Secret::new(TOKEN),
        channel_id: "22".into(),
        guild_id: Some("33".into()),
    };
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    world.queue.submit(job).await.unwrap();
    gate.wait_held(1, GATE_LIMIT).await;
    // The runner, caught in the middle of its run: its environment.
    let run_dir = config.local.runs_dir.join(id.as_str());
    let pid = std::fs::read_to_string(run_dir.join("pid")).unwrap();
    let pid = pid.split_whitespace().next().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("DUCKS_RUNNER__JOB="),
        "the runner's environment was read"
    );
    assert!(!environ.contains(TOKEN), "the runner never gets the token");
    gate.open();

    let mut watched = Vec::new();
    while let Some(event) = tokio::time::timeout(JOB_LIMIT, watch.next()).await.unwrap() {
        watched.push(ducks_contract::wire::encode(&event));
    }
    assert!(
        watched.last().unwrap().contains("\"event\":\"succeeded\""),
        "{watched:?}"
    );
    let ducks = |args: &[&str]| {
        let output = std::process::Command::new(ducks_binary())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DUCKS_REDIS__URL", world.redis.url())
            .env("RUST_LOG", "debug")
            .current_dir(world.scratch.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let status_json = ducks(&["status", id.as_str(), "--json"]);
    assert!(
        status_json.contains("\"channel_id\": \"22\""),
        "{status_json}"
    );
    let status_text = ducks(&["status", id.as_str()]);
    assert!(status_text.contains("succeeded"), "{status_text}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut log = String::new();
    use tokio::io::AsyncReadExt;
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    worker.wait().await.unwrap();
    assert!(log.contains("DEBUG"), "the worker logged at debug level");
    let mut runner_files = String::new();
    if let Ok(entries) = std::fs::read_dir(&config.local.runs_dir) {
        for entry in entries.flatten() {
            for file in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                runner_files.push_str(&std::fs::read_to_string(file.path()).unwrap_or_default());
            }
        }
    }
    let outputs = [
        ("the worker's log", log.as_str()),
        ("what a watcher sees", &watched.join("\n")),
        ("ducks status --json", &status_json),
        ("ducks status", &status_text),
        ("the runner's files", &runner_files),
    ];
    for (what, text) in outputs {
        assert!(!text.contains(TOKEN), "{what} shows the token:\n{text}");
    }
    // And the bot's own stream does carry it, for the bot to edit its reply.
    let stream = stream_entries(&world.queue, world.queue.keys().events("discord")).await;
    assert!(
        stream
            .iter()
            .any(|(_, fields)| fields["event"].contains(TOKEN))
    );
}

/// With the API's address and a signing key configured, links are permanent: `<base>/i/<slug>`,
/// whose slug carries the object key under the signature the API checks.
#[tokio::test]
async fn with_a_link_base_url_images_get_permanent_signed_links() {
    let world = World::new().await;
    let links = LinkConfig {
        signing_key: Secret::new("shared by the worker and the API"),
        base_url: "https://ducks.example.com".into(),
        ..LinkConfig::default()
    };
    let queue = queue_on(&world.redis, worker_queue_config()).await;
    let config = WorkerConfig {
        name: "w".into(),
        ..world.worker_config()
    };
    let worker = RunningWorker::start(queue, &world.s3_config, config, &links, "images")
        .await
        .unwrap();
    let id = world.submit(quick("a duck to keep")).await;
    let events = events_until_end(&world.queue, &id).await;
    let EventKind::Succeeded { images, .. } = terminal(&events) else {
        panic!("{events:?}");
    };
    let slug = images[0]
        .url
        .strip_prefix("https://ducks.example.com/i/")
        .unwrap_or_else(|| panic!("not a permanent link: {}", images[0].url));
    assert_eq!(
        ducks_contract::links::key_of(slug, &links.signing_key).unwrap(),
        images[0].key
    );
    assert!(
        images[0].url.len() < 200,
        "short enough for chat: {}",
        images[0].url
    );
    worker.stop().await.unwrap();

    // Without the key, a worker refuses to start instead of making links nobody can check.
    let unsigned = LinkConfig {
        signing_key: Secret::default(),
        ..links
    };
    let queue = queue_on(&world.redis, worker_queue_config()).await;
    let refused = RunningWorker::start(
        queue,
        &world.s3_config,
        world.worker_config(),
        &unsigned,
        "images",
    )
    .await
    .err()
    .expect("refused");
    assert!(
        refused.to_string().contains("links.signing_key"),
        "{refused}"
    );
}
