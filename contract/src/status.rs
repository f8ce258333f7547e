//! What `status(job_id)` answers.

use serde::{Deserialize, Serialize};

use crate::{JobEvent, JobId, JobRequest};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the work stream.
    Queued,
    /// Taken by a worker.
    Running,
    /// Waiting out a retry backoff.
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Retrying,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// A job's state as the queue knows it. Safe to show: the request and the last event come
/// without the origin's credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub state: JobState,
    /// Jobs ahead of this one (itself included) while it is queued; an estimate capped at 1,000.
    pub position: Option<u64>,
    /// Retries so far (0 on the first attempt).
    pub attempt: u32,
    pub cancel_requested: bool,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    /// `None` for a job whose entry could not be read (it failed as `invalid_request`).
    pub request: Option<JobRequest>,
    /// The newest event written for the job.
    pub last_event: Option<JobEvent>,
}
