//! One job, from the moment a worker takes it to its terminal event: check the model, size the
//! compute, launch, relay progress, verify the output, make the links, publish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ducks_contract::{
    EventKind, FailureCode, ImageRef, JobPhase, Line, RunResult, RunnerJob, Timings,
    unknown_model_message,
};
use ducks_models::params::resolve;
use ducks_models::{Lookup, ManifestIndex, Storage};
use ducks_queue::{Delivery, FailResult, Signal, now_ms};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::config::WorkerConfig;
use crate::launcher::{LaunchError, LaunchSpec, Launcher, Update};
use crate::metrics::Metrics;
use crate::outcome::{JobFailure, Outcome};
use crate::sizing::compute_for;
use ducks_models::links::Links;

/// What every job task shares.
pub struct Context<L> {
    pub storage: Storage,
    pub launcher: L,
    pub config: WorkerConfig,
    pub catalogue: ManifestIndex,
    pub metrics: Arc<Metrics>,
    pub links: Links,
}

/// How long a stopped runner may take to report its end before the job is finished anyway.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Runs one delivery to its end. `leave` turns true when the worker shuts down and its grace
/// period is over: the job is then given back unfinished, its runner left running for the next
/// worker to adopt.
pub async fn run<L: Launcher>(
    ctx: Arc<Context<L>>,
    delivery: Delivery,
    leave: watch::Receiver<bool>,
) {
    let span = info_span!("job", job_id = %delivery.id, attempt = delivery.attempt);
    ctx.metrics.in_flight.inc();
    Job {
        ctx: ctx.clone(),
        delivery,
        leave,
    }
    .run()
    .instrument(span)
    .await;
    ctx.metrics.in_flight.dec();
}

struct Job<L> {
    ctx: Arc<Context<L>>,
    delivery: Delivery,
    leave: watch::Receiver<bool>,
}

/// How the following of a launch ended.
enum Followed {
    Outcome(Outcome),
    /// The deadline passed; the runner was stopped.
    TimedOut,
    /// Another worker holds the job now: let go, finish nothing.
    LetGo,
    /// The worker is shutting down: give the job back unfinished and leave its runner running
    /// for the next worker to adopt.
    Leave,
}

/// What woke the follow loop.
enum Woke {
    Update(Option<Update>),
    Interrupted(Signal),
    Leave,
    Deadline,
}

impl<L: Launcher> Job<L> {
    async fn run(mut self) {
        let taken_ms = now_ms();
        let submitted_ms = self.delivery.job.submitted_at_ms.unwrap_or(taken_ms);
        let queue_ms = taken_ms.saturating_sub(submitted_ms);
        let ctx = self.ctx.clone();

        let manifest = match ctx
            .catalogue
            .lookup(
                &ctx.storage,
                self.delivery.job.model.as_deref(),
                &ctx.config.default_model,
            )
            .await
        {
            Ok(Lookup::Found(manifest)) => manifest,
            Ok(Lookup::Unknown { id, available }) => {
                let message = unknown_model_message(id.as_deref(), &available);
                return self
                    .reject(JobFailure::new(FailureCode::UnknownModel, message, false))
                    .await;
            }
            Err(e) => {
                let failure = JobFailure::new(
                    FailureCode::StorageUnavailable,
                    "The model catalogue cannot be read right now.",
                    true,
                )
                .with_detail(e.to_string());
                return self.reject(failure).await;
            }
        };
        let params = match resolve(&self.delivery.job, &manifest) {
            Ok(params) => params,
            Err(e) => {
                return self
                    .reject(JobFailure::new(
                        FailureCode::InvalidRequest,
                        e.to_string(),
                        false,
                    ))
                    .await;
            }
        };
        match self.delivery.signal() {
            Signal::Running => {}
            Signal::CancelRequested => return self.cancel_before_launch().await,
            Signal::Lost | Signal::Duplicate => return,
        }

        // Settle the model and the seed, so a retry or an adopted runner draws the same image.
        let mut job = self.delivery.job.clone();
        job.model = Some(manifest.id.clone());
        job.seed = Some(params.seed);
        self.delivery.settle(job.clone());
        let compute = compute_for(&manifest, &params);
        let starting = format!(
            "Starting {} for {}x{}.",
            manifest.id, params.width, params.height
        );
        let spec = LaunchSpec {
            job_id: self.delivery.id.clone(),
            job: RunnerJob {
                job_id: self.delivery.id.clone(),
                model: manifest.id.clone(),
                params,
            },
            compute: compute.clone(),
            timeout: ctx.config.job_timeout(),
        };
        let starting = EventKind::Starting {
            phase: JobPhase::Launching,
            message: starting,
        };
        // Nothing is launched until the queue has recorded that this worker starts the job.
        match self.delivery.publish(starting).await {
            Ok(Signal::CancelRequested) => return self.cancel_before_launch().await,
            // Another worker holds the job now: it launches (or adopts), not this one.
            Ok(Signal::Lost) => return,
            // A second entry for a job id that has its own life: it never runs.
            Ok(Signal::Duplicate) => {
                info!(message = "Set aside a second entry for a job id that is already taken.");
                return;
            }
            Ok(Signal::Running) => {}
            Err(e) => {
                warn!(message = "Could not record that the job is starting; it comes back after its lease.", error = %e);
                return;
            }
        }

        let launched = Instant::now();
        let launch = match ctx.launcher.launch(&spec).await {
            Ok(launch) => launch,
            Err(LaunchError::Refused { message, retryable }) => {
                warn!(message = "The cluster refused the runner.", reason = %message);
                let failure = JobFailure::new(
                    FailureCode::Refused,
                    "The cluster refused to start the image generator; an operator must check its permissions and policies.",
                    retryable,
                )
                .with_detail(message);
                return self.reject(failure).await;
            }
            Err(e) => {
                warn!(message = "Could not launch a runner.", error = %e);
                let failure = JobFailure::new(
                    FailureCode::Internal,
                    "The image generator could not be started.",
                    true,
                );
                return self.reject(failure).await;
            }
        };
        ctx.metrics.count_launch(launch.adopted);
        info!(message = "Launched a runner.", model = %spec.job.model, adopted = launch.adopted, gpus = compute.gpus);

        let followed = self.follow(launch.updates).await;
        let held = launched.elapsed();
        ctx.metrics
            .gpu_seconds
            .inc_by(compute.gpus as f64 * held.as_secs_f64());
        let job_id = self.delivery.id.clone();
        let written = match followed {
            Followed::LetGo => false,
            Followed::Leave => {
                info!(message = "Shutting down: left the job and its runner to another worker.");
                if let Err(e) = self.delivery.abandon().await {
                    warn!(message = "Could not give the job back; it returns after its lease.", error = %e);
                }
                false
            }
            Followed::TimedOut => {
                let message = format!(
                    "The image took longer than {} seconds and was stopped.",
                    ctx.config.job_timeout_secs
                );
                self.fail(JobFailure::new(
                    FailureCode::DeadlineExceeded,
                    message,
                    false,
                ))
                .await
            }
            Followed::Outcome(Outcome::Cancelled) => {
                self.finish(EventKind::Cancelled, "cancelled", "").await
            }
            Followed::Outcome(Outcome::Failed(failure)) => self.fail(failure).await,
            Followed::Outcome(Outcome::Succeeded(result)) => {
                let timings = Timings {
                    queue_ms,
                    startup_ms: (held.as_millis() as u64)
                        .saturating_sub(result.timings.generate_ms + result.timings.upload_ms),
                    generate_ms: result.timings.generate_ms,
                    upload_ms: result.timings.upload_ms,
                    total_ms: now_ms().saturating_sub(submitted_ms),
                    gpu_seconds: compute.gpus as f64 * held.as_secs_f64(),
                };
                match self.images(&result).await {
                    Ok(images) => {
                        let metrics = &ctx.metrics;
                        metrics.queue_wait.observe(timings.queue_ms as f64 / 1000.0);
                        metrics.startup.observe(timings.startup_ms as f64 / 1000.0);
                        metrics
                            .generation
                            .observe(timings.generate_ms as f64 / 1000.0);
                        metrics.end_to_end.observe(timings.total_ms as f64 / 1000.0);
                        self.finish(EventKind::Succeeded { images, timings }, "succeeded", "")
                            .await
                    }
                    Err(failure) => self.fail(failure).await,
                }
            }
        };
        // Until the job's end is written, the next worker may still need the runner's result.
        if written {
            ctx.launcher.release(&job_id).await;
        }
    }

    /// A job cancelled before this worker launched anything: a runner an earlier worker left
    /// running for it is stopped too.
    async fn cancel_before_launch(self) {
        let ctx = self.ctx.clone();
        let job_id = self.delivery.id.clone();
        if let Err(e) = ctx.launcher.cancel(&job_id).await {
            warn!(message = "Could not stop the job's runner.", error = %e);
        }
        if self.finish(EventKind::Cancelled, "cancelled", "").await {
            ctx.launcher.release(&job_id).await;
        }
    }

    /// Relays the launch's updates until it ends, the job is cancelled, the deadline passes, or
    /// the job must be let go.
    async fn follow(&mut self, mut updates: tokio::sync::mpsc::Receiver<Update>) -> Followed {
        let ctx = self.ctx.clone();
        let deadline = tokio::time::sleep(ctx.config.job_timeout());
        tokio::pin!(deadline);
        let mut stopping: Option<(Instant, bool)> = None;
        let mut last_progress: Option<Instant> = None;
        loop {
            let stop_overdue = stopping.is_some_and(|(since, _)| since.elapsed() > STOP_LIMIT);
            if stop_overdue {
                warn!(
                    message = "A stopped runner did not report its end; finishing the job anyway."
                );
                return match stopping {
                    Some((_, true)) => Followed::TimedOut,
                    _ => Followed::Outcome(Outcome::Cancelled),
                };
            }
            let woke = tokio::select! {
                update = updates.recv() => Woke::Update(update),
                signal = self.delivery.interrupted(), if stopping.is_none() => Woke::Interrupted(signal),
                // An error means the worker is gone; that branch is then disabled.
                // While a runner is being stopped, the stop (bounded) finishes first.
                Ok(_) = self.leave.wait_for(|leave| *leave), if stopping.is_none() => Woke::Leave,
                _ = &mut deadline, if stopping.is_none() => Woke::Deadline,
                _ = tokio::time::sleep(STOP_LIMIT), if stopping.is_some() => continue,
            };
            let update = match woke {
                Woke::Update(update) => update,
                Woke::Interrupted(Signal::CancelRequested) => {
                    self.stop(&mut stopping, false).await;
                    continue;
                }
                Woke::Interrupted(_) => return Followed::LetGo,
                Woke::Leave => return Followed::Leave,
                Woke::Deadline => {
                    self.stop(&mut stopping, true).await;
                    continue;
                }
            };
            match update {
                Some(Update::Finished(outcome)) => {
                    return match stopping {
                        Some((_, true)) => Followed::TimedOut,
                        _ => Followed::Outcome(outcome),
                    };
                }
                None => {
                    return Followed::Outcome(Outcome::Failed(JobFailure::new(
                        FailureCode::RunnerCrashed,
                        "The image generator was lost.",
                        true,
                    )));
                }
                Some(Update::Waiting { phase, message }) => {
                    self.publish(EventKind::Starting { phase, message }, &mut stopping)
                        .await;
                }
                Some(Update::Line(Line::PhaseStarted { phase })) if stopping.is_none() => {
                    let starting = EventKind::Starting {
                        phase: phase.job_phase(),
                        message: phase.message().to_owned(),
                    };
                    self.publish(starting, &mut stopping).await;
                }
                Some(Update::Line(Line::Progress { step, total })) => {
                    let due = last_progress
                        .is_none_or(|at| at.elapsed() >= ctx.config.progress_interval());
                    if stopping.is_none() && (due || step == total) {
                        last_progress = Some(Instant::now());
                        self.publish(EventKind::Progress { step, total }, &mut stopping)
                            .await;
                    }
                }
                Some(Update::Line(_)) => {}
            }
        }
    }

    /// Publishes a non-terminal event; a cancel seen in its answer stops the runner.
    async fn publish(&mut self, kind: EventKind, stopping: &mut Option<(Instant, bool)>) {
        match self.delivery.publish(kind).await {
            Ok(Signal::CancelRequested) if stopping.is_none() => self.stop(stopping, false).await,
            Ok(_) => {}
            // Progress is best effort; the terminal event is what must not be lost.
            Err(e) => warn!(message = "Could not publish progress.", error = %e),
        }
    }

    async fn stop(&mut self, stopping: &mut Option<(Instant, bool)>, timed_out: bool) {
        info!(message = "Stopping the runner.", timed_out);
        *stopping = Some((Instant::now(), timed_out));
        if let Err(e) = self.ctx.launcher.cancel(&self.delivery.id).await {
            warn!(message = "Could not stop the runner.", error = %e);
        }
    }

    /// Checks that every reported image is in the bucket and makes its link.
    async fn images(&self, result: &RunResult) -> Result<Vec<ImageRef>, JobFailure> {
        let ctx = &self.ctx;
        let mut images = Vec::with_capacity(result.images.len());
        for image in &result.images {
            match ctx.storage.exists(&image.key).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(message = "The runner reported an image that is not in the bucket.", key = %image.key);
                    return Err(JobFailure::new(
                        FailureCode::OutputMissing,
                        "The image was made but did not arrive in storage.",
                        true,
                    ));
                }
                Err(e) => return Err(storage_failure(&e.to_string())),
            }
            let url = ctx
                .links
                .link(&ctx.storage, &image.key)
                .await
                .map_err(|e| storage_failure(&e.to_string()))?;
            images.push(ImageRef {
                key: image.key.clone(),
                url,
                width: image.width,
                height: image.height,
                seed: image.seed,
            });
        }
        if images.is_empty() {
            return Err(JobFailure::new(
                FailureCode::OutputMissing,
                "The image generator reported no images.",
                true,
            ));
        }
        Ok(images)
    }

    /// Writes the terminal event; true when the job's end is recorded (by this call or before).
    async fn finish(self, kind: EventKind, outcome: &'static str, code: &'static str) -> bool {
        self.ctx.metrics.count_job(outcome, code);
        match self.delivery.complete(kind).await {
            Ok(done) => done.recorded(),
            Err(e) => {
                warn!(message = "Could not publish the job's end; it will run again.", error = %e);
                false
            }
        }
    }

    /// Fails the job before anything was launched for it: nothing to release.
    async fn reject(self, failure: JobFailure) {
        self.fail(failure).await;
    }

    /// Ends this attempt with `failure`; true when that is recorded (a retry is queued or the
    /// job's end is written).
    async fn fail(self, failure: JobFailure) -> bool {
        let code = failure.code.as_str();
        info!(message = "The job failed.", code, retryable = failure.retryable, reason = %failure.message, detail = %failure.detail);
        match self
            .delivery
            .fail(failure.code, failure.message, failure.retryable)
            .await
        {
            Ok(FailResult::Retrying { .. }) => {
                self.ctx.metrics.count_job("retrying", code);
                true
            }
            Ok(FailResult::Failed(done)) => {
                self.ctx.metrics.count_job("failed", code);
                done.recorded()
            }
            Ok(FailResult::Cancelled(done)) => {
                self.ctx.metrics.count_job("cancelled", "");
                done.recorded()
            }
            Err(e) => {
                warn!(message = "Could not publish the job's failure; it will run again.", error = %e);
                false
            }
        }
    }
}

fn storage_failure(detail: &str) -> JobFailure {
    JobFailure::new(
        FailureCode::StorageUnavailable,
        "Image storage is unavailable right now.",
        true,
    )
    .with_detail(detail)
}
