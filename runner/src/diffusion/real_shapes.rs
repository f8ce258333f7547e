//! Random weights at a real family's exact shapes: what the real models cost in time and memory,
//! without their download. The ignored `real_shapes_*` tests load them through the pipeline, and
//! `make bench-cpu` times sd-turbo with them on the CPU. They draw noise.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::{
    unet_2d::{BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig},
    vae::{AutoEncoderKL, AutoEncoderKLConfig},
};

use super::clip::{ClipConfig, ClipTextTransformer};
use super::rng::fnv1a;
use super::tiny::{create_tiny, recording_var_builder, save, tiny_tokenizer};
use super::{DiffusionError, Family, FileRole};

/// Writes random weights in the shapes of `family`'s candle preset into `dir` (created if
/// needed) and returns its files by role: the UNet, the VAE and the text encoders in f16, like
/// the fp16 downloads, and tiny-sd's byte-level tokenizer in place of CLIP's (prompts cost the
/// same: they are always padded to the encoder's 77 positions). The folder is laid out as
/// `ducks models import` reads it. The bytes are the same on every call; [`Family::Tiny`] gets
/// [`create_tiny`]'s files.
///
/// The files are large and writing them takes memory: sd15 and sd-turbo about 2.5 GB on disk and
/// 6 GB while writing, the XL families 7 GB and 16 GB.
pub fn create_real_shapes(
    family: Family,
    dir: &Path,
) -> Result<Vec<(FileRole, PathBuf)>, DiffusionError> {
    // candle's preset shapes, copied: the presets keep theirs private. A wrong copy fails
    // `Pipeline::load` (the `real_shapes_*` tests).
    let (clip, clip2, unet) = match family {
        Family::Tiny => return create_tiny(dir),
        Family::Sd15 => (
            ClipConfig::v1_5(),
            None,
            unet_config(
                &[
                    (320, Some(1), 8),
                    (640, Some(1), 8),
                    (1280, Some(1), 8),
                    (1280, None, 8),
                ],
                768,
                false,
            ),
        ),
        Family::Sd21 | Family::SdTurbo => (
            ClipConfig::v2_1(),
            None,
            unet_config(
                &[
                    (320, Some(1), 5),
                    (640, Some(1), 10),
                    (1280, Some(1), 20),
                    (1280, None, 20),
                ],
                1024,
                true,
            ),
        ),
        Family::Sdxl | Family::SdxlTurbo => (
            ClipConfig::sdxl(),
            Some(ClipConfig::sdxl2()),
            unet_config(
                &[(320, None, 5), (640, Some(2), 10), (1280, Some(10), 20)],
                2048,
                true,
            ),
        ),
    };
    let other = |what: &str, e: &dyn std::fmt::Display| {
        DiffusionError::Other(format!("creating {family} weights: {what}: {e}"))
    };
    std::fs::create_dir_all(dir).map_err(|e| other(&dir.display().to_string(), &e))?;

    let tokenizer = tiny_tokenizer().map_err(|e| other("tokenizer", &e))?;
    let save_tokenizer = |relative: &str| -> Result<PathBuf, DiffusionError> {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| other(relative, &e))?;
        }
        tokenizer
            .save(&path, false)
            .map_err(|e| other(relative, &e))?;
        Ok(path)
    };
    let mut files = vec![(FileRole::Tokenizer, save_tokenizer("tokenizer.json")?)];
    files.push((
        FileRole::TextEncoder,
        write(dir, "text_encoder.safetensors", |vb| {
            ClipTextTransformer::new(vb, &clip)
        })
        .map_err(|e| other("text encoder", &e))?,
    ));
    if let Some(clip2) = clip2 {
        // The import reads roles from paths: a second `tokenizer.json` needs a folder of its own.
        files.push((
            FileRole::Tokenizer2,
            save_tokenizer("tokenizer_2/tokenizer.json")?,
        ));
        files.push((
            FileRole::TextEncoder2,
            write(dir, "text_encoder_2.safetensors", |vb| {
                ClipTextTransformer::new(vb, &clip2)
            })
            .map_err(|e| other("second text encoder", &e))?,
        ));
    }
    files.push((
        FileRole::Vae,
        write(dir, "vae.safetensors", |vb| {
            AutoEncoderKL::new(vb, 3, 3, vae_config())
        })
        .map_err(|e| other("vae", &e))?,
    ));
    files.push((
        FileRole::Unet,
        write(dir, "unet.safetensors", |vb| {
            UNet2DConditionModel::new(vb, 4, 4, false, unet)
        })
        .map_err(|e| other("unet", &e))?,
    ));
    tracing::debug!(%family, dir = %dir.display(), "created random weights at real shapes");
    Ok(files)
}

/// Builds a module from seeded random weights (seeded by the file's name) and saves every
/// weight it asked for as `dir/name`.
fn write<T>(
    dir: &Path,
    name: &str,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> candle_core::Result<PathBuf> {
    let (vb, weights) = recording_var_builder(fnv1a(name.as_bytes()), &Device::Cpu);
    // Only the recorded weights are kept: the module itself, in f32, is dropped at once.
    drop(build(vb)?);
    let path = dir.join(name);
    save(&weights, &path)?;
    Ok(path)
}

/// A UNet of `blocks` (`(out_channels, cross-attention layers, heads)` each), with candle's
/// defaults for everything the presets do not change.
fn unet_config(
    blocks: &[(usize, Option<usize>, usize)],
    cross_attention_dim: usize,
    use_linear_projection: bool,
) -> UNet2DConditionModelConfig {
    UNet2DConditionModelConfig {
        blocks: blocks
            .iter()
            .map(
                |&(out_channels, use_cross_attn, attention_head_dim)| BlockConfig {
                    out_channels,
                    use_cross_attn,
                    attention_head_dim,
                },
            )
            .collect(),
        cross_attention_dim,
        use_linear_projection,
        ..Default::default()
    }
}

/// The VAE every real family shares (SD 1.x, 2.x and XL have the same shapes).
fn vae_config() -> AutoEncoderKLConfig {
    AutoEncoderKLConfig {
        block_out_channels: vec![128, 256, 512, 512],
        layers_per_block: 2,
        latent_channels: 4,
        norm_num_groups: 32,
        use_quant_conv: true,
        use_post_quant_conv: true,
    }
}
