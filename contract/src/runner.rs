//! The runner's contract with whoever launches it: what it is given ([`RunnerJob`], in its
//! environment), what it prints (JSON [`Line`]s on stdout, the last one also in the
//! termination-message file), and its exit code ([`RunFailure::exit_code`]), which alone decides
//! whether a retry can help. See docs/runner-contract.md.

use serde::{Deserialize, Serialize};

use crate::{GenerateParams, JobId, JobPhase};

/// What one runner is given: the job's id, its model and the settled parameters. Nothing about
/// where the request came from or who asked: a pod sees no credential of theirs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerJob {
    pub job_id: JobId,
    pub model: String,
    pub params: GenerateParams,
}

/// How a run can fail; each has its exit code. Any other exit is a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunFailure {
    /// The request or the model is invalid (unknown model, size over the model's limit): a retry
    /// cannot help.
    BadRequest,
    /// A weight file is missing or does not match its manifest.
    WeightsCorrupt,
    /// Out of GPU or host memory.
    OutOfMemory,
    /// S3 could not be reached or refused: a retry can help.
    StorageUnavailable,
    /// Anything else went wrong.
    Crashed,
}

impl RunFailure {
    pub const fn exit_code(self) -> u8 {
        match self {
            RunFailure::BadRequest => 2,
            RunFailure::WeightsCorrupt => 3,
            RunFailure::OutOfMemory => 4,
            RunFailure::StorageUnavailable => 5,
            RunFailure::Crashed => 1,
        }
    }

    /// The failure an exit code stands for.
    pub fn from_exit_code(code: i32) -> Option<Self> {
        match code {
            0 => None,
            2 => Some(RunFailure::BadRequest),
            3 => Some(RunFailure::WeightsCorrupt),
            4 => Some(RunFailure::OutOfMemory),
            5 => Some(RunFailure::StorageUnavailable),
            _ => Some(RunFailure::Crashed),
        }
    }

    /// Whether running the same job again can succeed.
    pub const fn retryable(self) -> bool {
        matches!(self, RunFailure::StorageUnavailable | RunFailure::Crashed)
    }
}

/// A step of the run; each is announced when it starts and reported with its time when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Reading the manifest and fetching weights through the node cache.
    Download,
    /// Building the pipeline from the weights.
    Load,
    Generate,
    Upload,
}

impl RunPhase {
    /// The job phase a person is shown while this runs.
    pub fn job_phase(self) -> JobPhase {
        match self {
            RunPhase::Download | RunPhase::Load => JobPhase::LoadingWeights,
            RunPhase::Generate => JobPhase::Generating,
            RunPhase::Upload => JobPhase::Uploading,
        }
    }

    /// What a person is shown while this runs.
    pub fn message(self) -> &'static str {
        match self {
            RunPhase::Download => "Fetching the model's weights.",
            RunPhase::Load => "Loading the model.",
            RunPhase::Generate => "Drawing the image.",
            RunPhase::Upload => "Uploading the image.",
        }
    }
}

/// One line of the runner's stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    PhaseStarted {
        phase: RunPhase,
    },
    PhaseEnded {
        phase: RunPhase,
        ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Progress {
        step: u32,
        total: u32,
    },
    /// The last line of a successful run; also written to the termination-message file.
    Result(RunResult),
    /// The last line of a failed run; also written to the termination-message file.
    Error(RunError),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub job_id: String,
    pub model: String,
    pub images: Vec<Image>,
    pub timings: RunTimings,
}

/// One uploaded image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub key: String,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub bytes: u64,
}

/// Milliseconds per phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTimings {
    pub download_ms: u64,
    pub load_ms: u64,
    pub generate_ms: u64,
    pub upload_ms: u64,
    pub total_ms: u64,
    /// Weight files read from S3 (the rest came from the node cache).
    pub files_downloaded: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub failure: RunFailure,
    pub exit_code: u8,
    /// Written for the person who asked; safe to show in chat: no keys, paths or SDK errors.
    pub message: String,
    /// What an operator needs to find the cause (the object key, the storage error); it goes to
    /// the worker's log, never to the person.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Line {
    /// The JSON line, without its newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("runner lines always serialize")
    }

    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_shape() {
        let table = [
            (
                Line::Progress { step: 3, total: 30 },
                r#"{"event":"progress","step":3,"total":30}"#,
            ),
            (
                Line::PhaseStarted {
                    phase: RunPhase::Download,
                },
                r#"{"event":"phase_started","phase":"download"}"#,
            ),
            (
                Line::PhaseEnded {
                    phase: RunPhase::Download,
                    ms: 12,
                    detail: None,
                },
                r#"{"event":"phase_ended","phase":"download","ms":12}"#,
            ),
            (
                Line::Error(RunError {
                    failure: RunFailure::WeightsCorrupt,
                    exit_code: 3,
                    message: "m".into(),
                    detail: "d".into(),
                }),
                r#"{"event":"error","failure":"weights_corrupt","exit_code":3,"message":"m","detail":"d"}"#,
            ),
        ];
        for (line, json) in table {
            assert_eq!(line.to_json(), json);
            assert_eq!(Line::parse(json), Some(line));
        }
    }

    #[test]
    fn exit_codes_round_trip_and_say_whether_to_retry() {
        for failure in [
            RunFailure::BadRequest,
            RunFailure::WeightsCorrupt,
            RunFailure::OutOfMemory,
            RunFailure::StorageUnavailable,
        ] {
            assert_eq!(
                RunFailure::from_exit_code(failure.exit_code() as i32),
                Some(failure)
            );
        }
        assert_eq!(RunFailure::from_exit_code(139), Some(RunFailure::Crashed));
        assert!(!RunFailure::BadRequest.retryable());
        assert!(RunFailure::StorageUnavailable.retryable());
    }
}
