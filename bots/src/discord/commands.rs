//! The slash commands: their definitions (what `register` sends) and what each one does.
//! `/imagine` checks and submits before it answers, so the first answer already says where the
//! job stands; `/models` and autocomplete read the catalogue snapshot in Redis, never S3.

use ducks_chat::{Imagine, Summary, model_choices, size_choices};
use ducks_contract::{JobRequest, Origin, Requester, Secret, limits};
use ducks_queue::{QueueError, Submitted};
use serenity::all::{
    CommandDataOption, CommandDataOptionValue, CommandInteraction, CommandOptionType,
};
use serenity::builder::{
    AutocompleteChoice, CreateAutocompleteResponse, CreateCommand, CreateCommandOption,
};
use tracing::warn;

use super::Bot;
use super::render::{self, Card};

/// What `ducks bots discord register` sends (a bulk overwrite).
pub fn definitions() -> Vec<CreateCommand> {
    let text = |name: &str, description: &str| {
        CreateCommandOption::new(CommandOptionType::String, name, description)
    };
    let number = |name: &str, description: &str, min: u64, max: u64| {
        CreateCommandOption::new(CommandOptionType::Integer, name, description)
            .min_int_value(min)
            .max_int_value(max)
    };
    vec![
        CreateCommand::new("imagine")
            .description("Draw an image from a prompt")
            .add_option(
                text("prompt", "What to draw")
                    .required(true)
                    .max_length(limits::MAX_PROMPT_CHARS as u16),
            )
            .add_option(text("model", "The model to draw with").set_autocomplete(true))
            .add_option(text("size", "WIDTHxHEIGHT, e.g. 512x768").set_autocomplete(true))
            .add_option(number(
                "steps",
                "Denoising steps",
                1,
                limits::MAX_STEPS as u64,
            ))
            .add_option(number(
                "seed",
                "The same seed and parameters draw the same image",
                0,
                limits::MAX_SEED,
            ))
            .add_option(number(
                "count",
                "How many images",
                1,
                limits::MAX_IMAGES as u64,
            ))
            .add_option(
                text("negative", "What to leave out").max_length(limits::MAX_PROMPT_CHARS as u16),
            ),
        CreateCommand::new("models").description("The models you can draw with"),
        CreateCommand::new("jobs").description("Your images in progress, with Cancel buttons"),
    ]
}

/// `/imagine`'s options, as the person typed them.
fn imagine_options(options: &[CommandDataOption]) -> Imagine {
    let mut imagine = Imagine::default();
    for option in options {
        let text = || option.value.as_str().map(str::to_owned);
        let number = || option.value.as_i64().and_then(|n| u64::try_from(n).ok());
        match option.name.as_str() {
            "prompt" => imagine.prompt = text().unwrap_or_default(),
            "negative" => imagine.negative = text(),
            "model" => imagine.model = text().filter(|m| !m.trim().is_empty()),
            "size" => imagine.size = text().filter(|s| !s.trim().is_empty()),
            "steps" => imagine.steps = number().map(|n| n.min(u32::MAX as u64) as u32),
            "seed" => imagine.seed = number(),
            "count" => imagine.count = number().map(|n| n.min(u32::MAX as u64) as u32),
            _ => {}
        }
    }
    imagine
}

/// Where a job from this interaction replies, and who asked.
pub fn origin_of(command: &CommandInteraction) -> (Origin, Requester) {
    routing(
        command.application_id.get(),
        &command.token,
        command.channel_id.get(),
        command.guild_id.map(|g| g.get()),
        &command.user,
    )
}

pub fn routing(
    application: u64,
    token: &str,
    channel: u64,
    guild: Option<u64>,
    user: &serenity::model::user::User,
) -> (Origin, Requester) {
    let origin = Origin::Discord {
        application_id: application.to_string(),
        interaction_token: Secret::new(token),
        channel_id: channel.to_string(),
        guild_id: guild.map(|g| g.to_string()),
    };
    let requester = Requester {
        id: user.id.get().to_string(),
        name: Some(
            user.global_name
                .clone()
                .unwrap_or_else(|| user.name.clone()),
        ),
    };
    (origin, requester)
}

impl Bot {
    pub(super) async fn imagine(&self, command: &CommandInteraction) -> Card {
        let (origin, requester) = origin_of(command);
        match imagine_options(&command.data.options).into_request(origin, requester) {
            Ok(request) => self.submit(request, command.attachment_size_limit).await,
            Err(refusal) => render::private(&refusal.0),
        }
    }

    /// Submits a checked request and answers with its card, or a private refusal.
    /// `attachment_limit` is the largest upload the interaction's channel takes, for the result.
    pub(super) async fn submit(&self, request: JobRequest, attachment_limit: u32) -> Card {
        let catalogue = self.queue.catalogue_snapshot().await.ok().flatten();
        match self.queue.submit_checked(request.clone()).await {
            Ok(Submitted::Queued { id, position }) => {
                let summary = Summary::of(&request, catalogue.as_deref(), &[]);
                self.track_queued(&id, &request, attachment_limit);
                render::progress(
                    &id,
                    &summary,
                    &ducks_contract::EventKind::Queued { position },
                )
            }
            Ok(Submitted::Duplicate { id }) => {
                render::private(&format!("This request is already job `{id}`."))
            }
            Err(QueueError::Redis(error)) => {
                warn!(message = "Could not submit a Discord job.", %error);
                render::private(
                    "The image queue is unreachable right now; nothing was queued. Try again in a minute.",
                )
            }
            Err(refusal) => render::private(&refusal.to_string()),
        }
    }

    pub(super) async fn models(&self) -> Card {
        match self.queue.catalogue_snapshot().await {
            Ok(catalogue) => render::models(catalogue.as_deref()),
            Err(_) => {
                render::private("The model list is unreachable right now. Try again in a minute.")
            }
        }
    }

    pub(super) async fn jobs(&self, command: &CommandInteraction) -> Card {
        let user = command.user.id.get().to_string();
        let unfinished = match self.queue.jobs_of("discord", &user).await {
            Ok(ids) => ids,
            Err(_) => {
                return render::private(
                    "Your jobs are unreachable right now. Try again in a minute.",
                );
            }
        };
        let mut statuses = Vec::new();
        for id in unfinished.iter().rev().take(10) {
            if let Ok(status) = self.queue.status(id).await {
                statuses.push(status);
            }
        }
        let mut undelivered = Vec::new();
        for id in self
            .queue
            .undelivered("discord", &user)
            .await
            .unwrap_or_default()
        {
            if let Ok(status) = self.queue.status(&id).await {
                undelivered.push(status);
            }
        }
        render::jobs(&statuses, &undelivered)
    }

    /// Choices for the option being typed: models from the catalogue snapshot, or the chosen
    /// model's sizes. Nothing on trouble: autocomplete cannot show an error.
    pub(super) async fn autocomplete(
        &self,
        command: &CommandInteraction,
    ) -> CreateAutocompleteResponse {
        let Some(focused) = command.data.autocomplete() else {
            return CreateAutocompleteResponse::new();
        };
        let Ok(Some(catalogue)) = self.queue.catalogue_snapshot().await else {
            return CreateAutocompleteResponse::new();
        };
        let choices = match focused.name {
            "model" => model_choices(&catalogue, focused.value),
            "size" => {
                let model = command
                    .data
                    .options
                    .iter()
                    .find(|o| o.name == "model")
                    .and_then(|o| match &o.value {
                        CommandDataOptionValue::String(m)
                        | CommandDataOptionValue::Autocomplete { value: m, .. } => Some(m.as_str()),
                        _ => None,
                    })
                    .filter(|m| !m.is_empty());
                size_choices(&catalogue, model, focused.value)
            }
            _ => Vec::new(),
        };
        CreateAutocompleteResponse::new().set_choices(
            choices
                .into_iter()
                .map(|c| AutocompleteChoice::new(c.name, c.value))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_fit_discords_rules() {
        let commands = serde_json::to_value(definitions()).unwrap();
        for command in commands.as_array().unwrap() {
            let name = command["name"].as_str().unwrap();
            assert!(name.len() <= 32 && name.chars().all(|c| c.is_ascii_lowercase()));
            assert!(command["description"].as_str().unwrap().len() <= 100);
            let options = command["options"].as_array().cloned().unwrap_or_default();
            assert!(options.len() <= 25);
            // Required options come first, as Discord demands.
            let required: Vec<bool> = options
                .iter()
                .map(|o| o["required"].as_bool().unwrap_or(false))
                .collect();
            assert!(required.windows(2).all(|w| w[0] || !w[1]), "{name}");
        }
    }
}
