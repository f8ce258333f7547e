//! Architectures as data: a family's candle preset, or a model config file (tiny-sd).
//!
//! Everything past this point (loading, text encoding, the denoising loop, decoding) is one code
//! path; only where the UNet and VAE shapes come from differs.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::{
    StableDiffusionConfig,
    unet_2d::{BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig},
    vae::{AutoEncoderKL, AutoEncoderKLConfig},
};
use serde::{Deserialize, Serialize};

use super::Family;
use super::clip::ClipConfig;
use super::scheduler::{Prediction, SchedulerSpec};

/// The contents of a model's `config` file: a whole SD architecture, for models that are not
/// one of candle's presets. The field names follow candle's config structs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipConfig,
    pub scheduler: SchedulerSpec,
    /// Latents are divided by this before decoding (0.18215 for the SD 1/2 VAE).
    pub vae_scale: f64,
}

/// candle's `UNet2DConditionModelConfig`, which does not implement serde.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    pub blocks: Vec<UnetBlock>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetBlock {
    pub out_channels: usize,
    /// Transformer layers of cross-attention in this block; none when absent.
    pub use_cross_attn: Option<usize>,
    /// The number of attention heads (candle's name for it).
    pub attention_head_dim: usize,
}

/// candle's `AutoEncoderKLConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
}

impl ModelConfig {
    /// Rejects what candle's constructors would panic on (they index and divide freely) and
    /// shapes that cannot fit together.
    pub fn check(&self) -> Result<(), String> {
        let unet = &self.unet;
        if unet.blocks.is_empty() || unet.layers_per_block == 0 || unet.norm_num_groups == 0 {
            return Err(
                "unet: blocks, layers_per_block and norm_num_groups must be non-zero".into(),
            );
        }
        for (i, block) in unet.blocks.iter().enumerate() {
            let heads = block.attention_head_dim;
            if block.out_channels == 0
                || !block.out_channels.is_multiple_of(unet.norm_num_groups)
                || heads == 0
                || !block.out_channels.is_multiple_of(heads)
                || block.use_cross_attn == Some(0)
            {
                return Err(format!(
                    "unet block {i}: out_channels {} must be a positive multiple of \
                     norm_num_groups {} and of attention_head_dim {heads}; cross-attention \
                     layers, when present, at least 1",
                    block.out_channels, unet.norm_num_groups
                ));
            }
        }
        if !unet.blocks[0].out_channels.is_multiple_of(2) {
            return Err(
                "unet: the first block's channels must be even (timestep embedding)".into(),
            );
        }
        let vae = &self.vae;
        if vae.block_out_channels.is_empty()
            || vae.layers_per_block == 0
            || vae.latent_channels == 0
            || vae.norm_num_groups == 0
            || vae
                .block_out_channels
                .iter()
                .any(|&c| c == 0 || !c.is_multiple_of(vae.norm_num_groups))
        {
            return Err(format!(
                "vae: block_out_channels {:?} must be positive multiples of norm_num_groups {}; \
                 layers_per_block and latent_channels non-zero",
                vae.block_out_channels, vae.norm_num_groups
            ));
        }
        if vae.block_out_channels.len() > 6 {
            return Err("vae: more than 6 blocks".into());
        }
        self.text_encoder
            .check()
            .map_err(|e| format!("text_encoder: {e}"))?;
        if unet.cross_attention_dim != self.text_encoder.embed_dim {
            return Err(format!(
                "unet cross_attention_dim {} differs from text_encoder embed_dim {}",
                unet.cross_attention_dim, self.text_encoder.embed_dim
            ));
        }
        if !(self.vae_scale.is_finite() && self.vae_scale > 0.0) {
            return Err(format!("vae_scale {} must be positive", self.vae_scale));
        }
        Ok(())
    }

    pub(crate) fn unet_config(&self) -> UNet2DConditionModelConfig {
        let u = &self.unet;
        UNet2DConditionModelConfig {
            center_input_sample: u.center_input_sample,
            flip_sin_to_cos: u.flip_sin_to_cos,
            freq_shift: u.freq_shift,
            blocks: u
                .blocks
                .iter()
                .map(|b| BlockConfig {
                    out_channels: b.out_channels,
                    use_cross_attn: b.use_cross_attn,
                    attention_head_dim: b.attention_head_dim,
                })
                .collect(),
            layers_per_block: u.layers_per_block,
            downsample_padding: u.downsample_padding,
            mid_block_scale_factor: u.mid_block_scale_factor,
            norm_num_groups: u.norm_num_groups,
            norm_eps: u.norm_eps,
            cross_attention_dim: u.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: u.use_linear_projection,
        }
    }

    pub(crate) fn vae_config(&self) -> AutoEncoderKLConfig {
        let v = &self.vae;
        AutoEncoderKLConfig {
            block_out_channels: v.block_out_channels.clone(),
            layers_per_block: v.layers_per_block,
            latent_channels: v.latent_channels,
            norm_num_groups: v.norm_num_groups,
            use_quant_conv: v.use_quant_conv,
            use_post_quant_conv: v.use_post_quant_conv,
        }
    }
}

/// Where the UNet and VAE shapes come from.
#[derive(Clone, Debug)]
enum Backbone {
    /// candle's preset for a real family (its configs are private, so it builds the modules).
    Preset(Box<StableDiffusionConfig>),
    /// A config file's shapes.
    Custom {
        unet: UNet2DConditionModelConfig,
        vae: AutoEncoderKLConfig,
    },
}

/// Everything about a model's shape and sampling that is not in its weights.
#[derive(Clone, Debug)]
pub(crate) struct Architecture {
    backbone: Backbone,
    pub clip: ClipConfig,
    pub clip2: Option<ClipConfig>,
    pub scheduler: SchedulerSpec,
    pub vae_scale: f64,
    pub latent_channels: usize,
    /// Image pixels per latent cell along each side.
    pub latent_scale: usize,
    /// The original SDXL VAE overflows in f16 (candle issue #1060; diffusers' `force_upcast`),
    /// so XL decodes in f32 whatever file the manifest names.
    pub vae_needs_f32: bool,
}

impl Architecture {
    /// A real family's architecture, from candle's presets. `config` is tiny-sd's parsed
    /// config file, required for [`Family::Tiny`] and ignored otherwise.
    pub fn for_family(family: Family, config: Option<&ModelConfig>) -> Result<Self, String> {
        let preset = |backbone: StableDiffusionConfig,
                      clip: ClipConfig,
                      clip2: Option<ClipConfig>,
                      scheduler: SchedulerSpec,
                      vae_scale: f64| Self {
            backbone: Backbone::Preset(Box::new(backbone)),
            clip,
            clip2,
            scheduler,
            vae_scale,
            latent_channels: 4,
            latent_scale: 8,
            vae_needs_f32: family.is_xl(),
        };
        use Prediction::{Epsilon, VPrediction};
        use SchedulerSpec::{Ddim, EulerAncestral};
        // The presets' own sizes are irrelevant: the UNet and VAE are fully convolutional and
        // the request sets the size.
        Ok(match family {
            Family::Sd15 => preset(
                StableDiffusionConfig::v1_5(None, None, None),
                ClipConfig::v1_5(),
                None,
                Ddim {
                    prediction: Epsilon,
                },
                0.18215,
            ),
            // https://huggingface.co/stabilityai/stable-diffusion-2-1/blob/main/scheduler/scheduler_config.json
            Family::Sd21 => preset(
                StableDiffusionConfig::v2_1(None, None, None),
                ClipConfig::v2_1(),
                None,
                Ddim {
                    prediction: VPrediction,
                },
                0.18215,
            ),
            // SD-Turbo is SD 2.1's architecture and text encoder, distilled with epsilon
            // prediction (https://huggingface.co/stabilityai/sd-turbo/blob/main/scheduler/scheduler_config.json).
            // candle has no preset for it; its SDXL-Turbo sampler is used.
            Family::SdTurbo => preset(
                StableDiffusionConfig::v2_1(None, None, None),
                ClipConfig::v2_1(),
                None,
                EulerAncestral {
                    prediction: Epsilon,
                },
                0.18215,
            ),
            // 0.13025 is the SDXL VAE's scaling_factor. candle's example divides by 0.18215 for
            // XL base and 0.13025 only for turbo; the VAE is the same, so both use its value.
            Family::Sdxl => preset(
                StableDiffusionConfig::sdxl(None, None, None),
                ClipConfig::sdxl(),
                Some(ClipConfig::sdxl2()),
                Ddim {
                    prediction: Epsilon,
                },
                0.13025,
            ),
            Family::SdxlTurbo => preset(
                StableDiffusionConfig::sdxl_turbo(None, None, None),
                ClipConfig::sdxl(),
                Some(ClipConfig::sdxl2()),
                EulerAncestral {
                    prediction: Epsilon,
                },
                0.13025,
            ),
            Family::Tiny => {
                let config = config.ok_or("tiny-sd needs its config file")?;
                config.check()?;
                Self {
                    backbone: Backbone::Custom {
                        unet: config.unet_config(),
                        vae: config.vae_config(),
                    },
                    clip: config.text_encoder.clone(),
                    clip2: None,
                    scheduler: config.scheduler,
                    vae_scale: config.vae_scale,
                    latent_channels: config.vae.latent_channels,
                    latent_scale: 1 << (config.vae.block_out_channels.len() - 1),
                    vae_needs_f32: false,
                }
            }
        })
    }

    pub fn build_unet(
        &self,
        path: &Path,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<UNet2DConditionModel> {
        match &self.backbone {
            Backbone::Preset(preset) => preset.build_unet(path, device, 4, false, dtype),
            Backbone::Custom { unet, .. } => UNet2DConditionModel::new(
                mmap(path, dtype, device)?,
                self.latent_channels,
                self.latent_channels,
                false,
                unet.clone(),
            ),
        }
    }

    pub fn build_vae(
        &self,
        path: &Path,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<AutoEncoderKL> {
        match &self.backbone {
            Backbone::Preset(preset) => preset.build_vae(path, device, dtype),
            Backbone::Custom { vae, .. } => {
                AutoEncoderKL::new(mmap(path, dtype, device)?, 3, 3, vae.clone())
            }
        }
    }
}

/// Opens a safetensors file the way candle's preset builders do.
pub(crate) fn mmap(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<VarBuilder<'static>> {
    // SAFETY: the mapping must not change underneath us. Model files live in the runner's
    // content-addressed cache (or a test's temporary folder) and are never rewritten in place;
    // candle's own builders make the same assumption.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }
}
