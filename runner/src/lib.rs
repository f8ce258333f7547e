//! # ducks-runner: what runs in each GPU pod
//!
//! Reads only its environment and S3; reports through stdout JSON lines and its termination
//! message; never talks to Redis or Kubernetes. See docs/runner-contract.md.
//!
//! ## Layout
//! - [`run`]: one run, from the environment to the uploaded images; every failure gets its exit
//!   code (the line format is `ducks_contract::runner`).
//! - [`cache`]: the node-local weight cache.
//! - [`diffusion`]: the pipelines on candle, and the tiny test model's files.
//! - [`tiny`]: tiny-sd written and imported into a bucket: the one place it is seeded.
//! - [`image`]: PNG with parameters, object keys.

pub mod cache;
pub mod diffusion;
pub mod image;
pub mod run;
pub mod tiny;
