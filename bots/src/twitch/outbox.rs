//! Everything the bot says in one channel goes through that channel's [`Outbox`], sent by one
//! task, one message at a time, within the sending budget every replica shares through Redis.
//!
//! - **Results first.** A result is never dropped and may use the whole budget. Replies
//!   (refusals, help, model lists) and acknowledgements only use the budget while a quarter of
//!   it is left, so across replicas results always find room; acknowledgements waiting together
//!   go out merged in one line (`Queued: @a #3, @b #4.`), and any older than `ack_max_age_secs`
//!   are dropped.
//! - **Sent means accepted.** Twitch answers every PRIVMSG with a USERSTATE carrying the new
//!   message's id, or refuses it with a NOTICE. A refused message (`msg_ratelimit`,
//!   `msg_duplicate`, …) is still to send; one with no answer within `confirm_within_ms` (the
//!   connection dropped) is sent again.
//! - **Never the same text twice in a row**, which Twitch refuses within 30 s.
//! - **Each result once.** Before a result goes out, the replica takes the job's reply turn in
//!   Redis; a result another replica already delivered is only acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ducks_chat::{MAX_LINE_CHARS, merged_queued_line, queued_line};
use ducks_contract::JobId;
use ducks_queue::{EditTurn, OverlayImage};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use twitch_irc::message::{IRCMessage, IRCTags};

use super::{Bot, ORIGIN, lock};

/// How long a result's reply turn is held: longer than sending and confirming it takes.
const TURN_LEASE: Duration = Duration::from_secs(20);
/// Attempts at one reply or acknowledgement before it is given up.
const MINOR_ATTEMPTS: u32 = 3;
/// Attempts at one result that got no answer before it is kept for later instead
/// (`note_undelivered`); refusals that waiting can get past do not count.
const RESULT_ATTEMPTS: u32 = 10;

/// What Twitch said about the message just sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    /// A NOTICE's `msg-id`.
    Refused(String),
}

/// A result to post, and the event entries to acknowledge once it is out.
pub struct ResultMessage {
    pub job: JobId,
    pub text: String,
    pub reply_to: Option<String>,
    pub requester_id: String,
    pub entries: Vec<String>,
    pub attempts: u32,
    /// The image for the channel's stream overlay, once the line is out.
    pub overlay: Option<OverlayImage>,
}

struct Minor {
    text: String,
    reply_to: Option<String>,
    at: Instant,
    attempts: u32,
}

struct Ack {
    user: String,
    position: u64,
    job: JobId,
    reply_to: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct Waiting {
    results: VecDeque<ResultMessage>,
    replies: VecDeque<Minor>,
    acks: Vec<Ack>,
}

/// One channel's outgoing messages.
pub struct Outbox {
    pub channel: String,
    waiting: Mutex<Waiting>,
    wake: Notify,
    /// From the bot's own badges (USERSTATE): its budget is the moderators' one.
    pub moderator: AtomicBool,
    answers_tx: mpsc::UnboundedSender<Answer>,
    answers_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Answer>>,
    /// Set when Twitch refused a message for its rate or slow mode: nothing is sent before.
    hold_until: Mutex<Option<Instant>>,
}

/// What a send came to.
enum Sent {
    Accepted,
    Refused(String),
    Unanswered,
}

impl Outbox {
    pub fn new(channel: &str, moderator: bool) -> Arc<Outbox> {
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        Arc::new(Outbox {
            channel: channel.to_owned(),
            waiting: Mutex::default(),
            wake: Notify::new(),
            moderator: AtomicBool::new(moderator),
            answers_tx,
            answers_rx: tokio::sync::Mutex::new(answers_rx),
            hold_until: Mutex::new(None),
        })
    }

    pub fn result(&self, message: ResultMessage) {
        let mut waiting = lock(&self.waiting);
        // Its acknowledgement has nothing left to say.
        waiting.acks.retain(|ack| ack.job != message.job);
        waiting.results.push_back(message);
        drop(waiting);
        self.wake.notify_one();
    }

    pub fn reply(&self, text: String, reply_to: Option<String>) {
        lock(&self.waiting).replies.push_back(Minor {
            text,
            reply_to,
            at: Instant::now(),
            attempts: 0,
        });
        self.wake.notify_one();
    }

    pub fn ack(&self, user: &str, position: u64, job: JobId, reply_to: Option<String>) {
        lock(&self.waiting).acks.push(Ack {
            user: user.to_owned(),
            position,
            job,
            reply_to,
            at: Instant::now(),
        });
        self.wake.notify_one();
    }

    /// Twitch's answer to a message this replica sent in the channel.
    pub fn answered(&self, answer: Answer) {
        let _ = self.answers_tx.send(answer);
    }

    /// Results not yet out, for a clean shutdown's log.
    pub fn results_waiting(&self) -> usize {
        lock(&self.waiting).results.len()
    }
}

/// What the sender takes next.
enum Next {
    Result(ResultMessage),
    Reply(Minor),
    Acks(Vec<Ack>),
}

impl Next {
    fn is_result(&self) -> bool {
        matches!(self, Next::Result(_))
    }
}

/// Sends `outbox`'s messages until `stop`.
pub async fn run(bot: Arc<Bot>, outbox: Arc<Outbox>, mut stop: watch::Receiver<bool>) {
    let mut last_text = String::new();
    let account = format!("{ORIGIN}:{}:{}", bot.login, outbox.channel);
    // Twitch counts a message when it arrives, the budget when it is taken: a tenth of the
    // window (at most a second) more covers the time between the two.
    let configured = Duration::from_millis(bot.config.budget_window_ms);
    let window = configured + (configured / 10).min(Duration::from_secs(1));
    let ack_max_age = Duration::from_secs(bot.config.ack_max_age_secs);
    loop {
        let idle = {
            let mut waiting = lock(&outbox.waiting);
            waiting.replies.retain(|r| r.at.elapsed() < ack_max_age);
            waiting.acks.retain(|a| a.at.elapsed() < ack_max_age);
            waiting.results.is_empty() && waiting.replies.is_empty() && waiting.acks.is_empty()
        };
        if idle {
            tokio::select! {
                _ = outbox.wake.notified() => continue,
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
        let hold = lock(&outbox.hold_until).take();
        if let Some(until) = hold {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
        let Some(next) = take_next(&outbox) else {
            continue;
        };
        // A result first takes its reply turn: one another replica posted is only acknowledged.
        if let Next::Result(result) = &next {
            match bot
                .queue
                .begin_reply_edit(ORIGIN, &result.job, &bot.replica, TURN_LEASE, true)
                .await
            {
                Ok(EditTurn::Granted) => {}
                Ok(EditTurn::Delivered) => {
                    if let Next::Result(result) = next {
                        bot.acknowledge(result.entries);
                    }
                    continue;
                }
                // Another replica is posting it: look again once its turn would have lapsed.
                Ok(_) | Err(_) => {
                    if let Next::Result(result) = next {
                        later(&outbox, result, TURN_LEASE);
                    }
                    continue;
                }
            }
        }
        // The budget, taken just before sending: the whole of it for a result, three quarters
        // for anything else.
        let full = if outbox.moderator.load(Ordering::Relaxed) {
            bot.config.budget_moderator_limit
        } else {
            bot.config.budget_limit
        };
        let is_result = next.is_result();
        let limit = if is_result {
            full
        } else {
            (full * 3 / 4).max(1)
        };
        match bot.queue.take_send_budget(&account, window, limit).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                put_back(&outbox, next);
                bot.metrics.budget_wait();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A result may use the budget held back for it.
                    _ = outbox.wake.notified(), if !is_result => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                continue;
            }
            Err(error) => {
                put_back(&outbox, next);
                warn!(message = "The sending budget is unreachable; waiting.", %error);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                continue;
            }
        }
        match next {
            Next::Result(result) => send_result(&bot, &outbox, result, &mut last_text).await,
            Next::Reply(mut minor) => {
                minor.attempts += 1;
                match send(
                    &bot,
                    &outbox,
                    &minor.text,
                    minor.reply_to.as_deref(),
                    &mut last_text,
                )
                .await
                {
                    Sent::Accepted => {}
                    Sent::Refused(ref why) if !retryable(why) => {}
                    _ if minor.attempts >= MINOR_ATTEMPTS => {}
                    _ => lock(&outbox.waiting).replies.push_front(minor),
                }
            }
            Next::Acks(acks) => {
                let text = ack_text(&acks);
                let reply_to = if acks.len() == 1 {
                    acks[0].reply_to.clone()
                } else {
                    None
                };
                match send(&bot, &outbox, &text, reply_to.as_deref(), &mut last_text).await {
                    // An acknowledgement that did not go out is simply not said: the result
                    // will be.
                    Sent::Accepted | Sent::Refused(_) | Sent::Unanswered => {}
                }
            }
        }
        debug!(channel = %outbox.channel, result = is_result, "sent");
    }
}

/// Returns what could not be sent yet to the front of its line.
fn put_back(outbox: &Outbox, next: Next) {
    let mut waiting = lock(&outbox.waiting);
    match next {
        Next::Result(result) => waiting.results.push_front(result),
        Next::Reply(reply) => waiting.replies.push_front(reply),
        Next::Acks(acks) => {
            waiting.acks.splice(0..0, acks);
        }
    }
}

fn take_next(outbox: &Outbox) -> Option<Next> {
    let mut waiting = lock(&outbox.waiting);
    if let Some(result) = waiting.results.pop_front() {
        return Some(Next::Result(result));
    }
    if let Some(reply) = waiting.replies.pop_front() {
        return Some(Next::Reply(reply));
    }
    if waiting.acks.is_empty() {
        return None;
    }
    // As many as fit in one line, oldest first.
    let mut taken = 0;
    while taken < waiting.acks.len() {
        let candidate: Vec<(&str, u64)> = waiting.acks[..=taken]
            .iter()
            .map(|a| (a.user.as_str(), a.position))
            .collect();
        let line = merged_queued_line(&candidate);
        if taken > 0 && (line.chars().count() >= MAX_LINE_CHARS || line.ends_with('…')) {
            break;
        }
        taken += 1;
    }
    Some(Next::Acks(waiting.acks.drain(..taken).collect()))
}

fn ack_text(acks: &[Ack]) -> String {
    match acks {
        [one] => queued_line(&one.user, one.position),
        many => merged_queued_line(
            &many
                .iter()
                .map(|a| (a.user.as_str(), a.position))
                .collect::<Vec<_>>(),
        ),
    }
}

/// Refusals that sending again later can get past.
fn retryable(msg_id: &str) -> bool {
    matches!(msg_id, "msg_ratelimit" | "msg_duplicate" | "msg_slowmode")
}

/// Sends a result whose reply turn this replica holds.
async fn send_result(
    bot: &Arc<Bot>,
    outbox: &Arc<Outbox>,
    mut result: ResultMessage,
    last_text: &mut String,
) {
    let sent = send(
        bot,
        outbox,
        &result.text,
        result.reply_to.as_deref(),
        last_text,
    )
    .await;
    let delivered = matches!(sent, Sent::Accepted);
    let _ = bot
        .queue
        .end_reply_edit(ORIGIN, &result.job, &bot.replica, delivered)
        .await;
    match sent {
        Sent::Accepted => {
            bot.metrics.result("posted");
            if let Some(image) = &result.overlay
                && let Err(error) = bot
                    .queue
                    .add_to_overlay(ORIGIN, &outbox.channel, image)
                    .await
            {
                warn!(message = "Could not add a result to the channel's overlay.", %error);
            }
            bot.acknowledge(result.entries);
        }
        Sent::Refused(why) if !retryable(&why) => undeliverable(bot, result, &why).await,
        // Still to send, before anything else (after the pause a rate refusal started).
        Sent::Refused(_) => lock(&outbox.waiting).results.push_front(result),
        Sent::Unanswered => {
            result.attempts += 1;
            if result.attempts >= RESULT_ATTEMPTS {
                undeliverable(bot, result, "no answer").await
            } else {
                lock(&outbox.waiting).results.push_front(result)
            }
        }
    }
}

/// Puts a result back after `delay`.
fn later(outbox: &Arc<Outbox>, result: ResultMessage, delay: Duration) {
    let outbox = outbox.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        outbox.result(result);
    });
}

/// A result the channel will not take (the bot is banned, the channel is suspended): kept for
/// its requester, and its event acknowledged.
async fn undeliverable(bot: &Arc<Bot>, result: ResultMessage, why: &str) {
    warn!(
        message = "Twitch would not take a result; it is kept as undelivered.",
        job = %result.job,
        reason = why
    );
    bot.metrics.result("undeliverable");
    if bot
        .queue
        .note_undelivered(ORIGIN, &result.requester_id, &result.job)
        .await
        .is_ok()
    {
        bot.acknowledge(result.entries);
    }
}

/// Sends one line and waits for Twitch's answer.
async fn send(
    bot: &Arc<Bot>,
    outbox: &Arc<Outbox>,
    text: &str,
    reply_to: Option<&str>,
    last_text: &mut String,
) -> Sent {
    let mut text = text.to_owned();
    if text == *last_text {
        // Twitch refuses the same message twice within 30 s.
        text = ducks_chat::chat_line(&format!("{text} ·"));
    }
    let mut answers = outbox.answers_rx.lock().await;
    // Answers to earlier messages that came after their wait ended.
    while answers.try_recv().is_ok() {}
    let mut tags = IRCTags::new();
    if let Some(parent) = reply_to {
        tags.0
            .insert("reply-parent-msg-id".to_owned(), parent.to_owned());
    }
    let message = IRCMessage::new(
        tags,
        None,
        "PRIVMSG".to_owned(),
        vec![format!("#{}", outbox.channel), text.clone()],
    );
    bot.metrics.sent();
    if let Err(error) = bot.client.send_message(message).await {
        warn!(message = "Could not send to Twitch chat.", channel = %outbox.channel, %error);
        return Sent::Unanswered;
    }
    let within = Duration::from_millis(bot.config.confirm_within_ms);
    let deadline = Instant::now() + within;
    match tokio::time::timeout_at(deadline, answers.recv()).await {
        Ok(Some(Answer::Accepted)) => {
            *last_text = text;
            Sent::Accepted
        }
        Ok(Some(Answer::Refused(why))) => {
            info!(message = "Twitch refused a message.", channel = %outbox.channel, reason = %why);
            bot.metrics.refused(&why);
            if why == "msg_duplicate" {
                *last_text = text;
            } else if retryable(&why) {
                // Over Twitch's count (another client on the account, or a budget set too
                // high) or in slow mode: let a whole window pass before the next message.
                let pause = Duration::from_millis(bot.config.budget_window_ms);
                *lock(&outbox.hold_until) = Some(Instant::now() + pause);
            }
            Sent::Refused(why)
        }
        Ok(None) | Err(_) => Sent::Unanswered,
    }
}
