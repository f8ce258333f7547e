//! The bot's HTTP server: `/healthz`, `/readyz`, `/metrics` always, and in `http` mode Discord's
//! interactions endpoint, `POST /interactions`. Every request there must carry a valid Ed25519
//! signature of `timestamp + body` under the application's public key, made within the last
//! five minutes; anything unsigned, tampered or stale gets 401, anything too large 413.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serenity::all::Interaction;
use serenity::interactions_endpoint::Verifier;
use tokio::net::TcpListener;
use tracing::warn;

use super::{Bot, ConnectMode, render};

/// Discord's interaction payloads are a few KiB; anything this large is not one.
const MAX_BODY: usize = 256 * 1024;
/// A signed request older (or newer) than this is refused: a replayed request is stale.
const MAX_SKEW: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct Endpoint {
    bot: Arc<Bot>,
    verifier: Option<Arc<Verifier>>,
}

pub async fn serve(
    listener: TcpListener,
    bot: Arc<Bot>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let verifier = match bot.config.mode {
        ConnectMode::Http => bot
            .config
            .public_key_bytes()
            .ok()
            .and_then(|key| Verifier::try_new(key).ok())
            .map(Arc::new),
        ConnectMode::Gateway => None,
    };
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics));
    if verifier.is_some() {
        app = app
            .route("/interactions", post(interaction))
            .layer(DefaultBodyLimit::max(MAX_BODY));
    }
    axum::serve(listener, app.with_state(Endpoint { bot, verifier }))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn interaction(
    State(endpoint): State<Endpoint>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(verifier) = &endpoint.verifier else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header("x-signature-ed25519"),
        header("x-signature-timestamp"),
    ) else {
        return (StatusCode::UNAUTHORIZED, "missing signature\n").into_response();
    };
    if !fresh(timestamp) || verifier.verify(signature, timestamp, &body).is_err() {
        return (StatusCode::UNAUTHORIZED, "invalid request signature\n").into_response();
    }
    let response = match serde_json::from_slice::<Interaction>(&body) {
        // Exactly what Discord's documentation shows: serenity would add `"data": null`.
        Ok(Interaction::Ping(_)) => {
            return axum::Json(serde_json::json!({"type": 1})).into_response();
        }
        Ok(interaction) => endpoint.bot.answer(interaction).await,
        Err(error) => {
            let kind = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("type")?.as_u64())
                .unwrap_or(0);
            endpoint.bot.metrics.interaction("unreadable");
            warn!(message = "An interaction could not be read.", interaction_type = kind, %error);
            render::private(super::gateway::UNREADABLE).response()
        }
    };
    axum::Json(response).into_response()
}

/// Whether a signature's timestamp (Unix seconds) is within [`MAX_SKEW`] of now.
fn fresh(timestamp: &str) -> bool {
    let Ok(seconds) = timestamp.trim().parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    now.abs_diff(seconds) <= MAX_SKEW.as_secs()
}

async fn ready(State(endpoint): State<Endpoint>) -> Response {
    if endpoint.bot.queue.ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Redis does not answer\n",
        )
            .into_response()
    }
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        endpoint.bot.metrics.render(),
    )
        .into_response()
}
