//! The worker loop: take jobs while slots are free, run each in its own task, keep the catalogue
//! fresh, and shut down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ducks_contract::JobId;
use ducks_models::Storage;
use ducks_queue::{Consumer, Queue, QueueError};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use ducks_models::ManifestIndex;

use crate::config::WorkerConfig;
use crate::http::Probe;
use crate::job::{self, Context, JobEnd};
use crate::launcher::Launcher;
use crate::metrics::Metrics;
use ducks_models::links::Links;

/// After the grace period, how long jobs get to hand themselves back before the worker exits.
const LEAVE_LIMIT: Duration = Duration::from_secs(10);
/// The pause after a failed read from the queue.
const READ_RETRY: Duration = Duration::from_millis(500);

/// What a stopping worker does with the runners of jobs still running after its grace period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeftRunners {
    /// They keep running, for the worker that takes their job next to adopt (`ducks worker`: a
    /// restart loses no work).
    #[default]
    KeepRunning,
    /// They are stopped (killed after the cancel grace) and waited for, and their jobs start
    /// again on the next worker (`ducks dev`, whose S3 stops with it).
    Stop,
}

pub struct Worker<L> {
    queue: Queue,
    name: String,
    ctx: Arc<Context<L>>,
    queue_ok: Arc<AtomicBool>,
}

impl<L: Launcher> Worker<L> {
    /// `name` identifies this worker's consumer in the group; a worker restarted under the same
    /// name takes its own unfinished jobs back at once.
    pub fn new(
        queue: Queue,
        storage: Storage,
        launcher: L,
        config: WorkerConfig,
        links: Links,
        name: impl Into<String>,
    ) -> Self {
        Self {
            queue,
            name: name.into(),
            ctx: Arc::new(Context {
                storage,
                launcher,
                config,
                catalogue: ManifestIndex::default(),
                metrics: Arc::new(Metrics::default()),
                links,
            }),
            queue_ok: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.ctx.metrics.clone()
    }

    pub fn catalogue(&self) -> ManifestIndex {
        self.ctx.catalogue.clone()
    }

    /// What `/readyz` and `/metrics` look at.
    pub fn probe(&self) -> Probe {
        Probe {
            metrics: self.ctx.metrics.clone(),
            catalogue: self.ctx.catalogue.clone(),
            queue_ok: self.queue_ok.clone(),
        }
    }

    /// Takes and runs jobs until `shutdown` resolves; then stops taking jobs, lets running ones
    /// finish within the grace period, and gives the rest back unfinished, their runners kept
    /// running for another worker to adopt or stopped, as `shutdown`'s value says. Never
    /// acknowledges an unfinished job. Returns what became of each job running at the shutdown.
    pub async fn run(
        self,
        shutdown: impl Future<Output = LeftRunners>,
    ) -> ducks_queue::Result<Vec<(JobId, JobEnd)>> {
        let config = &self.ctx.config;
        let mut consumer = Consumer::new(self.queue.clone(), self.name.clone()).await?;
        // Know the models before the first job; a failure here is retried by the refresher.
        if let Err(e) = sync_catalogue(
            &self.ctx.catalogue,
            &self.ctx.storage,
            &self.queue,
            &config.default_model,
        )
        .await
        {
            warn!(message = "Could not read the model catalogue yet.", error = %e);
        }
        let (stopping_tx, stopping) = watch::channel(false);
        let refresher = tokio::spawn(keep_catalogue_fresh(
            self.ctx.clone(),
            self.queue.clone(),
            stopping.clone(),
        ));
        let sweeper = tokio::spawn(sweep_orphans(
            self.ctx.clone(),
            self.queue.clone(),
            stopping.clone(),
        ));
        let (leave_tx, leave) = watch::channel(None);
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        // Which job each task runs, for the report of a task that never ends.
        let mut job_of_task: HashMap<tokio::task::Id, JobId> = HashMap::new();
        tokio::pin!(shutdown);
        info!(message = "The worker is taking jobs.", consumer = %self.name, concurrency = config.concurrency);

        let left_runners = loop {
            while let Some(joined) = tasks.try_join_next_with_id() {
                job_of_task.remove(&joined_id(&joined));
            }
            let first = tokio::select! {
                biased;
                runners = &mut shutdown => break runners,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            // Not raced against the shutdown: a read cut short could take jobs and drop them. It
            // returns within the queue's block time.
            let batch = consumer.next_batch(permits.len()).await;
            let stop_now = futures_util::FutureExt::now_or_never(&mut shutdown);
            match batch {
                Ok(deliveries) => {
                    self.queue_ok.store(true, Ordering::Relaxed);
                    for delivery in deliveries {
                        if stop_now.is_some() {
                            let _ = delivery.abandon().await;
                            continue;
                        }
                        let permit = permits.pop().expect("one permit per delivery");
                        let ctx = self.ctx.clone();
                        let leave = leave.clone();
                        let id = delivery.id.clone();
                        let task = tasks.spawn(async move {
                            let end = job::run(ctx, delivery, leave).await;
                            drop(permit);
                            end
                        });
                        job_of_task.insert(task.id(), id);
                    }
                }
                Err(e) => {
                    self.queue_ok.store(false, Ordering::Relaxed);
                    warn!(message = "Could not read from the queue; retrying.", error = %e);
                    tokio::time::sleep(READ_RETRY).await;
                }
            }
            if let Some(runners) = stop_now {
                break runners;
            }
        };

        let _ = stopping_tx.send(true);
        consumer.stop_prefetching().await;
        let running = tasks.len();
        info!(
            message = "Stopping: no new jobs; waiting for running ones.",
            running,
            grace_secs = config.shutdown_grace_secs
        );
        let mut ends = Vec::new();
        let mut collect = |joined: Joined| {
            let id = job_of_task.remove(&joined_id(&joined));
            match (id, joined) {
                (_, Ok((_, (id, end)))) => ends.push((id, end)),
                // The job's task panicked: nothing was recorded for it.
                (Some(id), Err(_)) => ends.push((id, JobEnd::ReturnsAfterLease)),
                (None, Err(_)) => {}
            }
        };
        let all_done = async {
            while let Some(joined) = tasks.join_next_with_id().await {
                collect(joined);
            }
        };
        if tokio::time::timeout(config.shutdown_grace(), all_done)
            .await
            .is_err()
        {
            info!(
                message = "The grace period is over; leaving the remaining jobs to other workers.",
                remaining = tasks.len(),
                runners = ?left_runners,
            );
            let _ = leave_tx.send(Some(left_runners));
            let limit = match left_runners {
                LeftRunners::KeepRunning => LEAVE_LIMIT,
                // Each stop may wait out the cancel grace before the runner is killed.
                LeftRunners::Stop => LEAVE_LIMIT + config.cancel_grace(),
            };
            let all_left = async {
                while let Some(joined) = tasks.join_next_with_id().await {
                    collect(joined);
                }
            };
            if tokio::time::timeout(limit, all_left).await.is_err() {
                warn!(
                    message =
                        "Some jobs did not hand themselves back; they return after their lease."
                );
            }
        }
        tasks.abort_all();
        ends.extend(
            job_of_task
                .into_values()
                .map(|id| (id, JobEnd::ReturnsAfterLease)),
        );
        for (job_id, end) in &ends {
            info!(message = "A job running at shutdown.", %job_id, end = ?end);
        }
        let _ = refresher.await;
        let _ = sweeper.await;
        drop(consumer);
        info!(message = "The worker stopped.");
        Ok(ends)
    }
}

/// A job task joined: its id and the job's end, or how the task failed.
type Joined = Result<(tokio::task::Id, (JobId, JobEnd)), tokio::task::JoinError>;

/// The task id of a joined job task, finished or failed.
fn joined_id(joined: &Joined) -> tokio::task::Id {
    match joined {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    }
}

/// Reads changed manifests from S3 and publishes the catalogue to Redis every
/// `catalogue_refresh_secs`, until the worker stops.
async fn keep_catalogue_fresh<L>(
    ctx: Arc<Context<L>>,
    queue: Queue,
    mut stopping: watch::Receiver<bool>,
) {
    let period = Duration::from_secs(ctx.config.catalogue_refresh_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = sync_catalogue(
            &ctx.catalogue,
            &ctx.storage,
            &queue,
            &ctx.config.default_model,
        )
        .await
        {
            warn!(message = "Could not refresh the model catalogue.", error = %e);
        }
    }
}

/// Refreshes `index` from S3 and, when something changed (here or in an earlier lookup, or a
/// publish failed), publishes the snapshot front ends read to Redis.
pub async fn sync_catalogue(
    index: &ManifestIndex,
    storage: &Storage,
    queue: &Queue,
    default_model: &str,
) -> Result<(), SyncError> {
    let changed = index
        .changed_snapshot(storage, default_model, ducks_queue::now_ms())
        .await?;
    if let Some(snapshot) = changed
        && let Err(e) = queue.publish_models(&snapshot).await
    {
        index.mark_unpublished();
        return Err(e.into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Storage(#[from] ducks_models::StorageError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Every `sweep_interval_secs`, stops runners whose job has ended or is no longer in the queue
/// (a worker died after a cancel, or a job's record expired): nothing runs that nobody waits for.
async fn sweep_orphans<L: Launcher>(
    ctx: Arc<Context<L>>,
    queue: Queue,
    mut stopping: watch::Receiver<bool>,
) {
    let period = ctx.config.sweep_interval();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        for job_id in ctx.launcher.running().await {
            let ended = match queue.status(&job_id).await {
                Ok(status) => status.state.is_terminal(),
                Err(QueueError::NotFound(_)) => true,
                Err(e) => {
                    warn!(message = "Could not check a running job during the sweep.", job_id = %job_id, error = %e);
                    false
                }
            };
            if ended {
                info!(message = "Stopping a runner whose job has ended or left the queue.", job_id = %job_id);
                if let Err(e) = ctx.launcher.cancel(&job_id).await {
                    warn!(message = "Could not stop an orphaned runner.", job_id = %job_id, error = %e);
                }
            }
        }
    }
}
