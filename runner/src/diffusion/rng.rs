//! The one source of randomness in the diffusion code: a small seeded generator of our own.
//!
//! candle's CPU device cannot be seeded at all, and its CUDA generator differs from the CPU one,
//! so every random number (initial latents, ancestral-sampler noise, the tiny model's weights)
//! comes from here and is moved to the device afterwards. Owning the algorithm also keeps
//! "seed N gives this image" stable across upgrades of `rand` or candle.

use candle_core::{Device, Shape, Tensor};

/// SplitMix64: tiny, fast, and good enough for sampling Gaussian noise.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
    /// Box–Muller yields normals in pairs; the second waits here.
    spare: Option<f64>,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    /// An independent stream for another purpose, so that, say, the sampler's noise does not
    /// shift when the latent shape changes.
    pub(crate) fn stream(seed: u64, purpose: &str) -> Self {
        Self::new(seed ^ fnv1a(purpose.as_bytes()))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - uniform() lies in (0, 1], so the logarithm is finite.
        let r = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// A tensor of standard normals built on the CPU and then moved to `device`, so that a seed
    /// gives the same noise on every device.
    pub(crate) fn normal_tensor(
        &mut self,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| self.normal() as f32)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)
    }
}

/// FNV-1a: a fixed hash (std's hasher is randomly keyed per process) for deriving seeds.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let a: Vec<u64> = (0..8).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::stream(7, "latents");
        let mut y = Rng::stream(7, "sampler");
        assert_ne!(x.next_u64(), y.next_u64());
    }

    #[test]
    fn normals_look_standard() {
        let mut rng = Rng::new(42);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }
}
