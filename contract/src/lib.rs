//! # ducks-contract: the wire contract, and nothing else
//!
//! Every type that crosses a boundary between DUCKS processes lives here, with its checks, and
//! nothing here does I/O: front ends, the queue, the worker and the runner all agree on these
//! types, and every check a front end can run without a network (a request's limits, a model's,
//! an image link's signature) is a pure function.
//!
//! ## Layout
//! - Jobs: [`id`] (`JobId`), [`request`] (`JobRequest`, `Origin`, `Requester`, `Scope`, limits
//!   and `validate`), [`params`] (`GenerateParams`), [`status`] (`JobStatus`).
//! - What happens to them: [`event`] (`JobEvent`, `EventKind`, `JobPhase`, `FailureCode`).
//! - Models: [`model`] (`ModelInfo`, `ModelCatalogue` and the checks against them).
//! - The runner: [`runner`] (`RunnerJob`, its stdout `Line`s, `RunFailure` and exit codes).
//! - The HTTP API's clients: [`api`] (`ApiClient`, `ClientUsage`, `Webhook`).
//! - [`links`] (permanent signed image links), [`secret`] (`Secret`), [`wire`] (versioned JSON),
//!   [`time`] (calendar dates without a date library).
//!
//! See docs/job-contract.md and docs/runner-contract.md for the formats.

pub mod api;
pub mod error;
pub mod event;
pub mod id;
pub mod links;
pub mod model;
pub mod params;
pub mod request;
pub mod runner;
pub mod secret;
pub mod status;
pub mod time;
pub mod wire;

pub use api::{ApiClient, ClientUsage, Webhook};
pub use error::ContractError;
pub use event::{EventKind, FailureCode, ImageRef, JobEvent, JobPhase, Timings};
pub use id::JobId;
pub use model::{CheckError, GpuNeed, ModelCatalogue, ModelInfo, Size, unknown_model_message};
pub use params::GenerateParams;
pub use request::{
    Caller, JobRequest, Origin, Requester, Scope, ValidationError, is_valid_model_id, limits,
};
pub use runner::{Image, Line, RunError, RunFailure, RunPhase, RunResult, RunTimings, RunnerJob};
pub use secret::Secret;
pub use status::{JobState, JobStatus};
