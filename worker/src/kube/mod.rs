//! Kubernetes: one ephemeral `batch/v1` Job per DUCKS job. So far the pure parts: the Job spec
//! ([`spec::job_for`]) and its settings ([`KubeConfig`]), and what a Job and its pod say about a
//! launch ([`classify::classify`]); the launcher that creates and watches these Jobs comes next.

pub mod classify;
mod config;
pub mod spec;

pub use config::{CacheVolume, KubeConfig};
