//! What the API does with its origin's events, once per event whichever replica reads it (one
//! consumer group, `api`): counts each key's images and GPU time, files new images in the key's
//! gallery, and turns events into webhook deliveries. An event is acknowledged only after its
//! work is stored, so an API that stops midway does it on its next start (or another replica
//! does); usage and deliveries are marked done, so an event read twice counts and sends once.

use std::time::Duration;

use ducks_contract::{EventKind, JobEvent, Origin};
use ducks_queue::{EventReader, Queue, QueueError};
use tokio::sync::watch;
use tracing::warn;

use crate::{view, webhooks};

/// The consumer group of every API replica on the `api` event stream.
pub const GROUP: &str = "api";

/// Reads events until `stop` turns true.
pub async fn run(queue: Queue, consumer: String, mut stop: watch::Receiver<bool>) {
    let mut reader = loop {
        match EventReader::new(&queue, "api", GROUP, &consumer).await {
            Ok(reader) => break reader,
            Err(e) => {
                warn!(message = "Cannot read the API's events yet; retrying.", error = %e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let block = Duration::from_millis(queue.config().block_ms);
    while !*stop.borrow() {
        let entries = tokio::select! {
            read = reader.next(100, block) => read,
            _ = stop.changed() => return,
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                warn!(message = "Reading the API's events failed; retrying.", error = %e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut done = Vec::with_capacity(entries.len());
        for entry in entries {
            match &entry.event {
                Ok(event) => match handle(&queue, event, &entry.entry_id).await {
                    Ok(()) => done.push(entry.entry_id),
                    // Left unacknowledged: read again after a restart or a reclaim.
                    Err(e) => {
                        warn!(message = "Handling an API event failed; it will be read again.", error = %e, job_id = %event.job_id)
                    }
                },
                Err(e) => {
                    warn!(message = "Skipping an unreadable API event.", entry = %entry.entry_id, error = %e);
                    done.push(entry.entry_id);
                }
            }
        }
        if let Err(e) = reader.ack(&done).await {
            warn!(message = "Acknowledging API events failed; they will be handled again.", error = %e);
        }
    }
}

/// How long a job's usage and its deliveries are remembered as done: longer than an event can
/// wait to be read again.
const REMEMBER: Duration = Duration::from_secs(8 * 24 * 3600);

async fn handle(queue: &Queue, event: &JobEvent, entry: &str) -> Result<(), QueueError> {
    if let Some(delivery) = webhooks::delivery_for(event, entry) {
        let stored = serde_json::to_string(&delivery).unwrap_or_default();
        queue.add_webhook(&delivery.id, &stored).await?;
    }
    let (EventKind::Succeeded { images, timings }, Origin::Api { client, .. }) =
        (&event.kind, &event.origin)
    else {
        return Ok(());
    };
    let client = client.as_deref().unwrap_or(crate::auth::OPEN_CLIENT);
    let first_time = queue
        .count_api_images_once(
            &event.job_id,
            client,
            images.len() as u64,
            timings.gpu_seconds,
            REMEMBER,
        )
        .await?;
    if !first_time {
        return Ok(());
    }
    // The gallery shows the prompt and model, which only the job's status still has.
    let request = match queue.status(&event.job_id).await {
        Ok(status) => status.request,
        Err(QueueError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    for image in images {
        let entry = view::GalleryImage {
            job_id: event.job_id.to_string(),
            url: image.url.clone(),
            width: image.width,
            height: image.height,
            seed: image.seed,
            prompt: request
                .as_ref()
                .map(|r| r.prompt.clone())
                .unwrap_or_default(),
            model: request.as_ref().and_then(|r| r.model.clone()),
            created_at_ms: event.at_ms,
        };
        let json = serde_json::to_string(&entry).unwrap_or_default();
        queue.add_to_gallery(client, &json).await?;
    }
    Ok(())
}
