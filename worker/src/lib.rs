//! # ducks-worker: from a queued job to an image link
//!
//! A [`Worker`] takes jobs from the queue, checks each against the model catalogue, works out the
//! compute it needs, launches one runner for it through a [`Launcher`], relays the runner's
//! progress, verifies the images in S3, makes their links and publishes the outcome. It knows
//! nothing of Discord or Twitch, and does not link candle: it runs `ducks runner` as a process or
//! a pod.
//!
//! ## Layout
//! - The pure core: [`sizing`] (compute per job), [`outcome`] (runner exit → outcome and the
//!   user's message), [`launcher`] (the `Launcher` trait and the
//!   runner's environment), [`kube::spec`] and [`kube::classify`] (the Job, and what the cluster
//!   says of it).
//! - I/O: [`service`] (`RunningWorker`: a worker started with its launcher and probes),
//!   [`worker`] (the loop, catalogue sync, sweep, shutdown), `job` (one job's life), [`local`]
//!   (runners as child processes), [`kube`] (runners as Kubernetes Jobs), [`http`] (probes and
//!   metrics), [`metrics`]. Image links come from `ducks_models::links`, which the API shares.

pub mod config;
pub mod http;
mod job;
pub mod kube;
pub mod launcher;
pub mod local;
pub mod metrics;
pub mod outcome;
pub mod service;
pub mod sizing;
pub mod worker;

pub use config::WorkerConfig;
pub use job::JobEnd;
pub use launcher::{Launch, LaunchError, LaunchSpec, Launcher, Update};
pub use local::LocalLauncher;
pub use metrics::Metrics;
pub use outcome::{JobFailure, Outcome};
pub use service::{RunningWorker, StartError, Stopped};
pub use worker::{LeftRunners, Worker};
