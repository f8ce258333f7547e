//! A chat channel's stream overlay: `GET /overlay/{origin_kind}/{channel}` is a page a streamer
//! adds to OBS as a browser source (transparent, built into the binary), and `GET
//! /v1/overlay/{origin_kind}/{channel}` the images it shows, which it asks for every two seconds
//! with the cursor of its last answer. The images come from the Twitch bot, which adds each
//! result it delivers in a channel (`Queue::add_to_overlay`); the API only reads them.
//!
//! Both routes are public, even when the API has keys: an overlay is shown on a public stream,
//! OBS cannot send a key, and a key in the page's address would be shown to whoever sees the
//! browser source's settings. Nothing is exposed that the channel's chat has not shown already
//! (who asked, the prompt, the link), and the routes only read.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use ducks_queue::OverlayImage;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody, Result};

const PAGE: &str = include_str!("overlay.html");

/// The front ends whose channels have an overlay.
const ORIGIN_KINDS: [&str; 1] = ["twitch"];
/// The most images one answer holds: as many as the queue keeps per channel.
const MAX_LIMIT: usize = 50;
const DEFAULT_LIMIT: usize = 20;

/// The images of a channel's overlay that followed a cursor.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Overlay {
    /// Oldest first.
    pub images: Vec<OverlayImageView>,
    /// Pass it as `after` next time to get only the images added since.
    pub cursor: String,
}

/// One image on a channel's overlay.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OverlayImageView {
    /// The job that drew it.
    pub job: String,
    /// The image's permanent link.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// The display name of who asked.
    pub requester: String,
    pub prompt: String,
    pub model: String,
    /// When it was delivered in the channel (unix ms).
    pub at_ms: u64,
}

impl From<OverlayImage> for OverlayImageView {
    fn from(image: OverlayImage) -> Self {
        Self {
            job: image.job,
            url: image.url,
            width: image.width,
            height: image.height,
            requester: image.requester,
            prompt: image.prompt,
            model: image.model,
            at_ms: image.at_ms,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct OverlayQuery {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// The channel a path names, as the queue keys it: Twitch logins are case-insensitive, so one
/// typed as its display name (`DucksTV`) names the same overlay.
fn channel_of(origin_kind: &str, channel: &str) -> Result<String> {
    if !ORIGIN_KINDS.contains(&origin_kind) {
        return Err(ApiError::not_found(
            "Overlays are for Twitch channels: /overlay/twitch/<channel>.",
        ));
    }
    let channel = channel.to_ascii_lowercase();
    let is_login = (1..=25).contains(&channel.len())
        && channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !is_login {
        return Err(ApiError::invalid(
            "channel",
            "This is not a Twitch channel: use the channel's login, 1 to 25 letters, digits or '_'.",
        ));
    }
    Ok(channel)
}

/// `GET /overlay/{origin_kind}/{channel}`: the page, for OBS. `?count=N` images (1 to 50,
/// default 3), each `?size=N` pixels wide (32 to 1024, default 256).
pub async fn page(
    Path((origin_kind, channel)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    channel_of(&origin_kind, &channel)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; img-src 'self' http: https:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
                ),
            ),
        ],
        PAGE,
    ))
}

#[utoipa::path(get, path = "/v1/overlay/{origin_kind}/{channel}", tag = "overlay",
    params(
        ("origin_kind" = String, Path, description = "The chat front end: `twitch`", pattern = "^twitch$"),
        ("channel" = String, Path, description = "The channel's login", pattern = "^[A-Za-z0-9_]{1,25}$"),
        ("after" = Option<String>, Query, description = "The `cursor` of an earlier answer: only images added since, oldest first. Without it: the newest `limit`", pattern = "^[0-9]+-[0-9]+$"),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 50, default 20)", minimum = 1, maximum = 50),
    ),
    responses(
        (status = 200, body = Overlay),
        (status = 404, body = ErrorBody, description = "Not a front end with overlays"),
    ))]
pub async fn images(
    State(api): State<AppState>,
    Path((origin_kind, channel)): Path<(String, String)>,
    query: Result<Query<OverlayQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let channel = channel_of(&origin_kind, &channel)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", "`limit` must be 1 to 50."));
    }
    let read = api
        .queue
        .overlay(&origin_kind, &channel, query.after.as_deref(), limit);
    let (images, cursor) = api.deadline(read).await.map_err(|error| match error {
        // The channel is checked above: a refusal is the cursor's.
        ApiError {
            status, message, ..
        } if status == StatusCode::BAD_REQUEST => ApiError::invalid("after", message),
        other => other,
    })?;
    Ok((
        // Polled every two seconds: an answer kept anywhere would hide new images.
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(Overlay {
            images: images.into_iter().map(OverlayImageView::from).collect(),
            cursor,
        }),
    ))
}
