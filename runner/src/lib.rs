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

pub mod cache;
pub mod catalogue;
pub mod contract;
pub mod diffusion;
pub mod image;
pub mod import;
pub mod manifest;
pub mod run;
pub mod storage;
