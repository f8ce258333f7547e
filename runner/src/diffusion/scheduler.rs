//! Noise schedulers: candle's DDIM as is, and an Euler-ancestral sampler whose noise is seeded.
//!
//! candle's `EulerAncestralDiscreteScheduler` draws its per-step noise with `randn_like`, from
//! the device generator, which cannot be seeded on the CPU; a turbo image with more than one
//! step would then differ from run to run. The sampler below is the same algorithm (k-diffusion's
//! `sample_euler_ancestral`, as in candle and diffusers) drawing from [`Rng`].

use candle_core::{Result, Tensor};
use candle_transformers::models::stable_diffusion::{
    ddim::DDIMSchedulerConfig,
    schedulers::{PredictionType, Scheduler, SchedulerConfig},
};
use serde::{Deserialize, Serialize};

use super::rng::Rng;

/// The Stable Diffusion training schedule shared by every family here: 1000 steps, betas
/// "scaled linear" from 0.00085 to 0.012 (candle's defaults, the models' scheduler_config.json).
const TRAIN_TIMESTEPS: usize = 1000;
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;

/// The most inference steps a schedule over the training steps can have.
pub const MAX_STEPS: u32 = TRAIN_TIMESTEPS as u32;

/// What the UNet predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise (SD 1.5, SDXL, both turbos).
    Epsilon,
    /// The "velocity" (SD 2.1 768).
    VPrediction,
}

impl Prediction {
    fn candle(self) -> PredictionType {
        match self {
            Prediction::Epsilon => PredictionType::Epsilon,
            Prediction::VPrediction => PredictionType::VPrediction,
        }
    }
}

/// Which scheduler a model runs; a family's preset or a tiny model's config file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchedulerSpec {
    /// DDIM with "leading" timesteps and eta 0 (deterministic), candle's choice for SD 1.5,
    /// 2.1 and XL.
    Ddim { prediction: Prediction },
    /// Euler ancestral with "trailing" timesteps, candle's choice for SDXL-Turbo.
    EulerAncestral { prediction: Prediction },
}

impl SchedulerSpec {
    pub fn name(&self) -> &'static str {
        match self {
            SchedulerSpec::Ddim { .. } => "ddim",
            SchedulerSpec::EulerAncestral { .. } => "euler_ancestral",
        }
    }

    /// A fresh scheduler for one generation; `seed` feeds the ancestral sampler's noise.
    pub(crate) fn build(&self, steps: usize, seed: u64) -> Result<Box<dyn Scheduler>> {
        match *self {
            SchedulerSpec::Ddim { prediction } => DDIMSchedulerConfig {
                prediction_type: prediction.candle(),
                ..Default::default()
            }
            .build(steps),
            SchedulerSpec::EulerAncestral { prediction } => Ok(Box::new(EulerAncestral::new(
                steps,
                prediction,
                Rng::stream(seed, "euler-ancestral"),
            )?)),
        }
    }
}

/// Euler ancestral sampling over "trailing" timesteps.
#[derive(Debug)]
pub(crate) struct EulerAncestral {
    timesteps: Vec<usize>,
    /// One per timestep, then a final 0.
    sigmas: Vec<f64>,
    prediction: Prediction,
    rng: Rng,
}

impl EulerAncestral {
    pub(crate) fn new(steps: usize, prediction: Prediction, rng: Rng) -> Result<Self> {
        if steps == 0 || steps > TRAIN_TIMESTEPS {
            candle_core::bail!("steps must be between 1 and {TRAIN_TIMESTEPS}, got {steps}");
        }
        // diffusers' "trailing" spacing: round(arange(T, 0, -T/steps)) - 1. candle divides in
        // integers, which yields one step too many when `steps` does not divide 1000.
        let ratio = TRAIN_TIMESTEPS as f64 / steps as f64;
        let timesteps: Vec<usize> = (0..steps)
            .map(|i| ((TRAIN_TIMESTEPS as f64 - i as f64 * ratio).round() as usize).max(1) - 1)
            .collect();

        // "Scaled linear": the square roots of the betas are evenly spaced.
        let start = BETA_START.sqrt();
        let delta = (BETA_END.sqrt() - start) / (TRAIN_TIMESTEPS - 1) as f64;
        let mut alpha_cumprod = 1.0;
        let train_sigmas: Vec<f64> = (0..TRAIN_TIMESTEPS)
            .map(|i| {
                let beta = (start + i as f64 * delta).powi(2);
                alpha_cumprod *= 1.0 - beta;
                ((1.0 - alpha_cumprod) / alpha_cumprod).sqrt()
            })
            .collect();
        // The timesteps are whole training steps, so interpolating reduces to indexing.
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| train_sigmas[t]).collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps,
            sigmas,
            prediction,
            rng,
        })
    }

    fn index_of(&self, timestep: usize) -> Result<usize> {
        match self.timesteps.iter().position(|&t| t == timestep) {
            Some(index) => Ok(index),
            None => candle_core::bail!("timestep {timestep} is not in this schedule"),
        }
    }
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn add_noise(&self, original: &Tensor, noise: Tensor, timestep: usize) -> Result<Tensor> {
        let sigma = self.sigmas[self.index_of(timestep)?];
        original + (noise * sigma)?
    }

    fn init_noise_sigma(&self) -> f64 {
        // With trailing spacing the first sigma is the largest.
        self.sigmas.iter().copied().fold(0.0, f64::max)
    }

    fn scale_model_input(&self, sample: Tensor, timestep: usize) -> Result<Tensor> {
        let sigma = self.sigmas[self.index_of(timestep)?];
        sample / (sigma.powi(2) + 1.0).sqrt()
    }

    fn step(&mut self, model_output: &Tensor, timestep: usize, sample: &Tensor) -> Result<Tensor> {
        let index = self.index_of(timestep)?;
        let (sigma_from, sigma_to) = (self.sigmas[index], self.sigmas[index + 1]);
        let pred_original = match self.prediction {
            Prediction::Epsilon => (sample - (model_output * sigma_from)?)?,
            Prediction::VPrediction => {
                let c = sigma_from.powi(2) + 1.0;
                ((model_output * (-sigma_from / c.sqrt()))? + (sample / c)?)?
            }
        };
        let sigma_up = (sigma_to.powi(2) * (sigma_from.powi(2) - sigma_to.powi(2))
            / sigma_from.powi(2))
        .sqrt();
        let sigma_down = (sigma_to.powi(2) - sigma_up.powi(2)).sqrt();
        let derivative = ((sample - pred_original)? / sigma_from)?;
        let prev_sample = (sample + (derivative * (sigma_down - sigma_from))?)?;
        if sigma_up == 0.0 {
            // The last step adds no noise; skip drawing it.
            return Ok(prev_sample);
        }
        let noise = self
            .rng
            .normal_tensor(prev_sample.shape(), prev_sample.device())?
            .to_dtype(prev_sample.dtype())?;
        prev_sample + (noise * sigma_up)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::stable_diffusion::{
        euler_ancestral_discrete::EulerAncestralDiscreteSchedulerConfig,
        schedulers::TimestepSpacing,
    };

    fn candle_euler(steps: usize) -> Box<dyn Scheduler> {
        EulerAncestralDiscreteSchedulerConfig {
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Trailing,
            ..Default::default()
        }
        .build(steps)
        .unwrap()
    }

    #[test]
    fn matches_candle_where_candle_is_right() {
        for steps in [1, 2, 4, 10] {
            let ours = EulerAncestral::new(steps, Prediction::Epsilon, Rng::new(0)).unwrap();
            let theirs = candle_euler(steps);
            assert_eq!(ours.timesteps(), theirs.timesteps(), "{steps} steps");
            let (a, b) = (ours.init_noise_sigma(), theirs.init_noise_sigma());
            assert!((a - b).abs() < 1e-9 * b, "{a} vs {b}");
        }
        // One step is what the turbo models run: the whole schedule then is sigma_max -> 0.
        assert_eq!(
            EulerAncestral::new(1, Prediction::Epsilon, Rng::new(0))
                .unwrap()
                .timesteps(),
            &[999]
        );
        // Where 1000 / steps is not whole, the step count still holds.
        let three = EulerAncestral::new(3, Prediction::Epsilon, Rng::new(0)).unwrap();
        assert_eq!(three.timesteps(), &[999, 666, 332]);
    }

    #[test]
    fn a_deterministic_step_matches_candle() {
        let device = candle_core::Device::Cpu;
        let sample = Rng::new(1).normal_tensor((1, 4, 2, 2), &device).unwrap();
        let output = Rng::new(2).normal_tensor((1, 4, 2, 2), &device).unwrap();
        // With one step sigma_to is 0, so neither scheduler draws noise and both must agree.
        let mut ours = EulerAncestral::new(1, Prediction::Epsilon, Rng::new(0)).unwrap();
        let mut theirs = candle_euler(1);
        let a = ours.step(&output, 999, &sample).unwrap();
        let b = theirs.step(&output, 999, &sample).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
