//! A local Discord API server: REST (API v10) and the gateway, for the production serenity client
//! (0.12.5) to talk to unchanged, and signed HTTP interactions for a bot's interactions endpoint.
//!
//! [`DiscordSim::start`] binds two loopback listeners: REST on `http://127.0.0.1:PORT`
//! ([`DiscordSim::api_base`]; serenity reaches it through
//! `HttpBuilder::new(token).proxy(api_base).ratelimiter_disabled(true)`, which replaces
//! `https://discord.com` and so sends `/api/v10/...` paths; the proxy is ignored while serenity's
//! rate limiter is on) and the gateway on `ws://127.0.0.1:PORT` ([`DiscordSim::gateway_url`],
//! which `GET /gateway` hands out). [`DiscordSim::http`] is such a serenity client.
//!
//! # REST
//!
//! - `GET /gateway`, `GET /gateway/bot` (shards 1, `session_start_limit`),
//!   `GET /oauth2/applications/@me`, `GET /users/@me`. serenity's `Client` calls `GET /gateway`
//!   before it connects (`GET /gateway/bot` only with `start_autosharded`); nothing else.
//! - `PUT`/`GET /applications/{app}/commands` and `/applications/{app}/guilds/{guild}/commands`:
//!   bulk overwrite, answered with complete command objects (ids from
//!   [`payloads::command_id`], so they match what [`slash_command`] sends), names and
//!   descriptions validated as Discord does (400, code 50035).
//! - `POST /interactions/{id}/{token}/callback` (204): PONG, CHANNEL_MESSAGE_WITH_SOURCE (the
//!   interaction's original message, in its channel), DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE (an
//!   original with the LOADING flag until the first edit), DEFERRED_UPDATE_MESSAGE and
//!   UPDATE_MESSAGE (for components: the message the component is on becomes the original; 7
//!   edits it), APPLICATION_COMMAND_AUTOCOMPLETE_RESULT (at most 25 choices), MODAL. A second
//!   callback answers 400 / 40060 "Interaction has already been acknowledged."; an unknown
//!   interaction 404 / 10062; a type that does not fit the interaction 400 / 50035.
//! - `GET`/`PATCH`/`DELETE /webhooks/{app}/{token}/messages/@original` and
//!   `.../messages/{id}`, `POST /webhooks/{app}/{token}` (follow-ups; only after the callback,
//!   as on Discord): full message objects that serenity's `Message` parses; PATCH merges
//!   `content`, `embeds`, `components`, `attachments`, `flags`, `allowed_mentions` and sets
//!   `edited_timestamp`. Unknown messages answer 404 / 10008.
//! - `POST /channels/{channel}/messages` (keeps `message_reference`, type 19 REPLY) and
//!   `GET`/`PATCH`/`DELETE /channels/{channel}/messages/{id}`, with the bot token.
//! - JSON bodies or `multipart/form-data` with `payload_json` and `files[n]`; uploaded files
//!   become attachments served back from the simulator
//!   (`http://127.0.0.1:PORT/attachments/{id}/{name}`). Checks as Discord's: content at most
//!   2,000 characters, at most 10 embeds of at most 6,000 characters together (and the per-field
//!   limits), at most 5 action rows, no empty message (50006), each file at most
//!   `attachment_size_limit` (413 / 40005).
//! - `mentions`, `mention_roles` and `mention_everyone` follow the content and
//!   `allowed_mentions` (absent: everything pings, as on Discord), so a test sees whether
//!   `@everyone` in a prompt would have pinged.
//! - Bot routes need `Authorization: Bot <BOT_TOKEN>` (401 otherwise); webhook and callback routes
//!   need none, but the token in the path must belong to a known interaction (401 / 50027).
//! - Faults: [`DiscordSim::expire_token`] (401 / 50027 "Invalid Webhook Token", as after 15
//!   minutes), [`DiscordSim::forbid_channel`] (403 / 50001 "Missing Access"),
//!   [`DiscordSim::rate_limit_next`] (429 with Discord's body and headers; a request that comes
//!   back before its route's `retry_after` is counted, [`DiscordSim::early_retries`]),
//!   [`DiscordSim::enforce_ack_deadline`] (the 3-second rule: a late first callback answers
//!   404 / 10062). Every other answer carries generous `X-RateLimit-*` headers.
//! - Every request is recorded ([`DiscordSim::requests`]): method, path, query, Authorization,
//!   the JSON body (or `payload_json`) and the files, the status answered, and when.
//!
//! # HTTP interactions
//!
//! [`DiscordSim::post_interaction`] signs a payload with a fixed Ed25519 key
//! ([`DiscordSim::public_key_hex`] is the application's public key, also its `verify_key`),
//! POSTs it to the bot's endpoint and applies a 200 JSON answer exactly as a callback.
//! [`DiscordSim::signed_request`] gives the pieces for tests that tamper with them.
//!
//! # Gateway
//!
//! HELLO on connect, IDENTIFY → READY, heartbeat → HEARTBEAT_ACK, RESUME of a known session →
//! RESUMED (nothing is replayed), of an unknown one → INVALID_SESSION (false). Text frames only:
//! serenity asks for `?v=10` without `compress`, so no transport compression; its IDENTIFY says
//! `compress: true` (payload compression), which Discord may honour with zlib binary frames, but
//! serenity reads plain text frames as well. [`DiscordSim::dispatch_interaction`] sends
//! INTERACTION_CREATE to every live session; [`DiscordSim::reconnect_all`] sends op 7 RECONNECT
//! and closes. Bad tokens close with 4004, a second IDENTIFY with 4005, unknown opcodes with 4001.
//!
//! # Payloads
//!
//! [`slash_command`], [`autocomplete`], [`button`] and [`ping`] build interactions as Discord sends
//! them today and check them against serenity's `Interaction` before returning. Interactions that
//! reach the bot through the simulator ([`DiscordSim::dispatch_interaction`],
//! [`DiscordSim::post_interaction`]) are registered, so their callbacks and webhooks are accepted;
//! [`DiscordSim::register_interaction`] does that for a payload delivered another way.
//!
//! Over the gateway, serenity turns an INTERACTION_CREATE it cannot parse into `Event::Unknown`:
//! `EventHandler::interaction_create` never runs and nothing is logged above DEBUG. A test that
//! delivers a hand-made payload should watch for that with a `RawEventHandler`.
//!
//! # What does not exist
//!
//! Guilds, channels, users and roles as resources (any channel id is a text channel the bot may
//! post in unless forbidden), GUILD_CREATE and other events besides READY, RESUMED and what a
//! test dispatches, replay on RESUME, zlib frames, `?with_response=true` on callbacks, polls,
//! stickers, threads, reactions, real per-route buckets (only the injected 429s).

mod gateway;
mod multipart;
pub mod payloads;
mod rest;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

pub use payloads::{
    APPLICATION_ID, ATTACHMENT_SIZE_LIMIT, Actor, BOT_TOKEN, BOT_USERNAME, InteractionPayload,
    MANAGE_MESSAGES, MEMBER_PERMISSIONS, autocomplete, button, command_id, ping, slash_command,
    snowflake,
};

/// The seed of the application's Ed25519 key pair: fixed, so a bot's configuration can hold the
/// public key.
const SIGNING_SEED: [u8; 32] = *b"ducks-discord-simulator-seed-32b";

/// Discord's heartbeat interval (HELLO), until [`DiscordSim::set_heartbeat_interval`].
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(41_250);

/// How long [`DiscordSim::post_interaction`] waits for the bot's endpoint. Discord gives up after
/// 3 s; this is generous so a loaded machine does not fail tests, and tests that care about the
/// 3 s look at the time themselves.
const ENDPOINT_LIMIT: Duration = Duration::from_secs(30);

/// How many recorded requests a panic message shows.
const SUMMARY_REQUESTS: usize = 12;

/// A request the simulator received, as recorded after it answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// As sent, e.g. `/api/v10/interactions/123/abc/callback`.
    pub path: String,
    /// The query string without `?`, if any (serenity writes `?&wait=true`).
    pub query: Option<String>,
    /// The `Authorization` header (serenity sends `Bot <token>` on every route).
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The JSON body, or the `payload_json` part of a multipart body.
    pub json: Option<Value>,
    /// The file parts of a multipart body.
    pub files: Vec<RecordedFile>,
    /// The status the simulator answered.
    pub status: u16,
    /// The JSON the simulator answered, if any.
    pub response: Option<Value>,
    /// Sent before the `retry_after` of an earlier 429 on the same method and path ran out.
    pub early_retry: bool,
    pub at: Instant,
}

impl RecordedRequest {
    /// Whether this is `method` on a path that starts with `/api/v10` + `path_prefix`.
    pub fn is(&self, method: &str, path_prefix: &str) -> bool {
        self.method == method
            && self
                .path
                .strip_prefix("/api/v10")
                .is_some_and(|path| path.starts_with(path_prefix))
    }
}

/// A file part of a multipart request.
#[derive(Clone, Debug)]
pub struct RecordedFile {
    /// The form field, e.g. `files[0]`.
    pub field: String,
    pub filename: String,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

impl RecordedFile {
    pub fn size(&self) -> usize {
        self.data.len()
    }
}

/// A gateway connection, as [`DiscordSim::gateway_sessions`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySession {
    /// Connections are numbered from 1 in the order they were accepted.
    pub connection: usize,
    /// The query of the websocket URL (serenity 0.12.5: `v=10`).
    pub query: String,
    /// The session this connection identified as or resumed.
    pub session_id: Option<String>,
    /// This connection sent IDENTIFY and got READY.
    pub identified: bool,
    /// This connection sent RESUME for a known session and got RESUMED.
    pub resumed: bool,
    pub open: bool,
    /// The simulator asked it to reconnect or closed it, or its session resumed elsewhere: it gets
    /// no more dispatches.
    pub retired: bool,
    /// The last sequence number of its session.
    pub seq: u64,
    pub heartbeats: usize,
    /// From IDENTIFY.
    pub intents: Option<u64>,
    /// From IDENTIFY: `[shard_id, num_shards]`.
    pub shard: Option<[u64; 2]>,
}

impl GatewaySession {
    /// Open, identified or resumed, and not retired: dispatches reach it.
    pub fn live(&self) -> bool {
        self.open && (self.identified || self.resumed) && !self.retired
    }
}

/// The pieces of a signed interaction POST, for tests that tamper with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    pub body: String,
    /// Unix seconds, as Discord sends `X-Signature-Timestamp`.
    pub timestamp: String,
    /// Hex Ed25519 signature of `timestamp + body`.
    pub signature: String,
}

impl SignedRequest {
    /// `Content-Type`, `X-Signature-Ed25519` and `X-Signature-Timestamp`, as Discord sends them.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Content-Type", "application/json".to_owned()),
            ("X-Signature-Ed25519", self.signature.clone()),
            ("X-Signature-Timestamp", self.timestamp.clone()),
        ]
    }
}

/// A running Discord API simulator. Dropping it stops both listeners and closes every gateway
/// connection.
pub struct DiscordSim {
    shared: Arc<Shared>,
    api_addr: SocketAddr,
    gateway_addr: SocketAddr,
    /// Tells the REST server to stop; sent (or dropped) on drop.
    stop_rest: Option<oneshot::Sender<()>>,
    /// The gateway's accept loop, aborted on drop with every connection.
    gateway_task: AbortHandle,
}

impl std::fmt::Debug for DiscordSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordSim")
            .field("api_base", &self.api_base())
            .field("gateway_url", &self.gateway_url())
            .finish_non_exhaustive()
    }
}

/// What the HTTP and gateway tasks share with the handle.
struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, so waits sleep until something happened.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|version| *version += 1);
    }
}

/// Everything the simulator knows.
struct State {
    api_base: String,
    gateway_url: String,
    verify_key: String,
    requests: Vec<RecordedRequest>,
    /// 429s still to answer, and the `retry_after` they announce.
    limit_next: usize,
    limit_retry_after: Duration,
    /// Per `METHOD path`: no request should come before this.
    not_before: HashMap<String, Instant>,
    early_retries: usize,
    forbidden_channels: HashSet<u64>,
    expired_tokens: HashSet<String>,
    ack_deadline: Option<Duration>,
    /// By token.
    interactions: HashMap<String, Interaction>,
    /// By id; snowflakes sort by creation.
    messages: BTreeMap<u64, StoredMessage>,
    /// Uploaded files by attachment id: content type and bytes.
    attachments: HashMap<u64, (String, Vec<u8>)>,
    /// Overwritten command lists: `None` global, `Some(guild)`.
    commands: BTreeMap<Option<u64>, Vec<Value>>,
    /// Answers of the bot's endpoint that could not be applied: (token, Discord's error).
    rejected: Vec<(String, Value)>,
    heartbeat_interval: Duration,
    connections: Vec<gateway::Connection>,
    /// The tasks of gateway connections, aborted on drop.
    connection_tasks: Vec<AbortHandle>,
    /// Session id → its last sequence number.
    sessions: HashMap<String, u64>,
    identifies: usize,
    resumes: usize,
}

/// An interaction the simulator delivered (or was told about).
#[derive(Clone, Debug)]
struct Interaction {
    id: u64,
    /// 1 PING, 2 APPLICATION_COMMAND, 3 MESSAGE_COMPONENT, 4 AUTOCOMPLETE, 5 MODAL_SUBMIT.
    kind: u64,
    channel_id: u64,
    user: Value,
    owners: Value,
    /// `data.name` of a command.
    name: Option<String>,
    command_type: u64,
    /// The message a component is on.
    message_id: Option<u64>,
    size_limit: u64,
    registered: Instant,
    /// The callbacks accepted (the first one acknowledges).
    responses: Vec<Value>,
    original: Option<u64>,
    original_edits: usize,
    followups: Vec<u64>,
}

#[derive(Clone, Debug)]
struct StoredMessage {
    json: Value,
    /// The token of the interaction it answers (original or follow-up).
    interaction: Option<String>,
}

impl DiscordSim {
    /// Starts both listeners on `127.0.0.1:0`; they are bound before this returns, so no
    /// readiness wait is needed. Must be called inside a tokio runtime.
    pub async fn start() -> DiscordSim {
        let api = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the Discord REST simulator to 127.0.0.1:0");
        let gateway = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the Discord gateway simulator to 127.0.0.1:0");
        let api_addr = api
            .local_addr()
            .expect("local address of the REST listener");
        let gateway_addr = gateway
            .local_addr()
            .expect("local address of the gateway listener");
        crate::support::reserve_port(api_addr.port());
        crate::support::reserve_port(gateway_addr.port());
        let state = State {
            api_base: format!("http://{api_addr}"),
            gateway_url: format!("ws://{gateway_addr}"),
            verify_key: hex::encode(signing_key().verifying_key().as_bytes()),
            requests: Vec::new(),
            limit_next: 0,
            limit_retry_after: Duration::ZERO,
            not_before: HashMap::new(),
            early_retries: 0,
            forbidden_channels: HashSet::new(),
            expired_tokens: HashSet::new(),
            ack_deadline: None,
            interactions: HashMap::new(),
            messages: BTreeMap::new(),
            attachments: HashMap::new(),
            commands: BTreeMap::new(),
            rejected: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            connections: Vec::new(),
            connection_tasks: Vec::new(),
            sessions: HashMap::new(),
            identifies: 0,
            resumes: 0,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
        });
        let router = axum::Router::new()
            .fallback(rest::handle)
            .with_state(Arc::clone(&shared));
        let (stop_rest, rest_stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // Stops accepting when told (or when the handle is gone), then lets keep-alive
            // connections finish their request and closes them.
            let _ = axum::serve(api, router)
                .with_graceful_shutdown(async {
                    let _ = rest_stopped.await;
                })
                .await;
        });
        let gateway_task = tokio::spawn(gateway::serve(gateway, Arc::clone(&shared)));
        DiscordSim {
            shared,
            api_addr,
            gateway_addr,
            stop_rest: Some(stop_rest),
            gateway_task: gateway_task.abort_handle(),
        }
    }

    /// `http://127.0.0.1:PORT`: serenity's proxy (`HttpBuilder::proxy`); REST paths are
    /// `/api/v10/...` under it.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// `ws://127.0.0.1:PORT`, as `GET /gateway` answers.
    pub fn gateway_url(&self) -> String {
        format!("ws://{}", self.gateway_addr)
    }

    /// The bot token the simulator accepts ([`BOT_TOKEN`]).
    pub fn bot_token(&self) -> &'static str {
        BOT_TOKEN
    }

    /// A serenity REST client for this simulator: [`BOT_TOKEN`], the proxy, serenity's rate
    /// limiter off (it would ignore the proxy), the application id set.
    pub fn http(&self) -> serenity::http::Http {
        serenity::http::HttpBuilder::new(BOT_TOKEN)
            .proxy(self.api_base())
            .ratelimiter_disabled(true)
            .application_id(serenity::model::id::ApplicationId::new(APPLICATION_ID))
            .build()
    }

    // ---- REST: what was asked and what exists ----

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The first recorded request (from the start, not only from now) for which `pred` holds.
    ///
    /// # Panics
    /// After `limit`, with the last requests.
    pub async fn wait_for_request(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
        limit: Duration,
    ) -> RecordedRequest {
        let describe = |_: &State| "a matching REST request".to_owned();
        self.wait_until(limit, describe, |state| {
            state.requests.iter().find(|request| pred(request)).cloned()
        })
        .await
    }

    /// The commands of the last bulk overwrite: global with `None`, else of that guild; as the
    /// simulator answered them (with ids).
    pub fn commands(&self, guild: Option<u64>) -> Vec<Value> {
        self.shared
            .lock()
            .commands
            .get(&guild)
            .cloned()
            .unwrap_or_default()
    }

    /// The interaction's original response message now, if it has one.
    pub fn original(&self, token: &str) -> Option<Value> {
        self.shared.lock().original(token)
    }

    /// The original response message once `pred` holds for it.
    ///
    /// # Panics
    /// After `limit`, with the message as it is and the last requests.
    pub async fn wait_for_original(
        &self,
        token: &str,
        pred: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Value {
        let describe = |state: &State| {
            format!(
                "the original response of interaction {} to match; it is {}",
                state.interaction_label(token),
                state
                    .original(token)
                    .map_or("absent".to_owned(), |message| message.to_string())
            )
        };
        self.wait_until(limit, describe, |state| {
            state.original(token).filter(|message| pred(message))
        })
        .await
    }

    /// How many PATCHes of the original response succeeded.
    pub fn edits_of(&self, token: &str) -> usize {
        self.shared
            .lock()
            .interactions
            .get(token)
            .map_or(0, |interaction| interaction.original_edits)
    }

    /// The interaction's follow-up messages, as they are now (deleted ones left out).
    pub fn followups(&self, token: &str) -> Vec<Value> {
        let state = self.shared.lock();
        state
            .interactions
            .get(token)
            .map(|interaction| {
                interaction
                    .followups
                    .iter()
                    .filter_map(|id| state.messages.get(id).map(|m| m.json.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first accepted callback (the interaction response: `{"type": .., "data": ..}`), from
    /// the callback route or the endpoint's HTTP answer.
    pub fn response(&self, token: &str) -> Option<Value> {
        self.shared
            .lock()
            .interactions
            .get(token)
            .and_then(|interaction| interaction.responses.first().cloned())
    }

    /// The interaction response once there is one.
    ///
    /// # Panics
    /// After `limit`.
    pub async fn wait_for_response(&self, token: &str, limit: Duration) -> Value {
        let describe = |state: &State| {
            format!(
                "a response to interaction {}",
                state.interaction_label(token)
            )
        };
        self.wait_until(limit, describe, |state| {
            state
                .interactions
                .get(token)
                .and_then(|interaction| interaction.responses.first().cloned())
        })
        .await
    }

    /// The choices of an autocomplete result (callback type 8), if one was given.
    pub fn autocomplete_choices(&self, token: &str) -> Option<Vec<Value>> {
        let response = self.response(token)?;
        (response.get("type").and_then(Value::as_u64) == Some(8)).then(|| {
            response
                .pointer("/data/choices")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
    }

    /// Every message that exists now (not deleted), oldest first.
    pub fn messages(&self) -> Vec<Value> {
        self.shared
            .lock()
            .messages
            .values()
            .map(|message| message.json.clone())
            .collect()
    }

    /// The messages in a channel now, oldest first: channel posts, interaction responses and
    /// follow-ups (ephemeral ones too).
    pub fn channel_messages(&self, channel_id: u64) -> Vec<Value> {
        self.shared.lock().channel_messages(channel_id)
    }

    /// The first message in the channel for which `pred` holds.
    ///
    /// # Panics
    /// After `limit`, with the channel's messages.
    pub async fn wait_for_channel_message(
        &self,
        channel_id: u64,
        pred: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Value {
        let describe = |state: &State| {
            format!(
                "a matching message in channel {channel_id}; its messages' content: {:?}",
                state
                    .channel_messages(channel_id)
                    .iter()
                    .map(|message| message["content"].clone())
                    .collect::<Vec<_>>()
            )
        };
        self.wait_until(limit, describe, |state| {
            state
                .channel_messages(channel_id)
                .into_iter()
                .find(|message| pred(message))
        })
        .await
    }

    /// The bytes of an uploaded file, by its attachment's `url` or `id`.
    pub fn attachment_bytes(&self, url_or_id: &str) -> Option<Vec<u8>> {
        let id = url_or_id
            .rsplit('/')
            .nth(1)
            .filter(|_| url_or_id.contains('/'))
            .unwrap_or(url_or_id)
            .parse::<u64>()
            .ok()?;
        self.shared
            .lock()
            .attachments
            .get(&id)
            .map(|(_, data)| data.clone())
    }

    /// Answers of the bot's interactions endpoint that Discord would have refused (the user saw
    /// "This interaction failed"): the interaction's token and Discord's error JSON.
    pub fn rejected_responses(&self) -> Vec<(String, Value)> {
        self.shared.lock().rejected.clone()
    }

    // ---- REST faults ----

    /// From now on every webhook and callback request with this token answers 401
    /// `{"message": "Invalid Webhook Token", "code": 50027}`, as Discord does once an
    /// interaction token is 15 minutes old.
    pub fn expire_token(&self, token: &str) {
        self.shared.lock().expired_tokens.insert(token.to_owned());
        self.shared.bump();
    }

    /// [`DiscordSim::expire_token`] for every interaction known now.
    pub fn expire_all_tokens(&self) {
        let mut state = self.shared.lock();
        let tokens: Vec<String> = state.interactions.keys().cloned().collect();
        state.expired_tokens.extend(tokens);
        drop(state);
        self.shared.bump();
    }

    /// From now on bot posts to this channel answer 403
    /// `{"message": "Missing Access", "code": 50001}` (the bot was removed from the channel or
    /// cannot see it).
    pub fn forbid_channel(&self, channel_id: u64) {
        self.shared.lock().forbidden_channels.insert(channel_id);
    }

    /// The next `n` REST requests (any route but `GET /gateway` and `GET /gateway/bot`) answer
    /// 429 with Discord's body `{"message": "You are being rate limited.", "retry_after": <s>,
    /// "global": false}` and headers `Retry-After` (whole seconds, rounded up),
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining: 0`, `X-RateLimit-Reset`,
    /// `X-RateLimit-Reset-After`, `X-RateLimit-Bucket`, `X-RateLimit-Scope: user`.
    pub fn rate_limit_next(&self, n: usize, retry_after: Duration) {
        let mut state = self.shared.lock();
        state.limit_next = n;
        state.limit_retry_after = retry_after;
    }

    /// How many requests came back to a route (method and path) before the `retry_after` of the
    /// 429 it answered had passed.
    pub fn early_retries(&self) -> usize {
        self.shared.lock().early_retries
    }

    /// How many requests were answered 429.
    pub fn rate_limited(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|request| request.status == 429)
            .count()
    }

    /// With `Some(limit)`, a first callback that arrives later than `limit` after the interaction
    /// was delivered answers 404 `{"message": "Unknown interaction", "code": 10062}`, as Discord
    /// does after 3 s. Off at start (a loaded test machine is slow).
    pub fn enforce_ack_deadline(&self, limit: Option<Duration>) {
        self.shared.lock().ack_deadline = limit;
    }

    // ---- HTTP interactions ----

    /// The application's Ed25519 key pair (fixed).
    pub fn signing_key(&self) -> SigningKey {
        signing_key()
    }

    /// The application's public key, hex, as the developer portal shows it.
    pub fn public_key_hex(&self) -> String {
        hex::encode(signing_key().verifying_key().as_bytes())
    }

    /// The hex Ed25519 signature of `timestamp + body` with the application's key.
    pub fn sign(&self, timestamp: &str, body: &str) -> String {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body.as_bytes());
        hex::encode(signing_key().sign(&message).to_bytes())
    }

    /// The payload serialized and signed with the current time, as Discord would POST it.
    pub fn signed_request(&self, payload: &Value) -> SignedRequest {
        let body = payload.to_string();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let signature = self.sign(&timestamp, &body);
        SignedRequest {
            body,
            timestamp,
            signature,
        }
    }

    /// Delivers an interaction to a bot's HTTP endpoint as Discord does: registers it, POSTs it
    /// signed, and when the answer is 200 with a JSON (or multipart) interaction response,
    /// applies it as a callback (so the original message exists afterwards). An answer Discord
    /// would refuse is kept in [`DiscordSim::rejected_responses`]. Returns the status and body.
    ///
    /// # Panics
    /// If the endpoint cannot be reached or does not answer within 30 s.
    pub async fn post_interaction(&self, url: &str, payload: &Value) -> (u16, String) {
        self.register_interaction(payload);
        let signed = self.signed_request(payload);
        let client = reqwest::Client::builder()
            .timeout(ENDPOINT_LIMIT)
            .build()
            .expect("build an HTTP client");
        let mut request = client.post(url).body(signed.body.clone());
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap_or_else(|err| {
            panic!("POST the interaction to the bot's endpoint {url}: {err}")
        });
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .unwrap_or_else(|err| panic!("read the answer of the bot's endpoint {url}: {err}"));
        let token = payload.get("token").and_then(Value::as_str);
        if status == 200
            && let Some(token) = token
        {
            let applied = match rest::parse_body(content_type.as_deref(), &body) {
                Ok((Some(json), files)) => self
                    .shared
                    .lock()
                    .apply_endpoint_answer(token, &json, &files),
                Ok((None, _)) => Err(rest::discord_error(50006, "Cannot send an empty message")),
                Err((_, error)) => Err(error),
            };
            if let Err(error) = applied {
                self.shared.lock().rejected.push((token.to_owned(), error));
            }
            self.shared.bump();
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Makes an interaction known, so its callback and webhook routes are accepted, as if it had
    /// been delivered now. [`DiscordSim::dispatch_interaction`] and
    /// [`DiscordSim::post_interaction`] do this themselves. A message in the payload (a
    /// component's) is stored if the simulator does not have it. Payloads without `id` or
    /// `token` are ignored; a token known already is left as it is.
    pub fn register_interaction(&self, payload: &Value) {
        self.shared.lock().register_interaction(payload);
        self.shared.bump();
    }

    // ---- Gateway ----

    /// The heartbeat interval HELLO announces to connections made afterwards (41.25 s at start,
    /// as Discord's).
    pub fn set_heartbeat_interval(&self, interval: Duration) {
        self.shared.lock().heartbeat_interval = interval;
    }

    /// Waits until a live session exists (a connection that identified or resumed and was not
    /// retired since); returns how many IDENTIFYs were answered with READY in all.
    ///
    /// # Panics
    /// After `limit`, with the connections seen and the last REST requests.
    pub async fn wait_gateway_ready(&self, limit: Duration) -> usize {
        let describe = |_: &State| "a live gateway session".to_owned();
        self.wait_until(limit, describe, |state| {
            state
                .gateway_sessions()
                .iter()
                .any(GatewaySession::live)
                .then_some(state.identifies)
        })
        .await
    }

    /// Waits until `pred` holds for the connections (all of them, closed ones too).
    ///
    /// # Panics
    /// After `limit`, with the connections.
    pub async fn wait_gateway(
        &self,
        pred: impl Fn(&[GatewaySession]) -> bool,
        limit: Duration,
    ) -> Vec<GatewaySession> {
        let describe = |_: &State| "the gateway connections to match".to_owned();
        self.wait_until(limit, describe, |state| {
            let sessions = state.gateway_sessions();
            pred(&sessions).then_some(sessions)
        })
        .await
    }

    /// Every gateway connection so far, oldest first.
    pub fn gateway_sessions(&self) -> Vec<GatewaySession> {
        self.shared.lock().gateway_sessions()
    }

    /// How many IDENTIFYs and RESUMEs were answered (READY, RESUMED).
    pub fn gateway_counts(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.identifies, state.resumes)
    }

    /// Registers the interaction and sends it as INTERACTION_CREATE to every live session;
    /// returns to how many.
    pub fn dispatch_interaction(&self, payload: &Value) -> usize {
        let mut state = self.shared.lock();
        state.register_interaction(payload);
        let sent = state.dispatch("INTERACTION_CREATE", payload);
        drop(state);
        self.shared.bump();
        sent
    }

    /// Sends any dispatch event (`t`, `d`) to every live session; returns to how many.
    pub fn dispatch(&self, event: &str, data: &Value) -> usize {
        let sent = self.shared.lock().dispatch(event, data);
        self.shared.bump();
        sent
    }

    /// Sends op 7 RECONNECT to every live session and closes it (code 4000), as Discord does
    /// before it moves a session; the client should resume on a new connection. Returns how
    /// many were asked.
    pub fn reconnect_all(&self) -> usize {
        let asked = self
            .shared
            .lock()
            .retire_all(true, 4000, "Reconnect requested");
        self.shared.bump();
        asked
    }

    /// Closes every open connection with `code` (e.g. 4000, after which serenity resumes; 4004,
    /// after which it gives up) without RECONNECT; returns how many.
    pub fn close_all(&self, code: u16) -> usize {
        let closed = self
            .shared
            .lock()
            .retire_all(false, code, "Closed by the simulator");
        self.shared.bump();
        closed
    }

    // ---- internals ----

    /// Waits until `check` gives a value, waking on every change; panics after `limit` saying
    /// what was awaited (`describe`, from the state at that moment), with the last requests and
    /// the gateway connections.
    async fn wait_until<T>(
        &self,
        limit: Duration,
        describe: impl Fn(&State) -> String,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> T {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            changes.borrow_and_update();
            if let Some(value) = check(&self.shared.lock()) {
                return value;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self.shared`; it cannot be gone while `self` exists.
                Ok(Err(_)) => unreachable!("the simulator's change channel closed"),
                Err(_) => {
                    let state = self.shared.lock();
                    if let Some(value) = check(&state) {
                        return value;
                    }
                    panic!(
                        "Discord simulator: waited {limit:?} for {}.\n{}",
                        describe(&state),
                        state.summary()
                    );
                }
            }
        }
    }
}

impl State {
    fn interaction_label(&self, token: &str) -> String {
        match self.interactions.get(token) {
            Some(interaction) => format!(
                "{} ({})",
                interaction.id,
                interaction.name.as_deref().unwrap_or("no command name")
            ),
            None => format!("with unknown token {}…", token.get(..12).unwrap_or(token)),
        }
    }
}

impl Drop for DiscordSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_rest.take() {
            let _ = stop.send(());
        }
        self.gateway_task.abort();
        for task in &self.shared.lock().connection_tasks {
            task.abort();
        }
    }
}

impl State {
    fn original(&self, token: &str) -> Option<Value> {
        let id = self.interactions.get(token)?.original?;
        self.messages.get(&id).map(|message| message.json.clone())
    }

    fn channel_messages(&self, channel_id: u64) -> Vec<Value> {
        let channel = channel_id.to_string();
        self.messages
            .values()
            .filter(|message| message.json["channel_id"] == channel.as_str())
            .map(|message| message.json.clone())
            .collect()
    }

    fn register_interaction(&mut self, payload: &Value) {
        use payloads::id_of;
        let (Some(id), Some(token)) = (
            id_of(payload.get("id")),
            payload.get("token").and_then(Value::as_str),
        ) else {
            return;
        };
        if self.interactions.contains_key(token) {
            return;
        }
        let message_id = payload.get("message").and_then(|message| {
            let id = id_of(message.get("id"))?;
            self.messages.entry(id).or_insert_with(|| StoredMessage {
                json: message.clone(),
                interaction: None,
            });
            Some(id)
        });
        let user = payload
            .pointer("/member/user")
            .or_else(|| payload.get("user"))
            .cloned()
            .unwrap_or(Value::Null);
        self.interactions.insert(
            token.to_owned(),
            Interaction {
                id,
                kind: payload.get("type").and_then(Value::as_u64).unwrap_or(0),
                channel_id: id_of(payload.get("channel_id")).unwrap_or(0),
                user,
                owners: payload
                    .get("authorizing_integration_owners")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({})),
                name: payload
                    .pointer("/data/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                command_type: payload
                    .pointer("/data/type")
                    .and_then(Value::as_u64)
                    .unwrap_or(1),
                message_id,
                size_limit: payload
                    .get("attachment_size_limit")
                    .and_then(Value::as_u64)
                    .unwrap_or(ATTACHMENT_SIZE_LIMIT),
                registered: Instant::now(),
                responses: Vec::new(),
                original: None,
                original_edits: 0,
                followups: Vec::new(),
            },
        );
    }

    /// What a failed wait shows: the last requests and the gateway connections.
    fn summary(&self) -> String {
        let first = self.requests.len().saturating_sub(SUMMARY_REQUESTS);
        let mut lines = vec![format!(
            "last REST requests ({} in all):",
            self.requests.len()
        )];
        for request in &self.requests[first..] {
            lines.push(format!(
                "  {} {}{} -> {} {}",
                request.method,
                request.path,
                request
                    .query
                    .as_deref()
                    .map(|query| format!("?{query}"))
                    .unwrap_or_default(),
                request.status,
                request
                    .response
                    .as_ref()
                    .filter(|_| request.status >= 400)
                    .map(Value::to_string)
                    .unwrap_or_default()
            ));
        }
        lines.push(format!(
            "gateway: {} IDENTIFY, {} RESUME; connections: {:?}",
            self.identifies,
            self.resumes,
            self.gateway_sessions()
        ));
        if !self.rejected.is_empty() {
            lines.push(format!("rejected endpoint answers: {:?}", self.rejected));
        }
        lines.join("\n")
    }
}

/// The application's key pair from the fixed seed.
fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&SIGNING_SEED)
}

/// Outgoing gateway frames, queued per connection.
#[derive(Debug)]
enum Outgoing {
    Text(String),
    /// A close frame, after which the connection ends.
    Close(u16, &'static str),
}

type OutgoingTx = mpsc::UnboundedSender<Outgoing>;
