//! # ducks-models: models in S3
//!
//! What the worker, the runner and the command line need to know about models, without candle:
//! each model is a folder `models/<id>/` in the bucket with a `model.toml` manifest beside its
//! weights.
//!
//! ## Layout
//! - [`family`] (`Family`, `FileRole`: what each pipeline family needs, pure), [`manifest`]
//!   (`model.toml`, parsed and checked, pure), [`params`] (a request with the model's defaults
//!   filled in, pure).
//! - [`storage`] (S3 through aws-sdk-s3), [`bucket`] (one manifest, or all of them),
//!   [`index`] (`ManifestIndex`: the manifests kept fresh cheaply, and the snapshot front ends
//!   read), [`links`] (the links images get: permanent, CDN or presigned).
//! - [`import`] (a model folder into the bucket), `hub` (feature `hub`: from the Hugging Face
//!   hub), [`known`] (the real models `ducks demo --model <id>` fetches by a short id, pure),
//!   `embedded_s3` (feature `embedded-s3`: an S3 server in the process, for `ducks dev` and the
//!   tests).

pub mod bucket;
pub mod digest;
#[cfg(feature = "embedded-s3")]
pub mod embedded_s3;
pub mod family;
#[cfg(feature = "hub")]
pub mod hub;
pub mod import;
pub mod index;
pub mod known;
pub mod links;
pub mod manifest;
pub mod params;
pub mod storage;

pub use family::{Family, FileRole};
pub use index::{Lookup, ManifestIndex};
pub use manifest::ModelManifest;
pub use storage::{S3Config, Storage, StorageError};
