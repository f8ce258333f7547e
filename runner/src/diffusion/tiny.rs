//! tiny-sd: a structurally complete Stable Diffusion (UNet, VAE, CLIP text encoder, CLIP-style
//! BPE tokenizer) small enough to create on the fly, for tests, CI and demos.
//!
//! The weights are random but fixed: every tensor is drawn from [`Rng`] seeded by the file and
//! the tensor's name, so two creations are byte-identical on any machine. The architecture is
//! written beside the weights as `config.json` ([`ModelConfig`]); loading reads it back, and from
//! then on tiny-sd runs the same pipeline code as the real families.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_transformers::models::stable_diffusion::{
    unet_2d::UNet2DConditionModel, vae::AutoEncoderKL,
};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::arch::{ModelConfig, UnetBlock, UnetConfig, VaeConfig};
use super::clip::{Activation, ClipConfig, ClipTextTransformer};
use super::rng::{Rng, fnv1a};
use super::scheduler::{Prediction, SchedulerSpec};
use super::{DiffusionError, FileRole};

/// Seeds every weight of tiny-sd; changing it changes every tiny image.
const WEIGHT_SEED: u64 = 0x7469_6e79_2d73_6400; // "tiny-sd\0"

const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";
/// CLIP's pre-tokenizer pattern (from openai/clip-vit-large-patch14's tokenizer.json).
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The file names `create_tiny` writes, by role.
pub const TINY_FILES: [(FileRole, &str); 5] = [
    (FileRole::Unet, "unet.safetensors"),
    (FileRole::Vae, "vae.safetensors"),
    (FileRole::TextEncoder, "text_encoder.safetensors"),
    (FileRole::Tokenizer, "tokenizer.json"),
    (FileRole::Config, "config.json"),
];

/// tiny-sd's architecture: SD 1.5's structure (cross-attention down blocks then a plain one, a
/// 4-level VAE so latents are 1/8 of the image, a causal CLIP text transformer) at widths of
/// 16 to 64 channels.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        unet: UnetConfig {
            blocks: vec![
                UnetBlock {
                    out_channels: 32,
                    use_cross_attn: Some(1),
                    attention_head_dim: 2,
                },
                UnetBlock {
                    out_channels: 64,
                    use_cross_attn: None,
                    attention_head_dim: 4,
                },
            ],
            layers_per_block: 1,
            norm_num_groups: 8,
            norm_eps: 1e-5,
            cross_attention_dim: 32,
            use_linear_projection: false,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
        },
        vae: VaeConfig {
            block_out_channels: vec![16, 32, 32, 32],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 8,
            use_quant_conv: true,
            use_post_quant_conv: true,
        },
        text_encoder: ClipConfig {
            vocab_size: TINY_VOCAB_SIZE,
            embed_dim: 32,
            activation: Activation::QuickGelu,
            intermediate_size: 128,
            max_position_embeddings: 77,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            projection_dim: 32,
        },
        scheduler: SchedulerSpec::Ddim {
            prediction: Prediction::Epsilon,
        },
        vae_scale: 0.18215,
    }
}

/// 256 byte symbols, the same with CLIP's end-of-word mark, and the two special tokens.
const TINY_VOCAB_SIZE: usize = 2 * 256 + 2;

/// Writes tiny-sd into `dir` (created if needed) and returns its files by role. The bytes are
/// the same on every call.
pub fn create_tiny(dir: &Path) -> Result<Vec<(FileRole, PathBuf)>, DiffusionError> {
    let other = |what: &str, e: &dyn std::fmt::Display| {
        DiffusionError::Other(format!("creating tiny-sd: {what}: {e}"))
    };
    std::fs::create_dir_all(dir).map_err(|e| other(&dir.display().to_string(), &e))?;
    let config = tiny_config();
    // In TINY_FILES' order.
    let [
        unet_path,
        vae_path,
        text_encoder_path,
        tokenizer_path,
        config_path,
    ] = TINY_FILES.map(|(_, name)| dir.join(name));
    let device = Device::Cpu;

    config.check().map_err(|e| other("config", &e))?;
    let latent_channels = config.vae.latent_channels;

    let (vb, weights) = recording_var_builder(WEIGHT_SEED ^ fnv1a(b"unet"), &device);
    UNet2DConditionModel::new(
        vb,
        latent_channels,
        latent_channels,
        false,
        config.unet_config(),
    )
    .map_err(|e| other("unet", &e))?;
    save(&weights, &unet_path).map_err(|e| other("unet", &e))?;

    let (vb, weights) = recording_var_builder(WEIGHT_SEED ^ fnv1a(b"vae"), &device);
    AutoEncoderKL::new(vb, 3, 3, config.vae_config()).map_err(|e| other("vae", &e))?;
    save(&weights, &vae_path).map_err(|e| other("vae", &e))?;

    let (vb, weights) = recording_var_builder(WEIGHT_SEED ^ fnv1a(b"text_encoder"), &device);
    ClipTextTransformer::new(vb, &config.text_encoder).map_err(|e| other("text encoder", &e))?;
    save(&weights, &text_encoder_path).map_err(|e| other("text encoder", &e))?;

    let tokenizer = tiny_tokenizer().map_err(|e| other("tokenizer", &e))?;
    let json = tokenizer
        .to_string(false)
        .map_err(|e| other("tokenizer", &e))?;
    std::fs::write(&tokenizer_path, json).map_err(|e| other("tokenizer", &e))?;

    let json = serde_json::to_string_pretty(&config).map_err(|e| other("config", &e))?;
    std::fs::write(&config_path, json).map_err(|e| other("config", &e))?;

    tracing::debug!(dir = %dir.display(), "created tiny-sd");
    Ok(vec![
        (FileRole::Unet, unet_path),
        (FileRole::Vae, vae_path),
        (FileRole::TextEncoder, text_encoder_path),
        (FileRole::Tokenizer, tokenizer_path),
        (FileRole::Config, config_path),
    ])
}

pub(crate) fn save(
    weights: &Mutex<BTreeMap<String, Tensor>>,
    path: &Path,
) -> candle_core::Result<()> {
    let weights = weights
        .lock()
        .map_err(|_| candle_core::Error::Msg("weight recorder poisoned".into()))?;
    let map: HashMap<&str, Tensor> = weights
        .iter()
        .map(|(name, tensor)| (name.as_str(), tensor.clone()))
        .collect();
    // safetensors sorts by dtype and name, so the file does not depend on the map's order.
    candle_core::safetensors::save(&map, path)
}

/// The CLIP tokenizer's pipeline (NFC, whitespace folding, lowercase; CLIP's split regex and
/// byte-level symbols; BPE with `</w>` word ends; start/end-of-text around the ids) with a
/// vocabulary of single bytes and no merges, so any text tokenizes.
pub(crate) fn tiny_tokenizer() -> tokenizers::Result<Tokenizer> {
    let symbols = byte_symbols();
    let mut vocab: Vocab = symbols
        .iter()
        .map(|c| c.to_string())
        .chain(symbols.iter().map(|c| format!("{c}</w>")))
        .zip(0u32..)
        .collect();
    let start_id = vocab.len() as u32;
    vocab.insert(START_OF_TEXT.to_owned(), start_id);
    vocab.insert(END_OF_TEXT.to_owned(), start_id + 1);

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .unk_token(END_OF_TEXT.to_owned())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_owned())
        .build()?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(ReplacePattern::Regex(r"\s+".to_owned()), " ")?.into(),
        Lowercase.into(),
    ])));
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        Split::new(
            SplitPattern::Regex(CLIP_SPLIT.to_owned()),
            SplitDelimiterBehavior::Removed,
            true,
        )?
        .into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new(
            (END_OF_TEXT.to_owned(), start_id + 1),
            (START_OF_TEXT.to_owned(), start_id),
        )
        .trim_offsets(false)
        .add_prefix_space(false),
    ));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.add_special_tokens(&[
        AddedToken::from(START_OF_TEXT, true),
        AddedToken::from(END_OF_TEXT, true),
    ]);
    Ok(tokenizer)
}

/// GPT-2's printable stand-ins for the 256 bytes, in its order (CLIP's first 256 ids).
fn byte_symbols() -> Vec<char> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..=255 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    // Every value is below 512, where all code points are valid chars.
    chars.into_iter().filter_map(char::from_u32).collect()
}

/// A `VarBuilder` that invents each weight from [`Rng`], seeded by `seed` and the weight's
/// name, following the initialisation candle's layers ask for (constant, normal, uniform,
/// Kaiming). The same name always gets the same values.
struct SeededInit {
    seed: u64,
    record: Option<Arc<Mutex<BTreeMap<String, Tensor>>>>,
}

impl SimpleBackend for SeededInit {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut rng = Rng::new(self.seed ^ fnv1a(name.as_bytes()));
        let n = shape.elem_count();
        let mut uniform = |lo: f64, up: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (lo + (up - lo) * rng.uniform()) as f32)
                .collect()
        };
        let values: Vec<f32> = match init {
            Init::Const(value) => vec![value as f32; n],
            Init::Uniform { lo, up } => uniform(lo, up),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (mean + stdev * rng.normal()) as f32)
                .collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(&shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(-bound, bound)
                    }
                    NormalOrUniform::Normal => {
                        (0..n).map(|_| (std * rng.normal()) as f32).collect()
                    }
                }
            }
        };
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?;
        if let Some(record) = &self.record {
            record
                .lock()
                .map_err(|_| candle_core::Error::Msg("weight recorder poisoned".into()))?
                .insert(name.to_owned(), tensor.to_dtype(DType::F16)?);
        }
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded weights need a shape: {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Seeded random weights for any module, for tests that compare two implementations.
#[cfg(test)]
pub(crate) fn seeded_var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededInit { seed, record: None }),
        dtype,
        device.clone(),
    )
}

/// Seeded random weights, each kept in the returned map as it is handed out, in f16 like the
/// real models' fp16 downloads (which also halves tiny-sd's size).
pub(crate) fn recording_var_builder(
    seed: u64,
    device: &Device,
) -> (VarBuilder<'static>, Arc<Mutex<BTreeMap<String, Tensor>>>) {
    let record = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = SeededInit {
        seed,
        record: Some(record.clone()),
    };
    (
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone()),
        record,
    )
}
