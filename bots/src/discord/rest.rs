//! Discord's REST API, with Discord's rate limits honoured in one place. Requests are built by
//! serenity (its routes, its builders' JSON); this module sends them, reads the rate-limit
//! headers and waits out every 429 for the time Discord gives. serenity's own limiter is off
//! because it ignores a configured API base; keeping one path means the limit handling the tests
//! exercise against the simulator is the one production runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ducks_contract::Secret;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;
use serenity::builder::{
    CreateCommand, CreateInteractionResponse, CreateMessage, EditInteractionResponse,
};
use serenity::http::{LightMethod, Request, Route};
use serenity::model::id::{ApplicationId, ChannelId, GuildId, InteractionId};
use tokio::time::Instant;
use tracing::warn;

use super::lock;
use super::metrics::Metrics;

/// How long one request may take in all, its waits for rate limits and retries included; no
/// attempt outlives it, so an edit never lands after its edit turn (a longer lease) ran out.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// An interaction's first answer is useless after Discord's 3 seconds.
const CALLBACK_DEADLINE: Duration = Duration::from_secs(3);
/// Requests with the bot token per second at most: Discord's global limit is 50, and interaction
/// routes (callbacks, edits of an interaction's messages) do not count against it.
const GLOBAL_PER_SECOND: u32 = 40;
/// Buckets remembered before expired ones are dropped (interaction tokens are buckets of their own).
const BUCKETS_KEPT: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The interaction token is no longer valid (Discord's 15 minutes ran out).
    #[error("the interaction token has expired")]
    TokenExpired,
    /// The message or interaction is gone, or was never answered.
    #[error("not found on Discord (code {code})")]
    NotFound { code: i64 },
    /// The bot may not do this here (missing access or permission).
    #[error("Discord refused access (code {code}): {message}")]
    Forbidden { code: i64, message: String },
    #[error("Discord rejected the request ({status}, code {code}): {message}")]
    Rejected {
        status: u16,
        code: i64,
        message: String,
    },
    #[error("Discord could not be reached in time: {0}")]
    Unavailable(String),
}

/// A file sent with a message.
#[derive(Clone, Debug)]
pub struct Upload {
    pub filename: String,
    pub bytes: Vec<u8>,
}

/// Discord's multipart message: `payload_json`, then `files[n]`.
fn form(payload: &[u8], files: &[Upload]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text(
        "payload_json",
        String::from_utf8_lossy(payload).into_owned(),
    );
    for (id, file) in files.iter().enumerate() {
        let part = reqwest::multipart::Part::bytes(file.bytes.clone())
            .file_name(file.filename.clone())
            .mime_str("image/png")
            .expect("a valid MIME type");
        form = form.part(format!("files[{id}]"), part);
    }
    form
}

/// A message Discord created or edited, as far as the bot needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posted {
    pub id: String,
    pub channel_id: String,
}

pub struct Rest {
    client: reqwest::Client,
    base: String,
    authorization: Secret,
    application: ApplicationId,
    /// When each route may be called again, from `X-RateLimit-*` headers and 429s.
    not_before: Mutex<HashMap<String, Instant>>,
    /// A global 429 pauses every route.
    global_not_before: Mutex<Option<Instant>>,
    /// Requests counted against the global limit in the current second: (its start, count).
    global_window: Mutex<(Instant, u32)>,
    metrics: Arc<Metrics>,
}

impl Rest {
    pub fn new(
        base: &str,
        token: &Secret,
        application: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(DEADLINE)
            .build()
            .map_err(|e| format!("Could not build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            authorization: Secret::new(format!("Bot {}", token.expose())),
            application: ApplicationId::new(application.max(1)),
            not_before: Mutex::new(HashMap::new()),
            global_not_before: Mutex::new(None),
            global_window: Mutex::new((Instant::now(), 0)),
            metrics,
        })
    }

    /// Answers an interaction received over the gateway (over HTTP, the answer is the response).
    pub async fn respond(
        &self,
        interaction: InteractionId,
        token: &str,
        response: &CreateInteractionResponse,
    ) -> Result<(), RestError> {
        let route = Route::InteractionResponse {
            interaction_id: interaction,
            token,
        };
        self.send_within(
            route,
            LightMethod::Post,
            Some(response),
            &[],
            "callback",
            CALLBACK_DEADLINE,
        )
        .await
        .map(drop)
    }

    /// Deletes the interaction's first answer (a public deferral that turned out private).
    pub async fn delete_original(&self, token: &str) -> Result<(), RestError> {
        let route = Route::WebhookOriginalInteractionResponse {
            application_id: self.application,
            token,
        };
        self.send(route, LightMethod::Delete, None::<&()>, "delete_original")
            .await
            .map(drop)
    }

    /// The interaction's first answer as Discord keeps it: its message id.
    pub async fn original(&self, token: &str) -> Result<Posted, RestError> {
        let route = Route::WebhookOriginalInteractionResponse {
            application_id: self.application,
            token,
        };
        posted(
            self.send(route, LightMethod::Get, None::<&()>, "get_original")
                .await?,
        )
    }

    /// A follow-up message to an interaction.
    pub async fn followup(
        &self,
        token: &str,
        message: &serenity::builder::CreateInteractionResponseFollowup,
    ) -> Result<Posted, RestError> {
        let route = Route::WebhookFollowupMessages {
            application_id: self.application,
            token,
        };
        posted(
            self.send(route, LightMethod::Post, Some(message), "followup")
                .await?,
        )
    }

    /// Edits the interaction's first answer.
    pub async fn edit_original(
        &self,
        token: &str,
        edit: &EditInteractionResponse,
    ) -> Result<Posted, RestError> {
        self.edit_original_with(token, edit, &[]).await
    }

    /// Edits the interaction's first answer, uploading `files` with it.
    pub async fn edit_original_with(
        &self,
        token: &str,
        edit: &EditInteractionResponse,
        files: &[Upload],
    ) -> Result<Posted, RestError> {
        let route = Route::WebhookOriginalInteractionResponse {
            application_id: self.application,
            token,
        };
        let message = self
            .send_with(
                route,
                LightMethod::Patch,
                Some(edit),
                files,
                "edit_original",
            )
            .await?;
        posted(message)
    }

    /// Posts a message in a channel with the bot's own token: for results that outlive the
    /// interaction token.
    pub async fn post_in_channel(
        &self,
        channel: ChannelId,
        message: &CreateMessage,
        files: &[Upload],
    ) -> Result<Posted, RestError> {
        let route = Route::ChannelMessages {
            channel_id: channel,
        };
        let message = self
            .send_with(
                route,
                LightMethod::Post,
                Some(message),
                files,
                "channel_message",
            )
            .await?;
        posted(message)
    }

    /// Replaces the application's commands, globally or in one guild (instant, for testing).
    pub async fn register(
        &self,
        guild: Option<GuildId>,
        commands: &[CreateCommand],
    ) -> Result<usize, RestError> {
        let route = match guild {
            Some(guild_id) => Route::GuildCommands {
                application_id: self.application,
                guild_id,
            },
            None => Route::Commands {
                application_id: self.application,
            },
        };
        let answer = self
            .send(route, LightMethod::Put, Some(&commands), "commands")
            .await?;
        Ok(answer
            .as_ref()
            .and_then(Value::as_array)
            .map_or(0, Vec::len))
    }

    /// Sends one request, waiting out rate limits and retrying what Discord did not take
    /// (a 429, a 5xx, a lost connection) until [`DEADLINE`].
    async fn send(
        &self,
        route: Route<'_>,
        method: LightMethod,
        body: Option<&impl Serialize>,
        what: &'static str,
    ) -> Result<Option<Value>, RestError> {
        self.send_with(route, method, body, &[], what).await
    }

    /// [`Rest::send`] with files: a multipart body whose `payload_json` lists them as
    /// attachments 0, 1, …, which embeds show as `attachment://<filename>`.
    async fn send_with(
        &self,
        route: Route<'_>,
        method: LightMethod,
        body: Option<&impl Serialize>,
        files: &[Upload],
        what: &'static str,
    ) -> Result<Option<Value>, RestError> {
        self.send_within(route, method, body, files, what, DEADLINE)
            .await
    }

    async fn send_within(
        &self,
        route: Route<'_>,
        method: LightMethod,
        body: Option<&impl Serialize>,
        files: &[Upload],
        what: &'static str,
        within: Duration,
    ) -> Result<Option<Value>, RestError> {
        let body = body.map(|b| {
            let mut json = serde_json::to_value(b).expect("builders serialize");
            if !files.is_empty() {
                json["attachments"] = files
                    .iter()
                    .enumerate()
                    .map(|(id, file)| serde_json::json!({"id": id, "filename": file.filename}))
                    .collect();
            }
            serde_json::to_vec(&json).expect("JSON serializes")
        });
        let deadline = Instant::now() + within;
        let bucket = route.path().into_owned();
        let mut backoff = Duration::from_millis(250);
        let counts_globally = !matches!(
            route,
            Route::InteractionResponse { .. }
                | Route::WebhookOriginalInteractionResponse { .. }
                | Route::WebhookFollowupMessage { .. }
                | Route::WebhookFollowupMessages { .. }
        );
        loop {
            if Instant::now() >= deadline {
                return Err(RestError::Unavailable(
                    "no answer within the deadline".into(),
                ));
            }
            self.wait_for_turn(&bucket, counts_globally, deadline)
                .await?;
            if counts_globally {
                self.pace_globally().await;
            }
            let request = if files.is_empty() {
                Request::new(route, method)
                    .body(body.clone())
                    .build(&self.client, self.authorization.expose(), Some(&self.base))
                    .map_err(|e| RestError::Unavailable(e.to_string()))?
            } else {
                // serenity's builder would give the form an empty body's length: the same URL
                // and token, with the form's own headers.
                let url = route.path().replace("https://discord.com", &self.base);
                self.client
                    .request(method.reqwest_method(), url)
                    .header(reqwest::header::AUTHORIZATION, self.authorization.expose())
                    .header(reqwest::header::USER_AGENT, serenity::constants::USER_AGENT)
                    .multipart(form(body.as_deref().unwrap_or(b"{}"), files))
            }
            .build()
            .map_err(|e| RestError::Unavailable(e.without_url().to_string()))?;
            let attempt = tokio::time::timeout_at(deadline, self.client.execute(request)).await;
            let response = match attempt {
                Err(_) => {
                    self.metrics.rest(what, "error");
                    return Err(RestError::Unavailable(
                        "no answer within the deadline".into(),
                    ));
                }
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    // Without the URL: an interaction route carries its token.
                    let error = error.without_url().to_string();
                    self.metrics.rest(what, "error");
                    warn!(message = "A Discord request failed; retrying.", what, %error);
                    self.pause(backoff, deadline, &error).await?;
                    backoff *= 2;
                    continue;
                }
            };
            let status = response.status();
            self.metrics.rest(what, status.as_str());
            self.note_limits(&bucket, response.headers());
            if status.is_success() {
                let bytes = response.bytes().await.unwrap_or_default();
                return Ok(serde_json::from_slice(&bytes).ok());
            }
            let retry_header = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok());
            let bytes = response.bytes().await.unwrap_or_default();
            let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    let wait = error
                        .get("retry_after")
                        .and_then(Value::as_f64)
                        .or(retry_header)
                        .map(|secs| Duration::from_secs_f64(secs.max(0.0)))
                        .unwrap_or(Duration::from_secs(1));
                    let global = error.get("global").and_then(Value::as_bool) == Some(true);
                    self.metrics.rate_limited(what);
                    warn!(
                        message = "Discord asked the bot to slow down.",
                        what,
                        wait_ms = wait.as_millis() as u64,
                        global
                    );
                    self.hold(&bucket, wait, global);
                }
                s if s.is_server_error() => {
                    self.pause(backoff, deadline, &format!("{s}")).await?;
                    backoff *= 2;
                }
                StatusCode::UNAUTHORIZED if code == 50027 => return Err(RestError::TokenExpired),
                StatusCode::NOT_FOUND => return Err(RestError::NotFound { code }),
                StatusCode::FORBIDDEN => return Err(RestError::Forbidden { code, message }),
                s => {
                    return Err(RestError::Rejected {
                        status: s.as_u16(),
                        code,
                        message,
                    });
                }
            }
        }
    }

    /// Waits out the route's hold and, for routes Discord counts globally, a global one.
    async fn wait_for_turn(
        &self,
        bucket: &str,
        counts_globally: bool,
        deadline: Instant,
    ) -> Result<(), RestError> {
        let global = lock(&self.global_not_before).filter(|_| counts_globally);
        let route = lock(&self.not_before).get(bucket).copied();
        if let Some(until) = global.into_iter().chain(route).max()
            && until > Instant::now()
        {
            if until > deadline {
                return Err(RestError::Unavailable(
                    "rate limited beyond the request's deadline".into(),
                ));
            }
            tokio::time::sleep_until(until).await;
        }
        Ok(())
    }

    /// Spreads bot-token requests so a burst never reaches Discord's global limit.
    async fn pace_globally(&self) {
        loop {
            let wait = {
                let mut window = lock(&self.global_window);
                let now = Instant::now();
                if now >= window.0 + Duration::from_secs(1) {
                    *window = (now, 0);
                }
                if window.1 < GLOBAL_PER_SECOND {
                    window.1 += 1;
                    return;
                }
                window.0 + Duration::from_secs(1)
            };
            tokio::time::sleep_until(wait).await;
        }
    }

    async fn pause(&self, wait: Duration, deadline: Instant, why: &str) -> Result<(), RestError> {
        if Instant::now() + wait > deadline {
            return Err(RestError::Unavailable(why.to_owned()));
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    fn hold(&self, bucket: &str, wait: Duration, global: bool) {
        let until = Instant::now() + wait;
        if global {
            let mut held = lock(&self.global_not_before);
            *held = Some(held.map_or(until, |h| h.max(until)));
        } else {
            let mut buckets = lock(&self.not_before);
            if buckets.len() >= BUCKETS_KEPT {
                let now = Instant::now();
                buckets.retain(|_, until| *until > now);
            }
            let held = buckets.entry(bucket.to_owned()).or_insert(until);
            *held = (*held).max(until);
        }
    }

    /// A route with no requests left in its window waits for the window's reset.
    fn note_limits(&self, bucket: &str, headers: &reqwest::header::HeaderMap) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
        };
        if header("x-ratelimit-remaining") == Some(0.0)
            && let Some(reset_after) = header("x-ratelimit-reset-after")
        {
            self.hold(bucket, Duration::from_secs_f64(reset_after.max(0.0)), false);
        }
    }
}

fn posted(message: Option<Value>) -> Result<Posted, RestError> {
    let field = |name: &str| {
        message
            .as_ref()
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match (field("id"), field("channel_id")) {
        (Some(id), Some(channel_id)) => Ok(Posted { id, channel_id }),
        _ => Err(RestError::Rejected {
            status: 200,
            code: 0,
            message: "Discord's answer named no message".into(),
        }),
    }
}
