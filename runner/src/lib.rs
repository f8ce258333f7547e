//! # ducks-runner: what runs in each GPU pod
//!
//! Reads only its environment and S3; reports through stdout JSON lines and its termination
//! message; never talks to Redis or Kubernetes. See docs/runner-contract.md.
//!
//! ## Layout
//! - [`contract`]: the stdout lines, the result, the exit codes (what the worker reads).
//! - [`manifest`]: `model.toml`, parsed and checked (pure). [`catalogue`]: manifests in S3.
//! - [`storage`]: S3 through aws-sdk-s3. [`cache`]: the node-local weight cache.
//! - [`diffusion`]: the pipelines on candle, and the tiny test model.
//! - [`image`]: PNG with parameters, object keys.
//! - `embedded_s3` (feature `embedded-s3`): an S3-protocol server in the process, for `ducks dev`
//!   and the tests.

pub mod cache;
pub mod catalogue;
pub mod contract;
pub mod diffusion;
#[cfg(feature = "embedded-s3")]
pub mod embedded_s3;
pub mod image;
pub mod import;
pub mod manifest;
pub mod run;
pub mod storage;
