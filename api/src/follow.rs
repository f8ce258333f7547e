//! What the API does with its origin's events, once per event whichever replica reads it (one
//! consumer group, `api`): counts each key's images and GPU time, and turns events into webhook
//! deliveries. An event is acknowledged only after its work is stored, so an API that stops
//! midway does it on its next start (or another replica does).

use std::time::Duration;

use ducks_contract::{EventKind, JobEvent, Origin};
use ducks_queue::{EventReader, Queue, QueueError};
use tokio::sync::watch;
use tracing::warn;

use crate::webhooks;

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

async fn handle(queue: &Queue, event: &JobEvent, entry: &str) -> Result<(), QueueError> {
    // The delivery first: storing it again is harmless (receivers drop a repeated
    // `webhook-id`), counting usage twice is not.
    if let Some(delivery) = webhooks::delivery_for(event, entry) {
        let stored = serde_json::to_string(&delivery).unwrap_or_default();
        queue
            .schedule_webhook(&delivery.id, &stored, Duration::ZERO)
            .await?;
    }
    if let (
        EventKind::Succeeded { images, timings },
        Origin::Api {
            client: Some(client),
            ..
        },
    ) = (&event.kind, &event.origin)
    {
        queue
            .count_api_usage(client, 0, images.len() as u64, timings.gpu_seconds)
            .await?;
    }
    Ok(())
}
