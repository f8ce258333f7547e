//! # ducks-worker: from a queued job to an image link
//!
//! A [`Worker`] takes jobs from the queue, checks each against the model catalogue, works out the
//! compute it needs, launches one runner for it through a [`Launcher`], relays the runner's
//! progress, verifies the images in S3, makes their links and publishes the outcome. It knows
//! nothing of Discord or Twitch.
//!
//! ## Layout
//! - The pure core: [`sizing`] (compute per job), [`outcome`] (runner exit → outcome and the
//!   user's message), [`links`] (presigned or public links), [`launcher`] (the `Launcher` trait
//!   and the runner's environment), [`kube`] (the Kubernetes Job spec; its launcher comes next).
//! - I/O: [`worker`] (the loop, shutdown), `job` (one job's life), [`catalogue`] (manifests from
//!   S3 into Redis), [`local`] (runners as child processes), [`http`] (probes and metrics),
//!   [`metrics`].

pub mod catalogue;
pub mod config;
pub mod http;
mod job;
pub mod kube;
pub mod launcher;
pub mod links;
pub mod local;
pub mod metrics;
pub mod outcome;
pub mod sizing;
pub mod worker;

pub use catalogue::Catalogue;
pub use config::WorkerConfig;
pub use job::unknown_model_message;
pub use launcher::{Launch, LaunchError, LaunchSpec, Launcher, Update};
pub use local::LocalLauncher;
pub use metrics::Metrics;
pub use outcome::{JobFailure, Outcome};
pub use worker::Worker;
