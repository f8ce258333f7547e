//! One run of `ducks runner`: the job from the environment, the model's weights from S3 through
//! the node cache, the images generated, uploaded and reported. Every failure ends as a
//! [`RunError`] whose exit code tells the worker whether a retry can help.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::info;

use ducks_queue::{JobRequest, wire};

use crate::cache::{CacheError, WeightCache};
use crate::catalogue::{self, CatalogueError};
use crate::contract::{Failure, Image, Line, Phase, RunError, RunResult, RunTimings};
use crate::diffusion::{
    self, DiffusionError, Family, FileRole, GenerateParams, ModelFiles, Pipeline,
};
use crate::image::{Parameters, encode_png, image_key};
use crate::manifest::ModelManifest;
use crate::storage::{S3Config, Storage, StorageError};

/// The runner's own settings (`DUCKS_RUNNER__*`); S3 comes from `DUCKS_S3__*`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// The job: the queue's `JobRequest` as JSON (docs/job-contract.md).
    pub job: String,
    /// The model to run; empty means the job's own `model`.
    pub model: String,
    /// The node-local weight cache (a volume shared by the runners of one node).
    pub cache_dir: PathBuf,
    /// Images go to `<output_prefix>/<yyyy>/<mm>/<dd>/<job-id>/<n>.png`.
    pub output_prefix: String,
    /// Where the final result goes for Kubernetes to read (`terminationMessagePath`).
    pub termination_log: PathBuf,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            job: String::new(),
            model: String::new(),
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

fn fail(failure: Failure, message: impl Into<String>) -> RunError {
    RunError {
        failure,
        exit_code: failure.exit_code(),
        message: message.into(),
    }
}

async fn run_job(
    config: &RunnerConfig,
    s3: &S3Config,
    out: &mut (dyn Write + Send),
) -> Result<RunResult, RunError> {
    let started = Instant::now();
    let job: JobRequest = wire::decode("job", &config.job).map_err(|e| {
        fail(
            Failure::BadRequest,
            format!("The job could not be read: {e}"),
        )
    })?;
    job.validate()
        .map_err(|e| fail(Failure::BadRequest, e.to_string()))?;
    let job_id = job
        .id
        .clone()
        .ok_or_else(|| fail(Failure::BadRequest, "The job has no id."))?;
    let model_id = if config.model.is_empty() {
        job.model.clone().unwrap_or_default()
    } else {
        config.model.clone()
    };
    if model_id.is_empty() {
        return Err(fail(Failure::BadRequest, "The job names no model."));
    }

    let phase = Instant::now();
    let storage = Storage::connect(s3).await;
    let manifest = catalogue::load(&storage, &model_id)
        .await
        .map_err(|e| match e {
            CatalogueError::UnknownModel(_) => fail(Failure::BadRequest, e.to_string()),
            CatalogueError::Malformed(_) => fail(Failure::WeightsCorrupt, e.to_string()),
            CatalogueError::Storage(e) => storage_failure(&e),
        })?;
    let params = resolve(&job, &manifest)?;
    let family: Family = manifest
        .family
        .parse()
        .map_err(|e| fail(Failure::WeightsCorrupt, format!("Model {model_id}: {e}")))?;
    let cache = WeightCache::new(&config.cache_dir);
    let mut files = ModelFiles::default();
    let mut files_downloaded = 0;
    for file in &manifest.files {
        let key = manifest.key_of(file);
        let role: FileRole = file
            .role
            .parse()
            .map_err(|e| fail(Failure::WeightsCorrupt, format!("Model {model_id}: {e}")))?;
        let cached = cache
            .fetch(&storage, &key, file)
            .await
            .map_err(|e| match e {
                CacheError::Missing { .. } | CacheError::Corrupt { .. } => {
                    fail(Failure::WeightsCorrupt, e.to_string())
                }
                CacheError::Storage(e) => storage_failure(&e),
                CacheError::Local { .. } => fail(Failure::Crashed, e.to_string()),
            })?;
        files_downloaded += u32::from(cached.downloaded);
        files.paths.insert(role, cached.path);
    }
    let download_ms = elapsed_ms(phase);
    emit(
        out,
        &Line::Phase {
            phase: Phase::Download,
            ms: download_ms,
            detail: Some(format!(
                "{} files, {files_downloaded} from S3",
                manifest.files.len()
            )),
        },
    );

    let phase = Instant::now();
    let pipeline =
        tokio::task::spawn_blocking(move || Pipeline::load(family, &files, &diffusion::device()))
            .await
            .map_err(|e| fail(Failure::Crashed, e.to_string()))?
            .map_err(diffusion_failure)?;
    // The pipeline's own scheduler: tiny-sd's config may name another than its family's.
    let sampler = pipeline.scheduler_name();
    let load_ms = elapsed_ms(phase);
    emit(
        out,
        &Line::Phase {
            phase: Phase::Load,
            ms: load_ms,
            detail: None,
        },
    );

    let phase = Instant::now();
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
        .map_err(|e| fail(Failure::Crashed, e.to_string()))?
        .map_err(diffusion_failure)?;
    let generate_ms = elapsed_ms(phase);
    emit(
        out,
        &Line::Phase {
            phase: Phase::Generate,
            ms: generate_ms,
            detail: None,
        },
    );

    let phase = Instant::now();
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
        let png = encode_png(picture.width, picture.height, &picture.pixels, &parameters)
            .map_err(|e| fail(Failure::Crashed, format!("Encoding the PNG failed: {e}")))?;
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
    let upload_ms = elapsed_ms(phase);
    emit(
        out,
        &Line::Phase {
            phase: Phase::Upload,
            ms: upload_ms,
            detail: None,
        },
    );
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

/// The job's parameters with the model's defaults filled in, checked against the model's limits.
pub fn resolve(job: &JobRequest, manifest: &ModelManifest) -> Result<GenerateParams, RunError> {
    let defaults = &manifest.defaults;
    let limits = &manifest.limits;
    let (width, height) = (
        job.width.unwrap_or(defaults.width),
        job.height.unwrap_or(defaults.height),
    );
    if width > limits.max_width || height > limits.max_height {
        return Err(fail(
            Failure::BadRequest,
            format!(
                "{width}x{height} is larger than {} allows ({}x{} at most).",
                manifest.id, limits.max_width, limits.max_height
            ),
        ));
    }
    if job.count > limits.max_images {
        return Err(fail(
            Failure::BadRequest,
            format!(
                "{} draws at most {} images per request.",
                manifest.id, limits.max_images
            ),
        ));
    }
    Ok(GenerateParams {
        prompt: job.prompt.clone(),
        negative_prompt: job.negative_prompt.clone(),
        width,
        height,
        steps: job.steps.unwrap_or(defaults.steps),
        guidance: job.guidance.unwrap_or(defaults.guidance),
        // No seed asked for: pick one and report it, so the image can be made again.
        seed: job.seed.unwrap_or_else(|| fastrand::u64(..)),
        count: job.count,
    })
}

fn storage_failure(error: &StorageError) -> RunError {
    match error {
        StorageError::Local { .. } => fail(Failure::Crashed, error.to_string()),
        _ => fail(
            Failure::StorageUnavailable,
            format!("Storage is unavailable right now: {error}"),
        ),
    }
}

fn diffusion_failure(error: DiffusionError) -> RunError {
    let failure = match &error {
        DiffusionError::MissingWeights { .. } | DiffusionError::CorruptWeights { .. } => {
            Failure::WeightsCorrupt
        }
        DiffusionError::OutOfMemory(_) => Failure::OutOfMemory,
        DiffusionError::BadParams(_) => Failure::BadRequest,
        DiffusionError::Other(_) => Failure::Crashed,
    };
    fail(failure, error.to_string())
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}
