//! What the always-on API does for the queue, so that nothing waits on a worker: retries whose
//! backoff is over go back into the jobs stream, and the model catalogue in S3 is read and
//! published. A deployment that scales its workers to zero (KEDA on the jobs stream) then still
//! sees a retry as work to scale up for, and a model imported while no worker ran can be asked
//! for.

use std::time::Duration;

use ducks_models::{ManifestIndex, Storage};
use ducks_queue::{Queue, now_ms};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

pub async fn run(
    queue: Queue,
    storage: Storage,
    refresh: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let index = ManifestIndex::default();
    let mut next_refresh = Instant::now();
    loop {
        let promote_again = match queue.promote_due_retries().await {
            Ok(next_due) => next_due,
            Err(error) => {
                warn!(message = "Could not move due retries back into the queue.", %error);
                Duration::from_secs(1)
            }
        };
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + refresh;
            if let Err(error) = publish_catalogue(&index, &storage, &queue).await {
                warn!(message = "Could not publish the model catalogue.", %error);
            }
        }
        let until = (Instant::now() + promote_again).min(next_refresh);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// Publishes the catalogue when the bucket's manifests changed. The default model stays the one
/// already published: the workers' `worker.default_model` decides it, which the API does not
/// know.
async fn publish_catalogue(
    index: &ManifestIndex,
    storage: &Storage,
    queue: &Queue,
) -> Result<(), String> {
    let published = queue.models().await.map_err(|e| e.to_string())?;
    let default_model = published.default_model.unwrap_or_default();
    let changed = index
        .changed_snapshot(storage, &default_model, now_ms())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(snapshot) = changed
        && let Err(error) = queue.publish_models(&snapshot).await
    {
        index.mark_unpublished();
        return Err(error.to_string());
    }
    Ok(())
}
