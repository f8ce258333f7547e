//! Interactions over Discord's gateway: serenity's client holds the websocket (identify,
//! heartbeats, reconnects, resumes) and hands each interaction to [`Bot::answer`]; the answer
//! goes back over REST, since the gateway carries no replies. serenity turns an interaction it
//! cannot parse into an unknown event and would drop it silently: the raw handler logs it,
//! counts it, and still tells the person.

use std::sync::Arc;
use std::time::Duration;

use serenity::all::{Context, EventHandler, GatewayIntents, Interaction, RawEventHandler};
use serenity::async_trait;
use serenity::http::HttpBuilder;
use serenity::model::event::Event;
use serenity::model::id::InteractionId;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{Bot, render};

struct Handler(Arc<Bot>);

#[async_trait]
impl EventHandler for Handler {
    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        let id = interaction.id();
        let token = interaction.token().to_owned();
        let response = self.0.answer(interaction).await;
        if let Err(error) = self.0.rest.respond(id, &token, &response).await {
            warn!(message = "Discord did not take an interaction's answer.", %error);
        }
    }
}

#[async_trait]
impl RawEventHandler for Handler {
    async fn raw_event(&self, _ctx: Context, event: Event) {
        let Event::Unknown(unknown) = event else {
            return;
        };
        if unknown.kind != "INTERACTION_CREATE" {
            return;
        }
        let parse_error = serde_json::from_value::<Interaction>(unknown.value.clone())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let kind = unknown
            .value
            .get("type")
            .and_then(|t| t.as_u64())
            .unwrap_or(0);
        self.0.metrics.interaction("unreadable");
        warn!(message = "An interaction could not be read.", interaction_type = kind, error = %parse_error);
        let id = unknown
            .value
            .get("id")
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<u64>().ok());
        let token = unknown.value.get("token").and_then(|v| v.as_str());
        if let (Some(id), Some(token)) = (id, token) {
            let response = render::private(UNREADABLE).response();
            if let Err(error) = self
                .0
                .rest
                .respond(InteractionId::new(id), token, &response)
                .await
            {
                warn!(message = "Could not answer an unreadable interaction.", %error);
            }
        }
    }
}

/// What a person sees when their interaction could not be read.
pub const UNREADABLE: &str =
    "This bot could not read that interaction (it may be newer than the bot). It has been logged.";

/// Runs the gateway client until `stop`, reconnecting after failures.
pub async fn run(bot: Arc<Bot>, mut stop: watch::Receiver<bool>) {
    let http = HttpBuilder::new(bot.config.token.expose())
        .proxy(bot.config.api_base.trim_end_matches('/'))
        .ratelimiter_disabled(true)
        .application_id(bot.config.application_id.into())
        .build();
    let mut client =
        match serenity::client::ClientBuilder::new_with_http(http, GatewayIntents::empty())
            .event_handler_arc(Arc::new(Handler(bot.clone())))
            .raw_event_handler(Handler(bot.clone()))
            .await
        {
            Ok(client) => client,
            Err(e) => {
                error!(message = "Could not build the Discord gateway client.", error = %e);
                return;
            }
        };
    let shards = client.shard_manager.clone();
    let stopper = tokio::spawn(async move {
        let _ = stop.wait_for(|stop| *stop).await;
        shards.shutdown_all().await;
    });
    info!(message = "Connecting to Discord's gateway.");
    loop {
        match client.start().await {
            Ok(()) => break,
            Err(e) => {
                warn!(message = "The Discord gateway client stopped; reconnecting.", error = %e);
                if stopper.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
    stopper.abort();
}
