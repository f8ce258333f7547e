//! What the runner tells the outside world: JSON lines on stdout, the final result in the
//! termination-message file, and an exit code the worker decides on without parsing text.
//! See docs/runner-contract.md. The worker reads these same types.

use serde::{Deserialize, Serialize};

/// Exit codes of `ducks runner`. Anything else is a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
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

impl Failure {
    pub const fn exit_code(self) -> u8 {
        match self {
            Failure::BadRequest => 2,
            Failure::WeightsCorrupt => 3,
            Failure::OutOfMemory => 4,
            Failure::StorageUnavailable => 5,
            Failure::Crashed => 1,
        }
    }

    /// The failure an exit code stands for.
    pub fn from_exit_code(code: i32) -> Option<Self> {
        match code {
            0 => None,
            2 => Some(Failure::BadRequest),
            3 => Some(Failure::WeightsCorrupt),
            4 => Some(Failure::OutOfMemory),
            5 => Some(Failure::StorageUnavailable),
            _ => Some(Failure::Crashed),
        }
    }

    /// Whether running the same job again can succeed.
    pub const fn retryable(self) -> bool {
        matches!(self, Failure::StorageUnavailable | Failure::Crashed)
    }
}

/// A step of the run, each reported when it ends with how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading the manifest and fetching weights through the node cache.
    Download,
    /// Building the pipeline from the weights.
    Load,
    Generate,
    Upload,
}

/// One line of the runner's stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    Phase {
        phase: Phase,
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
    pub failure: Failure,
    pub exit_code: u8,
    /// Written for the person who asked; safe to show in chat.
    pub message: String,
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
        let progress = Line::Progress { step: 3, total: 30 };
        assert_eq!(
            progress.to_json(),
            r#"{"event":"progress","step":3,"total":30}"#
        );
        let phase = Line::Phase {
            phase: Phase::Download,
            ms: 12,
            detail: None,
        };
        assert_eq!(
            phase.to_json(),
            r#"{"event":"phase","phase":"download","ms":12}"#
        );
        let error = Line::Error(RunError {
            failure: Failure::WeightsCorrupt,
            exit_code: 3,
            message: "m".into(),
        });
        assert_eq!(
            error.to_json(),
            r#"{"event":"error","failure":"weights_corrupt","exit_code":3,"message":"m"}"#
        );
        assert_eq!(Line::parse(&error.to_json()), Some(error));
    }

    #[test]
    fn exit_codes_round_trip_and_say_whether_to_retry() {
        for failure in [
            Failure::BadRequest,
            Failure::WeightsCorrupt,
            Failure::OutOfMemory,
            Failure::StorageUnavailable,
        ] {
            assert_eq!(
                Failure::from_exit_code(failure.exit_code() as i32),
                Some(failure)
            );
        }
        assert_eq!(Failure::from_exit_code(139), Some(Failure::Crashed));
        assert!(!Failure::BadRequest.retryable());
        assert!(Failure::StorageUnavailable.retryable());
    }
}
