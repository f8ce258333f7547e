//! Results back to chat: the `twitch` origin's events, read in the bot's consumer group. Chat
//! shows no progress (the sending budget is too small for it), so only a job's end becomes a
//! line: the result with its short link, or the failure with what to do next, in reply to the
//! request. Every other event is acknowledged at once; an end only once Twitch accepted its line
//! (the outbox hands its entries back), so a bot killed or disconnected mid-job posts it after.

use std::sync::Arc;
use std::time::Duration;

use ducks_chat::{Summary, ended_line, result_line};
use ducks_contract::{EventKind, JobEvent, Origin};
use ducks_queue::{EventEntry, EventReader, OverlayImage, now_ms};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::outbox::ResultMessage;
use super::{Bot, ORIGIN};

/// Events read at once.
const BATCH: usize = 64;
/// How long one read waits for new events: also how often posted results are acknowledged.
const READ_BLOCK: Duration = Duration::from_millis(200);

pub async fn run(
    bot: Arc<Bot>,
    mut acks: mpsc::UnboundedReceiver<Vec<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = loop {
        match EventReader::new(&bot.queue, ORIGIN, ORIGIN, &bot.replica).await {
            Ok(reader) => break reader,
            Err(error) => {
                warn!(message = "Cannot read the Twitch events yet; retrying.", %error);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
        }
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let mut posted = Vec::new();
        while let Ok(entries) = acks.try_recv() {
            posted.extend(entries);
        }
        if !posted.is_empty()
            && let Err(error) = reader.ack(&posted).await
        {
            // Left pending: read again later, and the reply turn says it was delivered.
            warn!(message = "Could not acknowledge posted results.", %error);
        }
        let entries = tokio::select! {
            entries = reader.next(BATCH, READ_BLOCK) => entries,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                warn!(message = "Could not read the Twitch events; retrying.", %error);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut done_at_once = Vec::new();
        for EventEntry { entry_id, event } in entries {
            match event {
                Ok(event) if event.kind.is_terminal() => {
                    if let Some(result) = line_for(&bot, &event, entry_id.clone()).await {
                        bot.outbox(&result.0).result(result.1);
                    } else {
                        done_at_once.push(entry_id);
                    }
                }
                Ok(_) => done_at_once.push(entry_id),
                Err(unreadable) => {
                    warn!(message = "An event could not be read; skipping it.", error = %unreadable);
                    done_at_once.push(entry_id);
                }
            }
        }
        if !done_at_once.is_empty() {
            let _ = reader.ack(&done_at_once).await;
        }
    }
}

/// The channel and the line that ends `event`'s job; `None` when it has nowhere to go.
async fn line_for(
    bot: &Bot,
    event: &JobEvent,
    entry_id: String,
) -> Option<(String, ResultMessage)> {
    let Origin::Twitch {
        channel,
        message_id,
    } = &event.origin
    else {
        return None;
    };
    let user = event
        .requester
        .name
        .clone()
        .unwrap_or_else(|| event.requester.id.clone());
    let mut overlay = None;
    let text = match &event.kind {
        EventKind::Succeeded { images, .. } => {
            let request = bot.queue.status(&event.job_id).await.ok()?.request?;
            let catalogue = bot.queue.catalogue_snapshot().await.ok().flatten();
            let summary = Summary::of(&request, catalogue.as_deref(), images);
            let links: Vec<String> = images.iter().map(|image| bot.short_link(image)).collect();
            overlay = images
                .first()
                .zip(links.first())
                .map(|(image, link)| OverlayImage {
                    job: event.job_id.to_string(),
                    url: link.clone(),
                    width: image.width,
                    height: image.height,
                    requester: user.clone(),
                    prompt: request.prompt.clone(),
                    model: summary.model.clone(),
                    at_ms: now_ms(),
                });
            let links: Vec<&str> = links.iter().map(String::as_str).collect();
            result_line(&user, &summary, &links)
        }
        other => ended_line(&user, other),
    };
    Some((
        channel.clone(),
        ResultMessage {
            job: event.job_id.clone(),
            text,
            reply_to: message_id.clone(),
            requester_id: event.requester.id.clone(),
            entries: vec![entry_id],
            attempts: 0,
            overlay,
        },
    ))
}
