//! The seam between the worker and wherever runners run: a [`Launcher`] starts one runner for
//! one job, streams what it reports, and stops it on cancel. The local launcher runs a child
//! process; the Kubernetes launcher runs a Job.

use std::future::Future;
use std::time::Duration;

use ducks_contract::{JobId, JobPhase, Line, RunnerJob, wire};
use ducks_models::S3Config;
use tokio::sync::mpsc;

use crate::outcome::Outcome;
use crate::sizing::Compute;

/// Everything needed to start the runner of one job.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub job_id: JobId,
    /// What the runner draws: the model and every parameter settled, so a retry or an adopted
    /// runner draws the same image. No origin, so no credential of the requester's.
    pub job: RunnerJob,
    pub compute: Compute,
    /// The attempt fails as deadline exceeded after this long.
    pub timeout: Duration,
}

/// What a running launch reports, in order; the last one is always [`Update::Finished`].
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Not running yet, and why (waiting for a GPU, pulling the image).
    Waiting {
        phase: JobPhase,
        message: String,
    },
    /// A line the runner printed (phases and progress).
    Line(Line),
    Finished(Outcome),
}

/// A started (or adopted) launch.
#[derive(Debug)]
pub struct Launch {
    /// True when the runner was already running for this job id, started by an earlier worker.
    pub adopted: bool,
    pub updates: mpsc::Receiver<Update>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The launcher could not start the runner now; a later attempt may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The cluster refused the runner (RBAC, admission, quota), saying why.
    #[error("{message}")]
    Refused { message: String, retryable: bool },
}

/// Starts, follows and stops runners. Implementations must make `launch` idempotent per job id:
/// a second call for a job whose runner still runs (or has finished and not been cleaned up)
/// adopts it instead of starting another, so one job never has two live runners.
pub trait Launcher: Send + Sync + 'static {
    /// Starts the runner for `spec`, or adopts the one already running for its job id.
    fn launch(&self, spec: &LaunchSpec)
    -> impl Future<Output = Result<Launch, LaunchError>> + Send;

    /// Stops the job's runner; its launch then finishes with [`Outcome::Cancelled`].
    fn cancel(&self, job_id: &JobId) -> impl Future<Output = Result<(), LaunchError>> + Send;

    /// Forgets a finished launch (its files, its Kubernetes Job), after its outcome is published.
    fn release(&self, job_id: &JobId) -> impl Future<Output = ()> + Send;

    /// The jobs whose runners still run, started by any worker: the sweep stops those whose job
    /// has ended or is gone from the queue.
    fn running(&self) -> impl Future<Output = Vec<JobId>> + Send;
}

/// Where a runner finds what the worker passes it: the values of a pod's environment, which the
/// local launcher gives its child process too (docs/runner-contract.md).
pub struct RunnerPaths<'a> {
    pub cache_dir: &'a str,
    pub output_prefix: &'a str,
    pub termination_log: &'a str,
}

/// The runner's environment for one job: the job, S3, and where to put things.
pub fn runner_env(spec: &LaunchSpec, s3: &S3Config, paths: &RunnerPaths) -> Vec<(String, String)> {
    let mut env = vec![
        ("DUCKS_RUNNER__JOB", wire::encode(&spec.job)),
        ("DUCKS_RUNNER__CACHE_DIR", paths.cache_dir.to_owned()),
        (
            "DUCKS_RUNNER__OUTPUT_PREFIX",
            paths.output_prefix.to_owned(),
        ),
        (
            "DUCKS_RUNNER__TERMINATION_LOG",
            paths.termination_log.to_owned(),
        ),
        ("DUCKS_S3__REGION", s3.region.clone()),
        ("DUCKS_S3__BUCKET", s3.bucket.clone()),
        (
            "DUCKS_S3__FORCE_PATH_STYLE",
            s3.force_path_style.to_string(),
        ),
        ("DUCKS_LOG__FORMAT", "json".to_owned()),
    ];
    // Empty keys are left out so the runner falls back to the standard AWS chain (IRSA, profile).
    for (key, value) in [
        ("DUCKS_S3__ENDPOINT", s3.endpoint.as_str()),
        ("DUCKS_S3__ACCESS_KEY_ID", s3.access_key_id.as_str()),
        ("DUCKS_S3__SECRET_ACCESS_KEY", s3.secret_access_key.expose()),
    ] {
        if !value.is_empty() {
            env.push((key, value.to_owned()));
        }
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
