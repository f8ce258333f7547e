//! How a run ended, and what the person who asked is told: one pure function from the runner's
//! exit and its last line to an [`Outcome`], shared by every launcher.

use ducks_contract::{FailureCode, Line, RunError, RunFailure, RunResult};

/// The end of one launch.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded(RunResult),
    Failed(JobFailure),
    /// Stopped because the job was cancelled.
    Cancelled,
}

/// A failed attempt: the message for the person who asked (no keys, paths or SDK errors),
/// the detail for the operator's log, and whether running it again can help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    pub code: FailureCode,
    pub message: String,
    pub retryable: bool,
    pub detail: String,
}

impl JobFailure {
    pub fn new(code: FailureCode, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code,
            message: message.into(),
            retryable,
            detail: String::new(),
        }
    }

    /// The same failure with what an operator needs to find its cause.
    pub fn with_detail(self, detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            ..self
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
            let failure = RunFailure::from_exit_code(code).unwrap_or(RunFailure::Crashed);
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
    from_failure(error.failure, Some(&error.message)).with_detail(error.detail.clone())
}

fn from_failure(failure: RunFailure, message: Option<&str>) -> JobFailure {
    let (code, fallback) = match failure {
        RunFailure::BadRequest => (
            FailureCode::InvalidRequest,
            "The request cannot be drawn with this model.",
        ),
        RunFailure::WeightsCorrupt => (
            FailureCode::WeightsCorrupt,
            "The model's files are missing or damaged; an operator must import it again.",
        ),
        RunFailure::OutOfMemory => (
            FailureCode::OutOfMemory,
            "The image generator ran out of memory: try a smaller size or fewer images.",
        ),
        RunFailure::StorageUnavailable => (
            FailureCode::StorageUnavailable,
            "Image storage is unavailable right now.",
        ),
        RunFailure::Crashed => (FailureCode::RunnerCrashed, "The image generator crashed."),
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
    use ducks_contract::RunTimings;

    fn result() -> Line {
        Line::Result(RunResult {
            job_id: "j".into(),
            model: "m".into(),
            images: Vec::new(),
            timings: RunTimings::default(),
        })
    }

    fn error(failure: RunFailure) -> Line {
        Line::Error(RunError {
            failure,
            exit_code: failure.exit_code(),
            message: "from the runner".into(),
            detail: "s3://ducks/models/m/unet.safetensors: dispatch failure".into(),
        })
    }

    /// (exit, last line) → (code, retryable, the message a person reads), or `None` for success.
    #[test]
    fn classification_table() {
        use FailureCode::*;
        type Expected = Option<(FailureCode, bool, &'static str)>;
        let runner = "from the runner";
        let table: Vec<(Exit, Option<Line>, Expected)> = vec![
            (Exit::Code(0), Some(result()), None),
            (Exit::Unknown, Some(result()), None),
            (
                Exit::Code(0),
                None,
                Some((
                    RunnerCrashed,
                    true,
                    "The image generator stopped without a result.",
                )),
            ),
            (
                Exit::Code(1),
                Some(result()),
                Some((RunnerCrashed, true, "The image generator crashed.")),
            ),
            (
                Exit::Code(2),
                Some(error(RunFailure::BadRequest)),
                Some((InvalidRequest, false, runner)),
            ),
            (
                Exit::Code(3),
                Some(error(RunFailure::WeightsCorrupt)),
                Some((WeightsCorrupt, false, runner)),
            ),
            (
                Exit::Code(4),
                Some(error(RunFailure::OutOfMemory)),
                Some((OutOfMemory, false, runner)),
            ),
            (
                Exit::Code(5),
                Some(error(RunFailure::StorageUnavailable)),
                Some((StorageUnavailable, true, runner)),
            ),
            (
                Exit::Code(1),
                Some(error(RunFailure::Crashed)),
                Some((RunnerCrashed, true, runner)),
            ),
            (
                Exit::Code(4),
                None,
                Some((
                    OutOfMemory,
                    false,
                    "The image generator ran out of memory: try a smaller size or fewer images.",
                )),
            ),
            (
                Exit::Code(5),
                None,
                Some((
                    StorageUnavailable,
                    true,
                    "Image storage is unavailable right now.",
                )),
            ),
            (
                Exit::Code(101),
                None,
                Some((RunnerCrashed, true, "The image generator crashed.")),
            ),
            (
                Exit::Signal(9),
                None,
                Some((
                    OutOfMemory,
                    false,
                    "The image generator was killed, most likely for running out of memory.",
                )),
            ),
            (
                Exit::Signal(11),
                None,
                Some((
                    RunnerCrashed,
                    true,
                    "The image generator crashed (signal 11).",
                )),
            ),
            (
                Exit::Unknown,
                None,
                Some((
                    RunnerCrashed,
                    true,
                    "The image generator disappeared before it finished.",
                )),
            ),
            (
                Exit::Unknown,
                Some(error(RunFailure::StorageUnavailable)),
                Some((StorageUnavailable, true, runner)),
            ),
        ];
        for (exit, last, expect) in table {
            let got = match classify(exit, last.as_ref()) {
                Outcome::Succeeded(_) => None,
                Outcome::Failed(f) => Some((f.code, f.retryable, f.message)),
                Outcome::Cancelled => panic!("never classified as cancelled"),
            };
            let expect = expect.map(|(code, retry, message)| (code, retry, message.to_owned()));
            assert_eq!(got, expect, "{exit:?} {last:?}");
        }
    }

    #[test]
    fn the_runners_own_message_reaches_the_user() {
        let Outcome::Failed(failure) =
            classify(Exit::Code(3), Some(&error(RunFailure::WeightsCorrupt)))
        else {
            panic!("a failure");
        };
        assert_eq!(failure.message, "from the runner");
        assert_eq!(
            failure.detail, "s3://ducks/models/m/unet.safetensors: dispatch failure",
            "the runner's detail goes to the operator, apart from the message"
        );
    }
}
