//! Errors of the contract and of the queue. Every `Display` text can be shown to a chat user.

use std::time::Duration;

use crate::ValidationError;

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// A message that cannot be read as this version of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error(
        "The {what} message is version {found}, newer than this DUCKS understands (1). Upgrade DUCKS."
    )]
    NewerVersion { what: &'static str, found: u64 },
    #[error("The {what} message is malformed: {detail}.")]
    Malformed { what: &'static str, detail: String },
    #[error(
        "`{0}` is not a job id: use 1 to 40 lowercase letters, digits or '-', starting with a letter or digit."
    )]
    InvalidJobId(String),
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("The request is {size} bytes; the limit is {limit}.")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("The queue is full ({backlog} jobs waiting). Try again in a few minutes.")]
    QueueFull { backlog: u64 },
    #[error(
        "You already have {in_flight} images in progress (the limit is {limit}). Wait for one to finish."
    )]
    TooManyInFlight { in_flight: u64, limit: u32 },
    #[error("You are asking too fast. Try again in {} s.", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("The deadline of this request has already passed.")]
    DeadlinePassed,
    #[error("No job with id {0} is known (finished jobs are forgotten after a day).")]
    NotFound(String),
    #[error("The job queue is unreachable right now ({0}). Try again shortly.")]
    Redis(#[from] redis::RedisError),
}

impl QueueError {
    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            QueueError::Invalid(_) => "invalid",
            QueueError::Contract(_) => "contract",
            QueueError::PayloadTooLarge { .. } => "payload_too_large",
            QueueError::QueueFull { .. } => "queue_full",
            QueueError::TooManyInFlight { .. } => "too_many_in_flight",
            QueueError::RateLimited { .. } => "rate_limited",
            QueueError::DeadlinePassed => "deadline_passed",
            QueueError::NotFound(_) => "not_found",
            QueueError::Redis(_) => "redis",
        }
    }
}
