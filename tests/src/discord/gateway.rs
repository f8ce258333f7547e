//! The gateway: websocket connections on their own listener, HELLO, IDENTIFY → READY, heartbeats,
//! RESUME → RESUMED, dispatches and RECONNECT, as text JSON frames.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::payloads::{APPLICATION_FLAGS, APPLICATION_ID, BOT_TOKEN, current_user_json};
use super::{GatewaySession, Outgoing, OutgoingTx, Shared, State};

/// The gateway version READY reports (serenity asks for `?v=10`).
const GATEWAY_VERSION: u64 = 10;

/// A `_trace` as Discord sends in HELLO and READY.
const TRACE: &str = "[\"ducks-discord-sim\",{\"micros\":0}]";

/// One websocket connection, in the simulator's state.
pub(super) struct Connection {
    pub id: usize,
    pub query: String,
    pub tx: OutgoingTx,
    pub session_id: Option<String>,
    pub identified: bool,
    pub resumed: bool,
    pub open: bool,
    pub retired: bool,
    pub heartbeats: usize,
    pub intents: Option<u64>,
    pub shard: Option<[u64; 2]>,
}

impl Connection {
    fn authenticated(&self) -> bool {
        self.identified || self.resumed
    }

    fn live(&self) -> bool {
        self.open && self.authenticated() && !self.retired
    }
}

/// Accepts connections until aborted.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let task = tokio::spawn(connection(stream, Arc::clone(&shared))).abort_handle();
        let mut state = shared.lock();
        state.connection_tasks.retain(|task| !task.is_finished());
        state.connection_tasks.push(task);
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let query = Arc::new(Mutex::new(String::new()));
    let seen = Arc::clone(&query);
    // The signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback =
        move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            *seen.lock().unwrap_or_else(PoisonError::into_inner) =
                request.uri().query().unwrap_or_default().to_owned();
            Ok(response)
        };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let query = query.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut state = shared.lock();
        let id = state.connections.len() + 1;
        let hello = json!({
            "op": 10,
            "s": null,
            "t": null,
            "d": {
                "heartbeat_interval": u64::try_from(state.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
                "_trace": [TRACE],
            },
        });
        // Queued before anyone else can queue for this connection.
        let _ = tx.send(Outgoing::Text(hello.to_string()));
        state.connections.push(Connection {
            id,
            query,
            tx,
            session_id: None,
            identified: false,
            resumed: false,
            open: true,
            retired: false,
            heartbeats: 0,
            intents: None,
            shard: None,
        });
        id
    };
    shared.bump();
    loop {
        tokio::select! {
            outgoing = rx.recv() => match outgoing {
                Some(Outgoing::Text(text)) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close(code, reason)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break;
                }
                None => break,
            },
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let close = receive(&shared, id, &text);
                    shared.bump();
                    if let Some((code, reason)) = close {
                        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let frame = CloseFrame {
                        code: CloseCode::from(4002),
                        reason: "Error while decoding payload.".into(),
                    };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    if let Some(connection) = shared.lock().connection(id) {
        connection.open = false;
        connection.retired = true;
    }
    shared.bump();
}

/// Handles one frame from the client; returns a close code and reason to end the connection.
fn receive(shared: &Shared, id: usize, text: &str) -> Option<(u16, &'static str)> {
    let Ok(payload) = serde_json::from_str::<Value>(text) else {
        return Some((4002, "Error while decoding payload."));
    };
    let mut state = shared.lock();
    let op = payload.get("op").and_then(Value::as_u64);
    let data = payload.get("d").cloned().unwrap_or(Value::Null);
    let authenticated = state.connection(id)?.authenticated();
    match op {
        // Heartbeat.
        Some(1) => {
            let connection = state.connection(id)?;
            connection.heartbeats += 1;
            let _ = connection.tx.send(Outgoing::Text(
                json!({"op": 11, "s": null, "t": null, "d": null}).to_string(),
            ));
            None
        }
        // Identify.
        Some(2) => {
            if authenticated {
                return Some((4005, "Already authenticated."));
            }
            if !token_ok(&data) {
                return Some((4004, "Authentication failed."));
            }
            let session_id = hex::encode(fastrand::u128(..).to_be_bytes());
            let shard = data
                .get("shard")
                .and_then(|shard| Some([shard.get(0)?.as_u64()?, shard.get(1)?.as_u64()?]));
            let gateway_url = state.gateway_url.clone();
            state.sessions.insert(session_id.clone(), 0);
            state.identifies += 1;
            let connection = state.connection(id)?;
            connection.identified = true;
            connection.session_id = Some(session_id.clone());
            connection.intents = data.get("intents").and_then(Value::as_u64);
            connection.shard = shard;
            let mut ready = json!({
                "v": GATEWAY_VERSION,
                "user_settings": {},
                "user": current_user_json(),
                "session_type": "normal",
                "session_id": session_id,
                "resume_gateway_url": gateway_url,
                "relationships": [],
                "private_channels": [],
                "presences": [],
                "guilds": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": ["us-east", "us-central"],
                "auth": {},
                "application": {"id": APPLICATION_ID.to_string(), "flags": APPLICATION_FLAGS},
                "_trace": [TRACE],
            });
            if let Some(shard) = shard {
                ready["shard"] = json!(shard);
            }
            state.send_dispatch(id, "READY", &ready);
            None
        }
        // Resume.
        Some(6) => {
            if authenticated {
                return Some((4005, "Already authenticated."));
            }
            if !token_ok(&data) {
                return Some((4004, "Authentication failed."));
            }
            let session_id = data
                .get("session_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !state.sessions.contains_key(&session_id) {
                let connection = state.connection(id)?;
                let _ = connection.tx.send(Outgoing::Text(
                    json!({"op": 9, "s": null, "t": null, "d": false}).to_string(),
                ));
                return None;
            }
            // The session moves here: its other connections get nothing more.
            for other in &mut state.connections {
                if other.id != id && other.session_id.as_deref() == Some(session_id.as_str()) {
                    other.retired = true;
                }
            }
            state.resumes += 1;
            let connection = state.connection(id)?;
            connection.resumed = true;
            connection.session_id = Some(session_id);
            state.send_dispatch(id, "RESUMED", &json!({"_trace": [TRACE]}));
            None
        }
        // Presence update, voice state update, request guild members, request soundboard sounds.
        Some(3 | 4 | 8 | 31) if authenticated => None,
        Some(3 | 4 | 8 | 31) => Some((4003, "Not authenticated.")),
        _ => Some((4001, "Unknown opcode.")),
    }
}

/// Whether IDENTIFY's or RESUME's token is the bot's (with or without `Bot `, as both work).
fn token_ok(data: &Value) -> bool {
    let token = data
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    token.strip_prefix("Bot ").unwrap_or(token) == BOT_TOKEN
}

impl State {
    pub(super) fn connection(&mut self, id: usize) -> Option<&mut Connection> {
        self.connections
            .iter_mut()
            .find(|connection| connection.id == id)
    }

    /// Queues `{"op": 0, "t": event, "s": next, "d": data}` on connection `id`, numbering it in
    /// its session.
    fn send_dispatch(&mut self, id: usize, event: &str, data: &Value) -> bool {
        let Some(session_id) = self
            .connection(id)
            .and_then(|connection| connection.session_id.clone())
        else {
            return false;
        };
        let Some(seq) = self.sessions.get_mut(&session_id) else {
            return false;
        };
        *seq += 1;
        let frame = json!({"op": 0, "t": event, "s": *seq, "d": data});
        self.connection(id).is_some_and(|connection| {
            connection
                .tx
                .send(Outgoing::Text(frame.to_string()))
                .is_ok()
        })
    }

    /// Sends a dispatch to every live connection; returns to how many.
    pub(super) fn dispatch(&mut self, event: &str, data: &Value) -> usize {
        let live: Vec<usize> = self
            .connections
            .iter()
            .filter(|connection| connection.live())
            .map(|connection| connection.id)
            .collect();
        live.into_iter()
            .filter(|id| self.send_dispatch(*id, event, data))
            .count()
    }

    /// Retires every open connection: op 7 first when `reconnect`, then a close frame.
    pub(super) fn retire_all(&mut self, reconnect: bool, code: u16, reason: &'static str) -> usize {
        let mut count = 0;
        for connection in &mut self.connections {
            if !connection.open || connection.retired {
                continue;
            }
            if reconnect {
                if !connection.live() {
                    continue;
                }
                let _ = connection.tx.send(Outgoing::Text(
                    json!({"op": 7, "s": null, "t": null, "d": null}).to_string(),
                ));
            }
            let _ = connection.tx.send(Outgoing::Close(code, reason));
            connection.retired = true;
            count += 1;
        }
        count
    }

    pub(super) fn gateway_sessions(&self) -> Vec<GatewaySession> {
        self.connections
            .iter()
            .map(|connection| GatewaySession {
                connection: connection.id,
                query: connection.query.clone(),
                session_id: connection.session_id.clone(),
                identified: connection.identified,
                resumed: connection.resumed,
                open: connection.open,
                retired: connection.retired,
                seq: connection
                    .session_id
                    .as_ref()
                    .and_then(|session| self.sessions.get(session))
                    .copied()
                    .unwrap_or(0),
                heartbeats: connection.heartbeats,
                intents: connection.intents,
                shard: connection.shard,
            })
            .collect()
    }
}
