//! The real model's cost on the CPU: the release `ducks runner` drawing with sd-turbo's shapes
//! and random weights (`ducks_runner::diffusion::create_real_shapes`), at 512x512 beside 256x256,
//! with tiny-sd at 64x64 as the floor of the process itself. Each configuration runs 1 step (the
//! family's default request: guidance 0) and 4 steps, so the time per UNet step stands apart from
//! the fixed costs, and in a child process of its own, so each peak RSS is its own. Run with
//! `make bench-cpu`; figures go to BENCHMARKS.md.
//!
//! The weights, about 2.6 GB, are written once to `target/bench-weights/sd-turbo/` and reused;
//! each run imports them into the embedded S3 server and fills a fresh weight cache (5.2 GB more
//! under the temporary folder, removed at the end).
//!
//! Peak RSS comes from `getrusage(RUSAGE_CHILDREN)` in a measuring child of this benchmark (this
//! binary again, with [`MEASURE`] set) whose only child is the runner: the kernel's own high-water
//! mark, which polling `/proc` could miss in the last milliseconds before exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ducks_contract::{GenerateParams, JobId, RunnerJob, wire};
use ducks_models::import::{ImportSpec, import_folder};
use ducks_models::{S3Config, Storage};
use ducks_runner::diffusion::{self, Family};
use ducks_tests::{S3Server, ducks_binary, s3_env, tiny_bucket};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use serde_json::Value;

/// Set in the measuring child: run `ducks runner` and report its peak RSS and CPU time.
const MEASURE: &str = "BENCH_CPU_MEASURE_RUNNER";

/// Rounds of every configuration; `BENCH_CPU_ROUNDS` overrides it (each round takes minutes).
const ROUNDS: u64 = 3;
const PROMPT: &str = "a rubber duck flying over the clouds";
const MODEL_ID: &str = "sd-turbo";

/// What one `ducks runner` process did, from its stdout lines as they arrived.
#[derive(Clone, Debug, Default)]
struct Run {
    load_s: f64,
    /// From the `generate` phase's start to the first progress line: text encoding and step 1.
    to_first_step_s: f64,
    /// Between consecutive progress lines.
    step_gaps_s: Vec<f64>,
    /// From the last progress line to the end of `generate`: the VAE decode.
    decode_s: f64,
    generate_s: f64,
    download_s: f64,
    /// Process start to exit, as whoever launched it waits.
    wall_s: f64,
    peak_rss_gib: f64,
    cpu_s: f64,
}

/// The measuring child: runs the runner with this process's environment and stdio, then prints
/// one more line with the runner's peak RSS and CPU time, and exits as the runner did.
fn measure_runner() -> ! {
    let status = Command::new(ducks_binary())
        .arg("runner")
        .env_remove(MEASURE)
        .status()
        .expect("start the release ducks binary (make bench-cpu builds it)");
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let seconds = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "event": "bench_usage",
            // Linux reports ru_maxrss in KiB.
            "max_rss_kib": usage.max_rss(),
            "cpu_s": seconds(usage.user_time()) + seconds(usage.system_time()),
        })
    );
    std::process::exit(status.code().unwrap_or(1));
}

/// Runs `ducks runner` once for `model` at `side`x`side`, `steps` steps, guidance 0.
fn run_once(s3: &S3Config, scratch: &Path, model: &str, side: u32, steps: u32, seed: u64) -> Run {
    let job = RunnerJob {
        job_id: JobId::generate(),
        model: model.into(),
        params: GenerateParams {
            width: side,
            height: side,
            steps,
            guidance: 0.0,
            seed,
            ..diffusion::default_params(Family::SdTurbo, PROMPT)
        },
    };
    let cache = scratch.join("cache");
    let log = scratch.join("runner.log");
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("this benchmark's path"))
        .env(MEASURE, "1")
        .env("DUCKS_RUNNER__JOB", wire::encode(&job))
        .env("DUCKS_RUNNER__CACHE_DIR", &cache)
        .env("DUCKS_RUNNER__TERMINATION_LOG", scratch.join("termination"))
        .envs(s3_env(s3))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("runner log"))
        .spawn()
        .expect("start the measuring child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut run = Run::default();
    let (mut generate_started, mut last_step) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let now = started.elapsed().as_secs_f64();
        let line = line.expect("runner stdout");
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let ms = || value["ms"].as_f64().unwrap_or(0.0) / 1000.0;
        match (value["event"].as_str(), value["phase"].as_str()) {
            (Some("phase_ended"), Some("download")) => run.download_s = ms(),
            (Some("phase_ended"), Some("load")) => run.load_s = ms(),
            (Some("phase_started"), Some("generate")) => generate_started = Some(now),
            (Some("progress"), _) => {
                match last_step {
                    None => run.to_first_step_s = now - generate_started.unwrap_or(now),
                    Some(last) => run.step_gaps_s.push(now - last),
                }
                last_step = Some(now);
            }
            (Some("phase_ended"), Some("generate")) => {
                run.generate_s = ms();
                run.decode_s = now - last_step.unwrap_or(now);
            }
            (Some("bench_usage"), _) => {
                run.peak_rss_gib = value["max_rss_kib"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
                run.cpu_s = value["cpu_s"].as_f64().unwrap_or(0.0);
            }
            _ => {}
        }
    }
    let status = child.wait().expect("the measuring child exits");
    run.wall_s = started.elapsed().as_secs_f64();
    if !status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "{model} {side}x{side} {steps} steps: the runner failed ({status}):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    run
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n.is_multiple_of(2) {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    } else {
        values[n / 2]
    }
}

/// sd-turbo's weights at real shapes, written once under the target folder and reused.
fn weights(target: &Path) -> PathBuf {
    let dir = target.join("bench-weights").join(MODEL_ID);
    if dir.is_dir() {
        println!("weights: reusing {}", dir.display());
        return dir;
    }
    // Written beside and renamed into place, so an interrupted write is never reused.
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let started = Instant::now();
    diffusion::create_real_shapes(Family::SdTurbo, &partial).expect("write sd-turbo's weights");
    std::fs::rename(&partial, &dir).expect("move the weights into place");
    println!(
        "weights: wrote {} in {:.0} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    dir
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        folder_bytes(&path)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The machine, for the record: CPU model, cores, memory, and the load average now.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, name)| name.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / (1 << 20) as f64;
    format!(
        "{model}, {cores} cores, {memory_gib:.1} GiB; load average {}",
        load_average()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One column of the table: a model at a size, run with 1 and 4 steps.
struct Column {
    model: &'static str,
    side: u32,
    one: Vec<Run>,
    four: Vec<Run>,
}

impl Column {
    fn of(&self, four: bool, f: impl Fn(&Run) -> f64) -> f64 {
        let runs = if four { &self.four } else { &self.one };
        median(runs.iter().map(f).collect())
    }

    /// (4 steps − 1 step) / 3 of the `generate` phase, per round.
    fn step_s(&self) -> f64 {
        median(
            self.one
                .iter()
                .zip(&self.four)
                .map(|(one, four)| (four.generate_s - one.generate_s) / 3.0)
                .collect(),
        )
    }

    fn gap_s(&self) -> f64 {
        median(
            self.four
                .iter()
                .flat_map(|r| r.step_gaps_s.iter().copied())
                .collect(),
        )
    }

    /// The wait for the first step, less one step: text encoding (and the starting noise).
    fn encode_s(&self) -> f64 {
        self.of(false, |r| r.to_first_step_s) - self.step_s()
    }
}

fn main() {
    if std::env::var_os(MEASURE).is_some() {
        measure_runner();
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rounds = std::env::var("BENCH_CPU_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    println!("machine: {}", machine());
    let target = ducks_binary()
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/")
        .to_owned();
    let weights = weights(&target);
    println!(
        "weights: {:.2} GB on disk",
        folder_bytes(&weights) as f64 / 1e9
    );

    let scratch = tempfile::tempdir().expect("scratch folder");
    // The bucket with tiny-sd in it, as `ducks dev` seeds it, and sd-turbo imported beside it.
    let (_server, s3, _storage): (S3Server, S3Config, Storage) = runtime.block_on(async {
        let (server, s3, storage) = tiny_bucket().await;
        let started = Instant::now();
        let spec = ImportSpec {
            id: MODEL_ID.into(),
            family: Family::SdTurbo,
            name: Some("sd-turbo (random weights)".into()),
            description: Some("sd-turbo's shapes with random weights, for the benchmark".into()),
            tags: Vec::new(),
        };
        import_folder(&storage, &weights, spec)
            .await
            .expect("import sd-turbo into the embedded S3");
        println!(
            "import: {:.0} s into the embedded S3",
            started.elapsed().as_secs_f64()
        );
        (server, s3, storage)
    });

    // Fills the weight cache, so every measured run reads only its manifest from S3, as a
    // second job on the same node does.
    for model in [MODEL_ID, "tiny-sd"] {
        let side = if model == MODEL_ID { 256 } else { 64 };
        let warm_up = run_once(&s3, scratch.path(), model, side, 1, 0);
        println!(
            "{model}: first run, empty cache: download {:.1} s, whole run {:.1} s",
            warm_up.download_s, warm_up.wall_s
        );
    }

    let mut columns =
        [(MODEL_ID, 256), (MODEL_ID, 512), ("tiny-sd", 64)].map(|(model, side)| Column {
            model,
            side,
            one: Vec::new(),
            four: Vec::new(),
        });
    for round in 0..rounds {
        for column in &mut columns {
            for steps in [1, 4] {
                let run = run_once(&s3, scratch.path(), column.model, column.side, steps, round);
                eprintln!(
                    "round {round}: {} {}x{} {steps} steps: {:.1} s, peak {:.2} GiB, load average {}",
                    column.model,
                    column.side,
                    column.side,
                    run.wall_s,
                    run.peak_rss_gib,
                    load_average()
                );
                if steps == 1 {
                    column.one.push(run);
                } else {
                    column.four.push(run);
                }
            }
        }
    }

    let [small, large, tiny] = &columns;
    let row = |name: &str, f: &dyn Fn(&Column) -> f64, unit: &str, precision: usize| {
        let (a, b, t) = (f(small), f(large), f(tiny));
        println!(
            "| {name} | {a:.precision$} {unit} | {b:.precision$} {unit} | {:.1}× | {t:.precision$} {unit} |",
            b / a
        );
    };
    println!();
    println!("machine after: load average {}", load_average());
    println!();
    println!(
        "| `ducks runner` on the CPU, median of {rounds} | sd-turbo 256x256 | sd-turbo 512x512 | 512 / 256 | tiny-sd 64x64 |"
    );
    println!("|---|---:|---:|---:|---:|");
    row(
        "load the weights (phase `load`)",
        &|c| c.of(false, |r| r.load_s),
        "s",
        2,
    );
    row(
        "text encoding (first step's wait less one step)",
        &|c| c.encode_s(),
        "s",
        2,
    );
    row(
        "one UNet step ((4 steps − 1 step) / 3)",
        &|c| c.step_s(),
        "s",
        2,
    );
    row(
        "one UNet step (between progress lines)",
        &|c| c.gap_s(),
        "s",
        2,
    );
    row(
        "VAE decode (last step to the end of `generate`)",
        &|c| c.of(false, |r| r.decode_s),
        "s",
        2,
    );
    row(
        "1 step (sd-turbo's default): process start to exit",
        &|c| c.of(false, |r| r.wall_s),
        "s",
        1,
    );
    row(
        "4 steps: process start to exit",
        &|c| c.of(true, |r| r.wall_s),
        "s",
        1,
    );
    row(
        "peak RSS, 1 step",
        &|c| c.of(false, |r| r.peak_rss_gib),
        "GiB",
        2,
    );
    row(
        "peak RSS, 4 steps",
        &|c| c.of(true, |r| r.peak_rss_gib),
        "GiB",
        2,
    );
    row(
        "CPU time, 1 step (user + system)",
        &|c| c.of(false, |r| r.cpu_s),
        "s",
        1,
    );
    row(
        "CPU use, 4 steps (CPU time / wall)",
        &|c| c.of(true, |r| r.cpu_s / r.wall_s),
        "cores",
        2,
    );
}
