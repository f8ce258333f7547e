//! The real `ducks runner` binary against a real S3-protocol server, with tiny-sd.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use ducks_contract::{
    GenerateParams, JobId, Line, RunFailure, RunPhase, RunResult, RunnerJob, wire,
};
use ducks_models::bucket;
use ducks_models::{S3Config, Storage};
use ducks_tests::{S3Server, ducks_binary, s3_env};

use crate::support::{BUCKET, tiny_bucket};

/// An S3 server with the bucket and tiny-sd in it, and a storage client for it.
struct World {
    s3: S3Server,
    storage: Storage,
    config: S3Config,
    /// Cache folders and termination logs live here.
    scratch: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let (s3, config, storage) = tiny_bucket().await;
        Self {
            s3,
            storage,
            config,
            scratch,
        }
    }

    fn cache(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Starts `ducks runner` for `job` with its cache in `cache`.
    fn command(&self, job: &RunnerJob, cache: &Path) -> (Command, PathBuf) {
        let termination = cache.with_extension("termination");
        let mut cmd = Command::new(ducks_binary());
        cmd.arg("runner")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DUCKS_RUNNER__JOB", wire::encode(job))
            .env("DUCKS_RUNNER__CACHE_DIR", cache)
            .env("DUCKS_RUNNER__TERMINATION_LOG", &termination)
            .envs(s3_env(&self.config))
            .current_dir(self.scratch.path());
        (cmd, termination)
    }

    /// Runs the runner to its end: exit code, parsed stdout lines, termination message.
    async fn run(&self, job: &RunnerJob, cache: &Path) -> Run {
        let (mut cmd, termination) = self.command(job, cache);
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("start ducks runner");
        Run::of(output, termination)
    }

    /// GETs of weight files (the manifest excluded).
    fn weight_downloads(&self) -> usize {
        self.s3.requests("GET", "models/tiny-sd/")
            - self.s3.requests("GET", "models/tiny-sd/model.toml")
    }
}

struct Run {
    code: Option<i32>,
    lines: Vec<Line>,
    termination: String,
    stderr: String,
}

impl Run {
    /// A finished runner's exit, stdout lines and termination message.
    fn of(output: std::process::Output, termination: PathBuf) -> Self {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines: Vec<Line> = stdout
            .lines()
            .map(|l| {
                Line::parse(l).unwrap_or_else(|| {
                    panic!(
                        "not a runner line: {l}\nstderr: {}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                })
            })
            .collect();
        Run {
            code: output.status.code(),
            lines,
            termination: std::fs::read_to_string(termination).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn result(&self) -> &RunResult {
        match self.lines.last() {
            Some(Line::Result(result)) => result,
            other => panic!(
                "no result (exit {:?}): {other:?}\nstderr: {}",
                self.code, self.stderr
            ),
        }
    }

    /// The failure, the person's message and the operator's detail.
    fn error(&self) -> (RunFailure, &str, &str) {
        match self.lines.last() {
            Some(Line::Error(e)) => (e.failure, e.message.as_str(), e.detail.as_str()),
            other => panic!("no error line (exit {:?}): {other:?}", self.code),
        }
    }
}

fn job(seed: u64, size: u32) -> RunnerJob {
    RunnerJob {
        job_id: JobId::generate(),
        model: "tiny-sd".into(),
        params: GenerateParams {
            prompt: "a rubber duck in space".into(),
            negative_prompt: String::new(),
            width: size,
            height: size,
            steps: 2,
            guidance: 7.5,
            seed,
            count: 1,
        },
    }
}

async fn object(
    world: &World,
    key: &str,
) -> (Vec<u8>, aws_sdk_s3::operation::get_object::GetObjectOutput) {
    let out = world
        .s3
        .client()
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("the image is in S3");
    let mut out = out;
    let body = std::mem::replace(
        &mut out.body,
        aws_sdk_s3::primitives::ByteStream::from_static(b""),
    );
    (body.collect().await.unwrap().into_bytes().to_vec(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_sd_goes_from_weights_in_s3_to_a_png_in_s3() {
    let world = World::new().await;
    let job = job(42, 64);
    let run = world.run(&job, &world.cache("cache")).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let result = run.result();
    assert_eq!(
        run.termination,
        Line::Result(result.clone()).to_json(),
        "the termination message holds the result"
    );
    let progress: Vec<(u32, u32)> = run
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Progress { step, total } => Some((*step, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![(1, 2), (2, 2)]);
    // Each phase is announced as it starts (so "loading weights" shows while it happens) and
    // reported with its time when it ends.
    let phases: Vec<String> = run
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::PhaseStarted { phase } => Some(format!("start {phase:?}")),
            Line::PhaseEnded { phase, .. } => Some(format!("end {phase:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        phases,
        [
            "start Download",
            "end Download",
            "start Load",
            "end Load",
            "start Generate",
            "end Generate",
            "start Upload",
            "end Upload"
        ]
    );
    let generate_started = run
        .lines
        .iter()
        .position(|l| {
            *l == Line::PhaseStarted {
                phase: RunPhase::Generate,
            }
        })
        .unwrap();
    let first_step = run
        .lines
        .iter()
        .position(|l| matches!(l, Line::Progress { .. }))
        .unwrap();
    assert!(generate_started < first_step, "{:?}", run.lines);

    let image = &result.images[0];
    assert_eq!((image.width, image.height, image.seed), (64, 64, 42));
    let id = &job.job_id;
    let (folder, file) = image.key.rsplit_once('/').unwrap();
    assert!(
        image.key.starts_with("images/") && folder.ends_with(&format!("/{id}")),
        "{}",
        image.key
    );
    let run_ms = file.strip_suffix("-0.png").expect("<run-ms>-<n>.png");
    assert!(run_ms.parse::<u64>().is_ok(), "{}", image.key);
    let (bytes, head) = object(&world, &image.key).await;
    assert_eq!(head.content_type(), Some("image/png"));
    assert_eq!(head.metadata().unwrap()["seed"], "42");
    let reader = png::Decoder::new(std::io::Cursor::new(&bytes))
        .read_info()
        .unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (64, 64));
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .expect("parameters chunk");
    assert!(
        text.text.starts_with("a rubber duck in space\nSteps: 2, "),
        "{}",
        text.text
    );
    assert!(
        text.text.contains("Seed: 42, Size: 64x64, Model: tiny-sd"),
        "{}",
        text.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    let world = World::new().await;
    let cache = world.cache("cache");
    let mut images = Vec::new();
    for seed in [7, 7, 8] {
        let run = world.run(&job(seed, 64), &cache).await;
        images.push(object(&world, &run.result().images[0].key).await.0);
    }
    assert_eq!(images[0], images[1]);
    assert_ne!(images[0], images[2]);
}

/// Two runners start together on one cache. The first weight file's download is held at the S3
/// gate while the other runner is seen waiting on that file's lock (a blocked `flock` in
/// /proc/locks), so the lock was contended, and still every file is read from S3 once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_started_together_download_each_file_once_and_a_warm_cache_reads_none() {
    let world = World::new().await;
    let manifest = bucket::load(&world.storage, "tiny-sd").await.unwrap();
    let first = manifest.key_of(&manifest.files[0]);
    world.s3.reset_counts();
    let cache = world.cache("shared");
    let gate = world.s3.gate("GET", &first);
    let (mut a, a_log) = world.command(&job(1, 64), &cache);
    let (mut b, b_log) = world.command(&job(2, 64), &cache);
    let (a, b) = (
        a.output_piped().spawn().unwrap(),
        b.output_piped().spawn().unwrap(),
    );
    // One runner holds the file's lock while its download waits at the gate ...
    gate.wait_held(1, Duration::from_secs(60)).await;
    // ... and the other waits for that lock.
    let lock = cache
        .join("locks")
        .join(format!("{}.lock", manifest.files[0].sha256));
    wait_for_blocked_flock(&lock, Duration::from_secs(60)).await;
    assert_eq!(gate.held(), 1, "only the lock holder asks S3 for the file");
    gate.open();
    let (a, b) = tokio::task::spawn_blocking(move || {
        (a.wait_with_output().unwrap(), b.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    let (a, b) = (Run::of(a, a_log), Run::of(b, b_log));
    assert_eq!(
        (a.code, b.code),
        (Some(0), Some(0)),
        "{}\n{}",
        a.stderr,
        b.stderr
    );
    assert_eq!(
        world.weight_downloads(),
        manifest.files.len(),
        "each file downloaded once by two runners together"
    );
    let downloaded = a.result().timings.files_downloaded + b.result().timings.files_downloaded;
    assert_eq!(downloaded as usize, manifest.files.len());

    world.s3.reset_counts();
    let warm = world.run(&job(3, 64), &cache).await;
    assert_eq!(warm.result().timings.files_downloaded, 0);
    assert_eq!(
        world.weight_downloads(),
        0,
        "a second run reads no weights from S3"
    );
}

trait Piped {
    fn output_piped(&mut self) -> &mut Command;
}

impl Piped for Command {
    /// stdout and stderr captured, as `Command::output` would, for a child spawned now.
    fn output_piped(&mut self) -> &mut Command {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
    }
}

/// Waits until some process is blocked waiting for a `flock` on `path`: Linux lists such a
/// waiter in /proc/locks as a line with `->` naming the file's device and inode.
async fn wait_for_blocked_flock(path: &Path, limit: Duration) {
    use std::os::unix::fs::MetadataExt;
    let started = tokio::time::Instant::now();
    loop {
        if let Ok(meta) = std::fs::metadata(path) {
            let inode = format!(":{}", meta.ino());
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            let blocked = locks.lines().any(|line| {
                line.contains("->")
                    && line.contains("FLOCK")
                    && line
                        .split_whitespace()
                        .any(|field| field.ends_with(&inode) && field.matches(':').count() == 2)
            });
            if blocked {
                return;
            }
        }
        assert!(
            started.elapsed() < limit,
            "nobody waited for the lock on {} within {limit:?}:\n{}",
            path.display(),
            std::fs::read_to_string("/proc/locks").unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_file_is_fetched_again() {
    let world = World::new().await;
    let cache = world.cache("cache");
    assert_eq!(world.run(&job(1, 64), &cache).await.code, Some(0));
    let blob = std::fs::read_dir(cache.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .unwrap();
    let size = std::fs::metadata(&blob).unwrap().len() as usize;
    std::fs::write(&blob, vec![0u8; size]).unwrap();
    let run = world.run(&job(1, 64), &cache).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.result().timings.files_downloaded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_in_s3_exits_3_naming_the_file() {
    let world = World::new().await;
    let manifest = bucket::load(&world.storage, "tiny-sd").await.unwrap();
    let file = manifest.files.iter().find(|f| f.role == "unet").unwrap();
    let key = manifest.key_of(file);
    let wrong = vec![1u8; file.size as usize];
    world
        .storage
        .put(&key, wrong, "application/octet-stream", Default::default())
        .await
        .unwrap();
    let run = world.run(&job(1, 64), &world.cache("cache")).await;
    assert_eq!(run.code, Some(3));
    let (failure, message, detail) = run.error();
    assert_eq!(failure, RunFailure::WeightsCorrupt);
    assert_eq!(
        message,
        "The model's files are missing or damaged; an operator must import it again."
    );
    assert!(
        detail.contains(&key),
        "the operator learns which file: {detail}"
    );
    assert!(run.termination.contains("weights_corrupt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_exit_2_and_storage_trouble_exits_5() {
    let mut world = World::new().await;
    let mut unknown = job(1, 64);
    unknown.model = "sd9".into();
    let run = world.run(&unknown, &world.cache("cache")).await;
    assert_eq!(
        (run.code, run.error()),
        (
            Some(2),
            (RunFailure::BadRequest, "There is no model `sd9`.", "")
        )
    );

    let run = world.run(&job(1, 1024), &world.cache("cache")).await;
    assert_eq!(run.code, Some(2));
    assert_eq!(
        run.error().1,
        "1024x1024 is larger than tiny-sd allows (128x128 at most). Try 64x64, 96x64 or 64x96."
    );

    world.s3.stop().await;
    let run = world.run(&job(1, 64), &world.cache("cache")).await;
    assert_eq!(run.code, Some(5), "{}", run.stderr);
    let (failure, message, detail) = run.error();
    assert_eq!(
        (failure, message),
        (
            RunFailure::StorageUnavailable,
            "Image storage is unavailable right now."
        )
    );
    assert!(
        detail.contains("models/tiny-sd/model.toml"),
        "the detail names what could not be read: {detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_manifest_is_refused_naming_the_key() {
    let world = World::new().await;
    let key = "models/tiny-sd/model.toml";
    let mut manifest = bucket::load(&world.storage, "tiny-sd").await.unwrap();
    manifest.defaults.steps = 0;
    let broken = manifest.to_toml().into_bytes();
    world
        .storage
        .put(key, broken, "application/toml", Default::default())
        .await
        .unwrap();
    let run = world.run(&job(1, 64), &world.cache("cache")).await;
    assert_eq!(run.code, Some(3));
    let (_, message, detail) = run.error();
    assert_eq!(
        message,
        "The model `tiny-sd` is misconfigured; an operator must fix its manifest."
    );
    assert!(detail.contains("key `defaults.steps`"), "{detail}");
    let (models, broken) = bucket::list(&world.storage).await.unwrap();
    assert!(models.is_empty());
    assert_eq!(broken.len(), 1, "listed as broken, not half-loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_model_is_listed() {
    let world = World::new().await;
    let (models, broken) = bucket::list(&world.storage).await.unwrap();
    assert!(broken.is_empty());
    assert_eq!(
        models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["tiny-sd"]
    );
    let tiny = &models[0];
    assert_eq!(tiny.family, "tiny-sd");
    assert!(
        tiny.files
            .iter()
            .all(|f| f.sha256.len() == 64 && f.size > 0)
    );
}
