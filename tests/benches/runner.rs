//! The runner benchmark: tiny-sd on the CPU, seconds per image at 64x64 and 256x256 for 1, 4 and
//! 20 steps (the pipeline in process), and `ducks runner` from process start to its first
//! denoising step with a cold and a warm weight cache (the release binary against the embedded
//! S3 server). Run with `make bench-runner`; figures go to BENCHMARKS.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use ducks_contract::{GenerateParams, JobId, RunnerJob, wire};
use ducks_models::{S3Config, Storage};
use ducks_runner::diffusion::{self, Family, ModelFiles, Pipeline};
use ducks_tests::{BUCKET, S3Server, ducks_binary, s3_env, tiny_bucket};

const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds to generate one image, median of [`ROUNDS`].
fn seconds_per_image(pipeline: &Pipeline, side: u32, steps: u32) -> f64 {
    let times = (0..ROUNDS)
        .map(|round| {
            let mut params = diffusion::default_params(Family::Tiny, "a rubber duck in space");
            (params.width, params.height, params.steps, params.seed) =
                (side, side, steps, round as u64);
            let started = Instant::now();
            pipeline
                .generate(&params, &mut |_, _| {})
                .expect("tiny-sd generates");
            started.elapsed().as_secs_f64()
        })
        .collect();
    median(times)
}

/// Milliseconds from starting `ducks runner` to its first progress line.
fn start_to_first_step(s3: &S3Config, cache: &std::path::Path) -> f64 {
    let job = RunnerJob {
        job_id: JobId::generate(),
        model: "tiny-sd".into(),
        params: GenerateParams {
            width: 64,
            height: 64,
            steps: 2,
            ..diffusion::default_params(Family::Tiny, "a rubber duck in space")
        },
    };
    let started = Instant::now();
    let mut child = Command::new(ducks_binary())
        .arg("runner")
        .env("DUCKS_RUNNER__JOB", wire::encode(&job))
        .env("DUCKS_RUNNER__CACHE_DIR", cache)
        .env(
            "DUCKS_RUNNER__TERMINATION_LOG",
            cache.with_extension("termination"),
        )
        .envs(s3_env(s3))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the release ducks binary (make bench-runner builds it)");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first_step = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("runner stdout");
        if first_step.is_none() && line.contains("\"event\":\"progress\"") {
            first_step = Some(started.elapsed());
        }
    }
    assert!(
        child.wait().expect("runner exits").success(),
        "the runner failed"
    );
    first_step.expect("a progress line").as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let scratch = tempfile::tempdir().expect("scratch folder");
    let model_dir = scratch.path().join("tiny-sd");
    let files: ModelFiles = diffusion::create_tiny(&model_dir)
        .expect("create tiny-sd")
        .into_iter()
        .collect();
    let pipeline =
        Pipeline::load(Family::Tiny, &files, &diffusion::device()).expect("load tiny-sd");

    println!("| tiny-sd on CPU | 1 step | 4 steps | 20 steps |");
    println!("|---|---:|---:|---:|");
    for side in [64, 256] {
        let cells: Vec<String> = [1, 4, 20]
            .into_iter()
            .map(|steps| format!("{:.3} s", seconds_per_image(&pipeline, side, steps)))
            .collect();
        println!(
            "| {side}x{side}, seconds per image | {} |",
            cells.join(" | ")
        );
    }

    // The bucket and tiny-sd in it, seeded as `ducks dev` seeds it.
    let (_server, s3, _storage): (S3Server, S3Config, Storage) = tiny_bucket().await;
    assert_eq!(s3.bucket, BUCKET);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let cache = scratch.path().join(format!("cache-{round}"));
        let s3 = s3.clone();
        let (c, w) = tokio::task::spawn_blocking(move || {
            (
                start_to_first_step(&s3, &cache),
                start_to_first_step(&s3, &cache),
            )
        })
        .await
        .expect("runner rounds");
        cold.push(c);
        warm.push(w);
    }
    println!();
    println!("| ducks runner, start to first step (64x64) | cold cache | warm cache |");
    println!("|---|---:|---:|");
    println!(
        "| milliseconds, median of {ROUNDS} | {:.0} | {:.0} |",
        median(cold),
        median(warm)
    );
}
