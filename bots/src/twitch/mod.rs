//! The Twitch bot: `!imagine`, `!models`, `!cancel` and the moderators' `!ducks …` in chat.
//!
//! twitch-irc's client keeps the connections, joins the channels again after a RECONNECT or a
//! dropped connection, and hands every chat line to [`Bot::heard`]. Every replica in a channel
//! receives every message, so a command is taken by the first replica to claim its message id in
//! Redis. What the bot says goes through the channel's outbox (`outbox.rs`), within the sending
//! budget all replicas share; results come back through `delivery.rs`, which reads the `twitch`
//! origin's events in the bot's consumer group and acknowledges each result only once Twitch
//! accepted the message.
//!
//! - `config.rs`: [`TwitchConfig`], channel rules, audiences. `transport.rs`: the connection to
//!   the configured server. `login.rs`: the token, refreshed and shared through Redis.
//! - `metrics.rs`: what `/metrics` shows.

mod config;
mod delivery;
mod login;
mod metrics;
mod outbox;
mod transport;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ducks_chat::{ChatCommand, CommandWords, help_line, imagine_usage, models_line, reply_line};
use ducks_contract::links::{LinkConfig, permanent_link};
use ducks_contract::{Caller, ImageRef, JobState, Origin, Requester, Scope};
use ducks_queue::{Cancelled, Queue, QueueError, ScopeLimits, Submitted};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use twitch_irc::message::{PrivmsgMessage, ServerMessage};
use twitch_irc::{ClientConfig, TwitchIRCClient};

pub use config::{Audience, ChannelRules, ChannelSettings, Standing, TwitchConfig};
use login::Credentials;
use metrics::Metrics;
use outbox::{Answer, Outbox};
use transport::Transport;

/// The origin kind of the bot's jobs, its event stream and its consumer group.
const ORIGIN: &str = "twitch";

type Client = TwitchIRCClient<Transport, Credentials>;

/// One bot replica: what the chat handler, the outboxes and the delivery share.
pub struct Bot {
    queue: Queue,
    config: TwitchConfig,
    /// The account's login, lowercase.
    login: String,
    words: CommandWords,
    /// This replica's name: its consumer in the event group, its token for reply turns.
    replica: String,
    client: Client,
    metrics: Metrics,
    /// Where short links point and the key that signs them.
    links: LinkConfig,
    outboxes: Mutex<HashMap<String, Arc<Outbox>>>,
    /// Event entries whose result went out, for the delivery loop to acknowledge.
    acks: mpsc::UnboundedSender<Vec<String>>,
    /// Chat is joined (a USERSTATE came back).
    joined: AtomicBool,
    stop: watch::Receiver<bool>,
}

/// Refuses to run without short permanent links: presigned S3 links are longer than a chat
/// message may be.
fn check_links(links: &LinkConfig) -> Result<(), String> {
    if links.base_url.trim().is_empty() || links.signing_key.is_empty() {
        return Err(
            "The Twitch bot needs short permanent image links, since a presigned S3 link is longer than a Twitch message: set links.base_url (the API's public address, DUCKS_LINKS__BASE_URL) and links.signing_key (DUCKS_LINKS__SIGNING_KEY), the same as the worker's and the API's."
                .into(),
        );
    }
    Ok(())
}

impl Bot {
    /// The outbox of `channel`, started on first use.
    fn outbox(self: &Arc<Self>, channel: &str) -> Arc<Outbox> {
        let mut outboxes = lock(&self.outboxes);
        if let Some(outbox) = outboxes.get(channel) {
            return outbox.clone();
        }
        let outbox = Outbox::new(channel, channel == self.login);
        outboxes.insert(channel.to_owned(), outbox.clone());
        tokio::spawn(outbox::run(self.clone(), outbox.clone(), self.stop.clone()));
        outbox
    }

    fn acknowledge(&self, entries: Vec<String>) {
        if !entries.is_empty() {
            let _ = self.acks.send(entries);
        }
    }

    /// A short link to `image`: the worker's when it already is one, otherwise made here.
    fn short_link(&self, image: &ImageRef) -> String {
        let base = self.links.base_url.trim_end_matches('/');
        if image.url.starts_with(&format!("{base}/i/")) {
            image.url.clone()
        } else {
            permanent_link(base, &image.key, &self.links.signing_key)
        }
    }

    /// One line of chat from anyone.
    fn heard(self: &Arc<Self>, message: ServerMessage) {
        match message {
            ServerMessage::Privmsg(message) => {
                if message.sender.login == self.login {
                    // Its own lines, which other replicas' connections receive.
                    return;
                }
                let Some(command) = ChatCommand::parse(&message.message_text, &self.words) else {
                    return;
                };
                let bot = self.clone();
                tokio::spawn(async move { bot.take(message, command).await });
            }
            ServerMessage::UserState(state) => {
                self.joined.store(true, Ordering::Relaxed);
                let standing = Standing::from_badges(state.badges.iter().map(|b| b.name.as_str()));
                let outbox = self.outbox(&state.channel_login);
                outbox
                    .moderator
                    .store(standing.moderates(), Ordering::Relaxed);
                // After a PRIVMSG, Twitch's USERSTATE carries the new message's id.
                if state.source.tags.0.contains_key("id") {
                    outbox.answered(Answer::Accepted);
                }
            }
            ServerMessage::Notice(notice) => match (&notice.channel_login, &notice.message_id) {
                (Some(channel), Some(id)) if id.starts_with("msg_") => {
                    self.outbox(channel).answered(Answer::Refused(id.clone()));
                }
                _ if notice.message_text.contains("Login authentication failed")
                    || notice.message_text.contains("Improperly formatted auth") =>
                {
                    error!(
                        message = "Twitch refused the bot's login: check twitch.login and twitch.token (docs/twitch.md).",
                        notice = %notice.message_text
                    );
                }
                _ => {}
            },
            ServerMessage::Reconnect(_) => {
                info!(message = "Twitch asked the bot to reconnect; reconnecting.");
            }
            _ => {}
        }
    }

    /// A command this replica saw. Taken only if no other replica took it first.
    async fn take(self: Arc<Self>, message: PrivmsgMessage, command: ChatCommand) {
        match self.queue.first_to_take(ORIGIN, &message.message_id).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                warn!(message = "Redis is unreachable; a chat command was not taken.", %error);
                return;
            }
        }
        let channel = message.channel_login.clone();
        let standing = Standing::from_badges(message.badges.iter().map(|b| b.name.as_str()));
        let user = message.sender.login.clone();
        self.metrics.command(kind_of(&command));
        if command.for_moderators() && !standing.moderates() {
            self.outbox(&channel).reply(
                reply_line(&user, "only the channel's moderators can do that."),
                Some(message.message_id.clone()),
            );
            return;
        }
        let answer = match command {
            ChatCommand::Imagine(imagine) => self.imagine(&message, &standing, imagine).await,
            ChatCommand::Models => Some(match self.queue.catalogue_snapshot().await {
                Ok(Some(catalogue)) => models_line(&catalogue),
                Ok(None) => reply_line(
                    &user,
                    "no models are published yet: a worker has not started.",
                ),
                Err(_) => reply_line(&user, UNREACHABLE),
            }),
            ChatCommand::Cancel => Some(self.cancel_own(&message).await),
            ChatCommand::Help | ChatCommand::UnknownAdmin(_) => Some(help_line(&self.words)),
            ChatCommand::Pause | ChatCommand::Resume => {
                let pause = matches!(command, ChatCommand::Pause);
                Some(match self.queue.set_paused(ORIGIN, &channel, pause).await {
                    Ok(()) if pause => reply_line(
                        &user,
                        "DUCKS is paused in this channel: new requests wait until a moderator types !ducks resume.",
                    ),
                    Ok(()) => reply_line(&user, "DUCKS takes requests again."),
                    Err(_) => reply_line(&user, UNREACHABLE),
                })
            }
            ChatCommand::CancelUser(login) => Some(self.cancel_user(&message, &login).await),
        };
        if let Some(text) = answer {
            self.outbox(&channel)
                .reply(text, Some(message.message_id.clone()));
        }
    }

    /// `!imagine`: queued (the acknowledgement goes out later), or the reason why not.
    async fn imagine(
        self: &Arc<Self>,
        message: &PrivmsgMessage,
        standing: &Standing,
        imagine: Result<ducks_chat::Imagine, ducks_contract::ValidationError>,
    ) -> Option<String> {
        let channel = &message.channel_login;
        let user = &message.sender.login;
        let rules = self.config.rules(channel);
        match self.queue.paused(ORIGIN, channel).await {
            Ok(false) => {}
            Ok(true) => return Some(reply_line(user, "DUCKS is paused in this channel.")),
            Err(_) => return Some(reply_line(user, UNREACHABLE)),
        }
        if !rules.allowed.admits(standing) {
            return Some(reply_line(user, rules.allowed.refusal()));
        }
        let imagine = match imagine {
            Ok(imagine) => imagine,
            Err(mistake) => {
                return Some(reply_line(
                    user,
                    &format!("{} {}", mistake.0, imagine_usage(&self.words)),
                ));
            }
        };
        if imagine.prompt.trim().is_empty() {
            return Some(reply_line(user, &imagine_usage(&self.words)));
        }
        // The word itself is never repeated back into chat.
        if rules.blocked_word(&imagine.prompt).is_some() {
            return Some(reply_line(
                user,
                "that prompt uses a word this channel does not allow.",
            ));
        }
        let origin = Origin::Twitch {
            channel: channel.clone(),
            message_id: Some(message.message_id.clone()),
        };
        let requester = Requester {
            id: message.sender.id.clone(),
            name: Some(user.clone()),
        };
        let request = match imagine.into_request(origin, requester) {
            Ok(request) => request,
            Err(mistake) => return Some(reply_line(user, &mistake.0)),
        };
        // Moderators are exempt from cooldowns.
        let user_cooldown = format!("{ORIGIN}:{channel}:{}", message.sender.id);
        let channel_cooldown = format!("{ORIGIN}:{channel}");
        let cooldowns: Vec<(&str, Duration)> = if standing.moderates() {
            Vec::new()
        } else {
            vec![
                (user_cooldown.as_str(), rules.user_cooldown),
                (channel_cooldown.as_str(), rules.channel_cooldown),
            ]
        };
        match self.queue.take_cooldowns(&cooldowns).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                return Some(reply_line(
                    user,
                    &format!("wait {} s before the next image.", wait.as_secs().max(1)),
                ));
            }
            Err(_) => return Some(reply_line(user, UNREACHABLE)),
        }
        let limits = ScopeLimits {
            in_flight: rules.max_jobs,
            ..ScopeLimits::default()
        };
        let refusal = match self.queue.submit_checked_limited(request, limits).await {
            Ok(Submitted::Queued { id, position }) => {
                let _ = self
                    .queue
                    .remember_chatter(ORIGIN, channel, user, &message.sender.id)
                    .await;
                self.outbox(channel)
                    .ack(user, position, id, Some(message.message_id.clone()));
                return None;
            }
            Ok(Submitted::Duplicate { .. }) => return None,
            Err(QueueError::Redis(error)) => {
                warn!(message = "Could not submit a Twitch job.", %error);
                UNREACHABLE.to_owned()
            }
            Err(refusal) => refusal.to_string(),
        };
        let names: Vec<&str> = cooldowns.iter().map(|(name, _)| *name).collect();
        let _ = self.queue.return_cooldowns(&names).await;
        Some(reply_line(user, &refusal))
    }

    /// `!cancel`: the caller's newest unfinished job in this channel.
    async fn cancel_own(&self, message: &PrivmsgMessage) -> String {
        let user = &message.sender.login;
        let caller = Caller::Requester {
            origin_kind: ORIGIN,
            id: message.sender.id.clone(),
        };
        match self
            .cancel_jobs_of(&message.sender.id, &message.channel_login, &caller, true)
            .await
        {
            Ok(0) => reply_line(user, "you have nothing in line here."),
            // The job's own line says it was cancelled.
            Ok(_) => reply_line(user, "stopping your last image."),
            Err(text) => reply_line(user, &text),
        }
    }

    /// `!ducks cancel @user`: every unfinished job of that viewer in this channel.
    async fn cancel_user(&self, message: &PrivmsgMessage, login: &str) -> String {
        let user = &message.sender.login;
        let channel = &message.channel_login;
        let id = match self.queue.chatter(ORIGIN, channel, login).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                return reply_line(
                    user,
                    &format!("{login} has asked for no images here lately."),
                );
            }
            Err(_) => return reply_line(user, UNREACHABLE),
        };
        let caller = Caller::Moderator {
            origin_kind: ORIGIN,
            id: message.sender.id.clone(),
            scope: Scope {
                kind: ORIGIN,
                name: channel.clone(),
            },
        };
        match self.cancel_jobs_of(&id, channel, &caller, false).await {
            Ok(0) => reply_line(user, &format!("{login} has nothing in line here.")),
            Ok(n) => reply_line(user, &format!("stopping {n} of {login}'s images.")),
            Err(text) => reply_line(user, &text),
        }
    }

    /// Cancels `requester`'s unfinished jobs in `channel` (only the newest with `newest_only`).
    async fn cancel_jobs_of(
        &self,
        requester: &str,
        channel: &str,
        caller: &Caller,
        newest_only: bool,
    ) -> Result<usize, String> {
        let jobs = self
            .queue
            .jobs_of(ORIGIN, requester)
            .await
            .map_err(|_| UNREACHABLE.to_owned())?;
        let mut cancelled = 0;
        for job in jobs.iter().rev() {
            let Ok(status) = self.queue.status(job).await else {
                continue;
            };
            let here = matches!(
                status.request.as_ref().map(|r| &r.origin),
                Some(Origin::Twitch { channel: c, .. }) if c == channel
            );
            if !here
                || matches!(
                    status.state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                )
            {
                continue;
            }
            match self.queue.cancel(job, caller).await {
                Ok(Cancelled::Cancelled | Cancelled::Requested) => cancelled += 1,
                Ok(Cancelled::AlreadyEnded(_)) => {}
                Err(QueueError::Redis(_)) => return Err(UNREACHABLE.to_owned()),
                Err(refusal) => return Err(refusal.to_string()),
            }
            if newest_only && cancelled > 0 {
                break;
            }
        }
        Ok(cancelled)
    }
}

const UNREACHABLE: &str = "the image queue is unreachable right now. Try again in a minute.";

/// A label for metrics; never the message's content.
fn kind_of(command: &ChatCommand) -> &'static str {
    match command {
        ChatCommand::Imagine(_) => "imagine",
        ChatCommand::Models => "models",
        ChatCommand::Cancel => "cancel",
        ChatCommand::Help => "help",
        ChatCommand::Pause => "pause",
        ChatCommand::Resume => "resume",
        ChatCommand::CancelUser(_) => "cancel_user",
        ChatCommand::UnknownAdmin(_) => "unknown",
    }
}

/// Runs the bot until `shutdown` resolves: the chat client, the outboxes, the delivery of
/// results and the probes.
pub async fn run(
    queue: Queue,
    config: TwitchConfig,
    links: LinkConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    config.check()?;
    check_links(&links)?;
    transport::use_server(config::Server::parse(&config.server)?)?;
    let credentials = Credentials::new(queue.clone(), &config)?;
    // A refresh token Twitch refuses is better said now than on every reconnect.
    credentials.access_token().await?;
    let mut client_config = ClientConfig::new_simple(credentials.clone());
    // The outboxes send one message at a time per channel: one connection is enough.
    client_config.max_waiting_messages_per_connection = 1_000;
    let (mut incoming, client) = Client::new(client_config);
    let channels: HashSet<String> = config.channel_list().into_iter().collect();
    client
        .set_wanted_channels(channels.clone())
        .map_err(|e| format!("twitch.channels: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("Could not listen on {}: {e}", config.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let replica = if config.consumer.is_empty() {
        ducks_queue::default_consumer_name(ORIGIN)
    } else {
        config.consumer.clone()
    };
    let bot = Arc::new(Bot {
        queue,
        login: config.login.trim().to_ascii_lowercase(),
        words: config.words(),
        config,
        replica,
        client,
        metrics: Metrics::default(),
        links,
        outboxes: Mutex::default(),
        acks: acks_tx,
        joined: AtomicBool::new(false),
        stop: stop_rx.clone(),
    });
    for channel in &channels {
        bot.outbox(channel);
    }
    info!(
        message = "The Twitch bot is starting.",
        login = %bot.login,
        channels = channels.len(),
        address = %listener.local_addr().map_err(|e| e.to_string())?,
    );
    let probes = tokio::spawn(serve_probes(listener, bot.clone(), stop_rx.clone()));
    let refresher = tokio::spawn(credentials.keep_fresh(stop_rx.clone()));
    let delivery = tokio::spawn(delivery::run(bot.clone(), acks_rx, stop_rx.clone()));
    let chat = {
        let bot = bot.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = incoming.recv() => match message {
                        Some(message) => bot.heard(message),
                        None => return,
                    },
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
        })
    };
    shutdown.await;
    info!(message = "Stopping the Twitch bot.");
    let _ = stop_tx.send(true);
    let _ = chat.await;
    let _ = delivery.await;
    let _ = refresher.await;
    let _ = probes.await;
    let waiting: usize = lock(&bot.outboxes)
        .values()
        .map(|o| o.results_waiting())
        .sum();
    if waiting > 0 {
        info!(
            message = "Results not yet posted stay pending; the next start posts them.",
            waiting
        );
    }
    Ok(())
}

async fn serve_probes(
    listener: tokio::net::TcpListener,
    bot: Arc<Bot>,
    mut stop: watch::Receiver<bool>,
) {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(bot);
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
}

async fn ready(State(bot): State<Arc<Bot>>) -> impl IntoResponse {
    if !bot.joined.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not in chat yet\n")
    } else if !bot.queue.ping().await {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(bot): State<Arc<Bot>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        bot.metrics.render(),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
