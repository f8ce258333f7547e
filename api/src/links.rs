//! `GET /i/{slug}`: permanent image links. The slug carries the object key signed by the worker
//! (`ducks_contract::links`); the API checks the signature and redirects to the CDN or to a
//! presigned link made now, so the link keeps working after any presign lifetime and after the
//! job's status has expired, for as long as the object exists.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ducks_contract::links::key_of;

use crate::AppState;
use crate::error::{ApiError, ErrorBody, Result};

#[utoipa::path(get, path = "/i/{slug}", tag = "images",
    params(("slug" = String, Path, description = "From an image link")),
    responses(
        (status = 302, description = "To the image (CDN or a fresh presigned link)"),
        (status = 404, body = ErrorBody, description = "Not a DUCKS link, altered, or the image is gone"),
    ))]
pub async fn image(State(api): State<AppState>, Path(slug): Path<String>) -> Result<Response> {
    if api.links.signing_key.is_empty() {
        return Err(ApiError::not_found(
            "This API does not serve image links (links.signing_key is not set).",
        ));
    }
    let key = key_of(&slug, &api.links.signing_key).map_err(|e| {
        tracing::info!(message = "Refused an image link.", reason = %e);
        ApiError::not_found("No image has this link.")
    })?;
    let gone = || ApiError::not_found("This image no longer exists.");
    match api.storage.exists(&key).await {
        Ok(true) => {}
        Ok(false) => return Err(gone()),
        Err(e) => {
            tracing::warn!(message = "Checking an image failed.", error = %e);
            return Err(ApiError::unavailable(
                "Image storage is unreachable right now.",
            ));
        }
    }
    let target = api.redirect.link(&api.storage, &key).await.map_err(|e| {
        tracing::warn!(message = "Making an image's link failed.", error = %e);
        ApiError::unavailable("Image storage is unreachable right now.")
    })?;
    let location = HeaderValue::from_str(&target)
        .map_err(|_| ApiError::internal("The image's link is not a valid header."))?;
    // The target may be a presigned link: a cache may keep the redirect for half its life at
    // most.
    let max_age = (api.links.presign_ttl_secs / 2).min(60);
    let cache = HeaderValue::from_str(&format!("private, max-age={max_age}"))
        .unwrap_or(HeaderValue::from_static("no-store"));
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, location), (header::CACHE_CONTROL, cache)],
    )
        .into_response())
}
