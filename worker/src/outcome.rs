//! How a run ended, and what the person who asked is told: one pure function from the runner's
//! exit and its last line to an [`Outcome`], shared by every launcher.

use ducks_queue::FailureCode;
use ducks_runner::contract::{Failure, Line, RunError, RunResult};

/// The end of one launch.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded(RunResult),
    Failed(JobFailure),
    /// Stopped because the job was cancelled.
    Cancelled,
}

/// A failed attempt, worded for chat, with whether running it again can help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    pub code: FailureCode,
    pub message: String,
    pub retryable: bool,
}

impl JobFailure {
    pub fn new(code: FailureCode, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code,
            message: message.into(),
            retryable,
        }
    }
}

/// How the runner process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by this signal (9 is what the kernel's out-of-memory killer sends).
    Signal(i32),
    /// The process is gone and nobody saw how it ended (a worker adopted it, then it vanished).
    Unknown,
}

const SIGKILL: i32 = 9;

/// The outcome of a run from its exit and its final line (the termination message, or the last
/// line of stdout).
pub fn classify(exit: Exit, last: Option<&Line>) -> Outcome {
    match (exit, last) {
        // An adopted runner's exit code is unknown, but it writes a result only on success.
        (Exit::Code(0) | Exit::Unknown, Some(Line::Result(result))) => {
            Outcome::Succeeded(result.clone())
        }
        // A runner reports its own failures; trust the report over the bare code.
        (_, Some(Line::Error(error))) => Outcome::Failed(from_runner(error)),
        (Exit::Code(0), _) => Outcome::Failed(JobFailure::new(
            FailureCode::RunnerCrashed,
            "The image generator stopped without a result.",
            true,
        )),
        (Exit::Code(code), _) => {
            let failure = Failure::from_exit_code(code).unwrap_or(Failure::Crashed);
            Outcome::Failed(from_failure(failure, None))
        }
        (Exit::Signal(SIGKILL), _) => Outcome::Failed(JobFailure::new(
            FailureCode::OutOfMemory,
            "The image generator was killed, most likely for running out of memory.",
            false,
        )),
        (Exit::Signal(signal), _) => Outcome::Failed(JobFailure::new(
            FailureCode::RunnerCrashed,
            format!("The image generator crashed (signal {signal})."),
            true,
        )),
        (Exit::Unknown, _) => Outcome::Failed(JobFailure::new(
            FailureCode::RunnerCrashed,
            "The image generator disappeared before it finished.",
            true,
        )),
    }
}

fn from_runner(error: &RunError) -> JobFailure {
    from_failure(error.failure, Some(&error.message))
}

fn from_failure(failure: Failure, message: Option<&str>) -> JobFailure {
    let (code, fallback) = match failure {
        Failure::BadRequest => (
            FailureCode::InvalidRequest,
            "The request cannot be drawn with this model.",
        ),
        Failure::WeightsCorrupt => (
            FailureCode::WeightsCorrupt,
            "The model's files are missing or damaged; an operator must import it again.",
        ),
        Failure::OutOfMemory => (
            FailureCode::OutOfMemory,
            "The image generator ran out of memory: try a smaller size or fewer images.",
        ),
        Failure::StorageUnavailable => (
            FailureCode::StorageUnavailable,
            "Image storage is unavailable right now.",
        ),
        Failure::Crashed => (FailureCode::RunnerCrashed, "The image generator crashed."),
    };
    JobFailure::new(
        code,
        message.unwrap_or(fallback).to_owned(),
        failure.retryable(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_runner::contract::RunTimings;

    fn result() -> Line {
        Line::Result(RunResult {
            job_id: "j".into(),
            model: "m".into(),
            images: Vec::new(),
            timings: RunTimings::default(),
        })
    }

    fn error(failure: Failure) -> Line {
        Line::Error(RunError {
            failure,
            exit_code: failure.exit_code(),
            message: "from the runner".into(),
        })
    }

    /// (exit, last line) → (code, retryable), or `None` for success.
    #[test]
    fn classification_table() {
        use FailureCode::*;
        type Expected = Option<(FailureCode, bool)>;
        let table: Vec<(Exit, Option<Line>, Expected)> = vec![
            (Exit::Code(0), Some(result()), None),
            (Exit::Unknown, Some(result()), None),
            (Exit::Code(0), None, Some((RunnerCrashed, true))),
            (Exit::Code(1), Some(result()), Some((RunnerCrashed, true))),
            (
                Exit::Code(2),
                Some(error(Failure::BadRequest)),
                Some((InvalidRequest, false)),
            ),
            (
                Exit::Code(3),
                Some(error(Failure::WeightsCorrupt)),
                Some((WeightsCorrupt, false)),
            ),
            (
                Exit::Code(4),
                Some(error(Failure::OutOfMemory)),
                Some((OutOfMemory, false)),
            ),
            (
                Exit::Code(5),
                Some(error(Failure::StorageUnavailable)),
                Some((StorageUnavailable, true)),
            ),
            (
                Exit::Code(1),
                Some(error(Failure::Crashed)),
                Some((RunnerCrashed, true)),
            ),
            (Exit::Code(4), None, Some((OutOfMemory, false))),
            (Exit::Code(5), None, Some((StorageUnavailable, true))),
            (Exit::Code(101), None, Some((RunnerCrashed, true))),
            (Exit::Signal(9), None, Some((OutOfMemory, false))),
            (Exit::Signal(11), None, Some((RunnerCrashed, true))),
            (Exit::Unknown, None, Some((RunnerCrashed, true))),
            (
                Exit::Unknown,
                Some(error(Failure::StorageUnavailable)),
                Some((StorageUnavailable, true)),
            ),
        ];
        for (exit, last, expect) in table {
            let got = match classify(exit, last.as_ref()) {
                Outcome::Succeeded(_) => None,
                Outcome::Failed(f) => {
                    assert!(!f.message.is_empty());
                    Some((f.code, f.retryable))
                }
                Outcome::Cancelled => panic!("never classified as cancelled"),
            };
            assert_eq!(got, expect, "{exit:?} {last:?}");
        }
    }

    #[test]
    fn the_runners_own_message_reaches_the_user() {
        let Outcome::Failed(failure) =
            classify(Exit::Code(3), Some(&error(Failure::WeightsCorrupt)))
        else {
            panic!("a failure");
        };
        assert_eq!(failure.message, "from the runner");
    }
}
