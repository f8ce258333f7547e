//! Every message the Discord bot sends, as pure functions from a job's state to serenity's
//! builders, with Discord's limits applied here: at most 10 embeds, a title of 256 characters, a
//! description of 4,096, 6,000 in all, prompts shortened visibly. Every message suppresses
//! mentions, so `@everyone` in a prompt pings no one. The snapshot tests show what users read.

use ducks_chat::{Summary, describe_gpu, receipt, shorten, status_line};
use ducks_contract::{EventKind, ImageRef, JobId, JobStatus, ModelCatalogue, Timings};
use serenity::all::ButtonStyle;
use serenity::builder::{
    CreateActionRow, CreateAllowedMentions, CreateButton, CreateEmbed, CreateEmbedFooter,
    CreateInteractionResponse, CreateInteractionResponseMessage, CreateMessage,
    EditInteractionResponse,
};
use serenity::model::channel::MessageReference;
use serenity::model::id::{ChannelId, MessageId};

const TITLE_MAX: usize = 256;
const FIELD_VALUE_MAX: usize = 1_024;
/// Room left for the rest of a description after the prompt (Discord allows 4,096).
const PROMPT_IN_DETAILS_MAX: usize = 3_000;
/// Embed colours: in progress, done, failed.
const BLUE: u32 = 0x5865F2;
const GREEN: u32 = 0x57F287;
const RED: u32 = 0xED4245;

/// What a button does, and the job it names. Its id (`cancel:<job id>`, 43 characters) is all a
/// replica needs, so a button works after a restart and on any replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Button {
    Cancel(JobId),
    Reroll(JobId),
    Details(JobId),
}

impl Button {
    pub fn custom_id(&self) -> String {
        match self {
            Button::Cancel(job) => format!("cancel:{job}"),
            Button::Reroll(job) => format!("reroll:{job}"),
            Button::Details(job) => format!("details:{job}"),
        }
    }

    pub fn parse(custom_id: &str) -> Option<Button> {
        let (action, job) = custom_id.split_once(':')?;
        let job = job.parse().ok()?;
        Some(match action {
            "cancel" => Button::Cancel(job),
            "reroll" => Button::Reroll(job),
            "details" => Button::Details(job),
            _ => return None,
        })
    }

    fn label(&self) -> &'static str {
        match self {
            Button::Cancel(_) => "Cancel",
            Button::Reroll(_) => "Reroll",
            Button::Details(_) => "Details",
        }
    }

    fn create(&self, label: &str) -> CreateButton {
        let style = match self {
            Button::Cancel(_) => ButtonStyle::Danger,
            Button::Reroll(_) => ButtonStyle::Primary,
            Button::Details(_) => ButtonStyle::Secondary,
        };
        CreateButton::new(self.custom_id())
            .label(label)
            .style(style)
    }
}

/// The message of one job: its embeds and buttons, whichever way it is sent.
#[derive(Clone, Debug)]
pub struct Card {
    pub content: String,
    pub embeds: Vec<CreateEmbed>,
    pub buttons: Vec<Button>,
    /// Labels in place of the buttons' own, in order (`/jobs` numbers its Cancel buttons).
    pub labels: Vec<String>,
    /// Shown only to the person who asked (Discord's ephemeral messages).
    pub private: bool,
}

impl Card {
    fn components(&self) -> Vec<CreateActionRow> {
        if self.buttons.is_empty() {
            Vec::new()
        } else {
            vec![CreateActionRow::Buttons(
                self.buttons
                    .iter()
                    .enumerate()
                    .map(|(n, button)| {
                        button.create(self.labels.get(n).map_or(button.label(), String::as_str))
                    })
                    .collect(),
            )]
        }
    }

    /// The interaction's first answer.
    pub fn response(&self) -> CreateInteractionResponse {
        CreateInteractionResponse::Message(
            with_content(
                CreateInteractionResponseMessage::new(),
                &self.content,
                |m, c| m.content(c),
            )
            .embeds(self.embeds.clone())
            .components(self.components())
            .ephemeral(self.private)
            .allowed_mentions(quiet()),
        )
    }

    /// An edit of the interaction's message.
    pub fn edit(&self) -> EditInteractionResponse {
        with_content(EditInteractionResponse::new(), &self.content, |m, c| {
            m.content(c)
        })
        .embeds(self.embeds.clone())
        .components(self.components())
        .allowed_mentions(quiet())
    }

    /// A follow-up message (private when the card is).
    pub fn followup(&self) -> serenity::builder::CreateInteractionResponseFollowup {
        with_content(
            serenity::builder::CreateInteractionResponseFollowup::new(),
            &self.content,
            |m, c| m.content(c),
        )
        .embeds(self.embeds.clone())
        .components(self.components())
        .ephemeral(self.private)
        .allowed_mentions(quiet())
    }

    /// A message of its own in the channel, replying to the interaction's message when known.
    pub fn channel_message(&self, reply_to: Option<(ChannelId, MessageId)>) -> CreateMessage {
        let mut message = with_content(CreateMessage::new(), &self.content, |m, c| m.content(c))
            .embeds(self.embeds.clone())
            .components(self.components())
            .allowed_mentions(quiet());
        if let Some(reference) = reply_to {
            // A deleted original must not make the result fail.
            message = message
                .reference_message(MessageReference::from(reference).fail_if_not_exists(false));
        }
        message
    }
}

/// Sets the text only where there is one: the cards carry embeds, and an empty text is noise.
fn with_content<M>(message: M, content: &str, set: impl FnOnce(M, &str) -> M) -> M {
    if content.is_empty() {
        message
    } else {
        set(message, content)
    }
}

/// Mentions off: empty lists, so nothing in a prompt or name pings anyone.
pub fn quiet() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
}

/// A job on its way: its prompt, where it stands, and Cancel.
pub fn progress(job: &JobId, summary: &Summary, event: &EventKind) -> Card {
    let embed = CreateEmbed::new()
        .title(shorten(&summary.prompt, TITLE_MAX))
        .description(status_line(event))
        .footer(CreateEmbedFooter::new(summary.parameters()))
        .colour(BLUE);
    Card {
        content: String::new(),
        embeds: vec![embed],
        buttons: vec![Button::Cancel(job.clone())],
        labels: Vec::new(),
        private: false,
    }
}

/// The finished job: its images, what drew them, where the time went, Reroll and Details. The
/// embeds share one `url` (`link`, a link to the first image), which Discord shows as one
/// gallery; each image's own URL may be an upload of the message (`attachment://<file>`).
pub fn result(
    job: &JobId,
    summary: &Summary,
    requester: &str,
    images: &[ImageRef],
    link: &str,
    timings: &Timings,
) -> Card {
    let description = format!(
        "{}\n{}",
        summary.parameters(),
        shorten(&format!("for {requester} · {}", receipt(timings)), 512)
    );
    let mut embeds: Vec<CreateEmbed> = images
        .iter()
        .take(10)
        .map(|image| CreateEmbed::new().url(link).image(&image.url))
        .collect();
    let first = CreateEmbed::new()
        .title(shorten(&summary.prompt, TITLE_MAX))
        .description(description)
        .colour(GREEN)
        .url(link);
    match (embeds.first_mut(), images.first()) {
        (Some(embed), Some(image)) => *embed = first.image(&image.url),
        _ => embeds.push(first),
    }
    Card {
        content: String::new(),
        embeds,
        buttons: vec![Button::Reroll(job.clone()), Button::Details(job.clone())],
        labels: Vec::new(),
        private: false,
    }
}

/// A job that failed or was cancelled: what happened and what to do next.
pub fn ended(job: &JobId, summary: &Summary, event: &EventKind) -> Card {
    let embed = CreateEmbed::new()
        .title(shorten(&summary.prompt, TITLE_MAX))
        .description(status_line(event))
        .footer(CreateEmbedFooter::new(summary.parameters()))
        .colour(RED);
    Card {
        content: String::new(),
        embeds: vec![embed],
        buttons: vec![Button::Reroll(job.clone()), Button::Details(job.clone())],
        labels: Vec::new(),
        private: false,
    }
}

/// A private answer to the person who clicked or typed.
pub fn private(text: &str) -> Card {
    Card {
        content: shorten(text, 2_000).into_owned(),
        embeds: Vec::new(),
        buttons: Vec::new(),
        labels: Vec::new(),
        private: true,
    }
}

/// `/models`: one field per model (25 at most, Discord's limit), public.
pub fn models(catalogue: Option<&ModelCatalogue>) -> Card {
    let Some(catalogue) = catalogue.filter(|c| !c.models.is_empty()) else {
        return private(
            "No models are available yet: a worker publishes them from the bucket when it starts.",
        );
    };
    let mut embed = CreateEmbed::new().title("Models").colour(BLUE);
    // Discord allows 6,000 characters over all embeds; keep room for the title and footer.
    let mut budget = 5_700usize;
    let mut shown = 0;
    for model in catalogue.models.iter().take(25) {
        let default = if catalogue.default_model.as_deref() == Some(&model.id) {
            " · default"
        } else {
            ""
        };
        let value = format!(
            "{}\n{}x{} · {} steps · {}{default}",
            shorten(&model.description, 600),
            model.default_width,
            model.default_height,
            model.default_steps,
            describe_gpu(&model.gpu)
        );
        let name = shorten(&format!("{} (`{}`)", model.name, model.id), TITLE_MAX).into_owned();
        let value = shorten(value.trim(), FIELD_VALUE_MAX).into_owned();
        let size = name.chars().count() + value.chars().count();
        if size > budget {
            break;
        }
        budget -= size;
        shown += 1;
        embed = embed.field(name, value, false);
    }
    if catalogue.models.len() > shown {
        embed = embed.footer(CreateEmbedFooter::new(format!(
            "{} more: type a name in /imagine's model option.",
            catalogue.models.len() - shown
        )));
    }
    Card {
        content: String::new(),
        embeds: vec![embed],
        buttons: Vec::new(),
        labels: Vec::new(),
        private: false,
    }
}

/// `/jobs`: the caller's unfinished jobs with a Cancel button each (five at most, Discord's
/// buttons per row), and results that could not be posted.
pub fn jobs(unfinished: &[JobStatus], undelivered: &[JobStatus]) -> Card {
    if unfinished.is_empty() && undelivered.is_empty() {
        return private("You have no images in progress.");
    }
    let mut lines = Vec::new();
    for (n, status) in unfinished.iter().enumerate() {
        let prompt = status
            .request
            .as_ref()
            .map(|r| shorten(&r.prompt, 80).into_owned())
            .unwrap_or_default();
        let state = status
            .last_event
            .as_ref()
            .map(|e| status_line(&e.kind))
            .unwrap_or_else(|| status.state.as_str().to_owned());
        lines.push(format!("{}. **{prompt}**: {state}", n + 1));
    }
    for status in undelivered {
        if let Some(EventKind::Succeeded { images, .. }) =
            status.last_event.as_ref().map(|e| &e.kind)
        {
            let prompt = status
                .request
                .as_ref()
                .map(|r| shorten(&r.prompt, 80).into_owned())
                .unwrap_or_default();
            let links: Vec<&str> = images.iter().map(|i| i.url.as_str()).collect();
            lines.push(format!(
                "**{prompt}**: done (could not be posted here) {}",
                links.join(" ")
            ));
        }
    }
    let mut card = private(&lines.join("\n"));
    card.buttons = unfinished
        .iter()
        .take(5)
        .map(|status| Button::Cancel(status.id.clone()))
        .collect();
    card.labels = (1..=card.buttons.len())
        .map(|n| format!("Cancel {n}"))
        .collect();
    card
}

/// Details: every parameter of a job, privately.
pub fn details(status: &JobStatus, summary: &Summary) -> Card {
    let mut lines = vec![format!(
        "**Prompt:** {}",
        shorten(&summary.prompt, PROMPT_IN_DETAILS_MAX)
    )];
    if !summary.negative.is_empty() {
        lines.push(format!(
            "**Leaving out:** {}",
            shorten(&summary.negative, 500)
        ));
    }
    lines.push(format!("**Parameters:** {}", summary.parameters()));
    lines.push(format!("**State:** {}", status.state.as_str()));
    if let Some(EventKind::Succeeded { images, timings }) =
        status.last_event.as_ref().map(|e| &e.kind)
    {
        let seeds: Vec<String> = images.iter().map(|i| i.seed.to_string()).collect();
        lines.push(format!("**Seeds:** {}", seeds.join(", ")));
        lines.push(format!("**Time:** {}", receipt(timings)));
    }
    lines.push(format!("**Job:** `{}`", status.id));
    let embed = CreateEmbed::new()
        .title("Details")
        .description(lines.join("\n"))
        .colour(BLUE);
    Card {
        content: String::new(),
        embeds: vec![embed],
        buttons: Vec::new(),
        labels: Vec::new(),
        private: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_contract::{FailureCode, JobPhase, JobRequest, Origin};

    fn job() -> JobId {
        "0190c5e2-7a3b-7cde-8f01-23456789abcd".parse().unwrap()
    }

    fn summary(prompt: &str) -> Summary {
        let mut request = JobRequest::new(prompt, Origin::Cli);
        request.model = Some("tiny-sd".into());
        request.steps = Some(4);
        Summary::of(&request, None, &[])
    }

    fn json(value: &impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(value).unwrap()
    }

    #[test]
    fn button_ids_round_trip_and_fit() {
        for button in [
            Button::Cancel(job()),
            Button::Reroll(job()),
            Button::Details(job()),
        ] {
            let id = button.custom_id();
            assert!(id.len() <= 100, "{id}");
            assert_eq!(Button::parse(&id), Some(button));
        }
        assert_eq!(Button::parse("cancel"), None);
        assert_eq!(
            Button::parse("explode:0190c5e2-7a3b-7cde-8f01-23456789abcd"),
            None
        );
    }

    #[test]
    fn progress_cards() {
        let summary = summary("a duck in space @everyone");
        let cards: Vec<serde_json::Value> = [
            EventKind::Queued { position: 3 },
            EventKind::Starting {
                phase: JobPhase::WaitingForGpu,
                message: String::new(),
            },
            EventKind::Progress { step: 2, total: 4 },
        ]
        .iter()
        .map(|event| json(&progress(&job(), &summary, event).edit()))
        .collect();
        insta::assert_json_snapshot!(cards);
    }

    #[test]
    fn result_card_shows_every_image_as_one_gallery() {
        let mut summary = summary("a duck in space");
        summary.seed = Some(7);
        let image = |n: u32| ImageRef {
            key: format!("images/{n}.png"),
            url: format!("https://ducks.example.com/i/{n}"),
            width: 64,
            height: 64,
            seed: 7,
        };
        let timings = Timings {
            queue_ms: 1_200,
            startup_ms: 3_400,
            generate_ms: 5_600,
            upload_ms: 100,
            total_ms: 10_300,
            gpu_seconds: 0.84,
        };
        let card = result(
            &job(),
            &summary,
            "Ada",
            &[image(1), image(2)],
            "https://ducks.example.com/i/1",
            &timings,
        );
        insta::assert_json_snapshot!(json(&card.response()));
    }

    #[test]
    fn failures_say_what_to_do_next() {
        let card = ended(
            &job(),
            &summary("a duck"),
            &EventKind::Failed {
                code: FailureCode::OutOfMemory,
                message: "The GPU ran out of memory.".into(),
                retryable: false,
            },
        );
        insta::assert_json_snapshot!(json(&card.edit()));
    }

    #[test]
    fn a_long_prompt_is_shortened_visibly_within_discords_limits() {
        let prompt = "🦆".repeat(1_000);
        let card = progress(
            &job(),
            &summary(&prompt),
            &EventKind::Queued { position: 1 },
        );
        let value = json(&card.edit());
        let title = value["embeds"][0]["title"].as_str().unwrap();
        assert_eq!(title.chars().count(), TITLE_MAX);
        assert!(title.ends_with('…'));
    }

    #[test]
    fn models_stay_within_discords_6000_characters() {
        let mut model = ducks_contract::ModelInfo {
            id: "m".into(),
            name: "A model with a long name".into(),
            description: "words ".repeat(200),
            family: "sd15".into(),
            default_width: 512,
            default_height: 512,
            default_steps: 20,
            default_guidance: 7.5,
            max_width: 768,
            max_height: 768,
            max_steps: 50,
            max_images: 4,
            sizes: vec![],
            gpu: Default::default(),
            added_at_secs: None,
            tags: vec![],
        };
        let many = (0..40)
            .map(|n| {
                model.id = format!("model-{n}");
                model.clone()
            })
            .collect();
        let catalogue = ModelCatalogue {
            default_model: None,
            models: many,
            updated_at_ms: 0,
        };
        let card = json(&models(Some(&catalogue)).response());
        let embed = &card["data"]["embeds"][0];
        let mut total = embed["title"].as_str().unwrap().chars().count();
        for field in embed["fields"].as_array().unwrap() {
            total += field["name"].as_str().unwrap().chars().count();
            total += field["value"].as_str().unwrap().chars().count();
        }
        total += embed["footer"]["text"].as_str().unwrap().chars().count();
        assert!(total <= 6_000, "{total}");
        assert!(
            embed["footer"]["text"]
                .as_str()
                .unwrap()
                .ends_with("more: type a name in /imagine's model option.")
        );
    }

    #[test]
    fn every_message_suppresses_mentions() {
        let summary = summary("@everyone look");
        let responses = [
            json(&progress(&job(), &summary, &EventKind::Cancelled).response()),
            json(&progress(&job(), &summary, &EventKind::Cancelled).edit()),
            json(&progress(&job(), &summary, &EventKind::Cancelled).channel_message(None)),
            json(&private("hello @everyone").response()),
            json(&models(None).response()),
            json(&jobs(&[], &[]).edit()),
        ];
        for response in responses {
            let data = response.get("data").unwrap_or(&response);
            assert_eq!(
                data["allowed_mentions"],
                serde_json::json!({"parse": [], "users": [], "roles": []}),
                "{response}"
            );
        }
    }
}
