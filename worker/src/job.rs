//! One job, from the moment a worker takes it to its terminal event: check the model, size the
//! compute, launch, relay progress, verify the output, make the links, publish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ducks_contract::{
    EventKind, FailureCode, ImageRef, JobId, JobPhase, Line, RunResult, RunnerJob, Timings,
    unknown_model_message,
};
use ducks_models::params::resolve;
use ducks_models::{Lookup, ManifestIndex, Storage};
use ducks_queue::{Completion, Delivery, FailResult, Signal, now_ms};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::config::WorkerConfig;
use crate::launcher::{LaunchError, LaunchSpec, Launcher, Update};
use crate::metrics::Metrics;
use crate::outcome::{JobFailure, Outcome};
use crate::sizing::compute_for;
use crate::worker::LeftRunners;
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
/// Beyond the cancel grace (after which a runner is killed), how long a runner stopped at
/// shutdown may take to be seen gone.
const LEAVE_STOP_MARGIN: Duration = Duration::from_secs(2);

/// What became of a job this worker ran: the worker reports it for each job that was running
/// when it was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// Its end is recorded: `succeeded`, `failed` or `cancelled`.
    Ended(&'static str),
    /// This attempt failed and a retry is queued.
    Retrying,
    /// Given back to the queue unfinished at shutdown. Its runner was stopped (the next worker
    /// starts it again) or left running (the next worker adopts it).
    HandedBack { runner_stopped: bool },
    /// Another worker holds the job now.
    TakenOver,
    /// Nothing could be recorded (Redis did not answer, or the job did not hand itself back in
    /// time): it returns to the queue when its lease runs out.
    ReturnsAfterLease,
}

impl JobEnd {
    /// Whether the job's end, or its retry, is written: only then may its launch be forgotten.
    fn is_recorded(self) -> bool {
        matches!(self, JobEnd::Ended(_) | JobEnd::Retrying)
    }
}

/// Runs one delivery to its end. `leave` is set when the worker shuts down and its grace period
/// is over: the job is then given back unfinished, its runner left running for the next worker
/// to adopt or stopped, as the value says.
pub async fn run<L: Launcher>(
    ctx: Arc<Context<L>>,
    delivery: Delivery,
    leave: watch::Receiver<Option<LeftRunners>>,
) -> (JobId, JobEnd) {
    let id = delivery.id.clone();
    let span = info_span!("job", job_id = %delivery.id, attempt = delivery.attempt);
    ctx.metrics.in_flight.inc();
    let end = Job {
        ctx: ctx.clone(),
        delivery,
        leave,
    }
    .run()
    .instrument(span)
    .await;
    ctx.metrics.in_flight.dec();
    (id, end)
}

struct Job<L> {
    ctx: Arc<Context<L>>,
    delivery: Delivery,
    leave: watch::Receiver<Option<LeftRunners>>,
}

/// How the following of a launch ended.
enum Followed {
    Outcome(Outcome),
    /// The deadline passed; the runner was stopped.
    TimedOut,
    /// Another worker holds the job now: let go, finish nothing.
    LetGo,
    /// The worker is shutting down: give the job back unfinished, its runner stopped (it has
    /// exited) or left running for the next worker to adopt.
    Leave {
        runner_stopped: bool,
    },
}

/// What stopping the runner of a job the worker leaves came to.
enum LeaveStop {
    /// It has exited, unfinished.
    Exited,
    /// It finished its image before the stop reached it.
    Finished(RunResult),
    /// It could not be stopped, or was not seen to end in time.
    StillRunning,
}

/// What woke the follow loop.
enum Woke {
    Update(Option<Update>),
    Interrupted(Signal),
    Leave,
    Deadline,
}

impl<L: Launcher> Job<L> {
    async fn run(mut self) -> JobEnd {
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
            Signal::Lost | Signal::Duplicate => return JobEnd::TakenOver,
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
            Ok(Signal::Lost) => return JobEnd::TakenOver,
            // A second entry for a job id that has its own life: it never runs.
            Ok(Signal::Duplicate) => {
                info!(message = "Set aside a second entry for a job id that is already taken.");
                return JobEnd::TakenOver;
            }
            Ok(Signal::Running) => {}
            Err(e) => {
                warn!(message = "Could not record that the job is starting; it comes back after its lease.", error = %e);
                return JobEnd::ReturnsAfterLease;
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
        let end = match followed {
            Followed::LetGo => JobEnd::TakenOver,
            Followed::Leave { runner_stopped } => {
                if runner_stopped {
                    // The runner is gone: its folder or Job must not be adopted as if it ran.
                    ctx.launcher.release(&job_id).await;
                    info!(message = "Shutting down: stopped the runner and gave the job back.");
                } else {
                    info!(
                        message = "Shutting down: left the job and its runner to another worker."
                    );
                }
                match self.delivery.abandon().await {
                    Ok(()) => JobEnd::HandedBack { runner_stopped },
                    Err(e) => {
                        warn!(message = "Could not give the job back; it returns after its lease.", error = %e);
                        JobEnd::ReturnsAfterLease
                    }
                }
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
        if end.is_recorded() {
            ctx.launcher.release(&job_id).await;
        }
        end
    }

    /// A job cancelled before this worker launched anything: a runner an earlier worker left
    /// running for it is stopped too.
    async fn cancel_before_launch(self) -> JobEnd {
        let ctx = self.ctx.clone();
        let job_id = self.delivery.id.clone();
        if let Err(e) = ctx.launcher.cancel(&job_id).await {
            warn!(message = "Could not stop the job's runner.", error = %e);
        }
        let end = self.finish(EventKind::Cancelled, "cancelled", "").await;
        if end.is_recorded() {
            ctx.launcher.release(&job_id).await;
        }
        end
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
                Ok(_) = self.leave.wait_for(Option::is_some), if stopping.is_none() => Woke::Leave,
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
                Woke::Leave => {
                    let runners = *self.leave.borrow();
                    let runner_stopped = match runners {
                        Some(LeftRunners::Stop) => match self.stop_to_leave(&mut updates).await {
                            // It finished before the stop reached it: the image is made and
                            // uploaded, so the job ends as it would have, not drawn again.
                            LeaveStop::Finished(result) => {
                                return Followed::Outcome(Outcome::Succeeded(result));
                            }
                            LeaveStop::Exited => true,
                            LeaveStop::StillRunning => false,
                        },
                        _ => false,
                    };
                    return Followed::Leave { runner_stopped };
                }
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

    /// Stops the runner of a job the worker is leaving, and waits until it has exited (it is
    /// killed after the cancel grace).
    async fn stop_to_leave(
        &mut self,
        updates: &mut tokio::sync::mpsc::Receiver<Update>,
    ) -> LeaveStop {
        info!(message = "Shutting down: stopping the runner.");
        if let Err(e) = self.ctx.launcher.cancel(&self.delivery.id).await {
            warn!(message = "Could not stop the runner; leaving it running.", error = %e);
            return LeaveStop::StillRunning;
        }
        let ended = async {
            while let Some(update) = updates.recv().await {
                match update {
                    Update::Finished(Outcome::Succeeded(result)) => {
                        return LeaveStop::Finished(result);
                    }
                    Update::Finished(_) => return LeaveStop::Exited,
                    _ => {}
                }
            }
            LeaveStop::StillRunning
        };
        let limit = self.ctx.config.cancel_grace() + LEAVE_STOP_MARGIN;
        match tokio::time::timeout(limit, ended).await {
            Ok(LeaveStop::StillRunning) | Err(_) => {
                warn!(message = "The runner was not seen to stop; leaving it as it is.");
                LeaveStop::StillRunning
            }
            Ok(stopped) => stopped,
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

    /// Writes the terminal event; [`JobEnd::Ended`] when the job's end is recorded (by this call
    /// or before).
    async fn finish(self, kind: EventKind, outcome: &'static str, code: &'static str) -> JobEnd {
        self.ctx.metrics.count_job(outcome, code);
        match self.delivery.complete(kind).await {
            Ok(done) => ended(outcome, done),
            Err(e) => {
                warn!(message = "Could not publish the job's end; it will run again.", error = %e);
                JobEnd::ReturnsAfterLease
            }
        }
    }

    /// Fails the job before anything was launched for it: nothing to release.
    async fn reject(self, failure: JobFailure) -> JobEnd {
        self.fail(failure).await
    }

    /// Ends this attempt with `failure`: recorded when a retry is queued or the job's end is
    /// written.
    async fn fail(self, failure: JobFailure) -> JobEnd {
        let code = failure.code.as_str();
        info!(message = "The job failed.", code, retryable = failure.retryable, reason = %failure.message, detail = %failure.detail);
        match self
            .delivery
            .fail(failure.code, failure.message, failure.retryable)
            .await
        {
            Ok(FailResult::Retrying { .. }) => {
                self.ctx.metrics.count_job("retrying", code);
                JobEnd::Retrying
            }
            Ok(FailResult::Failed(done)) => {
                self.ctx.metrics.count_job("failed", code);
                ended("failed", done)
            }
            Ok(FailResult::Cancelled(done)) => {
                self.ctx.metrics.count_job("cancelled", "");
                ended("cancelled", done)
            }
            Err(e) => {
                warn!(message = "Could not publish the job's failure; it will run again.", error = %e);
                JobEnd::ReturnsAfterLease
            }
        }
    }
}

/// A completion's answer as the job's end: recorded, or the job is another worker's.
fn ended(outcome: &'static str, completion: Completion) -> JobEnd {
    if completion.recorded() {
        JobEnd::Ended(outcome)
    } else {
        JobEnd::TakenOver
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
