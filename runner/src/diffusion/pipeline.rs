//! Loading a model and turning prompts into images: one code path for every family.
//!
//! The sampling loop follows candle 0.11's stable-diffusion example (text embeddings from the
//! last CLIP layer, XL's two encoders side by side, guidance only above 1.0, the VAE's scaling
//! factor before decoding), with these differences: all noise comes from our seeded generator;
//! a batch lines its unconditional and conditional halves up with the latents (the example
//! repeats `[uncond, cond]`, which mismatches them for batches above one); long prompts are
//! truncated rather than refused; images are decoded one at a time to bound VAE memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::models::stable_diffusion::{
    unet_2d::UNet2DConditionModel, vae::AutoEncoderKL,
};
use tokenizers::{Tokenizer, TruncationParams};

use super::arch::{Architecture, ModelConfig, mmap};
use super::clip::{ClipConfig, ClipTextTransformer};
use super::rng::Rng;
use super::scheduler::{MAX_STEPS, SchedulerSpec};
use super::{DiffusionError, Family, FileRole, GenerateParams, ModelFiles, RgbImage};

/// Image sides accepted, in pixels. The families' UNets work from 64 px up; beyond 2048 px even
/// one SDXL image needs more memory than any card the cluster has. Manifests set the real caps.
pub const MIN_SIZE: u32 = 64;
pub const MAX_SIZE: u32 = 2048;
/// Images per batch: a bound on memory, far above what manifests allow.
pub const MAX_COUNT: u32 = 16;

/// A loaded model, ready to generate. Loading is the slow part (seconds to minutes for the
/// real families); keep one per model and call [`Pipeline::generate`] for each job.
pub struct Pipeline {
    family: Family,
    device: Device,
    dtype: DType,
    vae_dtype: DType,
    encoders: Vec<TextEncoder>,
    unet: UNet2DConditionModel,
    vae: AutoEncoderKL,
    scheduler: SchedulerSpec,
    vae_scale: f64,
    latent_channels: usize,
    latent_scale: usize,
}

/// A tokenizer and its CLIP text transformer.
struct TextEncoder {
    tokenizer: Tokenizer,
    pad_id: u32,
    max_len: usize,
    model: ClipTextTransformer,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("family", &self.family)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("scheduler", &self.scheduler)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Loads `family`'s model from `files` onto `device`: f16 on a GPU, f32 on the CPU. Every
    /// file the family needs is checked for presence before anything heavy is read.
    pub fn load(
        family: Family,
        files: &ModelFiles,
        device: &Device,
    ) -> Result<Self, DiffusionError> {
        let started = Instant::now();
        for &role in family.required_roles() {
            files.require(role)?;
        }
        let config = match family {
            Family::Tiny => Some(read_config(files.require(FileRole::Config)?)?),
            _ => None,
        };
        let arch = Architecture::for_family(family, config.as_ref()).map_err(|detail| {
            DiffusionError::CorruptWeights {
                role: FileRole::Config,
                path: files
                    .get(FileRole::Config)
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                detail,
            }
        })?;
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        };
        let vae_dtype = if arch.vae_needs_f32 {
            DType::F32
        } else {
            dtype
        };

        let mut encoders = vec![TextEncoder::load(
            &arch.clip,
            files.require(FileRole::Tokenizer)?,
            files.require(FileRole::TextEncoder)?,
            (FileRole::Tokenizer, FileRole::TextEncoder),
            device,
        )?];
        if let Some(clip2) = &arch.clip2 {
            encoders.push(TextEncoder::load(
                clip2,
                files.require(FileRole::Tokenizer2)?,
                files.require(FileRole::TextEncoder2)?,
                (FileRole::Tokenizer2, FileRole::TextEncoder2),
                device,
            )?);
        }
        tracing::debug!(%family, elapsed_ms = started.elapsed().as_millis() as u64, "text encoders loaded");

        let path = files.require(FileRole::Unet)?;
        let unet = arch
            .build_unet(path, device, dtype)
            .map_err(|e| DiffusionError::while_loading(FileRole::Unet, path.to_owned(), e))?;
        let path = files.require(FileRole::Vae)?;
        let vae = arch
            .build_vae(path, device, vae_dtype)
            .map_err(|e| DiffusionError::while_loading(FileRole::Vae, path.to_owned(), e))?;

        tracing::info!(
            %family,
            device = ?device,
            ?dtype,
            scheduler = arch.scheduler.name(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "diffusion model loaded"
        );
        Ok(Self {
            family,
            device: device.clone(),
            dtype,
            vae_dtype,
            encoders,
            unet,
            vae,
            scheduler: arch.scheduler,
            vae_scale: arch.vae_scale,
            latent_channels: arch.latent_channels,
            latent_scale: arch.latent_scale,
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The scheduler that runs (for the record; the family or its config decides).
    pub fn scheduler_name(&self) -> &'static str {
        self.scheduler.name()
    }

    /// Generates `params.count` images in one batch. `on_step(done, total)` is called after
    /// each denoising step. On the CPU a given seed always gives the same bytes; on a GPU the
    /// starting noise is the same, but kernels may round differently.
    pub fn generate(
        &self,
        params: &GenerateParams,
        on_step: &mut dyn FnMut(u32, u32),
    ) -> Result<Vec<RgbImage>, DiffusionError> {
        self.check(params)?;
        let started = Instant::now();
        let count = params.count as usize;
        let guided = params.guidance > 1.0;

        let context = self.text_embeddings(&params.prompt, &params.negative_prompt, guided)?;
        // Batch layout: [uncond x count, cond x count], the same order as [latents, latents].
        let context = if guided {
            let halves = context.chunk(2, 0)?;
            Tensor::cat(
                &[
                    halves[0].repeat((count, 1, 1))?,
                    halves[1].repeat((count, 1, 1))?,
                ],
                0,
            )?
        } else {
            context.repeat((count, 1, 1))?
        };

        let mut scheduler = self.scheduler.build(params.steps as usize, params.seed)?;
        let shape = (
            count,
            self.latent_channels,
            params.height as usize / self.latent_scale,
            params.width as usize / self.latent_scale,
        );
        let latents = Rng::stream(params.seed, "latents").normal_tensor(shape, &self.device)?;
        let mut latents = (latents * scheduler.init_noise_sigma())?.to_dtype(self.dtype)?;

        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len() as u32;
        for (index, &timestep) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(input, timestep)?;
            let noise_pred = self.unet.forward(&input, timestep as f64, &context)?;
            let noise_pred = if guided {
                let halves = noise_pred.chunk(2, 0)?;
                let (uncond, cond) = (&halves[0], &halves[1]);
                (uncond + ((cond - uncond)? * f64::from(params.guidance))?)?
            } else {
                noise_pred
            };
            latents = scheduler.step(&noise_pred, timestep, &latents)?;
            on_step(index as u32 + 1, total);
        }

        let latents = (latents / self.vae_scale)?.to_dtype(self.vae_dtype)?;
        let images = (0..count)
            .map(|i| self.decode(&latents.narrow(0, i, 1)?, params))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            family = %self.family,
            count,
            width = params.width,
            height = params.height,
            steps = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "images generated"
        );
        Ok(images)
    }

    fn check(&self, p: &GenerateParams) -> Result<(), DiffusionError> {
        let bad = |message: String| Err(DiffusionError::BadParams(message));
        let multiple = self.latent_scale as u32;
        for (name, value) in [("width", p.width), ("height", p.height)] {
            if !(MIN_SIZE..=MAX_SIZE).contains(&value) || !value.is_multiple_of(multiple) {
                return bad(format!(
                    "{name} {value} must be a multiple of {multiple} between {MIN_SIZE} and {MAX_SIZE}"
                ));
            }
        }
        if !(1..=MAX_STEPS).contains(&p.steps) {
            return bad(format!(
                "steps {} must be between 1 and {MAX_STEPS}",
                p.steps
            ));
        }
        if !(1..=MAX_COUNT).contains(&p.count) {
            return bad(format!(
                "count {} must be between 1 and {MAX_COUNT}",
                p.count
            ));
        }
        if !(p.guidance.is_finite() && p.guidance >= 0.0) {
            return bad(format!(
                "guidance {} must be a non-negative number",
                p.guidance
            ));
        }
        Ok(())
    }

    /// `(1 or 2, tokens, context_dim)` in the UNet's dtype: the negative prompt's row first
    /// when guided.
    fn text_embeddings(
        &self,
        prompt: &str,
        negative: &str,
        guided: bool,
    ) -> Result<Tensor, DiffusionError> {
        let texts: &[&str] = if guided {
            &[negative, prompt]
        } else {
            &[prompt]
        };
        let per_encoder = self
            .encoders
            .iter()
            .map(|encoder| encoder.encode(texts, &self.device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&per_encoder, candle_core::D::Minus1)?.to_dtype(self.dtype)?)
    }

    fn decode(&self, latent: &Tensor, params: &GenerateParams) -> Result<RgbImage, DiffusionError> {
        let image = self.vae.decode(latent)?.to_dtype(DType::F32)?;
        // [-1, 1] to [0, 255], rounded as diffusers' numpy_to_pil does.
        let image = ((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        let image = (image * 255.0)?.round()?.to_dtype(DType::U8)?;
        let (_, channels, height, width) = image.dims4()?;
        if (channels, height, width) != (3, params.height as usize, params.width as usize) {
            return Err(DiffusionError::Other(format!(
                "the VAE produced {channels}x{height}x{width}, expected 3x{}x{}",
                params.height, params.width
            )));
        }
        let pixels = image
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<u8>()?;
        Ok(RgbImage {
            width: params.width,
            height: params.height,
            pixels,
        })
    }
}

impl TextEncoder {
    fn load(
        config: &ClipConfig,
        tokenizer_path: &Path,
        weights_path: &Path,
        (tokenizer_role, weights_role): (FileRole, FileRole),
        device: &Device,
    ) -> Result<Self, DiffusionError> {
        let corrupt = |detail: String| DiffusionError::CorruptWeights {
            role: tokenizer_role,
            path: tokenizer_path.to_owned(),
            detail,
        };
        let mut tokenizer =
            Tokenizer::from_file(tokenizer_path).map_err(|e| corrupt(e.to_string()))?;
        let max_len = config.max_position_embeddings;
        // The encoder has a fixed number of positions: longer prompts lose their tail, as in
        // diffusers, with the end-of-text token kept by the post-processor.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| corrupt(e.to_string()))?;
        tokenizer.with_padding(None);
        let pad = config.pad_with.as_deref().unwrap_or("<|endoftext|>");
        let pad_id = tokenizer
            .token_to_id(pad)
            .ok_or_else(|| corrupt(format!("no padding token {pad:?}")))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(corrupt(format!(
                "{vocab} tokens, but the text encoder embeds only {}",
                config.vocab_size
            )));
        }
        // CLIP runs in f32 on every device, as in candle's example: it is one pass, and f16
        // would only save memory.
        let model = mmap(weights_path, DType::F32, device)
            .and_then(|vb| ClipTextTransformer::new(vb, config))
            .map_err(|e| DiffusionError::while_loading(weights_role, weights_path.to_owned(), e))?;
        Ok(Self {
            tokenizer,
            pad_id,
            max_len,
            model,
        })
    }

    /// `(texts.len(), max_len, embed_dim)` hidden states of the last layer, in f32.
    fn encode(&self, texts: &[&str], device: &Device) -> Result<Tensor, DiffusionError> {
        let mut ids = Vec::with_capacity(texts.len() * self.max_len);
        for text in texts {
            let encoding = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| DiffusionError::Other(format!("tokenizing the prompt: {e}")))?;
            if !encoding.get_overflowing().is_empty() {
                tracing::warn!(
                    max_tokens = self.max_len,
                    "prompt truncated to the text encoder's length"
                );
            }
            let mut tokens = encoding.get_ids().to_vec();
            tokens.truncate(self.max_len);
            tokens.resize(self.max_len, self.pad_id);
            ids.extend(tokens);
        }
        let ids = Tensor::from_vec(ids, (texts.len(), self.max_len), device)?;
        Ok(self.model.forward(&ids)?)
    }
}

fn read_config(path: &Path) -> Result<ModelConfig, DiffusionError> {
    let corrupt = |detail: String| DiffusionError::CorruptWeights {
        role: FileRole::Config,
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))
}

impl ModelFiles {
    /// The path for `role`, which must exist as a file.
    pub(crate) fn require(&self, role: FileRole) -> Result<&Path, DiffusionError> {
        let path = self
            .get(role)
            .ok_or(DiffusionError::MissingWeights { role, path: None })?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(DiffusionError::MissingWeights {
                role,
                path: Some(PathBuf::from(path)),
            })
        }
    }
}
