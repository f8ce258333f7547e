//! Kubernetes: one ephemeral `batch/v1` Job per DUCKS job. The pure parts are the Job spec
//! ([`spec::job_for`]) with its settings ([`KubeConfig`]) and what a Job and its pod say about a
//! launch ([`classify::classify`]); [`KubeLauncher`] creates the Jobs and follows them all with
//! one shared watcher; [`rbac`] holds the permissions that needs.

pub mod classify;
mod config;
mod launcher;
pub mod rbac;
pub mod spec;

pub use config::{CacheVolume, KubeConfig};
pub use launcher::KubeLauncher;
