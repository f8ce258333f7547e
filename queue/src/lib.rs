//! # ducks-queue: the job contract and the Redis Streams queue
//!
//! This crate is the only one that knows how DUCKS messages are serialized and which Redis keys
//! hold them. Front ends submit [`JobRequest`]s and read [`JobEvent`]s; workers take
//! [`Delivery`]s from a [`Consumer`] and finish them.
//!
//! ## Layout
//! - The contract (pure, no I/O): [`id`] (`JobId`), [`request`] (`JobRequest`, `Origin`, limits and
//!   `validate`), [`event`] (`JobEvent`), [`status`] (`JobStatus`), [`model`] (`ModelInfo`), [`wire`]
//!   (versioned JSON), [`backoff`] (retry delays).
//! - The queue (Redis I/O): [`queue`] (`Queue`: submit, cancel, status, model catalogue), [`consumer`]
//!   (`Consumer`, `Delivery`: read, lease, finish, retry, dead letters), [`events`] (`EventReader` for
//!   front ends), [`keys`] (every key name), `scripts` (the Lua scripts), [`connection`] (single node
//!   or cluster).
//!
//! See docs/job-contract.md for the wire format and ARCHITECTURE.md for the invariants.

pub mod backoff;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod event;
pub mod events;
pub mod id;
pub mod keys;
pub mod model;
pub mod queue;
pub mod request;
mod scripts;
pub mod status;
pub mod wire;

pub use config::QueueConfig;
pub use connection::{Connection, RedisTarget};
pub use consumer::{Completion, Consumer, Delivery, Failure, Signal};
pub use error::{ContractError, QueueError, Result};
pub use event::{EventKind, FailureCode, ImageRef, JobEvent, Timings};
pub use events::{EventEntry, EventReader, JobWatch};
pub use id::JobId;
pub use model::{ModelCatalogue, ModelInfo};
pub use queue::{Cancelled, Queue, Submitted};
pub use request::{
    JobRequest, Origin, Redacted, Requester, ValidationError, is_valid_model_id, limits,
};
pub use status::{JobState, JobStatus};
