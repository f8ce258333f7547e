//! What the API shows of models, jobs and events: pure functions from the contract's types to the
//! API's own JSON, so every route (and the webhooks, and the page) shows a job the same way.

use ducks_contract::{
    EventKind, ImageRef, JobEvent, JobState, JobStatus, ModelInfo, Size, Timings,
};
use serde::Serialize;
use utoipa::ToSchema;

/// One model, in OpenAI's list shape with DUCKS' details beside.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds when the model was added (0 when unknown).
    pub created: u64,
    pub owned_by: String,
    pub name: String,
    pub description: String,
    pub family: String,
    /// `WIDTHxHEIGHT`.
    pub default_size: String,
    pub max_size: String,
    /// The sizes this model offers, the default first: `POST /v1/images/generations` takes these.
    pub sizes: Vec<String>,
    pub default_steps: u32,
    pub max_steps: u32,
    pub max_images: u32,
    pub gpu: GpuView,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct GpuView {
    /// GPUs per job; 0 runs on the CPU.
    pub count: u32,
    pub min_memory_gib: u32,
    /// Acceptable GPU products; empty means any.
    pub products: Vec<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelView>,
}

pub fn model(info: &ModelInfo) -> ModelView {
    ModelView {
        id: info.id.clone(),
        object: "model",
        created: info.added_at_secs.unwrap_or(0),
        owned_by: "ducks".into(),
        name: info.name.clone(),
        description: info.description.clone(),
        family: info.family.clone(),
        default_size: Size::new(info.default_width, info.default_height).to_string(),
        max_size: Size::new(info.max_width, info.max_height).to_string(),
        sizes: info.sizes.iter().map(Size::to_string).collect(),
        default_steps: info.default_steps,
        max_steps: info.max_steps,
        max_images: info.max_images,
        gpu: GpuView {
            count: info.gpu.count,
            min_memory_gib: info.gpu.min_memory_gib,
            products: info.gpu.products.clone(),
        },
        tags: info.tags.clone(),
    }
}

/// One image of a key's gallery, kept in Redis beyond its job's status.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct GalleryImage {
    pub job_id: String,
    pub url: String,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub prompt: String,
    pub model: Option<String>,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Gallery {
    /// Always `list`.
    pub object: &'static str,
    /// Newest first.
    pub data: Vec<GalleryImage>,
}

/// A job: where it is, what it asked for, and what it made (the per-job receipt).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// Always `job`.
    pub object: &'static str,
    /// `queued`, `running`, `retrying`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Jobs ahead of this one (itself included) while it is queued.
    pub position: Option<u64>,
    /// Where a running job is: `launching`, `waiting_for_gpu`, `pulling_image`,
    /// `queued_in_cluster`, `restarting`, `loading_weights`, `generating`, `uploading`.
    pub phase: Option<String>,
    /// The same in English, or what a retry or failure is about.
    pub message: Option<String>,
    pub progress: Option<ProgressView>,
    pub request: Option<RequestView>,
    pub images: Vec<ImageView>,
    /// Where the time went, and the GPU time used.
    pub timings: Option<TimingsView>,
    pub error: Option<JobErrorView>,
    /// Retries so far.
    pub attempt: u32,
    pub cancel_requested: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub urls: JobUrls,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProgressView {
    pub step: u32,
    pub total: u32,
}

/// What the job asked for; unset values take the model's defaults.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RequestView {
    pub prompt: String,
    pub negative_prompt: String,
    pub model: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub seed: Option<u64>,
    pub count: u32,
    /// Who asked: the key, or `<key>/<user>`.
    pub requester: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImageView {
    /// A link that does not expire where the API signs links, else a CDN or presigned link.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// The seed that draws this image again.
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TimingsView {
    pub queue_ms: u64,
    pub startup_ms: u64,
    pub generate_ms: u64,
    pub upload_ms: u64,
    pub total_ms: u64,
    pub gpu_seconds: f64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobErrorView {
    /// Stable: `invalid_request`, `unknown_model`, `no_gpu_capacity`, `runner_crashed`, …
    pub code: String,
    pub message: String,
    /// Whether asking again can help.
    pub retryable: bool,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobUrls {
    #[serde(rename = "self")]
    pub job: String,
    /// Server-sent events: progress, then the result.
    pub events: String,
}

pub fn job_urls(base: &str, id: &str) -> JobUrls {
    JobUrls {
        job: format!("{base}/v1/jobs/{id}"),
        events: format!("{base}/v1/jobs/{id}/events"),
    }
}

pub fn job(status: &JobStatus, base: &str) -> JobView {
    let mut view = JobView {
        id: status.id.to_string(),
        object: "job",
        state: status.state.as_str().into(),
        position: (status.state == JobState::Queued)
            .then_some(status.position)
            .flatten(),
        phase: None,
        message: None,
        progress: None,
        request: status.request.as_ref().map(|request| RequestView {
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            model: request.model.clone(),
            width: request.width,
            height: request.height,
            steps: request.steps,
            guidance: request.guidance,
            seed: request.seed,
            count: request.count,
            requester: request.requester.id.clone(),
        }),
        images: Vec::new(),
        timings: None,
        error: None,
        attempt: status.attempt,
        cancel_requested: status.cancel_requested,
        created_at_ms: status.submitted_at_ms,
        updated_at_ms: status.updated_at_ms,
        urls: job_urls(base, status.id.as_str()),
    };
    if let Some(event) = &status.last_event {
        apply(&mut view, &event.kind);
    }
    view
}

/// What the job's newest event adds to its view.
fn apply(view: &mut JobView, kind: &EventKind) {
    match kind {
        EventKind::Queued { .. } | EventKind::Cancelled => {}
        EventKind::Starting { phase, message } => {
            view.phase = Some(phase.as_str().into());
            view.message = Some(message.clone());
        }
        EventKind::Progress { step, total } => {
            view.phase = Some("generating".into());
            view.progress = Some(ProgressView {
                step: *step,
                total: *total,
            });
        }
        EventKind::Retrying { message, .. } => view.message = Some(message.clone()),
        EventKind::Succeeded { images, timings } => {
            view.images = images.iter().map(image).collect();
            view.timings = Some(timings_view(timings));
        }
        EventKind::Failed {
            code,
            message,
            retryable,
        } => {
            view.message = Some(message.clone());
            view.error = Some(JobErrorView {
                code: code.as_str().into(),
                message: message.clone(),
                retryable: *retryable,
            });
        }
    }
}

pub fn image(image: &ImageRef) -> ImageView {
    ImageView {
        url: image.url.clone(),
        width: image.width,
        height: image.height,
        seed: image.seed,
    }
}

fn timings_view(timings: &Timings) -> TimingsView {
    TimingsView {
        queue_ms: timings.queue_ms,
        startup_ms: timings.startup_ms,
        generate_ms: timings.generate_ms,
        upload_ms: timings.upload_ms,
        total_ms: timings.total_ms,
        gpu_seconds: timings.gpu_seconds,
    }
}

/// One event as the API sends it (server-sent events, webhooks): the event's own fields with
/// the job id and time, without the origin.
pub fn event(event: &JobEvent) -> serde_json::Value {
    let mut value = match &event.kind {
        EventKind::Succeeded { images, timings } => serde_json::json!({
            "event": "succeeded",
            "images": images.iter().map(image).collect::<Vec<_>>(),
            "timings": timings_view(timings),
        }),
        other => serde_json::to_value(other).unwrap_or_default(),
    };
    if let Some(fields) = value.as_object_mut() {
        fields.insert("job_id".into(), event.job_id.as_str().into());
        fields.insert("at_ms".into(), event.at_ms.into());
    }
    value
}

/// The event's name: `queued`, `starting`, `progress`, `retrying`, `succeeded`, `failed`,
/// `cancelled`.
pub fn event_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Queued { .. } => "queued",
        EventKind::Starting { .. } => "starting",
        EventKind::Progress { .. } => "progress",
        EventKind::Retrying { .. } => "retrying",
        EventKind::Succeeded { .. } => "succeeded",
        EventKind::Failed { .. } => "failed",
        EventKind::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_contract::{FailureCode, JobPhase, JobRequest, Origin, Requester};

    fn status(kind: Option<EventKind>, state: JobState) -> JobStatus {
        let id: ducks_contract::JobId = "job-1".parse().unwrap();
        let mut request = JobRequest::new(
            "a duck",
            Origin::Api {
                client: Some("acme".into()),
                webhook: None,
            },
        );
        request.requester = Requester {
            id: "acme/u1".into(),
            name: None,
        };
        request.width = Some(64);
        JobStatus {
            id: id.clone(),
            state,
            position: Some(3),
            attempt: 0,
            cancel_requested: false,
            submitted_at_ms: 1_000,
            updated_at_ms: 2_000,
            request: Some(request.clone()),
            last_event: kind.map(|kind| JobEvent {
                job_id: id,
                at_ms: 2_000,
                origin: request.origin.clone(),
                requester: request.requester.clone(),
                kind,
            }),
        }
    }

    #[test]
    fn jobs_render_their_newest_event() {
        let views = [
            job(&status(None, JobState::Queued), "http://h"),
            job(
                &status(
                    Some(EventKind::Starting {
                        phase: JobPhase::WaitingForGpu,
                        message: "Waiting for a free GPU.".into(),
                    }),
                    JobState::Running,
                ),
                "http://h",
            ),
            job(
                &status(
                    Some(EventKind::Progress { step: 3, total: 8 }),
                    JobState::Running,
                ),
                "http://h",
            ),
            job(
                &status(
                    Some(EventKind::Succeeded {
                        images: vec![ImageRef {
                            key: "images/k.png".into(),
                            url: "http://h/i/abc.def".into(),
                            width: 64,
                            height: 64,
                            seed: 7,
                        }],
                        timings: Timings {
                            total_ms: 900,
                            gpu_seconds: 0.5,
                            ..Timings::default()
                        },
                    }),
                    JobState::Succeeded,
                ),
                "http://h",
            ),
            job(
                &status(
                    Some(EventKind::Failed {
                        code: FailureCode::NoGpuCapacity,
                        message: "No GPU is free.".into(),
                        retryable: true,
                    }),
                    JobState::Failed,
                ),
                "http://h",
            ),
        ];
        insta::assert_json_snapshot!(views);
    }

    #[test]
    fn events_carry_their_fields_without_the_origin() {
        let status = status(
            Some(EventKind::Progress { step: 1, total: 2 }),
            JobState::Running,
        );
        let rendered = event(status.last_event.as_ref().unwrap());
        assert_eq!(
            rendered,
            serde_json::json!({"event": "progress", "step": 1, "total": 2, "job_id": "job-1", "at_ms": 2000})
        );
    }
}
