//! Results back to Discord: the `discord` origin's events, read in the bot's consumer group,
//! become edits of each job's message. Progress edits are coalesced per job (at most one per
//! `progress_interval_ms`, the newest state wins); a result waits for its edit turn, so no late
//! progress edit from any replica overwrites it. An event is acknowledged only once Discord took
//! the edit (or the edit can never happen), so a bot killed mid-job edits the right message when
//! it comes back. A result whose interaction token has expired (15 minutes) is posted as a new
//! message replying to the original; where even that is refused, it is kept for `/jobs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ducks_chat::Summary;
use ducks_contract::{EventKind, ImageRef, JobEvent, JobId, JobState, Origin};
use ducks_queue::{EditTurn, EventReader};
use serenity::model::id::{ChannelId, MessageId};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::render::{self, Card};
use super::rest::{RestError, Upload};
use super::{Bot, ORIGIN, lock};

/// Events read at once.
const BATCH: usize = 64;
/// How long one read waits for new events: also how often due edits are looked at.
const READ_BLOCK: Duration = Duration::from_millis(200);
/// Edits to Discord in flight at once.
const EDITS_IN_FLIGHT: usize = 64;
/// How long an edit turn is held at most (a stuck replica's turn lapses after this): longer than
/// any one REST call may take (`rest::DEADLINE`), so an edit never lands after its turn lapsed.
const TURN_LEASE: Duration = Duration::from_secs(15);
/// A job not heard of for this long is forgotten (another replica took its result).
const FORGET_AFTER: Duration = Duration::from_secs(3_600);

/// One job's progress edits as this replica paces them.
#[derive(Default)]
struct Pace {
    last_edit: Option<Instant>,
    in_flight: bool,
    /// The newest state not yet shown, and the entries it stands for.
    pending: Option<(JobEvent, Vec<String>)>,
    summary: Option<Arc<Summary>>,
    /// The message id is remembered in Redis (once is enough).
    message_known: bool,
    heard_at: Option<Instant>,
}

/// What an edit task hands back to the loop.
struct Done {
    job: JobId,
    /// Entries to acknowledge (empty: leave them pending, to be read again).
    ack: Vec<String>,
    summary: Option<Arc<Summary>>,
    message_known: bool,
    ended: bool,
}

pub async fn run(bot: Arc<Bot>, mut stop: watch::Receiver<bool>) {
    let mut reader = loop {
        match EventReader::new(&bot.queue, ORIGIN, ORIGIN, &bot.replica).await {
            Ok(reader) => break reader,
            Err(error) => {
                warn!(message = "Cannot read the Discord events yet; retrying.", %error);
                if tokio::time::timeout(Duration::from_secs(1), stop.changed())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let edits = Arc::new(Semaphore::new(EDITS_IN_FLIGHT));
    let interval = Duration::from_millis(bot.config.progress_interval_ms);
    let refresh_every = Duration::from_secs(bot.config.position_refresh_secs.max(1));
    let mut next_refresh = Instant::now() + refresh_every;
    let refreshing = Arc::new(tokio::sync::Mutex::new(()));
    let mut paces: HashMap<JobId, Pace> = HashMap::new();
    while !*stop.borrow() {
        let mut ack = Vec::new();
        while let Ok(done) = done_rx.try_recv() {
            ack.extend(done.ack);
            if done.ended {
                paces.remove(&done.job);
            } else if let Some(pace) = paces.get_mut(&done.job) {
                pace.in_flight = false;
                pace.last_edit = Some(Instant::now());
                pace.summary = pace.summary.take().or(done.summary);
                pace.message_known |= done.message_known;
            }
        }
        if let Err(error) = reader.ack(&ack).await {
            warn!(message = "Could not acknowledge Discord events; they will be read again.", %error);
        }
        let entries = match reader.next(BATCH, READ_BLOCK).await {
            Ok(entries) => entries,
            Err(error) => {
                warn!(message = "Could not read the Discord events; retrying.", %error);
                let _ = tokio::time::timeout(Duration::from_secs(1), stop.changed()).await;
                continue;
            }
        };
        let mut unreadable = Vec::new();
        for entry in entries {
            let event = match entry.event {
                Ok(event) => event,
                Err(error) => {
                    warn!(message = "An event could not be read; skipping it.", entry = %entry.entry_id, %error);
                    unreadable.push(entry.entry_id);
                    continue;
                }
            };
            let pace = paces.entry(event.job_id.clone()).or_default();
            pace.heard_at = Some(Instant::now());
            match &event.kind {
                // The first answer already shows the place in line.
                EventKind::Queued { .. } => unreadable.push(entry.entry_id),
                kind if kind.is_terminal() => {
                    lock(&bot.queued).remove(&event.job_id);
                    let mut entries = vec![entry.entry_id];
                    if let Some((_, older)) = pace.pending.take() {
                        entries.extend(older);
                    }
                    let summary = pace.summary.clone();
                    pace.in_flight = true;
                    tokio::spawn(deliver_result(
                        bot.clone(),
                        event,
                        entries,
                        summary,
                        edits.clone(),
                        done_tx.clone(),
                    ));
                }
                _ => {
                    lock(&bot.queued).remove(&event.job_id);
                    let mut entries = vec![entry.entry_id];
                    if let Some((_, older)) = pace.pending.take() {
                        entries.extend(older);
                    }
                    pace.pending = Some((event, entries));
                }
            }
        }
        if let Err(error) = reader.ack(&unreadable).await {
            warn!(message = "Could not acknowledge Discord events; they will be read again.", %error);
        }
        // Progress edits that are due.
        let now = Instant::now();
        for (job, pace) in paces.iter_mut() {
            let due = pace.last_edit.is_none_or(|at| now >= at + interval);
            if pace.in_flight || !due {
                continue;
            }
            if let Some((event, entries)) = pace.pending.take() {
                pace.in_flight = true;
                tokio::spawn(edit_progress(
                    bot.clone(),
                    job.clone(),
                    event.origin.clone(),
                    event.kind,
                    entries,
                    pace.summary.clone(),
                    pace.message_known,
                    edits.clone(),
                    done_tx.clone(),
                ));
            }
        }
        paces.retain(|_, pace| {
            pace.in_flight
                || pace.pending.is_some()
                || pace.heard_at.is_some_and(|at| at.elapsed() < FORGET_AFTER)
        });
        if now >= next_refresh {
            next_refresh = now + refresh_every;
            if let Ok(guard) = refreshing.clone().try_lock_owned() {
                let bot = bot.clone();
                let edits = edits.clone();
                tokio::spawn(async move {
                    refresh_positions(bot, edits).await;
                    drop(guard);
                });
            }
        }
    }
    // Edits in flight finish (each within its REST deadline) and are acknowledged, so a result
    // Discord took is not sent again by the next replica.
    let drain_until = Instant::now() + super::rest::DEADLINE;
    while paces.values().any(|pace| pace.in_flight) {
        let Ok(Some(done)) = tokio::time::timeout_at(drain_until, done_rx.recv()).await else {
            break;
        };
        if let Some(pace) = paces.get_mut(&done.job) {
            pace.in_flight = false;
        }
        if let Err(error) = reader.ack(&done.ack).await {
            warn!(message = "Could not acknowledge Discord events; they will be read again.", %error);
        }
    }
    info!(message = "Stopped delivering Discord results.");
}

/// A token for one edit: unique to this replica and this edit, so two edits of one replica take
/// turns as two replicas do.
fn editor_token(bot: &Bot) -> String {
    static EDITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = EDITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}#{n}", bot.replica)
}

/// The summary a message shows: the request from the job's status, read once per job.
async fn summary_of(
    bot: &Bot,
    job: &JobId,
    images: &[ducks_contract::ImageRef],
) -> Option<Summary> {
    let status = bot.queue.status(job).await.ok()?;
    let catalogue = bot.queue.catalogue_snapshot().await.ok().flatten();
    Some(Summary::of(
        status.request.as_ref()?,
        catalogue.as_deref(),
        images,
    ))
}

/// The interaction token a job's events carry on the bot's own stream.
pub(super) fn token_of(origin: &Origin) -> Option<&str> {
    match origin {
        Origin::Discord {
            interaction_token, ..
        } if !interaction_token.is_empty() => Some(interaction_token.expose()),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn edit_progress(
    bot: Arc<Bot>,
    job: JobId,
    origin: Origin,
    kind: EventKind,
    entries: Vec<String>,
    summary: Option<Arc<Summary>>,
    message_known: bool,
    edits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Done>,
) {
    let _permit = edits.acquire().await;
    let summary = match summary {
        Some(summary) => Some(summary),
        None => summary_of(&bot, &job, &[]).await.map(Arc::new),
    };
    let mut outcome = Done {
        job: job.clone(),
        ack: entries,
        summary: summary.clone(),
        message_known,
        ended: false,
    };
    if let (Some(token), Some(summary)) = (token_of(&origin), summary) {
        let card = render::progress(&job, &summary, &kind);
        match edit_in_turn(&bot, &job, token, &card).await {
            Ok(Some(posted)) if !message_known => {
                let _ = bot
                    .queue
                    .remember_reply(
                        ORIGIN,
                        &job,
                        &[("message", &posted.id), ("channel", &posted.channel_id)],
                    )
                    .await;
                outcome.message_known = true;
            }
            Err(RestError::Unavailable(error)) => {
                warn!(message = "Discord did not take a progress edit; it will be tried again.", job_id = %job, %error);
                outcome.ack.clear();
            }
            _ => {}
        }
    }
    let _ = done.send(outcome);
}

/// A progress edit, if the reply is still open to progress and no other replica is editing it.
async fn edit_in_turn(
    bot: &Bot,
    job: &JobId,
    token: &str,
    card: &Card,
) -> Result<Option<super::rest::Posted>, RestError> {
    let editor = editor_token(bot);
    // Another replica's edit takes milliseconds: wait a little for it rather than drop the
    // newest state; a result (Finished, Delivered) ends the progress for good.
    let mut turn = EditTurn::Busy;
    for _ in 0..10 {
        turn = bot
            .queue
            .begin_reply_edit(ORIGIN, job, &editor, TURN_LEASE, false)
            .await
            .map_err(|e| RestError::Unavailable(e.to_string()))?;
        if turn != EditTurn::Busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if turn != EditTurn::Granted {
        return Ok(None);
    }
    let edited = bot.rest.edit_original(token, &card.edit()).await;
    let _ = bot.queue.end_reply_edit(ORIGIN, job, &editor, false).await;
    match edited {
        Ok(posted) => Ok(Some(posted)),
        // Gone or expired: a progress edit is simply not shown.
        Err(RestError::TokenExpired | RestError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

async fn deliver_result(
    bot: Arc<Bot>,
    event: JobEvent,
    entries: Vec<String>,
    summary: Option<Arc<Summary>>,
    edits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Done>,
) {
    let _permit = edits.acquire().await;
    let job = event.job_id.clone();
    let editor = editor_token(&bot);
    let delivered = deliver(&bot, &event, summary, &editor).await;
    let _ = bot
        .queue
        .end_reply_edit(ORIGIN, &job, &editor, delivered)
        .await;
    let _ = done.send(Done {
        job,
        // Not delivered: left pending, so this or another replica tries again later.
        ack: if delivered { entries } else { Vec::new() },
        summary: None,
        message_known: true,
        ended: delivered,
    });
}

/// Posts a result once; true when it is out (or can never be).
async fn deliver(bot: &Bot, event: &JobEvent, summary: Option<Arc<Summary>>, editor: &str) -> bool {
    let job = &event.job_id;
    let images = match &event.kind {
        EventKind::Succeeded { images, .. } => images.as_slice(),
        _ => &[],
    };
    let summary = match summary {
        Some(summary) => Summary {
            seed: images.first().map(|i| i.seed).or(summary.seed),
            width: images.first().map(|i| i.width).or(summary.width),
            height: images.first().map(|i| i.height).or(summary.height),
            ..(*summary).clone()
        },
        None => match summary_of(bot, job, images).await {
            Some(summary) => summary,
            None => Summary {
                prompt: "(the request has expired)".into(),
                negative: String::new(),
                model: String::new(),
                width: None,
                height: None,
                steps: None,
                seed: images.first().map(|i| i.seed),
                count: images.len() as u32,
            },
        },
    };
    let requester = event
        .requester
        .name
        .clone()
        .unwrap_or_else(|| event.requester.id.clone());
    let reply = bot.queue.reply(ORIGIN, job).await.unwrap_or_default();
    let (card, files) = match &event.kind {
        EventKind::Succeeded { images, timings } => {
            let limit = reply
                .fields
                .get("attachment_limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(DEFAULT_ATTACHMENT_LIMIT);
            let (shown, files) = uploads(bot, images, limit).await;
            let link = images.first().map(|i| i.url.as_str()).unwrap_or_default();
            (
                render::result(job, &summary, &requester, &shown, link, timings),
                files,
            )
        }
        kind => (render::ended(job, &summary, kind), Vec::new()),
    };
    let reply_to = reply
        .fields
        .get("message")
        .and_then(|id| id.parse::<u64>().ok());
    // Everything slow (the status, the PNGs) is ready before the turn is taken, so the turn's
    // work (one edit within the REST deadline) ends well inside its lease.
    let deadline = Instant::now() + TURN_LEASE;
    loop {
        match bot
            .queue
            .begin_reply_edit(ORIGIN, job, editor, TURN_LEASE, true)
            .await
        {
            Ok(EditTurn::Granted) => break,
            Ok(EditTurn::Delivered) => return true,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) | Err(_) => return false,
        }
    }
    let Some(token) = token_of(&event.origin) else {
        return post_in_channel(bot, event, &card, &files, reply_to).await;
    };
    let mut edited = bot
        .rest
        .edit_original_with(token, &card.edit(), &files)
        .await;
    // A job that ends at once can beat its first answer to Discord: an unknown message is
    // asked for again before the result goes to the channel instead.
    for attempt in 0..4 {
        if !matches!(edited, Err(RestError::NotFound { .. })) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        edited = bot
            .rest
            .edit_original_with(token, &card.edit(), &files)
            .await;
    }
    match edited {
        Ok(_) => {
            bot.metrics.result("edited");
            true
        }
        Err(RestError::TokenExpired | RestError::NotFound { .. }) => {
            post_in_channel(bot, event, &card, &files, reply_to).await
        }
        Err(RestError::Unavailable(error)) => {
            warn!(message = "Discord did not take a result; it will be tried again.", job_id = %job, %error);
            false
        }
        Err(error) => {
            warn!(message = "Discord refused a result.", job_id = %job, %error);
            undeliverable(bot, event).await
        }
    }
}

/// Discord's upload limit for a bot's message where the interaction did not say.
const DEFAULT_ATTACHMENT_LIMIT: u64 = 10 * 1024 * 1024;

/// Whether an image link stops working some day (a presigned S3 link): such images are
/// uploaded with the message, so they stay visible as long as it exists.
fn expires(url: &str) -> bool {
    url.contains("X-Amz-Expires=")
}

/// The images as the message shows them: links that expire become uploads
/// (`attachment://duck-<n>.png`) where the PNG can be fetched and fits `limit` in all; the rest
/// stay links.
async fn uploads(bot: &Bot, images: &[ImageRef], limit: u64) -> (Vec<ImageRef>, Vec<Upload>) {
    let mut shown = images.to_vec();
    let mut files = Vec::new();
    let mut total = 0u64;
    for (n, image) in shown.iter_mut().enumerate() {
        if !expires(&image.url) {
            continue;
        }
        let Some(bytes) = bot.fetch_image(&image.url, limit - total.min(limit)).await else {
            warn!(message = "An image could not be fetched to upload, or is too large; its link, which expires, is shown instead.", key = %image.key);
            continue;
        };
        total += bytes.len() as u64;
        let filename = format!("duck-{}.png", n + 1);
        image.url = format!("attachment://{filename}");
        files.push(Upload { filename, bytes });
    }
    (shown, files)
}

/// The result as a new message in the job's channel, replying to the interaction's message.
async fn post_in_channel(
    bot: &Bot,
    event: &JobEvent,
    card: &Card,
    files: &[Upload],
    reply_to: Option<u64>,
) -> bool {
    let Origin::Discord { channel_id, .. } = &event.origin else {
        return undeliverable(bot, event).await;
    };
    let Ok(channel) = channel_id.parse::<u64>().map(ChannelId::new) else {
        return undeliverable(bot, event).await;
    };
    let reply_to = reply_to.map(|id| (channel, MessageId::new(id)));
    match bot
        .rest
        .post_in_channel(channel, &card.channel_message(reply_to), files)
        .await
    {
        Ok(_) => {
            bot.metrics.result("channel_message");
            true
        }
        Err(RestError::Unavailable(error)) => {
            warn!(message = "Discord did not take a result; it will be tried again.", job_id = %event.job_id, %error);
            false
        }
        Err(error) => {
            warn!(message = "The bot may not post the result in its channel; it stays readable through /jobs.", job_id = %event.job_id, %error);
            undeliverable(bot, event).await
        }
    }
}

async fn undeliverable(bot: &Bot, event: &JobEvent) -> bool {
    bot.metrics.result("undeliverable");
    bot.queue
        .note_undelivered(ORIGIN, &event.requester.id, &event.job_id)
        .await
        .is_ok()
}

/// Shows the new place in line of the jobs this replica queued that still wait.
async fn refresh_positions(bot: Arc<Bot>, edits: Arc<Semaphore>) {
    let jobs: Vec<(JobId, ducks_contract::JobRequest, Option<u64>)> = lock(&bot.queued)
        .iter()
        .map(|(id, q)| (id.clone(), q.request.clone(), q.position))
        .collect();
    for (job, request, shown) in jobs {
        let Ok(status) = bot.queue.status(&job).await else {
            continue;
        };
        if status.state != JobState::Queued {
            lock(&bot.queued).remove(&job);
            continue;
        }
        let Some(position) = status.position.filter(|p| Some(*p) != shown) else {
            continue;
        };
        let Some(token) = token_of(&request.origin) else {
            continue;
        };
        let _permit = edits.acquire().await;
        let catalogue = bot.queue.catalogue_snapshot().await.ok().flatten();
        let summary = Summary::of(&request, catalogue.as_deref(), &[]);
        let card = render::progress(&job, &summary, &EventKind::Queued { position });
        if edit_in_turn(&bot, &job, token, &card).await.is_ok()
            && let Some(queued) = lock(&bot.queued).get_mut(&job)
        {
            queued.position = Some(position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_links_expire_and_others_do_not() {
        assert!(expires(
            "http://127.0.0.1:9000/images/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=86400&X-Amz-Signature=ab"
        ));
        assert!(!expires("https://ducks.example.com/i/abc"));
        assert!(!expires("https://cdn.example.com/images/a.png"));
    }
}
