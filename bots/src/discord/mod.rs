//! The Discord bot: `/imagine`, `/models`, `/jobs`, and the Reroll, Cancel and Details buttons.
//!
//! Interactions arrive over serenity's gateway client (`gateway.rs`) or Discord's HTTP
//! interactions endpoint (`endpoint.rs`); both hand them to [`Bot::answer`], which answers within
//! Discord's 3 seconds (deferring only when Redis is slow). Results come back through
//! `delivery.rs`, which reads the `discord` origin's events in the bot's consumer group and edits
//! each job's message in place, acknowledging an event only once Discord took the edit.
//!
//! - `config.rs`: [`DiscordConfig`]. `rest.rs`: Discord's REST API with its rate limits.
//! - `commands.rs`: the commands' definitions and handlers. `render.rs`: every message, pure.
//! - `metrics.rs`: what `/metrics` shows.

mod commands;
mod config;
mod delivery;
mod endpoint;
mod gateway;
mod metrics;
mod render;
mod rest;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ducks_chat::Summary;
use ducks_contract::{Caller, JobId, JobRequest, Scope};
use ducks_queue::{Cancelled, Queue, QueueError};
use serenity::all::{ComponentInteraction, Interaction, Permissions};
use serenity::builder::{
    CreateAutocompleteResponse, CreateInteractionResponse, CreateInteractionResponseMessage,
};
use serenity::model::id::GuildId;
use tokio::time::Instant;
use tracing::{info, warn};

pub use config::{ConnectMode, DiscordConfig};
use metrics::Metrics;
use render::{Button, Card};
use rest::Rest;

/// The origin kind of the bot's jobs, its event stream and its consumer group.
const ORIGIN: &str = "discord";

/// One bot replica: what every interaction and event handler shares.
pub struct Bot {
    queue: Queue,
    rest: Rest,
    config: DiscordConfig,
    metrics: Arc<Metrics>,
    /// This replica's name: its consumer in the event group, its token for edit turns.
    replica: String,
    /// Jobs this replica queued that may still wait: their place in line is refreshed.
    queued: Mutex<HashMap<JobId, QueuedJob>>,
    /// Fetches images whose links expire, to upload them with the result.
    images: reqwest::Client,
    /// The bot itself, for work it starts in the background.
    me: std::sync::Weak<Bot>,
}

/// A queued job whose message shows its place in line.
struct QueuedJob {
    request: JobRequest,
    position: Option<u64>,
}

impl Bot {
    pub fn new(queue: Queue, config: DiscordConfig) -> Result<Arc<Bot>, String> {
        config.check()?;
        let metrics = Arc::new(Metrics::default());
        let rest = Rest::new(
            &config.api_base,
            &config.token,
            config.application_id,
            metrics.clone(),
        )?;
        let replica = if config.consumer.is_empty() {
            ducks_queue::default_consumer_name("discord")
        } else {
            config.consumer.clone()
        };
        let images = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("Could not build the HTTP client: {e}"))?;
        Ok(Arc::new_cyclic(|me| Bot {
            queue,
            rest,
            config,
            metrics,
            replica,
            queued: Mutex::new(HashMap::new()),
            images,
            me: me.clone(),
        }))
    }

    /// The first answer to an interaction, ready within `answer_within_ms`: the handler's own
    /// answer, or a deferral while the handler finishes and then edits it in.
    pub async fn answer(self: &Arc<Self>, interaction: Interaction) -> CreateInteractionResponse {
        let received = Instant::now();
        let kind = kind_of(&interaction);
        self.metrics.interaction(kind);
        let token = interaction.token().to_owned();
        let private = !matches!(kind, "imagine" | "models" | "reroll");
        let bot = self.clone();
        let mut work = tokio::spawn(async move { bot.handle(interaction).await });
        let within = Duration::from_millis(self.config.answer_within_ms);
        let response = match tokio::time::timeout(within, &mut work).await {
            Ok(Ok(handled)) => handled.response(),
            // Autocomplete can only answer with choices: none, rather than an error message.
            Ok(Err(_)) | Err(_) if kind == "autocomplete" => {
                CreateInteractionResponse::Autocomplete(Default::default())
            }
            Ok(Err(panic)) => {
                warn!(message = "An interaction handler failed.", kind, error = %panic);
                render::private(FAILED).response()
            }
            Err(_) => {
                let bot = self.clone();
                tokio::spawn(async move { bot.finish_deferred(work, token, private).await });
                CreateInteractionResponse::Defer(
                    CreateInteractionResponseMessage::new().ephemeral(private),
                )
            }
        };
        self.metrics.first_answer(received.elapsed());
        response
    }

    /// Edits a deferred answer in once its handler is done. A public deferral whose answer is
    /// private (a refusal) is deleted and the answer sent as a private follow-up, so a refusal
    /// is never shown to the whole channel.
    async fn finish_deferred(
        &self,
        work: tokio::task::JoinHandle<Handled>,
        token: String,
        deferred_private: bool,
    ) {
        let card = match work.await {
            Ok(Handled::Card(card)) => card,
            Ok(_) => return,
            Err(panic) => {
                warn!(message = "An interaction handler failed.", error = %panic);
                render::private(FAILED)
            }
        };
        // The deferral may still be on its way to Discord: an unknown message is tried again.
        for attempt in 0..5 {
            let sent = if card.private && !deferred_private {
                match self.rest.delete_original(&token).await {
                    Ok(()) => self.rest.followup(&token, &card.followup()).await.map(drop),
                    Err(error) => Err(error),
                }
            } else {
                self.rest
                    .edit_original(&token, &card.edit())
                    .await
                    .map(drop)
            };
            match sent {
                Ok(()) => return,
                Err(rest::RestError::NotFound { .. }) if attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(error) => {
                    warn!(message = "Could not edit a deferred answer in.", %error);
                    return;
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, interaction: Interaction) -> Handled {
        let card = match &interaction {
            Interaction::Ping(_) => return Handled::Pong,
            Interaction::Autocomplete(command) => {
                return Handled::Choices(self.autocomplete(command).await);
            }
            Interaction::Command(command) => match command.data.name.as_str() {
                "imagine" => self.imagine(command).await,
                "models" => self.models().await,
                "jobs" => self.jobs(command).await,
                other => render::private(&format!(
                    "`/{other}` is not a DUCKS command any more: run `ducks bots discord register` to update the list."
                )),
            },
            Interaction::Component(component) => self.button(component).await,
            _ => render::private("DUCKS does not handle this kind of interaction."),
        };
        Handled::Card(card)
    }

    async fn button(&self, component: &ComponentInteraction) -> Card {
        let Some(button) = Button::parse(&component.data.custom_id) else {
            return render::private("This button belongs to an older version of DUCKS.");
        };
        match button {
            Button::Cancel(job) => self.cancel(component, &job).await,
            Button::Details(job) => match self.queue.status(&job).await {
                Ok(status) => match &status.request {
                    Some(request) => {
                        let catalogue = self.queue.catalogue_snapshot().await.ok().flatten();
                        let images = match status.last_event.as_ref().map(|e| &e.kind) {
                            Some(ducks_contract::EventKind::Succeeded { images, .. }) => {
                                images.as_slice()
                            }
                            _ => &[],
                        };
                        let summary = Summary::of(request, catalogue.as_deref(), images);
                        render::details(&status, &summary)
                    }
                    None => render::private("This job could not be read."),
                },
                Err(QueueError::NotFound(_)) => render::private(&self.too_old()),
                Err(_) => render::private(UNREACHABLE),
            },
            Button::Reroll(job) => match self.queue.status(&job).await {
                Ok(status) => match status.request {
                    Some(request) => {
                        let (origin, requester) = commands::routing(
                            component.application_id.get(),
                            &component.token,
                            component.channel_id.get(),
                            component.guild_id.map(|g| g.get()),
                            &component.user,
                        );
                        self.submit(
                            JobRequest {
                                id: None,
                                seed: None,
                                idempotency_key: None,
                                deadline_ms: None,
                                submitted_at_ms: None,
                                origin,
                                requester,
                                ..request
                            },
                            component.attachment_size_limit,
                        )
                        .await
                    }
                    None => {
                        render::private("This job could not be read, so it cannot be rerolled.")
                    }
                },
                Err(QueueError::NotFound(_)) => render::private(&self.too_old()),
                Err(_) => render::private(UNREACHABLE),
            },
        }
    }

    async fn cancel(&self, component: &ComponentInteraction, job: &JobId) -> Card {
        let id = component.user.id.get().to_string();
        let moderator = component
            .member
            .as_ref()
            .and_then(|m| m.permissions)
            .is_some_and(|p| p.contains(Permissions::MANAGE_MESSAGES));
        let caller = match (moderator, component.guild_id) {
            (true, Some(guild)) => Caller::Moderator {
                origin_kind: ORIGIN,
                id,
                scope: Scope {
                    kind: ORIGIN,
                    name: guild.get().to_string(),
                },
            },
            _ => Caller::Requester {
                origin_kind: ORIGIN,
                id,
            },
        };
        let text = match self.queue.cancel(job, &caller).await {
            Ok(Cancelled::Cancelled) => "Cancelled: it will not be drawn.".to_owned(),
            Ok(Cancelled::Requested) => "Stopping it now.".to_owned(),
            Ok(Cancelled::AlreadyEnded(state)) => {
                format!("It has already ended ({}).", state.as_str())
            }
            Err(QueueError::NotFound(_)) => self.too_old(),
            Err(QueueError::Redis(_)) => UNREACHABLE.to_owned(),
            Err(refusal) => refusal.to_string(),
        };
        render::private(&text)
    }

    /// Remembers a queued job so its place in line is refreshed, and, in Redis for whichever
    /// replica delivers its result, how large an upload its channel takes. That write happens
    /// after the answer, off its path.
    fn track_queued(&self, id: &JobId, request: &JobRequest, attachment_limit: u32) {
        lock(&self.queued).insert(
            id.clone(),
            QueuedJob {
                request: request.clone(),
                position: None,
            },
        );
        let Some(bot) = self.me.upgrade() else { return };
        let id = id.clone();
        let token = delivery::token_of(&request.origin)
            .unwrap_or_default()
            .to_owned();
        tokio::spawn(async move {
            bot.remember_first_answer(&id, &token, attachment_limit)
                .await
        });
    }

    /// Remembers, for whichever replica delivers the result, the first answer's message id (a
    /// result after the token's 15 minutes replies to it) and the largest upload its channel
    /// takes. The first answer may still be on its way to Discord: an unknown one is asked for
    /// again.
    async fn remember_first_answer(&self, job: &JobId, token: &str, attachment_limit: u32) {
        let limit = attachment_limit.to_string();
        // Not at once: the answer is still on its way, and a burst of interactions should not
        // pay for this while it is being answered.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut posted = None;
        for attempt in 0..5 {
            match self.rest.original(token).await {
                Ok(message) => {
                    posted = Some(message);
                    break;
                }
                Err(rest::RestError::NotFound { .. }) if attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                Err(_) => break,
            }
        }
        let mut fields = vec![("attachment_limit", limit.as_str())];
        if let Some(message) = &posted {
            fields.push(("message", &message.id));
            fields.push(("channel", &message.channel_id));
        }
        let _ = self.queue.remember_reply(ORIGIN, job, &fields).await;
    }
}

/// What a handler made of an interaction.
enum Handled {
    Pong,
    Choices(CreateAutocompleteResponse),
    Card(Card),
}

impl Handled {
    fn response(self) -> CreateInteractionResponse {
        match self {
            Handled::Pong => CreateInteractionResponse::Pong,
            Handled::Choices(choices) => CreateInteractionResponse::Autocomplete(choices),
            Handled::Card(card) => card.response(),
        }
    }
}

impl Bot {
    /// Why a button on an old message no longer works: the job's status (its parameters) is
    /// kept for `queue.status_ttl_secs`.
    fn too_old(&self) -> String {
        let hours = self.queue.config().status_ttl_secs.div_ceil(3_600).max(1);
        format!(
            "This image is too old: DUCKS keeps a job's parameters for {hours} hours. Use /imagine again."
        )
    }

    /// An image's bytes, if they can be fetched and are at most `limit` long.
    async fn fetch_image(&self, url: &str, limit: u64) -> Option<Vec<u8>> {
        let response = self
            .images
            .get(url)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?;
        if response
            .content_length()
            .is_some_and(|length| length > limit)
        {
            return None;
        }
        let bytes = response.bytes().await.ok()?;
        (bytes.len() as u64 <= limit).then(|| bytes.to_vec())
    }
}

const FAILED: &str = "Something went wrong on our side; nothing was queued. Try again in a minute.";
const UNREACHABLE: &str = "The image queue is unreachable right now. Try again in a minute.";

/// A label for metrics and logs; never the interaction's content.
fn kind_of(interaction: &Interaction) -> &'static str {
    match interaction {
        Interaction::Ping(_) => "ping",
        Interaction::Command(c) => match c.data.name.as_str() {
            "imagine" => "imagine",
            "models" => "models",
            "jobs" => "jobs",
            _ => "unknown",
        },
        Interaction::Autocomplete(_) => "autocomplete",
        Interaction::Component(c) => match Button::parse(&c.data.custom_id) {
            Some(Button::Cancel(_)) => "cancel",
            Some(Button::Reroll(_)) => "reroll",
            Some(Button::Details(_)) => "details",
            None => "unknown",
        },
        _ => "unknown",
    }
}

/// Registers (bulk-overwrites) the bot's commands, in one guild (at once) or globally.
pub async fn register(config: &DiscordConfig, guild: Option<u64>) -> Result<usize, String> {
    let rest = Rest::new(
        &config.api_base,
        &config.token,
        config.application_id,
        Arc::new(Metrics::default()),
    )?;
    rest.register(guild.map(GuildId::new), &commands::definitions())
        .await
        .map_err(|e| format!("Discord refused the commands: {e}"))
}

/// Runs the bot until `shutdown` resolves: the probes (and, in `http` mode, the interactions
/// endpoint), the gateway client in `gateway` mode, and the delivery of results.
pub async fn run(
    queue: Queue,
    config: DiscordConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let bot = Bot::new(queue, config)?;
    let listener = tokio::net::TcpListener::bind(&bot.config.listen)
        .await
        .map_err(|e| format!("Could not listen on {}: {e}", bot.config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let server = tokio::spawn(endpoint::serve(listener, bot.clone(), stopped));
    info!(message = "The Discord bot is listening.", address = %address, mode = ?bot.config.mode);
    let delivery = tokio::spawn(delivery::run(bot.clone(), stop_rx.clone()));
    let gateway = match bot.config.mode {
        ConnectMode::Gateway => Some(tokio::spawn(gateway::run(bot.clone(), stop_rx.clone()))),
        ConnectMode::Http => None,
    };
    shutdown.await;
    info!(message = "Stopping the Discord bot.");
    let _ = stop_tx.send(true);
    if let Some(gateway) = gateway {
        let _ = gateway.await;
    }
    let _ = delivery.await;
    let _ = server.await;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
