//! The model manifest, `models/<id>/model.toml` in the bucket: what a model is, which files it
//! needs, its defaults and limits, and the compute it asks for. Parsing and checking are pure.

use serde::{Deserialize, Serialize};

use ducks_contract::{GpuNeed, ModelInfo, Size, is_valid_model_id, limits};

use crate::family::{Family, FileRole};

/// The manifest schema this build reads and writes.
pub const MANIFEST_SCHEMA: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Schema version; a newer one is refused as newer.
    pub schema: u32,
    pub id: String,
    pub name: String,
    pub description: String,
    /// Pipeline family: `sd15`, `sd21`, `sd-turbo`, `sdxl`, `sdxl-turbo` or `tiny-sd`.
    pub family: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The sizes front ends offer, the default first (`["512x512", "768x512"]`); empty means
    /// the family's usual ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<Size>,
    pub files: Vec<ModelFile>,
    pub defaults: Defaults,
    pub limits: Limits,
    pub resources: Resources,
}

/// One file of the model, beside the manifest in `models/<id>/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Path relative to the model's folder, e.g. `unet.safetensors`.
    pub path: String,
    /// What the pipeline uses it for: `unet`, `vae`, `text_encoder`, `text_encoder_2`,
    /// `tokenizer`, `tokenizer_2` or `config`.
    pub role: String,
    /// Lowercase hex SHA-256 of the content; the cache is keyed by it.
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub steps: u32,
    pub guidance: f32,
    pub width: u32,
    pub height: u32,
    /// Scheduler name, for the record and the PNG parameters (the family decides which runs).
    pub scheduler: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    /// The most denoising steps one request may ask for.
    #[serde(default = "most_steps")]
    pub max_steps: u32,
    pub max_images: u32,
}

fn most_steps() -> u32 {
    limits::MAX_STEPS
}

/// What one job of this model needs from the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs per job; 0 runs on CPU.
    pub gpus: u32,
    /// The least GPU memory that works, in GiB.
    #[serde(default)]
    pub min_gpu_memory_gib: u32,
    /// Acceptable GPU products (node label `nvidia.com/gpu.product`); empty means any.
    #[serde(default)]
    pub gpu_products: Vec<String>,
    /// Kubernetes quantities, e.g. `"4"` and `"24Gi"`.
    pub cpu: String,
    pub memory: String,
    /// A runner image for this model instead of the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_image: Option<String>,
}

/// A manifest that cannot be used. The text names the key (and, for syntax, the line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Model manifest {location}: {message}")]
pub struct ManifestError {
    pub location: String,
    pub message: String,
}

impl ModelManifest {
    /// Parses and checks a manifest read from `location` (for messages, e.g. an S3 key). Nothing
    /// is returned half-loaded: any problem fails the whole manifest.
    pub fn parse(location: &str, text: &str) -> Result<Self, ManifestError> {
        let error = |message: String| ManifestError {
            location: location.to_owned(),
            message,
        };
        // Check the schema first, so a newer manifest is reported as newer, not as malformed.
        #[derive(Deserialize)]
        struct Schema {
            schema: Option<u32>,
        }
        let schema: Schema = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        match schema.schema {
            Some(MANIFEST_SCHEMA) => {}
            Some(newer) if newer > MANIFEST_SCHEMA => {
                return Err(error(format!(
                    "schema {newer} is newer than this DUCKS reads ({MANIFEST_SCHEMA}); upgrade DUCKS"
                )));
            }
            Some(other) => {
                return Err(error(format!(
                    "key `schema`: {other} is not a known schema"
                )));
            }
            None => {
                return Err(error(format!(
                    "missing key `schema` (use {MANIFEST_SCHEMA})"
                )));
            }
        }
        let manifest: ModelManifest = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        manifest.check().map_err(error)?;
        Ok(manifest)
    }

    /// The manifest as TOML, as `ducks models import` writes it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// The semantic checks; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        if !is_valid_model_id(&self.id) {
            return Err(format!(
                "key `id`: `{}` is not a valid model id (1 to 64 of a-z, 0-9, '.', '_', '-')",
                self.id
            ));
        }
        let family: Family = self
            .family
            .parse()
            .map_err(|e| format!("key `family`: {e}"))?;
        let mut roles = Vec::new();
        for (i, file) in self.files.iter().enumerate() {
            let role: FileRole = file
                .role
                .parse()
                .map_err(|e| format!("key `files[{i}].role`: {e}"))?;
            if roles.contains(&role) {
                return Err(format!("key `files[{i}].role`: a second `{role}` file"));
            }
            roles.push(role);
        }
        if let Some(missing) = family.required_roles().iter().find(|r| !roles.contains(r)) {
            return Err(format!(
                "key `files`: a {family} model needs a `{missing}` file"
            ));
        }
        for (i, file) in self.files.iter().enumerate() {
            let key = |field: &str| format!("key `files[{i}].{field}`");
            if file.path.is_empty()
                || file.path.starts_with('/')
                || file.path.split('/').any(|p| p == "..")
            {
                return Err(format!(
                    "{}: `{}` must be a relative path inside the model folder",
                    key("path"),
                    file.path
                ));
            }
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "{}: expected 64 lowercase hex digits",
                    key("sha256")
                ));
            }
            if file.size == 0 {
                return Err(format!("{}: a weight file cannot be empty", key("size")));
            }
        }
        let d = &self.defaults;
        let l = &self.limits;
        for (name, side, max) in [
            ("width", d.width, l.max_width),
            ("height", d.height, l.max_height),
        ] {
            if side % limits::SIDE_MULTIPLE != 0 || !(limits::MIN_SIDE..=max).contains(&side) {
                return Err(format!(
                    "key `defaults.{name}`: {side} must be a multiple of {} from {} to limits.max_{name} ({max})",
                    limits::SIDE_MULTIPLE,
                    limits::MIN_SIDE
                ));
            }
        }
        for (name, max) in [("max_width", l.max_width), ("max_height", l.max_height)] {
            if max > limits::MAX_SIDE {
                return Err(format!(
                    "key `limits.{name}`: {max} is over the largest size DUCKS accepts ({})",
                    limits::MAX_SIDE
                ));
            }
        }
        if !(1..=limits::MAX_IMAGES).contains(&l.max_images) {
            return Err(format!(
                "key `limits.max_images`: use 1 to {}",
                limits::MAX_IMAGES
            ));
        }
        if !(1..=limits::MAX_STEPS).contains(&l.max_steps) {
            return Err(format!(
                "key `limits.max_steps`: use 1 to {}",
                limits::MAX_STEPS
            ));
        }
        if !(1..=l.max_steps).contains(&d.steps) {
            return Err(format!(
                "key `defaults.steps`: use 1 to limits.max_steps ({})",
                l.max_steps
            ));
        }
        for (i, size) in self.sizes.iter().enumerate() {
            if size.width % limits::SIDE_MULTIPLE != 0
                || size.height % limits::SIDE_MULTIPLE != 0
                || size.width.min(size.height) < limits::MIN_SIDE
                || size.width > l.max_width
                || size.height > l.max_height
            {
                return Err(format!(
                    "key `sizes[{i}]`: {size} must be multiples of {} from {} up to the limits ({}x{})",
                    limits::SIDE_MULTIPLE,
                    limits::MIN_SIDE,
                    l.max_width,
                    l.max_height
                ));
            }
        }
        if !(d.guidance.is_finite() && (0.0..=limits::MAX_GUIDANCE).contains(&d.guidance)) {
            return Err(format!(
                "key `defaults.guidance`: use 0 to {}",
                limits::MAX_GUIDANCE
            ));
        }
        if self.resources.cpu.is_empty() || self.resources.memory.is_empty() {
            return Err("key `resources`: `cpu` and `memory` must be Kubernetes quantities such as \"4\" and \"24Gi\"".into());
        }
        Ok(())
    }

    /// The S3 key of one of the model's files.
    pub fn key_of(&self, file: &ModelFile) -> String {
        format!("{}{}", model_prefix(&self.id), file.path)
    }

    /// What front ends see of the model. `added_at_secs` comes from the bucket (when the manifest
    /// was written), not from the manifest itself.
    pub fn info(&self) -> ModelInfo {
        let family = self.family.parse::<Family>().ok();
        let sizes = if self.sizes.is_empty() {
            family
                .map(Family::default_sizes)
                .unwrap_or_default()
                .into_iter()
                .filter(|s| s.width <= self.limits.max_width && s.height <= self.limits.max_height)
                .collect()
        } else {
            self.sizes.clone()
        };
        let resources = &self.resources;
        ModelInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            family: self.family.clone(),
            default_width: self.defaults.width,
            default_height: self.defaults.height,
            default_steps: self.defaults.steps,
            default_guidance: self.defaults.guidance,
            max_width: self.limits.max_width,
            max_height: self.limits.max_height,
            max_steps: self.limits.max_steps,
            max_images: self.limits.max_images,
            sizes,
            gpu: GpuNeed {
                count: resources.gpus,
                min_memory_gib: resources.min_gpu_memory_gib,
                products: resources.gpu_products.clone(),
            },
            added_at_secs: None,
            tags: self.tags.clone(),
        }
    }
}

/// `models/<id>/`, the folder of one model in the bucket.
pub fn model_prefix(id: &str) -> String {
    format!("models/{id}/")
}

/// `models/<id>/model.toml`.
pub fn manifest_key(id: &str) -> String {
    format!("{}model.toml", model_prefix(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema = 1
id = "tiny-sd"
name = "Tiny SD"
description = "Random weights: draws noise."
family = "tiny-sd"
tags = ["test"]

[[files]]
path = "unet.safetensors"
role = "unet"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
size = 10

[[files]]
path = "vae.safetensors"
role = "vae"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
size = 10

[[files]]
path = "text_encoder.safetensors"
role = "text_encoder"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
size = 10

[[files]]
path = "tokenizer.json"
role = "tokenizer"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
size = 10

[[files]]
path = "config.json"
role = "config"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
size = 10

[defaults]
steps = 2
guidance = 7.5
width = 64
height = 64
scheduler = "ddim"

[limits]
max_width = 256
max_height = 256
max_images = 4

[resources]
gpus = 0
cpu = "1"
memory = "1Gi"
"#;

    #[test]
    fn a_good_manifest_round_trips() {
        let manifest = ModelManifest::parse("models/tiny-sd/model.toml", GOOD).unwrap();
        assert_eq!(manifest.files[0].role, "unet");
        let again = ModelManifest::parse("again", &manifest.to_toml()).unwrap();
        assert_eq!(again, manifest);
        assert_eq!(
            manifest.key_of(&manifest.files[0]),
            "models/tiny-sd/unet.safetensors"
        );
        let info = manifest.info();
        assert_eq!((info.max_images, info.max_steps), (4, 150));
        assert_eq!(
            info.sizes,
            [Size::new(64, 64), Size::new(96, 64), Size::new(64, 96)],
            "tiny-sd's usual sizes"
        );
    }

    /// Each case edits the good manifest and expects an error mentioning the given text.
    #[test]
    fn bad_manifests_name_the_key() {
        let cases = [
            ("schema = 1", "schema = 2", "schema 2 is newer"),
            ("schema = 1\n", "", "missing key `schema`"),
            ("steps = 2", "steps = \"two\"", "line 40"),
            ("steps = 2", "steps = 0", "key `defaults.steps`"),
            (
                "max_images = 4",
                "max_images = 4\nmax_steps = 1",
                "key `defaults.steps`: use 1 to limits.max_steps (1)",
            ),
            (
                "max_images = 4",
                "max_images = 4\nmax_steps = 151",
                "key `limits.max_steps`",
            ),
            (
                "tags = [\"test\"]",
                "tags = [\"test\"]\nsizes = [\"64x64\", \"512x512\"]",
                "key `sizes[1]`: 512x512",
            ),
            (
                "tags = [\"test\"]",
                "tags = [\"test\"]\nsizes = [\"big\"]",
                "not a size",
            ),
            ("width = 64", "width = 65", "key `defaults.width`"),
            (
                "max_width = 256",
                "max_width = 4096",
                "key `limits.max_width`",
            ),
            (
                "max_images = 4",
                "max_images = 9",
                "key `limits.max_images`",
            ),
            ("id = \"tiny-sd\"", "id = \"Tiny SD\"", "key `id`"),
            ("size = 10", "size = 0", "key `files[0].size`"),
            (
                "sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
                "sha256 = \"xyz\"",
                "key `files[0].sha256`",
            ),
            (
                "path = \"unet.safetensors\"",
                "path = \"../escape\"",
                "key `files[0].path`",
            ),
            ("gpus = 0", "gpus = 0\ngpu = 1", "unknown field `gpu`"),
            (
                "family = \"tiny-sd\"",
                "family = \"sd9\"",
                "key `family`: unknown model family \"sd9\"",
            ),
            ("role = \"vae\"", "role = \"vea\"", "key `files[1].role`"),
            (
                "role = \"config\"",
                "role = \"unet\"",
                "key `files[4].role`: a second `unet` file",
            ),
        ];
        for (from, to, expect) in cases {
            let text = GOOD.replacen(from, to, 1);
            let err = ModelManifest::parse("models/tiny-sd/model.toml", &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{to:?}: expected {expect:?} in {err}");
            assert!(
                err.starts_with("Model manifest models/tiny-sd/model.toml: "),
                "{err}"
            );
        }
    }
}
