//! Native jobs, for clients that would rather not hold a connection through a cold GPU start:
//! `POST /v1/jobs` (202 at once, or the finished job within `Prefer: wait=N`), `GET /v1/jobs`,
//! `GET /v1/jobs/{id}`, `DELETE /v1/jobs/{id}` and `GET /v1/jobs/{id}/events` (server-sent
//! events).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ducks_contract::{JobId, JobRequest, JobState, JobStatus, Size, Webhook, limits};
use ducks_queue::{Cancelled, QueueError, Submitted};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Identity;
use crate::error::{ApiError, ErrorBody, Result};
use crate::view::{self, JobView};
use crate::{AppState, body, webhooks};

/// `POST /v1/jobs`: the generation fields of the job contract. The API sets the job's id, origin
/// and requester itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    #[schema(min_length = 1, max_length = 1000)]
    pub prompt: String,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub negative_prompt: Option<String>,
    /// A model id from `GET /v1/models`; default: the catalogue's default model.
    #[serde(default)]
    pub model: Option<String>,
    /// `WIDTHxHEIGHT`, within the model's maximum; default: the model's default size.
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 30)]
    pub guidance: Option<f32>,
    /// The same seed, model and parameters draw the same image.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    pub seed: Option<u64>,
    /// Images to draw (1 to the model's `max_images`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4)]
    pub count: Option<u32>,
    /// Unix time in milliseconds after which the result is no longer wanted.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    pub deadline_ms: Option<u64>,
    /// Where to post the job's events, signed with this key's webhook secret.
    #[serde(default)]
    pub webhook: Option<WebhookRequest>,
    /// Your own user's id: limits apply per key, then per user.
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// An `https://` (or `http://`) URL on a public address.
    pub url: String,
    /// Post progress events too, not only the end.
    #[serde(default)]
    pub progress: bool,
}

const FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "model",
    "size",
    "steps",
    "guidance",
    "seed",
    "count",
    "deadline_ms",
    "webhook",
    "user",
];

const REFUSED: body::Refused = &[
    ("id", "the API gives each job its id."),
    ("origin", "the API sets where a job came from."),
    (
        "requester",
        "the API sets who asked, from your key (and `user`).",
    ),
    (
        "idempotency_key",
        "send it as the `Idempotency-Key` header.",
    ),
    ("submitted_at_ms", "the API sets it."),
];

/// The job a `POST /v1/jobs` body asks for. Pure, apart from the webhook address check.
pub fn to_job(create: CreateJob, identity: &Identity, allow_private: bool) -> Result<JobRequest> {
    let webhook = match create.webhook {
        Some(hook) => {
            if matches!(identity, Identity::Open) {
                return Err(ApiError::invalid(
                    "webhook",
                    "Webhooks need an API key: they are signed with the key's webhook secret.",
                ));
            }
            webhooks::check_url(&hook.url, allow_private)
                .map_err(|why| ApiError::invalid("webhook.url", why))?;
            Some(Webhook {
                url: hook.url,
                progress: hook.progress,
            })
        }
        None => None,
    };
    let mut job = JobRequest::new(create.prompt, identity.origin(webhook));
    job.negative_prompt = create.negative_prompt.unwrap_or_default();
    job.model = create.model;
    if let Some(text) = create.size {
        let size: Size = text
            .parse()
            .map_err(|e: ducks_contract::ValidationError| ApiError::invalid("size", e.0))?;
        job.width = Some(size.width);
        job.height = Some(size.height);
    }
    job.steps = create.steps;
    job.guidance = create.guidance;
    job.seed = create.seed;
    job.count = create.count.unwrap_or(1);
    // A time every JSON client reads exactly, as seeds are (2^53 - 1 ms is the year 285,000).
    if create.deadline_ms.is_some_and(|ms| ms > limits::MAX_SEED) {
        return Err(ApiError::invalid(
            "deadline_ms",
            "`deadline_ms` is a Unix time in milliseconds, at most 9007199254740991.",
        ));
    }
    job.deadline_ms = create.deadline_ms;
    job.requester.id = identity.requester_id(create.user.as_deref());
    job.validate()
        .map_err(|e| ApiError::bad_request(e.0).code("invalid_value"))?;
    Ok(job)
}

/// The `Idempotency-Key` header: the same key (per API key) within a day returns the first job.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|key| !key.is_empty())
            .map(|key| Some(key.to_owned()))
            .ok_or_else(|| {
                ApiError::invalid(
                    "Idempotency-Key",
                    "The Idempotency-Key header must be printable text.",
                )
            }),
    }
}

/// Queues a job for `identity`, under its key's limits, and files it among the key's jobs.
pub async fn submit(api: &AppState, identity: &Identity, job: JobRequest) -> Result<Submitted> {
    let submitted = api
        .deadline(api.queue.submit_checked_limited(job, identity.limits()))
        .await?;
    if let Submitted::Queued { id, .. } = &submitted {
        let counted = matches!(identity, Identity::Client(_));
        // Bookkeeping after the job is safely queued: failing here must not fail the request.
        if let Err(e) = api
            .deadline(api.queue.file_api_job(identity.client_id(), id, counted))
            .await
        {
            tracing::warn!(message = "Could not file a job among its key's jobs.", error = %e.message, job_id = %id);
        }
    }
    Ok(submitted)
}

/// `Prefer: wait=N`, capped.
fn prefer_wait(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .find_map(|part| part.trim().strip_prefix("wait=")?.parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(max))
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = CreateJob,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key within a day returns the first job"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: hold the request up to N seconds and answer the finished job"),
    ),
    responses(
        (status = 202, body = JobView, description = "Queued (or still running after the wait)"),
        (status = 200, body = JobView, description = "Finished within `Prefer: wait`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such model; the message names the models there are"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(api): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let identity = api.identify(&headers).await?;
    let create: CreateJob = body::parse(&body, FIELDS, REFUSED)?;
    let mut job = to_job(create, &identity, api.config.webhook_allow_private)?;
    job.idempotency_key = idempotency_key(&headers)?;
    let id = JobId::generate();
    job.id = Some(id.clone());
    let wait = prefer_wait(
        &headers,
        Duration::from_secs(api.config.max_prefer_wait_secs),
    );
    let watch = match wait {
        Some(_) => Some(api.deadline(api.tail.watch(&id)).await?),
        None => None,
    };
    let shown = job.without_secrets();
    let submitted = submit(&api, &identity, job).await?;
    let id = submitted.id().clone();
    let mut finished = false;
    // An idempotent repeat answers the first job, and waits for that one.
    let watch = match watch {
        Some(watch) if watch.job_id() != &id => Some(api.deadline(api.tail.watch(&id)).await?),
        other => other,
    };
    if let (Some(wait), Some(mut watch)) = (wait, watch) {
        finished = api
            .until_stopped(tokio::time::timeout(wait, async {
                while let Some(event) = watch.next().await {
                    if event.kind.is_terminal() {
                        return true;
                    }
                }
                false
            }))
            .await
            .is_some_and(|ended| ended.unwrap_or(false));
    }
    let status = match &submitted {
        // A new job that nobody waits for is as it was queued: no status read (which counts
        // the jobs ahead, a cost that grows with the backlog).
        Submitted::Queued { position, .. } if wait.is_none() => {
            let now = ducks_queue::now_ms();
            JobStatus {
                id: id.clone(),
                state: JobState::Queued,
                position: Some(*position),
                attempt: 0,
                cancel_requested: false,
                submitted_at_ms: shown.submitted_at_ms.unwrap_or(now),
                updated_at_ms: now,
                request: Some(shown),
                last_event: None,
            }
        }
        _ => api.deadline(api.queue.status(&id)).await?,
    };
    let code = if finished || status.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let view = view::job(&status, &api.base_url(&headers));
    let mut response = (code, Json(&view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&view.urls.job) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// What every job route answers for a job this key may not see, or that does not exist: the
/// same, so a key cannot learn which other keys' job ids exist.
fn no_such_job(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "No job `{}` for this key.",
        id.chars().take(64).collect::<String>()
    ))
}

/// The job, if `identity` may see it; 404 otherwise, as if it did not exist.
async fn visible_status(api: &AppState, identity: &Identity, id: &str) -> Result<JobStatus> {
    let not_found = || no_such_job(id);
    let id: JobId = id.parse().map_err(|_| not_found())?;
    let status = match api.deadline(api.queue.status(&id)).await {
        Err(ApiError { status, .. }) if status == StatusCode::NOT_FOUND => return Err(not_found()),
        other => other?,
    };
    match &status.request {
        Some(request) if identity.may_see(request) => Ok(status),
        _ => Err(not_found()),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(api): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>> {
    let identity = api.identify(&headers).await?;
    let status = visible_status(&api, &identity, &id).await?;
    Ok(Json(view::job(&status, &api.base_url(&headers))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many (1 to 100, default 20), newest first.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Only jobs in this state (`succeeded` for a gallery).
    pub state: Option<String>,
}

#[utoipa::path(get, path = "/v1/gallery", tag = "images",
    params(("limit" = Option<usize>, Query, description = "At most this many (1 to 48, default 24)", minimum = 1, maximum = 48)),
    responses((status = 200, body = view::Gallery)),
    security(("bearer" = [])))]
pub async fn gallery(
    State(api): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<GalleryQuery>, QueryRejection>,
) -> Result<Json<view::Gallery>> {
    let identity = api.identify(&headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(24);
    if !(1..=48).contains(&limit) {
        return Err(ApiError::invalid("limit", "`limit` must be 1 to 48."));
    }
    let stored = api
        .deadline(api.queue.gallery(identity.client_id(), limit))
        .await?;
    Ok(Json(view::Gallery {
        object: "list",
        data: stored
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct GalleryQuery {
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<JobView>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(api): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>> {
    let identity = api.identify(&headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "`limit` must be 1 to 100."));
    }
    let ids = api
        .deadline(api.queue.api_jobs(identity.client_id(), 100))
        .await?;
    let base = api.base_url(&headers);
    let mut data = Vec::new();
    for id in ids {
        let status = match api.deadline(api.queue.status(&id)).await {
            Ok(status) => status,
            // Finished jobs are forgotten after `queue.status_ttl_secs`.
            Err(ApiError { status, .. }) if status == StatusCode::NOT_FOUND => continue,
            Err(e) => return Err(e),
        };
        if query
            .state
            .as_deref()
            .is_some_and(|state| state != status.state.as_str())
        {
            continue;
        }
        data.push(view::job(&status, &base));
        if data.len() == limit {
            break;
        }
    }
    Ok(Json(JobList {
        object: "list",
        data,
    }))
}

#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = JobView, description = "Cancelled before it started, or it had ended already"),
        (status = 202, body = JobView, description = "Running: its worker is told to stop it"),
        (status = 403, body = ErrorBody, description = "Another key's job"),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(api): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let identity = api.identify(&headers).await?;
    let job_id: JobId = id.parse().map_err(|_| no_such_job(&id))?;
    let status = api.deadline(api.queue.status(&job_id)).await?;
    if !status
        .request
        .as_ref()
        .is_some_and(|request| identity.may_see(request))
    {
        return Err(QueueError::NotAllowed.into());
    }
    let outcome = api
        .deadline(api.queue.cancel(&job_id, &identity.caller()))
        .await?;
    let status = api.deadline(api.queue.status(&job_id)).await?;
    let code = match outcome {
        Cancelled::Requested => StatusCode::ACCEPTED,
        Cancelled::Cancelled | Cancelled::AlreadyEnded(_) => StatusCode::OK,
    };
    Ok((code, Json(view::job(&status, &api.base_url(&headers)))).into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(
        ("id" = String, Path),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume: the job's current state comes first, then what follows; the end is never missed"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", description = "`queued`, `starting`, `progress`, `retrying`, then `succeeded`, `failed` or `cancelled`; the stream ends after it"),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(api): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let identity = api.identify(&headers).await?;
    let job_id: JobId = id.parse().map_err(|_| no_such_job(&id))?;
    // One status read serves both the check of who may watch and the watch's first event.
    let (watch, status) = api.deadline(api.tail.watch_status(&job_id)).await?;
    let visible = status
        .and_then(|status| status.request)
        .is_some_and(|request| identity.may_see(&request));
    if !visible {
        return Err(no_such_job(&id));
    }
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let until = tokio::time::Instant::now() + Duration::from_secs(api.config.events_max_secs);
    let watching = api.metrics.watching();
    let stream = futures_util::stream::unfold(
        (watch, resume_after, true, watching, api),
        move |(mut watch, resume_after, first, watching, api)| async move {
            loop {
                let next = tokio::time::timeout_at(until, watch.next_entry());
                let (entry, event) = api.until_stopped(next).await?.ok()??;
                // After a reconnect: the job's current state first, then only what is newer.
                let seen = !first
                    && matches!((&entry, &resume_after), (Some(entry), Some(after)) if !ducks_queue::tail::entry_after(entry, after));
                if seen {
                    continue;
                }
                let mut sse = Event::default()
                    .event(view::event_name(&event.kind))
                    .json_data(view::event(&event))
                    .unwrap_or_default();
                if let Some(entry) = &entry {
                    sse = sse.id(entry.clone());
                }
                return Some((Ok(sse), (watch, resume_after, false, watching, api)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_is_read_and_capped() {
        let table = [
            ("wait=5", Some(5)),
            ("respond-async, wait=100", Some(60)),
            ("handling=lenient; wait=0", Some(0)),
            ("wait=soon", None),
        ];
        for (value, secs) in table {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", HeaderValue::from_static(value));
            assert_eq!(
                prefer_wait(&headers, Duration::from_secs(60)),
                secs.map(Duration::from_secs),
                "{value}"
            );
        }
    }

    #[test]
    fn the_body_cannot_choose_who_asked_or_where_from() {
        for field in ["id", "origin", "requester", "idempotency_key"] {
            let body = format!(r#"{{"prompt":"a duck","{field}":"x"}}"#);
            let error = body::parse::<CreateJob>(body.as_bytes(), FIELDS, REFUSED).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(field));
        }
    }

    #[test]
    fn webhooks_need_a_key_and_a_public_address() {
        let create = |url: &str| CreateJob {
            prompt: "a duck".into(),
            negative_prompt: None,
            model: None,
            size: None,
            steps: None,
            guidance: None,
            seed: None,
            count: None,
            deadline_ms: None,
            webhook: Some(WebhookRequest {
                url: url.into(),
                progress: false,
            }),
            user: None,
        };
        let open = to_job(create("https://example.com/hook"), &Identity::Open, false).unwrap_err();
        assert_eq!(open.param.as_deref(), Some("webhook"));
        let keyed = Identity::Client(ducks_contract::ApiClient {
            id: "acme".into(),
            name: "acme".into(),
            admin: false,
            created_at_ms: 0,
            in_flight: None,
            rate_per_minute: None,
            webhook_secret: ducks_contract::Secret::new("whsec_AAAA"),
            revoked_at_ms: None,
        });
        let loopback = to_job(create("http://127.0.0.1:9/hook"), &keyed, false).unwrap_err();
        assert_eq!(loopback.param.as_deref(), Some("webhook.url"));
        let job = to_job(create("http://127.0.0.1:9/hook"), &keyed, true).unwrap();
        assert!(matches!(
            job.origin,
            ducks_contract::Origin::Api {
                webhook: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn a_deadline_beyond_what_json_clients_read_exactly_is_refused() {
        let body = br#"{"prompt":"a duck","deadline_ms":9223372036854775808}"#;
        let create = body::parse::<CreateJob>(body, FIELDS, REFUSED).unwrap();
        let error = to_job(create, &Identity::Open, false).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("deadline_ms"));
        let body = br#"{"prompt":"a duck","deadline_ms":1796545175586}"#;
        let create = body::parse::<CreateJob>(body, FIELDS, REFUSED).unwrap();
        let job = to_job(create, &Identity::Open, false).unwrap();
        assert_eq!(job.deadline_ms, Some(1_796_545_175_586));
    }
}
