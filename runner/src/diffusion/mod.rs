//! # Diffusion pipelines on candle
//!
//! Text-to-image with candle-transformers' Stable Diffusion modules, for the families
//! [`Family`] names: `sd15`, `sd21`, `sd-turbo`, `sdxl`, `sdxl-turbo`, and `tiny-sd`, a tiny,
//! randomly initialised model that [`create_tiny`] writes for tests and demos.
//! [`create_real_shapes`] writes random weights at a real family's shapes, for tests and
//! benchmarks of what the real models cost.
//!
//! ```no_run
//! use ducks_runner::diffusion::{self, Family, ModelFiles, Pipeline};
//! # fn main() -> Result<(), diffusion::DiffusionError> {
//! let dir = std::path::Path::new("/tmp/tiny-sd");
//! let files: ModelFiles = diffusion::create_tiny(dir)?.into_iter().collect();
//! let pipeline = Pipeline::load(Family::Tiny, &files, &diffusion::device())?;
//! let params = diffusion::default_params(Family::Tiny, "a duck in the rain");
//! let images = pipeline.generate(&params, &mut |step, total| println!("{step}/{total}"))?;
//! assert_eq!(images[0].pixels.len(), 64 * 64 * 3);
//! # Ok(()) }
//! ```
//!
//! - **One code path.** Every family runs the same loading, text encoding, denoising loop and
//!   decoding. What differs is data: real families take their UNet and VAE shapes from candle's
//!   presets, tiny-sd from its `config` file ([`ModelConfig`]).
//! - **Text encoders.** candle's CLIP configuration cannot be built for anything but its presets,
//!   so the CLIP text transformer here is a copy of candle's with a public configuration, used
//!   by every family and tested against candle's output.
//! - **Schedulers.** DDIM for sd15, sd21 and sdxl, Euler ancestral for both turbos (candle's
//!   choices); tiny-sd's config names its own.
//! - **Determinism.** All noise comes from a seeded generator of our own, drawn on the CPU and
//!   moved to the device: on the CPU a seed always gives the same bytes.
//! - **Precision.** f16 on CUDA (the XL VAE in f32, as it overflows in f16), f32 on the CPU.
//! - **Errors.** [`DiffusionError`] tells the model's files, memory, the request and everything
//!   else apart, so the runner can pick its exit code.

mod arch;
mod clip;
mod error;
mod pipeline;
mod real_shapes;
mod rng;
mod scheduler;
mod tiny;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use arch::{ModelConfig, UnetBlock, UnetConfig, VaeConfig};
pub use candle_core::Device;
pub use clip::{Activation, ClipConfig};
pub use ducks_contract::GenerateParams;
pub use ducks_models::{Family, FileRole};
pub use error::DiffusionError;
pub use pipeline::{MAX_COUNT, MAX_SIZE, MIN_SIZE, Pipeline};
pub use real_shapes::create_real_shapes;
pub use scheduler::{MAX_STEPS, Prediction, SchedulerSpec};
pub use tiny::{TINY_FILES, create_tiny, tiny_config};

/// A model's files on local disk, by the role each plays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelFiles {
    pub paths: HashMap<FileRole, PathBuf>,
}

impl ModelFiles {
    pub fn get(&self, role: FileRole) -> Option<&Path> {
        self.paths.get(&role).map(PathBuf::as_path)
    }

    pub fn insert(&mut self, role: FileRole, path: impl Into<PathBuf>) {
        self.paths.insert(role, path.into());
    }
}

impl FromIterator<(FileRole, PathBuf)> for ModelFiles {
    fn from_iter<I: IntoIterator<Item = (FileRole, PathBuf)>>(iter: I) -> Self {
        Self {
            paths: iter.into_iter().collect(),
        }
    }
}

/// The family's defaults for `prompt`: one image, seed 0, no negative prompt.
pub fn default_params(family: Family, prompt: impl Into<String>) -> GenerateParams {
    GenerateParams {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        width: family.default_size(),
        height: family.default_size(),
        steps: family.default_steps(),
        guidance: family.default_guidance(),
        seed: 0,
        count: 1,
    }
}

/// An 8-bit RGB image, rows top to bottom, pixels left to right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// The device to run on: the first CUDA GPU when built with the `cuda` feature and one is
/// usable, else the CPU.
pub fn device() -> Device {
    // Without the feature this is the CPU at once; with it, a GPU that fails to initialise
    // (no driver, no device) falls back to the CPU rather than failing the job.
    Device::cuda_if_available(0).unwrap_or_else(|error| {
        tracing::warn!(%error, "no usable CUDA device; running on the CPU");
        Device::Cpu
    })
}
