//! Errors of the queue. Every `Display` text can be shown to a chat user.

use std::time::Duration;

use ducks_contract::{CheckError, ContractError, ValidationError};

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The request does not fit the catalogue's models (`Queue::submit_checked`).
    #[error(transparent)]
    Refused(#[from] CheckError),
    #[error("The request is {size} bytes; the limit is {limit}.")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("The queue is full ({backlog} jobs waiting). Try again in a few minutes.")]
    QueueFull { backlog: u64 },
    #[error(
        "You already have {in_flight} images in progress (the limit is {limit}). Wait for one to finish."
    )]
    TooManyInFlight { in_flight: u64, limit: u32 },
    #[error("You are asking too fast. Try again in {} s.", seconds(*retry_after))]
    RateLimited { retry_after: Duration },
    #[error(
        "This {noun} already has {in_flight} images in progress (the limit is {limit}). Try again when one finishes."
    )]
    ScopeBusy {
        /// What the scope is to a person: `channel`, `server`, `API client`.
        noun: &'static str,
        in_flight: u64,
        limit: u32,
    },
    #[error("This {noun} is asking too fast. Try again in {} s.", seconds(*retry_after))]
    ScopeRateLimited {
        noun: &'static str,
        retry_after: Duration,
    },
    #[error("Only the person who asked for this image, or a moderator, can cancel it.")]
    NotAllowed,
    #[error("The deadline of this request has already passed.")]
    DeadlinePassed,
    #[error("No job with id {0} is known (finished jobs are forgotten after a day).")]
    NotFound(String),
    /// Something that must be unique exists already.
    #[error("{0}")]
    Conflict(String),
    #[error("The job queue is unreachable right now ({0}). Try again shortly.")]
    Redis(#[from] redis::RedisError),
}

impl QueueError {
    /// Whether Redis could not be reached or did not answer (as opposed to answering with an
    /// error): what a person fixes by starting Redis or pointing at the right one.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, QueueError::Redis(e) if crate::connection::is_transient(e))
    }
}

/// Whole seconds to wait, rounded up and at least one.
fn seconds(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}
