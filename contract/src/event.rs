//! What happens to a job, as front ends see it: [`JobEvent`].

use serde::{Deserialize, Serialize};

use crate::{JobId, Origin, Requester};

/// One step in a job's life, written to the event stream of the job's origin.
/// Every job gets exactly one terminal event: `succeeded`, `failed` or `cancelled`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    /// Unix time in milliseconds when the event was written.
    pub at_ms: u64,
    /// Where to reply: front ends need nothing else to answer in the right place.
    pub origin: Origin,
    pub requester: Requester,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// Accepted; `position` jobs (this one included) were waiting to be taken when it was added.
    Queued {
        position: u64,
    },
    /// A worker took the job and is on its way to the image: `phase` says where, for machines;
    /// `message` says the same in English.
    Starting {
        phase: JobPhase,
        message: String,
    },
    /// Denoising step `step` of `total` is done.
    Progress {
        step: u32,
        total: u32,
    },
    /// This attempt failed in a way a retry can fix; the job comes back after `retry_in_ms`.
    Retrying {
        attempt: u32,
        retry_in_ms: u64,
        message: String,
    },
    Succeeded {
        images: Vec<ImageRef>,
        timings: Timings,
    },
    Failed {
        code: FailureCode,
        /// Written for the person who asked; safe to show in chat.
        message: String,
        /// Whether asking again can help (it cannot for a bad request).
        retryable: bool,
    },
    Cancelled,
}

impl JobEvent {
    /// The event as it may be shown or passed on: without the origin's credentials.
    pub fn without_secrets(&self) -> JobEvent {
        JobEvent {
            origin: self.origin.without_secrets(),
            ..self.clone()
        }
    }
}

/// Where a started job is, as a stable code that front ends can render their own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// The worker is asking for the compute (creating the pod or process).
    Launching,
    /// The pod waits for a GPU to be free (or a node to be added).
    WaitingForGpu,
    /// The node is pulling the runner image.
    PullingImage,
    /// The Job waits in the cluster's own queue (Kueue) for GPU quota.
    QueuedInCluster,
    /// The cluster interrupted the pod (preemption, a drain) and a new one is starting.
    Restarting,
    /// The runner fetches the model's weights (through the node's cache) and loads them.
    LoadingWeights,
    Generating,
    Uploading,
    /// A phase from a newer DUCKS that this build does not know.
    #[serde(other)]
    Unknown,
}

impl JobPhase {
    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Launching => "launching",
            JobPhase::WaitingForGpu => "waiting_for_gpu",
            JobPhase::PullingImage => "pulling_image",
            JobPhase::QueuedInCluster => "queued_in_cluster",
            JobPhase::Restarting => "restarting",
            JobPhase::LoadingWeights => "loading_weights",
            JobPhase::Generating => "generating",
            JobPhase::Uploading => "uploading",
            JobPhase::Unknown => "unknown",
        }
    }
}

impl EventKind {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Succeeded { .. } | EventKind::Failed { .. } | EventKind::Cancelled
        )
    }
}

/// One generated image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// The object key in the bucket.
    pub key: String,
    /// A link that works for whoever receives it: a permanent signed link to the API, a CDN
    /// link, or a presigned S3 link.
    pub url: String,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
}

/// Where the time went, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From submit until a worker took the job.
    pub queue_ms: u64,
    /// From taking the job until the runner started generating (scheduling, image pull, weights).
    pub startup_ms: u64,
    pub generate_ms: u64,
    pub upload_ms: u64,
    /// From submit until the result was published.
    pub total_ms: u64,
    /// GPU time held for this job, in GPU-seconds.
    pub gpu_seconds: f64,
}

/// Why a job failed, for machines: metrics labels, retry policy, front-end wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The request breaks a limit or cannot be decoded.
    InvalidRequest,
    UnknownModel,
    /// The job's deadline passed before it could finish.
    DeadlineExceeded,
    /// The job was delivered too many times without finishing: it keeps crashing its worker.
    TooManyDeliveries,
    WeightsCorrupt,
    OutOfMemory,
    StorageUnavailable,
    NoGpuCapacity,
    ImagePullFailed,
    RunnerCrashed,
    /// The runner reported images that are not in the bucket.
    OutputMissing,
    /// The cluster stopped the runner: preemption, eviction, a drain, a GPU fault, or its Job
    /// deleted outside DUCKS.
    Interrupted,
    /// The cluster refused to create the runner (quota, admission policy).
    Refused,
    Internal,
    /// A code from a newer DUCKS that this build does not know.
    #[serde(other)]
    Unknown,
}

impl FailureCode {
    /// The stable text form, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::InvalidRequest => "invalid_request",
            FailureCode::UnknownModel => "unknown_model",
            FailureCode::DeadlineExceeded => "deadline_exceeded",
            FailureCode::TooManyDeliveries => "too_many_deliveries",
            FailureCode::WeightsCorrupt => "weights_corrupt",
            FailureCode::OutOfMemory => "out_of_memory",
            FailureCode::StorageUnavailable => "storage_unavailable",
            FailureCode::NoGpuCapacity => "no_gpu_capacity",
            FailureCode::ImagePullFailed => "image_pull_failed",
            FailureCode::RunnerCrashed => "runner_crashed",
            FailureCode::OutputMissing => "output_missing",
            FailureCode::Interrupted => "interrupted",
            FailureCode::Refused => "refused",
            FailureCode::Internal => "internal",
            FailureCode::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn events_have_a_flat_documented_shape() {
        let event = JobEvent {
            job_id: "job-1".parse().unwrap(),
            at_ms: 1_700_000_000_000,
            origin: Origin::Cli,
            requester: Requester::default(),
            kind: EventKind::Failed {
                code: FailureCode::UnknownModel,
                message: "No model `x`.".into(),
                retryable: false,
            },
        };
        let json: serde_json::Value = serde_json::from_str(&wire::encode(&event)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "v": 1, "job_id": "job-1", "at_ms": 1_700_000_000_000u64,
                "origin": {"kind": "cli"}, "requester": {"id": "anonymous"},
                "event": "failed", "code": "unknown_model", "message": "No model `x`.", "retryable": false
            })
        );
        assert_eq!(
            wire::decode::<JobEvent>("event", &json.to_string()).unwrap(),
            event
        );
    }

    #[test]
    fn starting_events_carry_a_phase_code() {
        let event = JobEvent {
            job_id: "job-1".parse().unwrap(),
            at_ms: 1,
            origin: Origin::Cli,
            requester: Requester::default(),
            kind: EventKind::Starting {
                phase: JobPhase::WaitingForGpu,
                message: "Waiting for a free GPU.".into(),
            },
        };
        let json = wire::encode(&event);
        assert!(
            json.ends_with(r#""event":"starting","phase":"waiting_for_gpu","message":"Waiting for a free GPU."}"#),
            "{json}"
        );
        let newer = json.replace("waiting_for_gpu", "warming_the_gpu");
        let decoded: JobEvent = wire::decode("event", &newer).unwrap();
        assert!(matches!(
            decoded.kind,
            EventKind::Starting {
                phase: JobPhase::Unknown,
                ..
            }
        ));
    }

    #[test]
    fn unknown_failure_codes_from_newer_workers_still_decode() {
        let json = r#"{"v":1,"job_id":"a","at_ms":1,"origin":{"kind":"cli"},"requester":{"id":"x"},
            "event":"failed","code":"gpu_on_fire","message":"m","retryable":true}"#;
        let event: JobEvent = wire::decode("event", json).unwrap();
        assert!(matches!(
            event.kind,
            EventKind::Failed {
                code: FailureCode::Unknown,
                ..
            }
        ));
    }
}
