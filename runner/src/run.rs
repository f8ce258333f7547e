//! One run of `ducks runner`: the job from the environment, the model's weights from S3 through
//! the node cache, the images generated, uploaded and reported. Every failure ends as a
//! [`RunError`] whose exit code tells the worker whether a retry can help, whose message is for
//! the person who asked, and whose detail is for the operator.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use ducks_contract::{
    Image, Line, RunError, RunFailure, RunPhase, RunResult, RunTimings, RunnerJob, wire,
};
use ducks_models::bucket::{self, LoadError};
use ducks_models::{Family, FileRole, S3Config, Storage, StorageError};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::cache::{CacheError, WeightCache};
use crate::diffusion::{self, DiffusionError, ModelFiles, Pipeline};
use crate::image::{Parameters, encode_png, image_key};

/// The runner's own settings (`DUCKS_RUNNER__*`); S3 comes from `DUCKS_S3__*`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// The job: a `RunnerJob` as JSON (docs/runner-contract.md).
    pub job: String,
    /// The node-local weight cache (a volume shared by the runners of one node).
    pub cache_dir: PathBuf,
    /// Images go to `<output_prefix>/<yyyy>/<mm>/<dd>/<job-id>/<run-ms>-<n>.png`.
    pub output_prefix: String,
    /// Where the final result goes for Kubernetes to read (`terminationMessagePath`).
    pub termination_log: PathBuf,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            job: String::new(),
            cache_dir: PathBuf::from(".ducks/cache"),
            output_prefix: "images".into(),
            termination_log: PathBuf::from("/dev/termination-log"),
        }
    }
}

/// Runs the job, writes every line to `out` and the final line to the termination log, and
/// returns the exit code.
pub async fn run(config: &RunnerConfig, s3: &S3Config, out: &mut (dyn Write + Send)) -> u8 {
    let last = match run_job(config, s3, out).await {
        Ok(result) => Line::Result(result),
        Err(error) => Line::Error(error),
    };
    emit(out, &last);
    // The termination message is best effort: the same line is on stdout, which the worker also
    // reads (Kubernetes falls back to the log tail).
    if let Err(e) = std::fs::write(&config.termination_log, last.to_json()) {
        tracing::warn!(message = "Could not write the termination message.", path = %config.termination_log.display(), error = %e);
    }
    match last {
        Line::Error(error) => error.exit_code,
        _ => 0,
    }
}

fn emit(out: &mut (dyn Write + Send), line: &Line) {
    // A closed stdout must not stop the run: the termination log still gets the result.
    let _ = writeln!(out, "{}", line.to_json()).and_then(|()| out.flush());
}

/// A failure with the person's message and the operator's detail.
fn fail(failure: RunFailure, message: impl Into<String>, detail: impl Into<String>) -> RunError {
    RunError {
        failure,
        exit_code: failure.exit_code(),
        message: message.into(),
        detail: detail.into(),
    }
}

/// Announces a phase, and reports it with its time when it ends.
struct PhaseClock {
    phase: RunPhase,
    started: Instant,
}

impl PhaseClock {
    fn start(out: &mut (dyn Write + Send), phase: RunPhase) -> Self {
        emit(out, &Line::PhaseStarted { phase });
        Self {
            phase,
            started: Instant::now(),
        }
    }

    fn end(self, out: &mut (dyn Write + Send), detail: Option<String>) -> u64 {
        let ms = elapsed_ms(self.started);
        emit(
            out,
            &Line::PhaseEnded {
                phase: self.phase,
                ms,
                detail,
            },
        );
        ms
    }
}

async fn run_job(
    config: &RunnerConfig,
    s3: &S3Config,
    out: &mut (dyn Write + Send),
) -> Result<RunResult, RunError> {
    let started = Instant::now();
    let job: RunnerJob = wire::decode("runner job", &config.job).map_err(|e| {
        fail(
            RunFailure::BadRequest,
            "The image generator was given a job it cannot read.",
            e.to_string(),
        )
    })?;
    let RunnerJob {
        job_id,
        model: model_id,
        params,
    } = job;

    let download = PhaseClock::start(out, RunPhase::Download);
    let storage = Storage::connect(s3).await;
    let manifest = bucket::load(&storage, &model_id)
        .await
        .map_err(|e| match e {
            LoadError::UnknownModel(_) => fail(RunFailure::BadRequest, e.to_string(), ""),
            LoadError::Malformed(_) => fail(
                RunFailure::WeightsCorrupt,
                format!(
                    "The model `{model_id}` is misconfigured; an operator must fix its manifest."
                ),
                e.to_string(),
            ),
            LoadError::Storage(e) => storage_failure(&e),
        })?;
    manifest
        .info()
        .check_params(&params)
        .map_err(|e| fail(RunFailure::BadRequest, e.to_string(), ""))?;
    let family: Family = manifest.family.parse().map_err(|e| {
        fail(
            RunFailure::WeightsCorrupt,
            format!("The model `{model_id}` is misconfigured; an operator must fix its manifest."),
            format!("{e}"),
        )
    })?;
    let cache = WeightCache::new(&config.cache_dir);
    let mut files = ModelFiles::default();
    let mut files_downloaded = 0;
    for file in &manifest.files {
        let key = manifest.key_of(file);
        let role: FileRole = file.role.parse().map_err(|e| {
            fail(
                RunFailure::WeightsCorrupt,
                format!(
                    "The model `{model_id}` is misconfigured; an operator must fix its manifest."
                ),
                format!("{e}"),
            )
        })?;
        let cached = cache
            .fetch(&storage, &key, file)
            .await
            .map_err(|e| match e {
                CacheError::Missing { .. } | CacheError::Corrupt { .. } => {
                    fail(RunFailure::WeightsCorrupt, DAMAGED_WEIGHTS, e.to_string())
                }
                CacheError::Storage(e) => storage_failure(&e),
                CacheError::Local { .. } => fail(
                    RunFailure::Crashed,
                    "The image generator could not use its weight cache.",
                    e.to_string(),
                ),
            })?;
        files_downloaded += u32::from(cached.downloaded);
        files.paths.insert(role, cached.path);
    }
    let download_ms = download.end(
        out,
        Some(format!(
            "{} files, {files_downloaded} from S3",
            manifest.files.len()
        )),
    );

    let load = PhaseClock::start(out, RunPhase::Load);
    let pipeline =
        tokio::task::spawn_blocking(move || Pipeline::load(family, &files, &diffusion::device()))
            .await
            .map_err(|e| fail(RunFailure::Crashed, CRASHED, e.to_string()))?
            .map_err(diffusion_failure)?;
    // The pipeline's own scheduler: tiny-sd's config may name another than its family's.
    let sampler = pipeline.scheduler_name();
    let load_ms = load.end(out, None);

    let generate = PhaseClock::start(out, RunPhase::Generate);
    let (steps_tx, mut steps_rx) = tokio::sync::mpsc::unbounded_channel();
    let generation = {
        let params = params.clone();
        tokio::task::spawn_blocking(move || {
            pipeline.generate(&params, &mut |step, total| {
                let _ = steps_tx.send(Line::Progress { step, total });
            })
        })
    };
    while let Some(progress) = steps_rx.recv().await {
        emit(out, &progress);
    }
    let images = generation
        .await
        .map_err(|e| fail(RunFailure::Crashed, CRASHED, e.to_string()))?
        .map_err(diffusion_failure)?;
    let generate_ms = generate.end(out, None);

    let upload = PhaseClock::start(out, RunPhase::Upload);
    let now = SystemTime::now();
    let mut uploaded = Vec::with_capacity(images.len());
    for (n, picture) in images.iter().enumerate() {
        // The images of a job are one batch drawn from one seed: the seed and the count together
        // reproduce image n.
        let seed = params.seed;
        let parameters = Parameters {
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            steps: params.steps,
            sampler: sampler.to_owned(),
            guidance: params.guidance,
            seed,
            width: picture.width,
            height: picture.height,
            model: model_id.clone(),
        };
        let png = encode_png(picture.width, picture.height, &picture.pixels, &parameters).map_err(
            |e| {
                fail(
                    RunFailure::Crashed,
                    CRASHED,
                    format!("encoding the PNG: {e}"),
                )
            },
        )?;
        let key = image_key(&config.output_prefix, now, job_id.as_str(), n);
        let bytes = png.len() as u64;
        storage
            .put(&key, png, "image/png", parameters.metadata())
            .await
            .map_err(|e| storage_failure(&e))?;
        info!(message = "Uploaded an image.", key, bytes);
        uploaded.push(Image {
            key,
            width: picture.width,
            height: picture.height,
            seed,
            bytes,
        });
    }
    let upload_ms = upload.end(out, None);
    Ok(RunResult {
        job_id: job_id.to_string(),
        model: model_id,
        images: uploaded,
        timings: RunTimings {
            download_ms,
            load_ms,
            generate_ms,
            upload_ms,
            total_ms: elapsed_ms(started),
            files_downloaded,
        },
    })
}

const CRASHED: &str = "The image generator crashed.";
const DAMAGED_WEIGHTS: &str =
    "The model's files are missing or damaged; an operator must import it again.";

fn storage_failure(error: &StorageError) -> RunError {
    match error {
        StorageError::Local { .. } => fail(RunFailure::Crashed, CRASHED, error.to_string()),
        _ => fail(
            RunFailure::StorageUnavailable,
            "Image storage is unavailable right now.",
            error.to_string(),
        ),
    }
}

fn diffusion_failure(error: DiffusionError) -> RunError {
    let detail = error.to_string();
    match &error {
        DiffusionError::MissingWeights { .. } | DiffusionError::CorruptWeights { .. } => {
            fail(RunFailure::WeightsCorrupt, DAMAGED_WEIGHTS, detail)
        }
        DiffusionError::OutOfMemory(_) => fail(
            RunFailure::OutOfMemory,
            "The image generator ran out of memory: try a smaller size or fewer images.",
            detail,
        ),
        // The pipeline's own checks of the parameters: worded for the person already.
        DiffusionError::BadParams(_) => fail(RunFailure::BadRequest, detail, ""),
        DiffusionError::Other(_) => fail(RunFailure::Crashed, CRASHED, detail),
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}
