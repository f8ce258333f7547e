//! Kubernetes: one ephemeral `batch/v1` Job per DUCKS job. So far the pure part: the Job spec
//! ([`spec::job_for`]) and its settings ([`KubeConfig`]); the launcher that creates and watches
//! these Jobs comes next (issue 5).

mod config;
pub mod spec;

pub use config::{CacheVolume, KubeConfig};
