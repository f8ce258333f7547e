//! The OpenAI-compatible routes: `GET /v1/models`, `GET /v1/models/{id}` and
//! `POST /v1/images/generations`, which queues one job and waits for its images, so any OpenAI
//! client works by changing its base URL.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ducks_contract::{EventKind, JobId, JobRequest, JobState, ModelCatalogue, Size};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::auth::Identity;
use crate::error::{ApiError, ErrorBody, Result};
use crate::view::{self, ModelList, ModelView};
use crate::{AppState, body, jobs};

/// `POST /v1/images/generations`, as OpenAI defines it. Fields that mean nothing here are
/// accepted only at values that change nothing, and refused otherwise with their name.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ImageGenerationRequest {
    pub prompt: String,
    /// A model id from `GET /v1/models`; default: the catalogue's default model.
    #[serde(default)]
    pub model: Option<String>,
    /// How many images (1 to the model's `max_images`).
    #[serde(default)]
    pub n: Option<u32>,
    /// `WIDTHxHEIGHT`, one of the model's `sizes`, or `auto` (the model's default).
    #[serde(default)]
    pub size: Option<String>,
    /// `url` (default) or `b64_json`.
    #[serde(default)]
    pub response_format: Option<String>,
    /// Your own user's id: limits apply per key, then per user.
    #[serde(default)]
    pub user: Option<String>,
    /// `auto` or `standard` only.
    #[serde(default)]
    pub quality: Option<String>,
    /// `png` only.
    #[serde(default)]
    pub output_format: Option<String>,
    /// `auto` or `opaque` only.
    #[serde(default)]
    pub background: Option<String>,
    /// Accepted and ignored: `auto` or `low`.
    #[serde(default)]
    pub moderation: Option<String>,
    /// `false` only: images come whole.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Not supported.
    #[serde(default)]
    pub style: Option<String>,
    /// Not supported.
    #[serde(default)]
    pub partial_images: Option<u32>,
    /// Not supported.
    #[serde(default)]
    pub output_compression: Option<u32>,
}

const FIELDS: &[&str] = &[
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "user",
    "quality",
    "output_format",
    "background",
    "moderation",
    "stream",
    "style",
    "partial_images",
    "output_compression",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFormat {
    Url,
    B64Json,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesResponse {
    /// Unix seconds.
    pub created: u64,
    pub data: Vec<ImageData>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
}

/// The job an OpenAI request asks for, checked against the catalogue: everything a client can
/// get wrong is refused here with its `param`. Pure.
pub fn to_job(
    request: &ImageGenerationRequest,
    catalogue: Option<&ModelCatalogue>,
    identity: &Identity,
) -> Result<(JobRequest, ResponseFormat)> {
    let only = |param: &str, value: Option<&str>, allowed: &[&str], why: &str| match value {
        Some(value) if !allowed.contains(&value) => Err(ApiError::invalid(
            param,
            format!(
                "`{param}` = `{}` is not supported: {why}",
                value.chars().take(32).collect::<String>()
            ),
        )),
        _ => Ok(()),
    };
    only(
        "quality",
        request.quality.as_deref(),
        &["auto", "standard"],
        "DUCKS draws at the model's own quality; use `auto`, or set `steps` through POST /v1/jobs.",
    )?;
    only(
        "output_format",
        request.output_format.as_deref(),
        &["png"],
        "images are PNG.",
    )?;
    only(
        "background",
        request.background.as_deref(),
        &["auto", "opaque"],
        "images have no transparency.",
    )?;
    only(
        "moderation",
        request.moderation.as_deref(),
        &["auto", "low"],
        "use `auto` or `low`.",
    )?;
    if request.stream == Some(true) || request.partial_images.is_some_and(|n| n > 0) {
        let param = if request.stream == Some(true) {
            "stream"
        } else {
            "partial_images"
        };
        return Err(ApiError::invalid(
            param,
            "Streaming partial images is not supported: use GET /v1/jobs/{id}/events for progress.",
        ));
    }
    if request.style.is_some() {
        return Err(ApiError::invalid(
            "style",
            "`style` is not supported: describe the style in the prompt.",
        ));
    }
    if request.output_compression.is_some() {
        return Err(ApiError::invalid(
            "output_compression",
            "`output_compression` is not supported: images are PNG.",
        ));
    }
    let format = match request.response_format.as_deref() {
        None | Some("url") => ResponseFormat::Url,
        Some("b64_json") => ResponseFormat::B64Json,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "`response_format` must be `url` or `b64_json`, not `{}`.",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
    };
    let mut job = JobRequest::new(request.prompt.clone(), identity.origin(None));
    job.model = request.model.clone();
    job.requester.id = identity.requester_id(request.user.as_deref());
    job.count = request.n.unwrap_or(1);
    if let Some(catalogue) = catalogue {
        let model = catalogue
            .choose(request.model.as_deref())
            .map_err(|e| ApiError::from(ducks_queue::QueueError::Refused(e)))?;
        job.model = Some(model.id.clone());
        if job.count == 0 || job.count > model.max_images {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "{} draws 1 to {} images per request, not {}.",
                    model.id, model.max_images, job.count
                ),
            ));
        }
        match request.size.as_deref() {
            None | Some("auto") => {}
            Some(text) => {
                let size: Option<Size> = text.parse().ok();
                match size.filter(|size| model.sizes.contains(size)) {
                    Some(size) => {
                        job.width = Some(size.width);
                        job.height = Some(size.height);
                    }
                    None => {
                        return Err(ApiError::invalid(
                            "size",
                            format!(
                                "`{}` is not a size {} offers: use {} (or `auto`).",
                                text.chars().take(32).collect::<String>(),
                                model.id,
                                model.size_choices()
                            ),
                        ));
                    }
                }
            }
        }
    } else if let Some(text) = request.size.as_deref().filter(|size| *size != "auto") {
        let size: Size = text
            .parse()
            .map_err(|e: ducks_contract::ValidationError| ApiError::invalid("size", e.0))?;
        job.width = Some(size.width);
        job.height = Some(size.height);
    }
    job.validate()
        .map_err(|e| ApiError::bad_request(e.0).code("invalid_value"))?;
    Ok((job, format))
}

#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_models(
    State(api): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ModelList>> {
    api.identify(&headers).await?;
    let catalogue = api.deadline(api.queue.models()).await?;
    Ok(Json(ModelList {
        object: "list",
        data: catalogue.models.iter().map(view::model).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "A model id")),
    responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_model(
    State(api): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ModelView>> {
    api.identify(&headers).await?;
    let catalogue = api.deadline(api.queue.models()).await?;
    catalogue
        .choose(Some(&id))
        .map(|model| Json(view::model(model)))
        .map_err(|refusal| ApiError::from(ducks_queue::QueueError::Refused(refusal)))
}

/// How long a request's fingerprint stays linked to its job: as long as its client may retry.
fn attempt_ttl(wait: Duration) -> Duration {
    wait * 4
}

#[utoipa::path(post, path = "/v1/images/generations", tag = "images",
    request_body = ImageGenerationRequest,
    responses(
        (status = 200, body = ImagesResponse),
        (status = 400, body = ErrorBody, description = "A field is wrong; `param` names it"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such model; the message names the models there are"),
        (status = 429, body = ErrorBody),
        (status = 504, body = ErrorBody, description = "Not ready within the wait; the job goes on and the message names its URL"),
    ),
    security(("bearer" = [])))]
pub async fn generate(
    State(api): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ImagesResponse>> {
    let identity = api.identify(&headers).await?;
    let request: ImageGenerationRequest = body::parse(&body, FIELDS, &[])?;
    let catalogue = api.deadline(api.queue.catalogue_snapshot()).await?;
    let (mut job, format) = to_job(&request, catalogue.as_deref(), &identity)?;
    job.idempotency_key = jobs::idempotency_key(&headers)?;
    // OpenAI's clients retry a timed-out or failed request (with `x-stainless-retry-count`): a
    // retry of the same body by the same key follows the job its first attempt started.
    let fingerprint = hex::encode(
        Sha256::new()
            .chain_update(identity.client_id())
            .chain_update([0])
            .chain_update(&body)
            .finalize(),
    );
    let is_retry = headers
        .get("x-stainless-retry-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|n| n > 0);
    let wait = Duration::from_secs(api.config.generation_wait_secs);
    let mut earlier = if is_retry {
        api.deadline(api.queue.api_attempt(&fingerprint)).await?
    } else {
        None
    };
    // A retry of a job that failed or was cancelled draws anew rather than repeat its end.
    if let Some(id) = &earlier {
        match api.deadline(api.queue.status(id)).await {
            Ok(status) if matches!(status.state, JobState::Failed | JobState::Cancelled) => {
                earlier = None
            }
            Ok(_) => {}
            Err(e) if e.status == StatusCode::NOT_FOUND => earlier = None,
            Err(e) => return Err(e),
        }
    }
    let id = match earlier {
        Some(id) => id,
        None => {
            let id = JobId::generate();
            job.id = Some(id.clone());
            let watch = api.deadline(api.tail.watch(&id)).await?;
            let submitted = jobs::submit(&api, &identity, job).await?;
            api.deadline(api.queue.record_api_attempt(
                &fingerprint,
                submitted.id(),
                attempt_ttl(wait),
            ))
            .await?;
            if submitted.id() == &id {
                return finish(&api, &headers, watch, wait, format).await;
            }
            submitted.id().clone()
        }
    };
    let watch = api.deadline(api.tail.watch(&id)).await?;
    finish(&api, &headers, watch, wait, format).await
}

/// Waits for the job's end and answers its images.
async fn finish(
    api: &AppState,
    headers: &HeaderMap,
    mut watch: ducks_queue::JobWatch,
    wait: Duration,
    format: ResponseFormat,
) -> Result<Json<ImagesResponse>> {
    let id = watch.job_id().clone();
    let end = api
        .until_stopped(tokio::time::timeout(wait, async {
            while let Some(event) = watch.next().await {
                if event.kind.is_terminal() {
                    return Some(event);
                }
            }
            None
        }))
        .await
        .unwrap_or(Ok(None));
    let still_running = || {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            ..ApiError::internal(format!(
                "The images are not ready after {} s; the job goes on. Its result will be at {}/v1/jobs/{id} \
                 (and its progress at {}/v1/jobs/{id}/events).",
                wait.as_secs(),
                api.base_url(headers),
                api.base_url(headers),
            ))
        }
        .code("job_still_running")
    };
    let event = match end {
        Ok(Some(event)) => event,
        Ok(None) => {
            return Err(ApiError::unavailable(
                "The API is shutting down; the job goes on.",
            ));
        }
        Err(_) => return Err(still_running()),
    };
    match event.kind {
        EventKind::Succeeded { images, .. } => {
            let mut data = Vec::with_capacity(images.len());
            for image in images {
                data.push(match format {
                    ResponseFormat::Url => ImageData {
                        url: Some(image.url),
                        b64_json: None,
                    },
                    ResponseFormat::B64Json => {
                        let bytes = api
                            .storage
                            .get_bytes(&image.key)
                            .await
                            .map_err(|e| {
                                tracing::warn!(message = "Reading an image for b64_json failed.", error = %e, job_id = %id);
                                ApiError::unavailable(
                                    "The image is made but cannot be read from storage right now; GET the job for its link.",
                                )
                            })?;
                        ImageData {
                            url: None,
                            b64_json: Some(STANDARD.encode(bytes)),
                        }
                    }
                });
            }
            Ok(Json(ImagesResponse {
                created: event.at_ms / 1000,
                data,
            }))
        }
        EventKind::Failed {
            code,
            message,
            retryable,
        } => Err(ApiError::job_failed(code, &message, retryable)),
        _ => Err(ApiError::bad_request("The job was cancelled.").code("cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_contract::{GpuNeed, ModelInfo};

    fn catalogue() -> ModelCatalogue {
        ModelCatalogue {
            default_model: Some("tiny-sd".into()),
            models: vec![ModelInfo {
                id: "tiny-sd".into(),
                name: "Tiny".into(),
                description: String::new(),
                family: "tiny-sd".into(),
                default_width: 64,
                default_height: 64,
                default_steps: 2,
                default_guidance: 7.5,
                max_width: 128,
                max_height: 128,
                max_steps: 10,
                max_images: 4,
                sizes: vec![Size::new(64, 64), Size::new(96, 64)],
                gpu: GpuNeed::default(),
                added_at_secs: None,
                tags: vec![],
            }],
            updated_at_ms: 0,
        }
    }

    fn check(
        body: serde_json::Value,
    ) -> std::result::Result<(JobRequest, ResponseFormat), (Option<String>, String)> {
        let request: ImageGenerationRequest = serde_json::from_value(body).unwrap();
        to_job(&request, Some(&catalogue()), &Identity::Open).map_err(|e| (e.param, e.message))
    }

    #[test]
    fn requests_become_jobs_or_name_the_field_at_fault() {
        let (job, format) =
            check(serde_json::json!({"prompt": "a duck", "n": 2, "size": "96x64", "user": "u1"}))
                .unwrap();
        assert_eq!(
            (
                job.model.as_deref(),
                job.count,
                job.width,
                job.height,
                job.requester.id.as_str(),
                format
            ),
            (
                Some("tiny-sd"),
                2,
                Some(96),
                Some(64),
                "u1",
                ResponseFormat::Url
            )
        );
        let (job, format) = check(
            serde_json::json!({"prompt": "a duck", "size": "auto", "response_format": "b64_json"}),
        )
        .unwrap();
        assert_eq!((job.width, format), (None, ResponseFormat::B64Json));

        let refusals = [
            (
                serde_json::json!({"prompt": "p", "size": "1024x1024"}),
                "size",
                "`1024x1024` is not a size tiny-sd offers: use 64x64 or 96x64 (or `auto`).",
            ),
            (
                serde_json::json!({"prompt": "p", "size": "big"}),
                "size",
                "use 64x64 or 96x64",
            ),
            (
                serde_json::json!({"prompt": "p", "n": 5}),
                "n",
                "tiny-sd draws 1 to 4 images per request, not 5.",
            ),
            (
                serde_json::json!({"prompt": "p", "model": "dall-e-3"}),
                "model",
                "dall-e-3",
            ),
            (
                serde_json::json!({"prompt": "p", "response_format": "png"}),
                "response_format",
                "`url` or `b64_json`",
            ),
            (
                serde_json::json!({"prompt": "p", "quality": "hd"}),
                "quality",
                "`quality` = `hd` is not supported",
            ),
            (
                serde_json::json!({"prompt": "p", "style": "vivid"}),
                "style",
                "describe the style in the prompt",
            ),
            (
                serde_json::json!({"prompt": "p", "stream": true}),
                "stream",
                "GET /v1/jobs/{id}/events",
            ),
        ];
        for (body, param, message) in refusals {
            let (got_param, got_message) = check(body.clone()).unwrap_err();
            assert_eq!(got_param.as_deref(), Some(param), "{body}");
            assert!(got_message.contains(message), "{body}: {got_message}");
        }
        let (param, message) = check(serde_json::json!({"prompt": " "})).unwrap_err();
        assert_eq!(
            (param, message.as_str()),
            (None, "The prompt is empty: describe the image you want.")
        );
    }
}
