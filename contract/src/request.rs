//! What a front end asks for: [`JobRequest`], where it came from ([`Origin`]) and who asked ([`Requester`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{JobId, Secret, Webhook};

/// Limits that every request must respect, whatever the model. Models may narrow them further.
pub mod limits {
    pub const MAX_PROMPT_CHARS: usize = 1_000;
    pub const MIN_SIDE: u32 = 64;
    pub const MAX_SIDE: u32 = 2_048;
    /// Sides must be multiples of this: the VAE downsamples by 8.
    pub const SIDE_MULTIPLE: u32 = 8;
    pub const MAX_STEPS: u32 = 150;
    pub const MAX_GUIDANCE: f32 = 30.0;
    pub const MAX_IMAGES: u32 = 4;
    pub const MAX_MODEL_ID_LEN: usize = 64;
    pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
    pub const MAX_REQUESTER_ID_LEN: usize = 128;
    /// The largest seed: 2^53 - 1, the largest integer every JSON client (JavaScript's numbers
    /// included) reads exactly, so a seed shown on a web page draws the same image again.
    pub const MAX_SEED: u64 = (1 << 53) - 1;
}

/// One image job as it travels through the queue. Optional generation parameters fall back to the
/// model's defaults, which the worker applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Set by `submit`; a raw Redis client may set it or let the worker derive one from the entry id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<JobId>,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub negative_prompt: String,
    /// Model id from the catalogue; `None` means the catalogue's default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
    /// `None` lets the runner pick one and report it, so any image can be reproduced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// How many images to draw in this job.
    #[serde(default = "one")]
    pub count: u32,
    /// Where the request came from and where results go back to.
    #[serde(default)]
    pub origin: Origin,
    #[serde(default)]
    pub requester: Requester,
    /// The same key within its time to live returns the first job instead of creating another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Unix time in milliseconds after which the result is no longer wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Unix time in milliseconds when the job was submitted; set by `submit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl JobRequest {
    /// A request for one image of `prompt` from `origin`, everything else at its default.
    pub fn new(prompt: impl Into<String>, origin: Origin) -> Self {
        Self {
            id: None,
            prompt: prompt.into(),
            negative_prompt: String::new(),
            model: None,
            width: None,
            height: None,
            steps: None,
            guidance: None,
            seed: None,
            count: 1,
            origin,
            requester: Requester::default(),
            idempotency_key: None,
            deadline_ms: None,
            submitted_at_ms: None,
        }
    }

    /// Checks every limit in [`limits`]. The error's text is written for the person who typed the
    /// command and can be shown in chat as it is.
    pub fn validate(&self) -> Result<(), ValidationError> {
        use limits::*;
        let fail = |message: String| Err(ValidationError(message));
        if self.prompt.trim().is_empty() {
            return fail("The prompt is empty: describe the image you want.".into());
        }
        for (what, text) in [
            ("prompt", &self.prompt),
            ("negative prompt", &self.negative_prompt),
        ] {
            let chars = text.chars().count();
            if chars > MAX_PROMPT_CHARS {
                return fail(format!(
                    "The {what} is {chars} characters long; the limit is {MAX_PROMPT_CHARS}."
                ));
            }
        }
        if let Some(model) = &self.model
            && !is_valid_model_id(model)
        {
            return fail(format!(
                "`{}` is not a model id: use 1 to {MAX_MODEL_ID_LEN} lowercase letters, digits, '.', '_' or '-'.",
                model.chars().take(MAX_MODEL_ID_LEN).collect::<String>()
            ));
        }
        for (what, side) in [("width", self.width), ("height", self.height)] {
            if let Some(side) = side
                && (!(MIN_SIDE..=MAX_SIDE).contains(&side) || side % SIDE_MULTIPLE != 0)
            {
                return fail(format!(
                    "The {what} {side} is not allowed: use a multiple of {SIDE_MULTIPLE} from {MIN_SIDE} to {MAX_SIDE}."
                ));
            }
        }
        if let Some(steps) = self.steps
            && !(1..=MAX_STEPS).contains(&steps)
        {
            return fail(format!(
                "{steps} steps is not allowed: use 1 to {MAX_STEPS}."
            ));
        }
        if let Some(guidance) = self.guidance
            && !(guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&guidance))
        {
            return fail(format!(
                "Guidance {guidance} is not allowed: use 0 to {MAX_GUIDANCE}."
            ));
        }
        if let Some(seed) = self.seed
            && seed > MAX_SEED
        {
            return fail(format!(
                "The seed {seed} is too large: use 0 to {MAX_SEED}."
            ));
        }
        if !(1..=MAX_IMAGES).contains(&self.count) {
            return fail(format!(
                "{} images is not allowed: ask for 1 to {MAX_IMAGES}.",
                self.count
            ));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY_LEN
                || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            return fail(format!(
                "The idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable characters without spaces."
            ));
        }
        let requester = &self.requester.id;
        if requester.is_empty()
            || requester.len() > MAX_REQUESTER_ID_LEN
            || requester.chars().any(char::is_control)
        {
            return fail(format!(
                "The requester id must be 1 to {MAX_REQUESTER_ID_LEN} characters without control characters."
            ));
        }
        if self
            .requester
            .name
            .as_ref()
            .is_some_and(|name| name.chars().count() > MAX_REQUESTER_ID_LEN)
        {
            return fail(format!(
                "The requester name must be at most {MAX_REQUESTER_ID_LEN} characters."
            ));
        }
        Ok(())
    }

    /// The key that per-requester limits count under: the platform and the person's id on it.
    pub fn requester_key(&self) -> String {
        format!("{}:{}", self.origin.kind(), self.requester.id)
    }

    /// Whose idempotency keys this request's key is compared with: an API client's (one key of
    /// a client's never returns another client's job), or the requester's on their platform.
    pub fn idempotency_scope(&self) -> String {
        match &self.origin {
            Origin::Api {
                client: Some(client),
                ..
            } => format!("api-client:{client}"),
            _ => self.requester_key(),
        }
    }

    /// The request as it may be shown or passed on: without the origin's credentials.
    pub fn without_secrets(&self) -> JobRequest {
        JobRequest {
            origin: self.origin.without_secrets(),
            ..self.clone()
        }
    }
}

/// Model ids become S3 prefixes and label values: keep them short and plain.
pub fn is_valid_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::MAX_MODEL_ID_LEN
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// A request that breaks a limit. Its text is meant for the person who asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// Where a request came from, with what the front end needs to reply there.
/// Each kind has its own event stream, read by that front end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Origin {
    Discord {
        application_id: String,
        /// Valid for 15 minutes; lets the bot edit its deferred reply. A credential: it stays on
        /// the origin's own event stream and is stripped from everything shown or passed on
        /// ([`Origin::without_secrets`]).
        #[serde(default, skip_serializing_if = "Secret::is_empty")]
        interaction_token: Secret,
        channel_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guild_id: Option<String>,
    },
    Twitch {
        channel: String,
        /// The chat message to reply to (`reply-parent-msg-id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
    Api {
        /// The API client (key id) that submitted, if it identified itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// Where the API posts this job's events, signed with the client's webhook secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook: Option<Webhook>,
    },
    Cli,
    /// Added by any Redis client following docs/job-contract.md.
    #[default]
    Redis,
}

impl Origin {
    /// The name of this origin's event stream, and the platform part of requester keys.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Discord { .. } => "discord",
            Origin::Twitch { .. } => "twitch",
            Origin::Api { .. } => "api",
            Origin::Cli => "cli",
            Origin::Redis => "redis",
        }
    }

    /// The community the job belongs to: what per-scope limits count by and what a moderator
    /// may act on. A Discord guild (or the channel, outside guilds), a Twitch channel, an API
    /// client; the command line and raw Redis clients are one scope each.
    pub fn scope(&self) -> Scope {
        let name = match self {
            Origin::Discord {
                guild_id,
                channel_id,
                ..
            } => guild_id.as_deref().unwrap_or(channel_id).to_owned(),
            Origin::Twitch { channel, .. } => channel.clone(),
            Origin::Api { client, .. } => client.clone().unwrap_or_default(),
            Origin::Cli | Origin::Redis => String::new(),
        };
        Scope {
            kind: self.kind(),
            name,
        }
    }

    /// The origin with its credentials removed, for everything that shows a job or passes it
    /// on: status, the runner, a Kubernetes Job, watchers.
    pub fn without_secrets(&self) -> Origin {
        match self {
            Origin::Discord {
                application_id,
                channel_id,
                guild_id,
                ..
            } => Origin::Discord {
                application_id: application_id.clone(),
                interaction_token: Secret::default(),
                channel_id: channel_id.clone(),
                guild_id: guild_id.clone(),
            },
            other => other.clone(),
        }
    }
}

/// Who asks to act on a job (cancel it), as the front end that took the request knows them.
/// The front end decides: a Discord bot from the interaction's member and permissions, the Twitch
/// bot from the message's badges, the API from its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A person, named as requests from them are: their platform and their id on it.
    Requester {
        origin_kind: &'static str,
        id: String,
    },
    /// A moderator of one scope (a Discord guild's admin, a Twitch channel's moderator, an API
    /// admin key): any job of that scope, and their own.
    Moderator {
        origin_kind: &'static str,
        id: String,
        scope: Scope,
    },
    /// Whoever holds the queue itself (`ducks cancel` on the operator's machine): any job.
    Operator,
}

impl Caller {
    /// Whether this caller may cancel `job`.
    pub fn may_cancel(&self, job: &JobRequest) -> bool {
        let own = |kind: &str, id: &str| job.origin.kind() == kind && job.requester.id == id;
        match self {
            Caller::Requester { origin_kind, id } => own(origin_kind, id),
            Caller::Moderator {
                origin_kind,
                id,
                scope,
            } => own(origin_kind, id) || job.origin.scope() == *scope,
            Caller::Operator => true,
        }
    }
}

/// A community of requesters, written `kind:name` (`twitch:ducks`, `discord:1234`, `api:acme`),
/// or just `kind` where the origin has no communities (`cli`, `redis`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub kind: &'static str,
    pub name: String,
}

impl Scope {
    /// What a person calls this scope, for refusals ("This channel already has …").
    pub fn noun(&self) -> &'static str {
        match self.kind {
            "discord" => "server",
            "twitch" => "channel",
            "api" => "API client",
            _ => "queue",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            f.write_str(self.kind)
        } else {
            write!(f, "{}:{}", self.kind, self.name)
        }
    }
}

/// The person (or program) on whose behalf a job runs; per-requester limits count by this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requester {
    /// The platform's user id (a Discord snowflake, a Twitch user id, an API key's name).
    pub id: String,
    /// A name to show back in chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Default for Requester {
    fn default() -> Self {
        Self {
            id: "anonymous".into(),
            name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn request() -> JobRequest {
        JobRequest::new("a duck in space", Origin::Cli)
    }

    /// Each case changes one field and expects `validate` to answer with exactly this text.
    #[test]
    fn validation_table() {
        type Case = (&'static str, fn(&mut JobRequest), Option<&'static str>);
        let cases: &[Case] = &[
            ("defaults", |_| {}, None),
            (
                "empty prompt",
                |r| r.prompt = "  ".into(),
                Some("The prompt is empty: describe the image you want."),
            ),
            (
                "long prompt",
                |r| r.prompt = "x".repeat(1001),
                Some("The prompt is 1001 characters long; the limit is 1000."),
            ),
            (
                "long negative",
                |r| r.negative_prompt = "y".repeat(1001),
                Some("The negative prompt is 1001 characters long; the limit is 1000."),
            ),
            (
                "bad model",
                |r| r.model = Some("SD XL".into()),
                Some(
                    "`SD XL` is not a model id: use 1 to 64 lowercase letters, digits, '.', '_' or '-'.",
                ),
            ),
            (
                "good model",
                |r| r.model = Some("sdxl-turbo_1.0".into()),
                None,
            ),
            (
                "width not multiple",
                |r| r.width = Some(513),
                Some("The width 513 is not allowed: use a multiple of 8 from 64 to 2048."),
            ),
            (
                "height too small",
                |r| r.height = Some(56),
                Some("The height 56 is not allowed: use a multiple of 8 from 64 to 2048."),
            ),
            (
                "height too big",
                |r| r.height = Some(2056),
                Some("The height 2056 is not allowed: use a multiple of 8 from 64 to 2048."),
            ),
            (
                "size ok",
                |r| {
                    r.width = Some(1024);
                    r.height = Some(64)
                },
                None,
            ),
            (
                "zero steps",
                |r| r.steps = Some(0),
                Some("0 steps is not allowed: use 1 to 150."),
            ),
            (
                "too many steps",
                |r| r.steps = Some(151),
                Some("151 steps is not allowed: use 1 to 150."),
            ),
            (
                "nan guidance",
                |r| r.guidance = Some(f32::NAN),
                Some("Guidance NaN is not allowed: use 0 to 30."),
            ),
            (
                "negative guidance",
                |r| r.guidance = Some(-1.0),
                Some("Guidance -1 is not allowed: use 0 to 30."),
            ),
            (
                "zero images",
                |r| r.count = 0,
                Some("0 images is not allowed: ask for 1 to 4."),
            ),
            (
                "five images",
                |r| r.count = 5,
                Some("5 images is not allowed: ask for 1 to 4."),
            ),
            (
                "a seed past what JSON clients read exactly",
                |r| r.seed = Some(limits::MAX_SEED + 1),
                Some("The seed 9007199254740992 is too large: use 0 to 9007199254740991."),
            ),
            (
                "spacey idempotency key",
                |r| r.idempotency_key = Some("a b".into()),
                Some("The idempotency key must be 1 to 128 printable characters without spaces."),
            ),
            (
                "empty requester",
                |r| r.requester.id = String::new(),
                Some("The requester id must be 1 to 128 characters without control characters."),
            ),
        ];
        for (name, change, expect) in cases {
            let mut r = request();
            change(&mut r);
            let got = r.validate().err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), *expect, "case {name}");
        }
    }

    #[test]
    fn round_trips_every_origin() {
        let origins = [
            Origin::Discord {
                application_id: "1".into(),
                interaction_token: Secret::new("secret"),
                channel_id: "2".into(),
                guild_id: Some("3".into()),
            },
            Origin::Twitch {
                channel: "ducks".into(),
                message_id: Some("m".into()),
            },
            Origin::Api {
                client: None,
                webhook: None,
            },
            Origin::Cli,
            Origin::Redis,
        ];
        for origin in origins {
            let mut r = JobRequest::new("p", origin);
            r.id = Some(crate::JobId::generate());
            r.seed = Some(u64::MAX);
            r.guidance = Some(7.5);
            let json = wire::encode(&r);
            assert_eq!(
                wire::decode::<JobRequest>("job", &json).unwrap(),
                r,
                "{json}"
            );
        }
    }

    #[test]
    fn a_minimal_hand_written_job_decodes_with_defaults() {
        let r: JobRequest = wire::decode("job", r#"{"v":1,"prompt":"a duck"}"#).unwrap();
        assert_eq!(r, JobRequest::new("a duck", Origin::Redis));
        assert_eq!(r.requester_key(), "redis:anonymous");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let origin = Origin::Discord {
            application_id: "1".into(),
            interaction_token: Secret::new("very-secret-token"),
            channel_id: "2".into(),
            guild_id: None,
        };
        let debug = format!("{:?}", JobRequest::new("p", origin));
        assert!(!debug.contains("very-secret-token"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn scopes_name_the_community() {
        let discord = |guild: Option<&str>| Origin::Discord {
            application_id: "1".into(),
            interaction_token: Secret::new("t"),
            channel_id: "22".into(),
            guild_id: guild.map(str::to_owned),
        };
        let table = [
            (discord(Some("33")), "discord:33"),
            (discord(None), "discord:22"),
            (
                Origin::Twitch {
                    channel: "ducks".into(),
                    message_id: None,
                },
                "twitch:ducks",
            ),
            (
                Origin::Api {
                    client: Some("acme".into()),
                    webhook: None,
                },
                "api:acme",
            ),
            (
                Origin::Api {
                    client: None,
                    webhook: None,
                },
                "api",
            ),
            (Origin::Cli, "cli"),
            (Origin::Redis, "redis"),
        ];
        for (origin, scope) in table {
            assert_eq!(origin.scope().to_string(), scope, "{origin:?}");
        }
    }

    #[test]
    fn only_the_requester_a_moderator_of_the_scope_or_an_operator_may_cancel() {
        let twitch = |channel: &str| Origin::Twitch {
            channel: channel.into(),
            message_id: None,
        };
        let mut job = JobRequest::new("p", twitch("ducks"));
        job.requester.id = "ann".into();
        let requester = |kind, id: &str| Caller::Requester {
            origin_kind: kind,
            id: id.into(),
        };
        let moderator = |channel: &str| Caller::Moderator {
            origin_kind: "twitch",
            id: "mod".into(),
            scope: twitch(channel).scope(),
        };
        let table = [
            (requester("twitch", "ann"), true),
            (requester("twitch", "bob"), false),
            (requester("discord", "ann"), false),
            (moderator("ducks"), true),
            (moderator("geese"), false),
            (Caller::Operator, true),
        ];
        for (caller, allowed) in table {
            assert_eq!(caller.may_cancel(&job), allowed, "{caller:?}");
        }
    }

    #[test]
    fn idempotency_is_scoped_to_the_api_client_or_the_requester() {
        let mut api = JobRequest::new(
            "p",
            Origin::Api {
                client: Some("acme".into()),
                webhook: None,
            },
        );
        api.requester.id = "user-7".into();
        assert_eq!(api.idempotency_scope(), "api-client:acme");
        let mut cli = request();
        cli.requester.id = "ann".into();
        assert_eq!(cli.idempotency_scope(), "cli:ann");
    }

    #[test]
    fn without_secrets_drops_the_interaction_token_from_the_wire_form() {
        let origin = Origin::Discord {
            application_id: "1".into(),
            interaction_token: Secret::new("very-secret-token"),
            channel_id: "2".into(),
            guild_id: None,
        };
        let job = JobRequest::new("p", origin);
        assert!(wire::encode(&job).contains("very-secret-token"));
        let shown = wire::encode(&job.without_secrets());
        assert!(
            !shown.contains("very-secret-token") && !shown.contains("interaction_token"),
            "{shown}"
        );
    }
}
