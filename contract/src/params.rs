//! [`GenerateParams`]: one generation, every parameter settled.

use serde::{Deserialize, Serialize};

/// What to draw, with nothing left to a default: the request with the model's defaults filled in
/// and the seed chosen. The same parameters on the same model draw the same image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    pub prompt: String,
    /// What to steer away from; used only when guidance is on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub negative_prompt: String,
    /// Multiples of 8 (the VAE works on 8×8 blocks).
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Classifier-free guidance scale; 1.0 or less turns guidance off (halving the work).
    pub guidance: f32,
    pub seed: u64,
    /// Images in the batch, all drawn from one seed.
    pub count: u32,
}
