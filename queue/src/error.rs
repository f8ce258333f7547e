//! Errors of the queue. Every `Display` text can be shown to a chat user.

use std::time::Duration;

use ducks_contract::{ContractError, ValidationError};

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

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
