//! The CLIP text encoder, for every family.
//!
//! This is candle's `stable_diffusion::clip` (same layers, same weight names, same arithmetic)
//! with two differences. Its configuration has public fields and reads from JSON: candle's own
//! `clip::Config` keeps its fields private and only offers the real models' presets, so a tiny
//! text encoder cannot be described with it. And its causal mask works for batches of more than
//! one prompt. Running all families through this one module keeps tiny-sd on exactly the code
//! the real models use; the tests check that the presets below match candle's and that the
//! outputs equal candle's `ClipTextTransformer` on the same weights.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn as nn;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
    GeluErf,
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            Activation::Gelu => xs.gelu(),
            Activation::GeluErf => xs.gelu_erf(),
        }
    }
}

/// Field for field the same as candle's `stable_diffusion::clip::Config` (and in the same
/// order, which the preset test relies on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub activation: Activation,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// The token that pads prompts to `max_position_embeddings`; the end-of-text token when
    /// absent.
    pub pad_with: Option<String>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Unused by the text transformer (it belongs to CLIP's projection head); kept so the
    /// configuration reads like the model's own.
    pub projection_dim: usize,
}

impl ClipConfig {
    // The values are candle 0.11's presets, which come from the models' config.json files:
    // https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json
    pub fn v1_5() -> Self {
        Self {
            vocab_size: 49408,
            embed_dim: 768,
            activation: Activation::QuickGelu,
            intermediate_size: 3072,
            max_position_embeddings: 77,
            pad_with: None,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            projection_dim: 768,
        }
    }

    // https://huggingface.co/stabilityai/stable-diffusion-2-1/blob/main/text_encoder/config.json
    pub fn v2_1() -> Self {
        Self {
            vocab_size: 49408,
            embed_dim: 1024,
            activation: Activation::Gelu,
            intermediate_size: 4096,
            max_position_embeddings: 77,
            pad_with: Some("!".to_owned()),
            num_hidden_layers: 23,
            num_attention_heads: 16,
            projection_dim: 512,
        }
    }

    // https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/text_encoder/config.json
    pub fn sdxl() -> Self {
        Self {
            pad_with: Some("!".to_owned()),
            ..Self::v1_5()
        }
    }

    // https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/text_encoder_2/config.json
    pub fn sdxl2() -> Self {
        Self {
            vocab_size: 49408,
            embed_dim: 1280,
            activation: Activation::Gelu,
            intermediate_size: 5120,
            max_position_embeddings: 77,
            pad_with: Some("!".to_owned()),
            num_hidden_layers: 32,
            num_attention_heads: 20,
            projection_dim: 1280,
        }
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || !self.embed_dim.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "embed_dim {} is not a multiple of num_attention_heads {}",
                self.embed_dim, self.num_attention_heads
            ));
        }
        if self.max_position_embeddings < 2 || self.vocab_size == 0 {
            return Err("max_position_embeddings and vocab_size must be positive".to_owned());
        }
        Ok(())
    }
}

// https://github.com/huggingface/transformers/blob/674f750a57431222fa2832503a108df3badf1564/src/transformers/models/clip/modeling_clip.py
#[derive(Debug)]
struct Embeddings {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    position_ids: Tensor,
}

impl Embeddings {
    fn new(vs: nn::VarBuilder, c: &ClipConfig) -> Result<Self> {
        let token_embedding = nn::embedding(c.vocab_size, c.embed_dim, vs.pp("token_embedding"))?;
        let position_embedding = nn::embedding(
            c.max_position_embeddings,
            c.embed_dim,
            vs.pp("position_embedding"),
        )?;
        let position_ids =
            Tensor::arange(0u32, c.max_position_embeddings as u32, vs.device())?.unsqueeze(0)?;
        Ok(Self {
            token_embedding,
            position_embedding,
            position_ids,
        })
    }
}

impl Module for Embeddings {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let token_embedding = self.token_embedding.forward(xs)?;
        let position_embedding = self.position_embedding.forward(&self.position_ids)?;
        token_embedding.broadcast_add(&position_embedding)
    }
}

#[derive(Debug)]
struct Attention {
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    q_proj: nn::Linear,
    out_proj: nn::Linear,
    head_dim: usize,
    scale: f64,
    num_attention_heads: usize,
}

impl Attention {
    fn new(vs: nn::VarBuilder, c: &ClipConfig) -> Result<Self> {
        let embed_dim = c.embed_dim;
        let k_proj = nn::linear(embed_dim, embed_dim, vs.pp("k_proj"))?;
        let v_proj = nn::linear(embed_dim, embed_dim, vs.pp("v_proj"))?;
        let q_proj = nn::linear(embed_dim, embed_dim, vs.pp("q_proj"))?;
        let out_proj = nn::linear(embed_dim, embed_dim, vs.pp("out_proj"))?;
        let head_dim = embed_dim / c.num_attention_heads;
        Ok(Self {
            k_proj,
            v_proj,
            q_proj,
            out_proj,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            num_attention_heads: c.num_attention_heads,
        })
    }

    fn shape(&self, xs: &Tensor, seq_len: usize, bsz: usize) -> Result<Tensor> {
        xs.reshape((bsz, seq_len, self.num_attention_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, xs: &Tensor, causal_attention_mask: &Tensor) -> Result<Tensor> {
        // Attention runs in f32 whatever the weights are, as in candle: f16 softmax overflows.
        let in_dtype = xs.dtype();
        let (bsz, seq_len, embed_dim) = xs.dims3()?;
        let proj_shape = (bsz * self.num_attention_heads, seq_len, self.head_dim);
        let query_states = (self.q_proj.forward(xs)? * self.scale)?;
        let query_states = self
            .shape(&query_states, seq_len, bsz)?
            .reshape(proj_shape)?
            .to_dtype(DType::F32)?;
        let key_states = self
            .shape(&self.k_proj.forward(xs)?, seq_len, bsz)?
            .reshape(proj_shape)?
            .to_dtype(DType::F32)?;
        let value_states = self
            .shape(&self.v_proj.forward(xs)?, seq_len, bsz)?
            .reshape(proj_shape)?
            .to_dtype(DType::F32)?;
        let attn_weights = query_states.matmul(&key_states.transpose(1, 2)?)?;

        let src_len = key_states.dim(1)?;
        let attn_weights = attn_weights
            .reshape((bsz, self.num_attention_heads, seq_len, src_len))?
            .broadcast_add(causal_attention_mask)?;
        let attn_weights =
            attn_weights.reshape((bsz * self.num_attention_heads, seq_len, src_len))?;
        let attn_weights = nn::ops::softmax(&attn_weights, D::Minus1)?;

        let attn_output = attn_weights.matmul(&value_states)?.to_dtype(in_dtype)?;
        let attn_output = attn_output
            .reshape((bsz, self.num_attention_heads, seq_len, self.head_dim))?
            .transpose(1, 2)?
            .reshape((bsz, seq_len, embed_dim))?;
        self.out_proj.forward(&attn_output)
    }
}

#[derive(Debug)]
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    activation: Activation,
}

impl Mlp {
    fn new(vs: nn::VarBuilder, c: &ClipConfig) -> Result<Self> {
        Ok(Self {
            fc1: nn::linear(c.embed_dim, c.intermediate_size, vs.pp("fc1"))?,
            fc2: nn::linear(c.intermediate_size, c.embed_dim, vs.pp("fc2"))?,
            activation: c.activation,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.fc1.forward(xs)?;
        self.fc2.forward(&self.activation.forward(&xs)?)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: nn::LayerNorm,
    mlp: Mlp,
    layer_norm2: nn::LayerNorm,
}

impl EncoderLayer {
    fn new(vs: nn::VarBuilder, c: &ClipConfig) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(vs.pp("self_attn"), c)?,
            layer_norm1: nn::layer_norm(c.embed_dim, 1e-5, vs.pp("layer_norm1"))?,
            mlp: Mlp::new(vs.pp("mlp"), c)?,
            layer_norm2: nn::layer_norm(c.embed_dim, 1e-5, vs.pp("layer_norm2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, causal_attention_mask: &Tensor) -> Result<Tensor> {
        let residual = xs;
        let xs = self.layer_norm1.forward(xs)?;
        let xs = self.self_attn.forward(&xs, causal_attention_mask)?;
        let xs = (xs + residual)?;

        let residual = &xs;
        let xs = self.layer_norm2.forward(&xs)?;
        let xs = self.mlp.forward(&xs)?;
        xs + residual
    }
}

/// CLIP's text transformer: token ids `(batch, max_position_embeddings)` in, the final layer's
/// normalised hidden states `(batch, max_position_embeddings, embed_dim)` out.
#[derive(Debug)]
pub struct ClipTextTransformer {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    final_layer_norm: nn::LayerNorm,
}

impl ClipTextTransformer {
    /// Weights are read under `text_model.`, as in the Hugging Face text-encoder files.
    pub fn new(vs: nn::VarBuilder, c: &ClipConfig) -> Result<Self> {
        let vs = vs.pp("text_model");
        let embeddings = Embeddings::new(vs.pp("embeddings"), c)?;
        let layers_vs = vs.pp("encoder").pp("layers");
        let layers = (0..c.num_hidden_layers)
            .map(|index| EncoderLayer::new(layers_vs.pp(index.to_string()), c))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = nn::layer_norm(c.embed_dim, 1e-5, vs.pp("final_layer_norm"))?;
        Ok(Self {
            embeddings,
            layers,
            final_layer_norm,
        })
    }

    // https://github.com/huggingface/transformers/blob/674f750a57431222fa2832503a108df3badf1564/src/transformers/models/clip/modeling_clip.py#L678
    // `(seq_len, seq_len)`, broadcast over batch and heads. candle's version is
    // `(batch, seq_len, seq_len)`, which lines the batch up with the heads and fails for batches
    // above one (the example never encodes more than one prompt at a time).
    fn causal_attention_mask(seq_len: usize, device: &Device) -> Result<Tensor> {
        let mask: Vec<f32> = (0..seq_len)
            .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::MIN } else { 0. }))
            .collect();
        Tensor::from_slice(&mask, (seq_len, seq_len), device)
    }
}

impl Module for ClipTextTransformer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, seq_len) = xs.dims2()?;
        let xs = self.embeddings.forward(xs)?;
        let mask = Self::causal_attention_mask(seq_len, xs.device())?;
        let xs = self
            .layers
            .iter()
            .try_fold(xs, |xs, layer| layer.forward(&xs, &mask))?;
        self.final_layer_norm.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::stable_diffusion::clip as candle_clip;

    /// Debug output without the struct's name, which differs.
    fn fields(debug: String) -> String {
        debug
            .split_once(' ')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or(debug)
    }

    #[test]
    fn presets_match_candle() {
        let pairs = [
            (ClipConfig::v1_5(), candle_clip::Config::v1_5()),
            (ClipConfig::v2_1(), candle_clip::Config::v2_1()),
            (ClipConfig::sdxl(), candle_clip::Config::sdxl()),
            (ClipConfig::sdxl2(), candle_clip::Config::sdxl2()),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(
                fields(format!("{ours:?}")),
                fields(format!("{theirs:?}")),
                "preset differs from candle's"
            );
        }
    }

    /// Builds candle's transformer and ours from the same (seeded, random) weights and compares
    /// the outputs on a prompt-like token sequence.
    fn same_output_as_candle(ours: ClipConfig, theirs: candle_clip::Config) {
        let device = Device::Cpu;
        let vb = super::super::tiny::seeded_var_builder(3, DType::F32, &device);
        let reference = candle_clip::ClipTextTransformer::new(vb.clone(), &theirs).unwrap();
        let model = ClipTextTransformer::new(vb, &ours).unwrap();
        let mut ids: Vec<u32> = vec![49406, 320, 1929, 539, 49407];
        ids.resize(ours.max_position_embeddings, 49407);
        let ids = Tensor::new(ids.as_slice(), &device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let expected = reference.forward(&ids).unwrap();
        let actual = model.forward(&ids).unwrap();
        assert_eq!(expected.dims(), actual.dims());
        let diff = (expected - actual)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "outputs differ from candle's by up to {diff}");
    }

    /// Negative and positive prompts are encoded in one batch; each row must be what encoding
    /// it alone gives, whatever the number of heads.
    #[test]
    fn a_batch_encodes_like_its_rows() {
        let device = Device::Cpu;
        let config = ClipConfig {
            vocab_size: 100,
            embed_dim: 24,
            activation: Activation::Gelu,
            intermediate_size: 48,
            max_position_embeddings: 8,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            projection_dim: 24,
        };
        let model = ClipTextTransformer::new(
            super::super::tiny::seeded_var_builder(5, DType::F32, &device),
            &config,
        )
        .unwrap();
        let rows: [[u32; 8]; 2] = [
            [98, 1, 2, 99, 99, 99, 99, 99],
            [98, 7, 8, 9, 10, 99, 99, 99],
        ];
        let batch = Tensor::new(&rows, &device).unwrap();
        let together = model.forward(&batch).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let alone = model
                .forward(&Tensor::new(row, &device).unwrap().unsqueeze(0).unwrap())
                .unwrap();
            let diff = (together.narrow(0, i, 1).unwrap() - alone)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "row {i} differs by {diff}");
        }
    }

    #[test]
    fn same_output_as_candle_quick_gelu() {
        same_output_as_candle(ClipConfig::v1_5(), candle_clip::Config::v1_5());
    }

    // About 1.4 GB of weights and several seconds even in release: run with `--ignored`.
    #[test]
    #[ignore]
    fn same_output_as_candle_gelu() {
        same_output_as_candle(ClipConfig::v2_1(), candle_clip::Config::v2_1());
    }
}
