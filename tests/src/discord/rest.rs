//! The REST API: routing of `/api/v10/...`, bodies (JSON or multipart), Discord's error JSON,
//! rate-limit headers, interaction callbacks and the messages they make.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::response::Response;
use serde_json::{Value, json};

use super::multipart;
use super::payloads::{
    APPLICATION_ID, ATTACHMENT_SIZE_LIMIT, BOT_TOKEN, BOT_USERNAME, FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL, FLAG_LOADING, FLAG_SUPPRESS_EMBEDS, FLAG_SUPPRESS_NOTIFICATIONS,
    application_json, command_id, current_user_json, id_of, now_rfc3339, snowflake, unix_ms,
    user_json,
};
use super::{RecordedFile, RecordedRequest, Shared, State, StoredMessage};

/// The largest request body read; Discord refuses requests over 25 MiB with 413.
const MAX_REQUEST_BYTES: usize = 25 * 1024 * 1024;

/// Message content, embeds and components limits, as Discord checks them.
const MAX_CONTENT: usize = 2000;
const MAX_EMBEDS: usize = 10;
const MAX_EMBED_TOTAL: usize = 6000;
const MAX_ROWS: usize = 5;
const MAX_CHOICES: usize = 25;

/// The limit every successful answer announces in `X-RateLimit-Limit`: generous, so a client that
/// reads the headers never waits.
const GENEROUS_LIMIT: u32 = 50;

/// A request's body: JSON (or `payload_json`) and files, or Discord's error (status, JSON).
type ParsedBody = Result<(Option<Value>, Vec<RecordedFile>), (u16, Value)>;

/// A request as the router sees it.
struct Incoming {
    method: String,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    body: ParsedBody,
}

impl Incoming {
    fn json(&self) -> Value {
        match &self.body {
            Ok((Some(json), _)) => json.clone(),
            _ => Value::Null,
        }
    }

    fn files(&self) -> &[RecordedFile] {
        match &self.body {
            Ok((_, files)) => files,
            Err(_) => &[],
        }
    }
}

/// An answer.
pub(super) struct Reply {
    status: u16,
    body: ReplyBody,
    headers: Vec<(&'static str, String)>,
}

enum ReplyBody {
    Json(Value),
    Bytes(String, Vec<u8>),
    Empty,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: ReplyBody::Json(body),
            headers: Vec::new(),
        }
    }

    fn empty() -> Reply {
        Reply {
            status: 204,
            body: ReplyBody::Empty,
            headers: Vec::new(),
        }
    }

    fn json_body(&self) -> Option<Value> {
        match &self.body {
            ReplyBody::Json(json) => Some(json.clone()),
            _ => None,
        }
    }
}

type Answer = Result<Reply, Reply>;

/// `{"message": .., "code": ..}`, Discord's error body.
pub(super) fn discord_error(code: u64, message: &str) -> Value {
    json!({"message": message, "code": code})
}

fn error(status: u16, code: u64, message: &str) -> Reply {
    Reply::json(status, discord_error(code, message))
}

fn not_found() -> Reply {
    error(404, 0, "404: Not Found")
}

fn unauthorized() -> Reply {
    error(401, 0, "401: Unauthorized")
}

fn invalid_token() -> Reply {
    error(401, 50027, "Invalid Webhook Token")
}

fn unknown_message() -> Reply {
    error(404, 10008, "Unknown Message")
}

fn unknown_interaction() -> Reply {
    error(404, 10062, "Unknown interaction")
}

fn unknown_webhook() -> Reply {
    error(404, 10015, "Unknown Webhook")
}

fn empty_message() -> Reply {
    error(400, 50006, "Cannot send an empty message")
}

fn too_large() -> (u16, Value) {
    (413, discord_error(40005, "Request entity too large"))
}

/// 400 / 50035 "Invalid Form Body" with one error at `path` (dot-separated, e.g.
/// `embeds.0.title`; empty for the body itself).
fn form_error(path: &str, code: &str, message: &str) -> Reply {
    let mut errors = json!({"_errors": [{"code": code, "message": message}]});
    for key in path.rsplit('.').filter(|key| !key.is_empty()) {
        errors = json!({ key: errors });
    }
    Reply::json(
        400,
        json!({"message": "Invalid Form Body", "code": 50035, "errors": errors}),
    )
}

fn max_length(path: &str, limit: usize) -> Reply {
    form_error(
        path,
        "BASE_TYPE_MAX_LENGTH",
        &format!("Must be {limit} or fewer in length."),
    )
}

fn invalid_callback_type() -> Reply {
    form_error(
        "type",
        "INTERACTION_RESPONSE_TYPE_INVALID",
        "This interaction response type is not valid for this interaction.",
    )
}

/// The axum handler for every request.
pub(super) async fn handle(Extract(shared): Extract<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(CONTENT_TYPE);
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(bytes) => parse_body(content_type.as_deref(), &bytes),
        Err(_) => Err(too_large()),
    };
    let incoming = Incoming {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        authorization: header(AUTHORIZATION),
        content_type,
        body,
    };
    let reply = shared.lock().answer(incoming);
    shared.bump();
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    let response = match reply.body {
        ReplyBody::Json(json) => response
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        ReplyBody::Bytes(content_type, data) => response
            .header(CONTENT_TYPE, content_type)
            .body(Body::from(data)),
        ReplyBody::Empty => response.body(Body::empty()),
    };
    response.expect("the simulator's responses have valid headers")
}

/// A body as JSON or multipart (`payload_json` and `files[n]`); an empty body is `None`.
pub(super) fn parse_body(content_type: Option<&str>, bytes: &[u8]) -> ParsedBody {
    let invalid_json = || {
        (
            400,
            discord_error(50109, "The request body contains invalid JSON."),
        )
    };
    if let Some(boundary) = content_type.and_then(multipart::boundary) {
        let parts = multipart::parse(&boundary, bytes).map_err(|problem| {
            (
                400,
                discord_error(50035, &format!("Invalid Form Body: {problem}")),
            )
        })?;
        let mut json = None;
        let mut files = Vec::new();
        for part in parts {
            if part.name == "payload_json" {
                json = Some(serde_json::from_slice(&part.data).map_err(|_| invalid_json())?);
            } else if part.filename.is_some() || part.name.starts_with("files[") {
                files.push(RecordedFile {
                    filename: part.filename.unwrap_or_else(|| part.name.clone()),
                    field: part.name,
                    content_type: part.content_type,
                    data: part.data,
                });
            }
        }
        return Ok((json, files));
    }
    if bytes.is_empty() {
        return Ok((None, Vec::new()));
    }
    serde_json::from_slice(bytes)
        .map(|json| (Some(json), Vec::new()))
        .map_err(|_| invalid_json())
}

impl State {
    /// Answers and records one request.
    fn answer(&mut self, incoming: Incoming) -> Reply {
        let now = Instant::now();
        let key = format!("{} {}", incoming.method, incoming.path);
        let discovery = incoming.method == "GET"
            && matches!(
                incoming.path.as_str(),
                "/api/v10/gateway" | "/api/v10/gateway/bot"
            );
        let early = !discovery && self.not_before.get(&key).is_some_and(|at| now < *at);
        if early {
            self.early_retries += 1;
        }
        let reply = if !discovery && self.limit_next > 0 {
            self.limit_next -= 1;
            let retry_after = self.limit_retry_after;
            self.not_before.insert(key.clone(), now + retry_after);
            rate_limited(retry_after, &key)
        } else {
            let mut reply = match &incoming.body {
                Err((status, error)) => Reply::json(*status, error.clone()),
                Ok(_) => self.route(&incoming, now).unwrap_or_else(|error| error),
            };
            reply.headers.extend(rate_limit_headers(&key));
            reply
        };
        let (json, files) = match incoming.body {
            Ok((json, files)) => (json, files),
            Err(_) => (None, Vec::new()),
        };
        self.requests.push(RecordedRequest {
            method: incoming.method,
            path: incoming.path,
            query: incoming.query,
            authorization: incoming.authorization,
            content_type: incoming.content_type,
            json,
            files,
            status: reply.status,
            response: reply.json_body(),
            early_retry: early,
            at: now,
        });
        reply
    }

    fn route(&mut self, incoming: &Incoming, now: Instant) -> Answer {
        let method = incoming.method.as_str();
        if let Some(rest) = incoming.path.strip_prefix("/attachments/") {
            return self.attachment(method, rest);
        }
        let Some(rest) = incoming.path.strip_prefix("/api/v10/") else {
            return Err(not_found());
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let body = incoming.json();
        let files = incoming.files();
        match (method, segments.as_slice()) {
            ("GET", ["gateway"]) => Ok(Reply::json(200, json!({"url": self.gateway_url}))),
            ("GET", ["gateway", "bot"]) => {
                bot_auth(incoming)?;
                Ok(Reply::json(
                    200,
                    json!({
                        "url": self.gateway_url,
                        "shards": 1,
                        "session_start_limit": {
                            "total": 1000,
                            "remaining": 999,
                            "reset_after": 86_400_000,
                            "max_concurrency": 1,
                        },
                    }),
                ))
            }
            ("GET", ["oauth2", "applications", "@me"]) => {
                bot_auth(incoming)?;
                Ok(Reply::json(200, application_json(&self.verify_key)))
            }
            ("GET", ["users", "@me"]) => {
                bot_auth(incoming)?;
                Ok(Reply::json(200, current_user_json()))
            }
            ("GET" | "PUT", ["applications", app, "commands"]) => {
                bot_auth(incoming)?;
                own_application(app)?;
                self.commands_route(method, None, &body)
            }
            ("GET" | "PUT", ["applications", app, "guilds", guild, "commands"]) => {
                bot_auth(incoming)?;
                own_application(app)?;
                let guild = guild.parse().map_err(|_| not_found())?;
                self.commands_route(method, Some(guild), &body)
            }
            ("POST", ["interactions", id, token, "callback"]) => {
                if self.expired_tokens.contains(*token) {
                    return Err(invalid_token());
                }
                let known = self
                    .interactions
                    .get(*token)
                    .is_some_and(|interaction| id.parse() == Ok(interaction.id));
                if !known {
                    return Err(unknown_interaction());
                }
                self.apply_callback(token, &body, files, now)?;
                Ok(Reply::empty())
            }
            ("POST", ["webhooks", app, token]) => {
                self.webhook(app, token)?;
                self.followup(token, &body, files)
            }
            (_, ["webhooks", app, token, "messages", which]) => {
                self.webhook(app, token)?;
                self.webhook_message(method, token, which, &body, files)
            }
            ("POST", ["channels", channel, "messages"]) => {
                bot_auth(incoming)?;
                let channel = channel.parse().map_err(|_| not_found())?;
                self.channel_post(channel, &body, files)
            }
            (_, ["channels", channel, "messages", message]) => {
                bot_auth(incoming)?;
                let channel: u64 = channel.parse().map_err(|_| not_found())?;
                let message: u64 = message.parse().map_err(|_| unknown_message())?;
                self.channel_message(method, channel, message, &body, files)
            }
            _ => Err(not_found()),
        }
    }

    fn attachment(&self, method: &str, rest: &str) -> Answer {
        let id: Option<u64> = rest.split('/').next().and_then(|id| id.parse().ok());
        match (method, id.and_then(|id| self.attachments.get(&id))) {
            ("GET", Some((content_type, data))) => Ok(Reply {
                status: 200,
                body: ReplyBody::Bytes(content_type.clone(), data.clone()),
                headers: Vec::new(),
            }),
            _ => Err(not_found()),
        }
    }

    fn commands_route(&mut self, method: &str, guild: Option<u64>, body: &Value) -> Answer {
        if method == "GET" {
            let commands = self.commands.get(&guild).cloned().unwrap_or_default();
            return Ok(Reply::json(200, Value::Array(commands)));
        }
        let Some(list) = body.as_array() else {
            return Err(form_error("", "BASE_TYPE_ARRAY_TYPE", "Must be an array."));
        };
        if list.len() > 100 {
            return Err(max_length("", 100));
        }
        let mut names = std::collections::HashSet::new();
        let mut echoed = Vec::new();
        for (index, command) in list.iter().enumerate() {
            validate_command(index, command)?;
            let kind = command.get("type").and_then(Value::as_u64).unwrap_or(1);
            let name = command["name"].as_str().unwrap_or_default();
            if !names.insert((kind, name.to_owned())) {
                return Err(form_error(
                    &format!("{index}.name"),
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    &format!("Application command names must be unique: {name}"),
                ));
            }
            echoed.push(command_echo(command, guild));
        }
        self.commands.insert(guild, echoed.clone());
        Ok(Reply::json(200, Value::Array(echoed)))
    }

    /// Checks the app id and the token of a webhook route.
    fn webhook(&self, app: &str, token: &str) -> Result<(), Reply> {
        own_application(app).map_err(|_| unknown_webhook())?;
        if self.expired_tokens.contains(token) || !self.interactions.contains_key(token) {
            return Err(invalid_token());
        }
        Ok(())
    }

    /// Applies an interaction response (from the callback route or the endpoint's answer).
    fn apply_callback(
        &mut self,
        token: &str,
        body: &Value,
        files: &[RecordedFile],
        now: Instant,
    ) -> Result<(), Reply> {
        let interaction = self
            .interactions
            .get(token)
            .cloned()
            .ok_or_else(unknown_interaction)?;
        if !interaction.responses.is_empty() {
            return Err(error(
                400,
                40060,
                "Interaction has already been acknowledged.",
            ));
        }
        if let Some(limit) = self.ack_deadline
            && now.duration_since(interaction.registered) > limit
        {
            return Err(unknown_interaction());
        }
        let Some(kind) = body.get("type").and_then(Value::as_u64) else {
            return Err(form_error(
                "type",
                "BASE_TYPE_REQUIRED",
                "This field is required",
            ));
        };
        let data = body.get("data").cloned().unwrap_or(Value::Null);
        let is_component = interaction.kind == 3;
        let from_message =
            is_component || (interaction.kind == 5 && interaction.message_id.is_some());
        match kind {
            1 if interaction.kind == 1 => {}
            4 | 5 if matches!(interaction.kind, 2 | 3 | 5) => {
                let loading = kind == 5;
                let message_kind = if interaction.kind == 2 { 20 } else { 0 };
                let id = self.create_interaction_message(
                    &interaction,
                    token,
                    message_kind,
                    &data,
                    files,
                    loading,
                )?;
                if let Some(stored) = self.interactions.get_mut(token) {
                    stored.original = Some(id);
                }
            }
            6 | 7 if from_message => {
                let message_id = interaction.message_id.ok_or_else(unknown_message)?;
                if kind == 7 {
                    let mut message = self
                        .messages
                        .get(&message_id)
                        .map(|message| message.json.clone())
                        .ok_or_else(unknown_message)?;
                    self.apply_fields(&mut message, &data, files, interaction.size_limit, false)?;
                    if let Some(stored) = self.messages.get_mut(&message_id) {
                        stored.json = message;
                    }
                }
                if let Some(stored) = self.interactions.get_mut(token) {
                    stored.original = Some(message_id);
                }
            }
            8 if interaction.kind == 4 => {
                let choices = data.get("choices").and_then(Value::as_array);
                if choices.is_some_and(|choices| choices.len() > MAX_CHOICES) {
                    return Err(max_length("data.choices", MAX_CHOICES));
                }
            }
            9 if matches!(interaction.kind, 2 | 3) => {
                for field in ["custom_id", "title", "components"] {
                    if data.get(field).is_none() {
                        return Err(form_error(
                            &format!("data.{field}"),
                            "BASE_TYPE_REQUIRED",
                            "This field is required",
                        ));
                    }
                }
            }
            1 | 4..=9 => return Err(invalid_callback_type()),
            _ => {
                return Err(form_error(
                    "type",
                    "BASE_TYPE_CHOICES",
                    &format!("Value must be one of (1, 4, 5, 6, 7, 8, 9, 10, 12), not {kind}."),
                ));
            }
        }
        if let Some(stored) = self.interactions.get_mut(token) {
            stored.responses.push(body.clone());
        }
        Ok(())
    }

    /// Applies the 200 answer of a bot's interactions endpoint; errors as Discord's JSON.
    pub(super) fn apply_endpoint_answer(
        &mut self,
        token: &str,
        body: &Value,
        files: &[RecordedFile],
    ) -> Result<(), Value> {
        self.apply_callback(token, body, files, Instant::now())
            .map_err(|reply| reply.json_body().unwrap_or(Value::Null))
    }

    /// A message made by an interaction response or follow-up, in the interaction's channel.
    fn create_interaction_message(
        &mut self,
        interaction: &super::Interaction,
        token: &str,
        kind: u64,
        data: &Value,
        files: &[RecordedFile],
        loading: bool,
    ) -> Result<u64, Reply> {
        let id = snowflake();
        let mut message = new_message(id, interaction.channel_id, kind);
        message["webhook_id"] = json!(APPLICATION_ID.to_string());
        message["application_id"] = json!(APPLICATION_ID.to_string());
        let mut metadata = json!({
            "id": interaction.id.to_string(),
            "type": interaction.kind,
            "user": interaction.user,
            "authorizing_integration_owners": interaction.owners,
        });
        match interaction.kind {
            2 => {
                metadata["name"] = json!(interaction.name.clone().unwrap_or_default());
                metadata["command_type"] = json!(interaction.command_type);
                message["interaction"] = json!({
                    "id": interaction.id.to_string(),
                    "type": 2,
                    "name": interaction.name.clone().unwrap_or_default(),
                    "user": interaction.user,
                });
            }
            3 => {
                metadata["interacted_message_id"] =
                    json!(interaction.message_id.unwrap_or_default().to_string());
            }
            _ => {}
        }
        if let Some(original) = interaction.original {
            metadata["original_response_message_id"] = json!(original.to_string());
        }
        // A modal submit's metadata needs the triggering interaction's, which is not kept.
        if interaction.kind != 5 {
            message["interaction_metadata"] = metadata;
        }
        if loading {
            let flags = data.get("flags").and_then(Value::as_u64).unwrap_or(0);
            message["flags"] = json!(FLAG_LOADING | (flags & FLAG_EPHEMERAL));
        } else {
            self.apply_fields(&mut message, data, files, interaction.size_limit, true)?;
        }
        self.messages.insert(
            id,
            StoredMessage {
                json: message,
                interaction: Some(token.to_owned()),
            },
        );
        Ok(id)
    }

    fn followup(&mut self, token: &str, body: &Value, files: &[RecordedFile]) -> Answer {
        let interaction = self
            .interactions
            .get(token)
            .cloned()
            .ok_or_else(invalid_token)?;
        if interaction.responses.is_empty() {
            return Err(unknown_webhook());
        }
        let id = self.create_interaction_message(&interaction, token, 0, body, files, false)?;
        if let Some(stored) = self.interactions.get_mut(token) {
            stored.followups.push(id);
        }
        Ok(Reply::json(200, self.messages[&id].json.clone()))
    }

    fn webhook_message(
        &mut self,
        method: &str,
        token: &str,
        which: &str,
        body: &Value,
        files: &[RecordedFile],
    ) -> Answer {
        let interaction = self
            .interactions
            .get(token)
            .cloned()
            .ok_or_else(invalid_token)?;
        let original = which == "@original";
        let id = if original {
            interaction.original.ok_or_else(unknown_message)?
        } else {
            let id: u64 = which.parse().map_err(|_| unknown_message())?;
            let belongs = interaction.original == Some(id)
                || self
                    .messages
                    .get(&id)
                    .is_some_and(|message| message.interaction.as_deref() == Some(token));
            if !belongs {
                return Err(unknown_message());
            }
            id
        };
        let current = self
            .messages
            .get(&id)
            .map(|message| message.json.clone())
            .ok_or_else(unknown_message)?;
        match method {
            "GET" => Ok(Reply::json(200, current)),
            "PATCH" => {
                let mut message = current;
                self.apply_fields(&mut message, body, files, interaction.size_limit, false)?;
                if let Some(stored) = self.messages.get_mut(&id) {
                    stored.json = message.clone();
                }
                if interaction.original == Some(id)
                    && let Some(stored) = self.interactions.get_mut(token)
                {
                    stored.original_edits += 1;
                }
                Ok(Reply::json(200, message))
            }
            "DELETE" => {
                self.messages.remove(&id);
                if let Some(stored) = self.interactions.get_mut(token)
                    && stored.original == Some(id)
                {
                    stored.original = None;
                }
                Ok(Reply::empty())
            }
            _ => Err(error(405, 0, "405: Method Not Allowed")),
        }
    }

    fn channel_post(&mut self, channel: u64, body: &Value, files: &[RecordedFile]) -> Answer {
        if self.forbidden_channels.contains(&channel) {
            return Err(error(403, 50001, "Missing Access"));
        }
        let id = snowflake();
        let reference = body
            .get("message_reference")
            .filter(|value| value.is_object());
        let mut message = new_message(id, channel, if reference.is_some() { 19 } else { 0 });
        if let Some(reference) = reference {
            let referenced = id_of(reference.get("message_id"));
            let mut kept = json!({
                "type": reference.get("type").and_then(Value::as_u64).unwrap_or(0),
                "channel_id": id_of(reference.get("channel_id")).unwrap_or(channel).to_string(),
            });
            if let Some(referenced) = referenced {
                kept["message_id"] = json!(referenced.to_string());
            }
            if let Some(guild) = id_of(reference.get("guild_id")) {
                kept["guild_id"] = json!(guild.to_string());
            }
            if let Some(fail) = reference.get("fail_if_not_exists") {
                kept["fail_if_not_exists"] = fail.clone();
            }
            message["message_reference"] = kept;
            message["referenced_message"] = referenced
                .and_then(|referenced| self.messages.get(&referenced))
                .map_or(Value::Null, |message| message.json.clone());
        }
        self.apply_fields(&mut message, body, files, ATTACHMENT_SIZE_LIMIT, true)?;
        // Ephemeral is for interaction responses only; Discord ignores it here.
        if let Some(flags) = message["flags"].as_u64() {
            message["flags"] = json!(flags & !FLAG_EPHEMERAL);
        }
        self.messages.insert(
            id,
            StoredMessage {
                json: message.clone(),
                interaction: None,
            },
        );
        Ok(Reply::json(200, message))
    }

    fn channel_message(
        &mut self,
        method: &str,
        channel: u64,
        id: u64,
        body: &Value,
        files: &[RecordedFile],
    ) -> Answer {
        let current = self
            .messages
            .get(&id)
            .map(|message| message.json.clone())
            .filter(|message| {
                message["channel_id"] == channel.to_string().as_str()
                    && message["flags"].as_u64().unwrap_or(0) & FLAG_EPHEMERAL == 0
            })
            .ok_or_else(unknown_message)?;
        match method {
            "GET" => Ok(Reply::json(200, current)),
            "PATCH" => {
                if self.forbidden_channels.contains(&channel) {
                    return Err(error(403, 50001, "Missing Access"));
                }
                let mut message = current;
                self.apply_fields(&mut message, body, files, ATTACHMENT_SIZE_LIMIT, false)?;
                if let Some(stored) = self.messages.get_mut(&id) {
                    stored.json = message.clone();
                }
                Ok(Reply::json(200, message))
            }
            "DELETE" => {
                self.messages.remove(&id);
                Ok(Reply::empty())
            }
            _ => Err(error(405, 0, "405: Method Not Allowed")),
        }
    }

    /// Writes the fields of a create or edit body into `message`: content, embeds, components,
    /// flags, tts, attachments (new uploads and kept ones), mentions; after Discord's checks.
    fn apply_fields(
        &mut self,
        message: &mut Value,
        body: &Value,
        files: &[RecordedFile],
        size_limit: u64,
        creating: bool,
    ) -> Result<(), Reply> {
        validate_message(body)?;
        if files
            .iter()
            .any(|file| u64::try_from(file.data.len()).unwrap_or(u64::MAX) > size_limit)
        {
            let (status, body) = too_large();
            return Err(Reply::json(status, body));
        }
        if let Some(content) = body.get("content") {
            message["content"] = json!(content.as_str().unwrap_or_default());
        }
        if let Some(embeds) = body.get("embeds") {
            let embeds: Vec<Value> = embeds
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut embed| {
                    if embed.get("type").is_none() {
                        embed["type"] = json!("rich");
                    }
                    embed
                })
                .collect();
            message["embeds"] = Value::Array(embeds);
        }
        if let Some(components) = body.get("components") {
            message["components"] =
                Value::Array(components.as_array().cloned().unwrap_or_default());
        }
        let mut flags = message["flags"].as_u64().unwrap_or(0) & !FLAG_LOADING;
        if let Some(given) = body.get("flags").and_then(Value::as_u64) {
            let mut settable =
                FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2;
            if creating {
                settable |= FLAG_EPHEMERAL;
            }
            flags = (flags & !settable) | (given & settable);
        }
        message["flags"] = json!(flags);
        if creating && let Some(tts) = body.get("tts").and_then(Value::as_bool) {
            message["tts"] = json!(tts);
        }
        let old: Vec<Value> = message["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut used = vec![false; files.len()];
        let mut attachments = Vec::new();
        if let Some(listed) = body.get("attachments").and_then(Value::as_array) {
            for (index, entry) in listed.iter().enumerate() {
                let entry_id = id_of(entry.get("id"));
                let upload = files
                    .iter()
                    .position(|file| placeholder(file).is_some() && placeholder(file) == entry_id);
                if let Some(upload) = upload {
                    used[upload] = true;
                    let description = entry.get("description").and_then(Value::as_str);
                    attachments.push(self.store_attachment(&files[upload], description));
                } else if let Some(kept) = old.iter().find(|attachment| {
                    entry_id.is_some() && id_of(attachment.get("id")) == entry_id
                }) {
                    attachments.push(kept.clone());
                } else {
                    return Err(form_error(
                        &format!("attachments.{index}"),
                        "ATTACHMENT_NOT_FOUND",
                        "Unknown attachment: neither an upload of this request nor on the message",
                    ));
                }
            }
        } else {
            attachments = old;
        }
        for (file, used) in files.iter().zip(used) {
            if !used {
                attachments.push(self.store_attachment(file, None));
            }
        }
        message["attachments"] = Value::Array(attachments);
        resolve_attachment_references(message);
        let content = message["content"].as_str().unwrap_or_default().to_owned();
        let (everyone, users, roles) = mentions(&content, body.get("allowed_mentions"));
        message["mention_everyone"] = json!(everyone);
        message["mentions"] = Value::Array(
            users
                .into_iter()
                .map(|user| {
                    if user == APPLICATION_ID {
                        user_json(user, BOT_USERNAME, true)
                    } else {
                        user_json(user, &format!("user{user}"), false)
                    }
                })
                .collect(),
        );
        message["mention_roles"] = Value::Array(
            roles
                .into_iter()
                .map(|role| json!(role.to_string()))
                .collect(),
        );
        if !creating {
            message["edited_timestamp"] = json!(now_rfc3339());
        }
        let empty = |field: &str| {
            message
                .get(field)
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        };
        let no_stickers = body
            .get("sticker_ids")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if content.is_empty()
            && empty("embeds")
            && empty("attachments")
            && empty("components")
            && no_stickers
            && body.get("poll").is_none_or(Value::is_null)
        {
            return Err(empty_message());
        }
        Ok(())
    }

    fn store_attachment(&mut self, file: &RecordedFile, description: Option<&str>) -> Value {
        let id = snowflake();
        let filename: String = file
            .filename
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let content_type = file
            .content_type
            .clone()
            .unwrap_or_else(|| guess_content_type(&filename).to_owned());
        let url = format!("{}/attachments/{id}/{filename}", self.api_base);
        let mut attachment = json!({
            "id": id.to_string(),
            "filename": filename,
            "size": file.data.len(),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        });
        if let Some((width, height)) = png_size(&file.data) {
            attachment["width"] = json!(width);
            attachment["height"] = json!(height);
        }
        if let Some(description) = description {
            attachment["description"] = json!(description);
        }
        self.attachments
            .insert(id, (content_type, file.data.clone()));
        attachment
    }
}

/// A message as Discord returns it, before the body's fields are applied.
fn new_message(id: u64, channel: u64, kind: u64) -> Value {
    json!({
        "id": id.to_string(),
        "type": kind,
        "content": "",
        "channel_id": channel.to_string(),
        "author": user_json(APPLICATION_ID, BOT_USERNAME, true),
        "attachments": [],
        "embeds": [],
        "mentions": [],
        "mention_roles": [],
        "pinned": false,
        "mention_everyone": false,
        "tts": false,
        "timestamp": now_rfc3339(),
        "edited_timestamp": null,
        "flags": 0,
        "components": [],
    })
}

/// The command as Discord echoes it after a bulk overwrite.
fn command_echo(command: &Value, guild: Option<u64>) -> Value {
    let name = command["name"].as_str().unwrap_or_default();
    let kind = command.get("type").and_then(Value::as_u64).unwrap_or(1);
    let mut echo = json!({
        "id": command_id(name).to_string(),
        "application_id": APPLICATION_ID.to_string(),
        "version": snowflake().to_string(),
        "type": kind,
        "name": name,
        "name_localizations": command.get("name_localizations").cloned().unwrap_or(Value::Null),
        "description": command.get("description").cloned().unwrap_or(json!("")),
        "description_localizations": command
            .get("description_localizations")
            .cloned()
            .unwrap_or(Value::Null),
        "default_member_permissions": command
            .get("default_member_permissions")
            .cloned()
            .unwrap_or(Value::Null),
        "nsfw": command.get("nsfw").cloned().unwrap_or(json!(false)),
    });
    match guild {
        Some(guild) => echo["guild_id"] = json!(guild.to_string()),
        None => {
            echo["dm_permission"] = command.get("dm_permission").cloned().unwrap_or(json!(true));
            echo["integration_types"] = command
                .get("integration_types")
                .cloned()
                .unwrap_or(json!([0]));
            echo["contexts"] = command.get("contexts").cloned().unwrap_or(Value::Null);
        }
    }
    if let Some(options) = command.get("options").and_then(Value::as_array)
        && !options.is_empty()
    {
        echo["options"] = Value::Array(options.clone());
    }
    echo
}

/// Discord's checks of a command in a bulk overwrite: names (1–32 lowercase letters, digits, `-`
/// or `_` for slash commands), descriptions (1–100), at most 25 options and choices, required
/// options first.
fn validate_command(index: usize, command: &Value) -> Result<(), Reply> {
    let kind = command.get("type").and_then(Value::as_u64).unwrap_or(1);
    let name = command
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind == 1 {
        validate_name(&format!("{index}.name"), name)?;
        validate_description(&format!("{index}.description"), command.get("description"))?;
        validate_options(&format!("{index}.options"), command.get("options"))?;
    } else if name.is_empty() || name.chars().count() > 32 {
        return Err(form_error(
            &format!("{index}.name"),
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 1 and 32 in length.",
        ));
    }
    Ok(())
}

fn validate_options(path: &str, options: Option<&Value>) -> Result<(), Reply> {
    let Some(options) = options.and_then(Value::as_array) else {
        return Ok(());
    };
    if options.len() > 25 {
        return Err(max_length(path, 25));
    }
    let mut optional_seen = false;
    for (index, option) in options.iter().enumerate() {
        let name = option
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        validate_name(&format!("{path}.{index}.name"), name)?;
        validate_description(
            &format!("{path}.{index}.description"),
            option.get("description"),
        )?;
        let required = option
            .get("required")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if required && optional_seen {
            return Err(form_error(
                &format!("{path}.{index}.required"),
                "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                "Required options must be placed before non-required options",
            ));
        }
        optional_seen |= !required;
        if let Some(choices) = option.get("choices").and_then(Value::as_array)
            && choices.len() > MAX_CHOICES
        {
            return Err(max_length(&format!("{path}.{index}.choices"), MAX_CHOICES));
        }
        validate_options(&format!("{path}.{index}.options"), option.get("options"))?;
    }
    Ok(())
}

fn validate_name(path: &str, name: &str) -> Result<(), Reply> {
    let length = name.chars().count();
    let valid = (1..=32).contains(&length)
        && name
            .chars()
            .all(|c| c == '-' || c == '_' || (c.is_alphanumeric() && !c.is_uppercase()));
    if valid {
        Ok(())
    } else {
        Err(form_error(
            path,
            "APPLICATION_COMMAND_INVALID_NAME",
            &format!("Command name is invalid: {name:?}"),
        ))
    }
}

fn validate_description(path: &str, description: Option<&Value>) -> Result<(), Reply> {
    let length = description
        .and_then(Value::as_str)
        .map_or(0, |text| text.chars().count());
    if (1..=100).contains(&length) {
        Ok(())
    } else {
        Err(form_error(
            path,
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 1 and 100 in length.",
        ))
    }
}

/// Discord's limits on content, embeds and components.
fn validate_message(body: &Value) -> Result<(), Reply> {
    let chars = |value: Option<&Value>| {
        value
            .and_then(Value::as_str)
            .map_or(0, |text| text.chars().count())
    };
    if chars(body.get("content")) > MAX_CONTENT {
        return Err(max_length("content", MAX_CONTENT));
    }
    if let Some(embeds) = body.get("embeds").and_then(Value::as_array) {
        if embeds.len() > MAX_EMBEDS {
            return Err(max_length("embeds", MAX_EMBEDS));
        }
        let mut total = 0;
        for (index, embed) in embeds.iter().enumerate() {
            let limits = [
                ("title", embed.get("title"), 256),
                ("description", embed.get("description"), 4096),
                ("footer.text", embed.pointer("/footer/text"), 2048),
                ("author.name", embed.pointer("/author/name"), 256),
            ];
            for (field, value, limit) in limits {
                let length = chars(value);
                if length > limit {
                    return Err(max_length(&format!("embeds.{index}.{field}"), limit));
                }
                total += length;
            }
            let fields = embed.get("fields").and_then(Value::as_array);
            if fields.is_some_and(|fields| fields.len() > 25) {
                return Err(max_length(&format!("embeds.{index}.fields"), 25));
            }
            for (number, field) in fields.into_iter().flatten().enumerate() {
                for (key, limit) in [("name", 256), ("value", 1024)] {
                    let length = chars(field.get(key));
                    if length > limit {
                        return Err(max_length(
                            &format!("embeds.{index}.fields.{number}.{key}"),
                            limit,
                        ));
                    }
                    total += length;
                }
            }
        }
        if total > MAX_EMBED_TOTAL {
            return Err(form_error(
                "embeds",
                "MAX_EMBED_SIZE_EXCEEDED",
                "Embed size exceeds maximum size of 6000",
            ));
        }
    }
    let components_v2 = body
        .get("flags")
        .and_then(Value::as_u64)
        .is_some_and(|flags| flags & FLAG_COMPONENTS_V2 != 0);
    if let Some(rows) = body.get("components").and_then(Value::as_array)
        && !components_v2
    {
        if rows.len() > MAX_ROWS {
            return Err(max_length("components", MAX_ROWS));
        }
        for (index, row) in rows.iter().enumerate() {
            let items = row.get("components").and_then(Value::as_array);
            if items.is_some_and(|items| items.len() > 5) {
                return Err(max_length(&format!("components.{index}.components"), 5));
            }
            for (number, item) in items.into_iter().flatten().enumerate() {
                if chars(item.get("custom_id")) > 100 {
                    return Err(max_length(
                        &format!("components.{index}.components.{number}.custom_id"),
                        100,
                    ));
                }
                if chars(item.get("label")) > 80 {
                    return Err(max_length(
                        &format!("components.{index}.components.{number}.label"),
                        80,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Who the content pings under `allowed_mentions` (absent: everyone and everything mentioned).
fn mentions(content: &str, allowed: Option<&Value>) -> (bool, Vec<u64>, Vec<u64>) {
    let allowed = allowed.filter(|value| value.is_object());
    let parse: Vec<&str> = match allowed {
        None => vec!["users", "roles", "everyone"],
        Some(allowed) => allowed
            .get("parse")
            .and_then(Value::as_array)
            .map(|parse| parse.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default(),
    };
    let listed = |key: &str| -> Vec<u64> {
        allowed
            .and_then(|allowed| allowed.get(key))
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(|id| id_of(Some(id))).collect())
            .unwrap_or_default()
    };
    let (allowed_users, allowed_roles) = (listed("users"), listed("roles"));
    let mut users = Vec::new();
    let mut roles = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("<@") {
        rest = &rest[start + 2..];
        let role = rest.starts_with('&');
        let digits_from = usize::from(role || rest.starts_with('!'));
        let digits: String = rest[digits_from..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if digits.is_empty() || !rest[digits_from + digits.len()..].starts_with('>') {
            continue;
        }
        let Ok(id) = digits.parse::<u64>() else {
            continue;
        };
        if role {
            if (parse.contains(&"roles") || allowed_roles.contains(&id)) && !roles.contains(&id) {
                roles.push(id);
            }
        } else if (parse.contains(&"users") || allowed_users.contains(&id)) && !users.contains(&id)
        {
            users.push(id);
        }
    }
    let everyone =
        parse.contains(&"everyone") && (content.contains("@everyone") || content.contains("@here"));
    (everyone, users, roles)
}

/// The upload id serenity gives a new file: `files[N]` → N.
fn placeholder(file: &RecordedFile) -> Option<u64> {
    file.field
        .strip_prefix("files[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn png_size(data: &[u8]) -> Option<(u32, u32)> {
    if !data.starts_with(b"\x89PNG\r\n\x1a\n") || data.get(12..16) != Some(b"IHDR") {
        return None;
    }
    let width = u32::from_be_bytes(data.get(16..20)?.try_into().ok()?);
    let height = u32::from_be_bytes(data.get(20..24)?.try_into().ok()?);
    Some((width, height))
}

fn guess_content_type(filename: &str) -> &'static str {
    let extension = filename
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

fn bot_auth(incoming: &Incoming) -> Result<(), Reply> {
    let expected = format!("Bot {BOT_TOKEN}");
    if incoming.authorization.as_deref() == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

fn own_application(app: &str) -> Result<(), Reply> {
    if app.parse() == Ok(APPLICATION_ID) {
        Ok(())
    } else {
        Err(error(404, 10002, "Unknown Application"))
    }
}

/// 429 as Discord answers it: body and headers.
fn rate_limited(retry_after: std::time::Duration, key: &str) -> Reply {
    let seconds = retry_after.as_secs_f64();
    let mut reply = Reply::json(
        429,
        json!({"message": "You are being rate limited.", "retry_after": seconds, "global": false}),
    );
    let reset = unix_ms() as f64 / 1000.0 + seconds;
    reply.headers = vec![
        ("Retry-After", format!("{}", seconds.ceil().max(1.0) as u64)),
        ("X-RateLimit-Limit", GENEROUS_LIMIT.to_string()),
        ("X-RateLimit-Remaining", "0".to_owned()),
        ("X-RateLimit-Reset", format!("{reset:.3}")),
        ("X-RateLimit-Reset-After", format!("{seconds:.3}")),
        ("X-RateLimit-Bucket", bucket(key)),
        ("X-RateLimit-Scope", "user".to_owned()),
    ];
    reply
}

/// The headers of an answer within the limit.
fn rate_limit_headers(key: &str) -> Vec<(&'static str, String)> {
    let reset = unix_ms() as f64 / 1000.0 + 1.0;
    vec![
        ("X-RateLimit-Limit", GENEROUS_LIMIT.to_string()),
        ("X-RateLimit-Remaining", (GENEROUS_LIMIT - 1).to_string()),
        ("X-RateLimit-Reset", format!("{reset:.3}")),
        ("X-RateLimit-Reset-After", "1.000".to_owned()),
        ("X-RateLimit-Bucket", bucket(key)),
    ]
}

/// A bucket hash per method and path, hex like Discord's.
fn bucket(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Embeds that show an upload of the message name it `attachment://<filename>`; Discord answers
/// with the attachment's own URL in their place, and so does the simulator.
fn resolve_attachment_references(message: &mut Value) {
    let urls: Vec<(String, Value)> = message["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["filename"].as_str()?.to_owned(), a["url"].clone())))
        .collect();
    for embed in message["embeds"].as_array_mut().into_iter().flatten() {
        for field in ["image", "thumbnail"] {
            let named = embed[field]["url"]
                .as_str()
                .and_then(|url| url.strip_prefix("attachment://"))
                .map(str::to_owned);
            if let Some(name) = named
                && let Some((_, url)) = urls.iter().find(|(filename, _)| *filename == name)
            {
                embed[field]["url"] = url.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_follow_allowed_mentions() {
        let content = "hi <@123> <@!456> <@&789> @everyone";
        assert_eq!(mentions(content, None), (true, vec![123, 456], vec![789]));
        let none = json!({"parse": [], "users": [], "roles": []});
        assert_eq!(mentions(content, Some(&none)), (false, vec![], vec![]));
        let one = json!({"parse": [], "users": ["456"]});
        assert_eq!(mentions(content, Some(&one)), (false, vec![456], vec![]));
    }

    #[test]
    fn form_errors_nest() {
        let reply = max_length("embeds.0.title", 256);
        assert_eq!(
            reply.json_body().unwrap()["errors"]["embeds"]["0"]["title"]["_errors"][0]["code"],
            "BASE_TYPE_MAX_LENGTH"
        );
    }
}
