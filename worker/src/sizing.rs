//! How much compute one job needs: a pure function of the model's manifest and the request.
//!
//! The manifest's `resources` are what one image at the model's default size needs. Memory for
//! activations grows with the pixels drawn at once (width × height × images), so every extra
//! default-sized image's worth of pixels adds a quarter of the manifest's GPU memory and of its
//! host memory, rounded up to whole GiB. GPU count, GPU products and CPU stay as the manifest
//! says: one job is one batch on one device.

use ducks_contract::GenerateParams;
use ducks_models::ModelManifest;
use serde::{Deserialize, Serialize};

/// What a launch asks the cluster (or the machine) for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compute {
    /// Whole GPUs; 0 runs on CPU.
    pub gpus: u32,
    /// Only nodes whose GPUs have at least this much memory.
    pub min_gpu_memory_gib: u32,
    /// Only these GPU products (node label `nvidia.com/gpu.product`), when not empty.
    pub gpu_products: Vec<String>,
    /// A Kubernetes CPU quantity (`"4"`, `"500m"`).
    pub cpu: String,
    /// A Kubernetes memory quantity; scaled results are written in `Gi`.
    pub memory: String,
    /// The runner image, when the model needs its own.
    pub runner_image: Option<String>,
}

/// Extra memory per additional default-sized image's worth of pixels, as a fraction of the base.
const GROWTH_PER_EXTRA_IMAGE: f64 = 0.25;

pub fn compute_for(manifest: &ModelManifest, params: &GenerateParams) -> Compute {
    let resources = &manifest.resources;
    let base_pixels = (manifest.defaults.width as f64 * manifest.defaults.height as f64).max(1.0);
    let pixels = params.width as f64 * params.height as f64 * params.count.max(1) as f64;
    let extra_images = (pixels / base_pixels - 1.0).max(0.0);
    let factor = 1.0 + GROWTH_PER_EXTRA_IMAGE * extra_images;
    let grow_gib = |gib: f64| (gib * factor).ceil() as u32;
    let memory = match memory_gib(&resources.memory) {
        Some(gib) if extra_images > 0.0 => format!("{}Gi", grow_gib(gib)),
        _ => resources.memory.clone(),
    };
    let min_gpu_memory_gib = if extra_images > 0.0 {
        grow_gib(resources.min_gpu_memory_gib as f64)
    } else {
        resources.min_gpu_memory_gib
    };
    Compute {
        gpus: resources.gpus,
        min_gpu_memory_gib,
        gpu_products: resources.gpu_products.clone(),
        cpu: resources.cpu.clone(),
        memory,
        runner_image: resources.runner_image.clone(),
    }
}

/// A memory quantity in GiB, for the binary suffixes manifests use (`Mi`, `Gi`, `Ti`).
fn memory_gib(quantity: &str) -> Option<f64> {
    let split = quantity.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = quantity.split_at(split);
    let number: f64 = number.parse().ok()?;
    let per_gib = match unit {
        "Mi" => 1.0 / 1024.0,
        "Gi" => 1.0,
        "Ti" => 1024.0,
        _ => return None,
    };
    Some(number * per_gib)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_models::Family;
    use ducks_models::import::default_resources;
    use ducks_models::manifest::{Defaults, Limits};

    fn manifest(family: Family) -> ModelManifest {
        ModelManifest {
            schema: 1,
            id: "m".into(),
            name: "m".into(),
            description: String::new(),
            family: family.as_str().into(),
            tags: Vec::new(),
            sizes: Vec::new(),
            files: Vec::new(),
            defaults: Defaults {
                steps: 1,
                guidance: 0.0,
                width: 512,
                height: 512,
                scheduler: String::new(),
            },
            limits: Limits {
                max_width: 1024,
                max_height: 1024,
                max_steps: 150,
                max_images: 4,
            },
            resources: default_resources(family),
        }
    }

    fn params(width: u32, height: u32, count: u32) -> GenerateParams {
        GenerateParams {
            prompt: "p".into(),
            negative_prompt: String::new(),
            width,
            height,
            steps: 1,
            guidance: 0.0,
            seed: 0,
            count,
        }
    }

    /// (family, width, height, images) → (GPU memory GiB, host memory).
    #[test]
    fn sizing_table() {
        let table = [
            (Family::SdTurbo, 512, 512, 1, 8, "16Gi"),
            (Family::SdTurbo, 256, 256, 1, 8, "16Gi"),
            (Family::SdTurbo, 512, 512, 2, 10, "20Gi"),
            (Family::SdTurbo, 512, 512, 4, 14, "28Gi"),
            (Family::SdTurbo, 1024, 1024, 1, 14, "28Gi"),
            (Family::Sdxl, 512, 512, 1, 16, "24Gi"),
            (Family::Tiny, 512, 512, 4, 0, "2Gi"),
        ];
        for (family, w, h, n, gpu_gib, memory) in table {
            let compute = compute_for(&manifest(family), &params(w, h, n));
            assert_eq!(
                (compute.min_gpu_memory_gib, compute.memory.as_str()),
                (gpu_gib, memory),
                "{family:?} {w}x{h}x{n}"
            );
            assert_eq!(compute.gpus, default_resources(family).gpus);
        }
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(memory_gib("512Mi"), Some(0.5));
        assert_eq!(memory_gib("16Gi"), Some(16.0));
        assert_eq!(memory_gib("16G"), None);
        assert_eq!(memory_gib("lots"), None);
    }
}
