//! # ducks-queue: the Redis Streams queue
//!
//! This crate is the only one that knows which Redis keys hold DUCKS jobs and events, and how
//! each transition is made atomic. Front ends submit `JobRequest`s and read `JobEvent`s (the
//! types are `ducks-contract`'s); workers take [`Delivery`]s from a [`Consumer`] and finish them.
//!
//! ## Layout
//! - [`queue`] (`Queue`: submit, cancel, status, the model catalogue snapshot), `api` (what the
//!   HTTP API keeps: clients, usage, recent jobs, webhook deliveries), `overlay` (a chat
//!   channel's newest images, for its stream overlay), [`consumer`]
//!   (`Consumer`, `Delivery`: read, lease, finish, retry, dead letters), [`events`]
//!   (`EventReader`: a front end's own events through its consumer group), [`tail`]
//!   (`EventTail`: one reader per process, fanning each job's events out to its watchers),
//!   `reply` and `chat` (what a chat bot's replicas share: reply turns, send budgets, messages
//!   taken, cooldowns, pause, tokens),
//!   [`keys`] (every key name), `scripts` (the Lua scripts),
//!   [`connection`] (single node or cluster), [`backoff`] (retry delays, pure), [`config`].
//!
//! See docs/job-contract.md for the layout in Redis and ARCHITECTURE.md for the invariants.

mod api;
pub mod backoff;
mod chat;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod events;
pub mod keys;
mod overlay;
pub mod queue;
mod reply;
mod scripts;
pub mod tail;

pub use chat::StoredToken;
pub use config::QueueConfig;
pub use config::ScopeLimits;
pub use connection::{Connection, RedisTarget};
pub use consumer::{Completion, Consumer, Delivery, FailResult, Signal, default_consumer_name};
pub use error::{QueueError, Result};
pub use events::{EventEntry, EventReader};
pub use overlay::OverlayImage;
pub use queue::{Cancelled, Patience, Queue, Submitted, now_ms};
pub use reply::{EditTurn, Reply};
pub use tail::{EventTail, JobWatch};
