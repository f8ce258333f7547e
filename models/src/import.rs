//! `ducks models import`: a model's files from a local folder into the bucket, with the manifest
//! written beside them. Files are hashed as they are read, so the manifest always matches what was
//! uploaded.

use std::path::{Path, PathBuf};

use tracing::info;

use crate::digest::sha256_of;
use crate::family::{Family, FileRole};
use crate::manifest::{
    Defaults, Limits, MANIFEST_SCHEMA, ModelFile, ModelManifest, Resources, manifest_key,
    model_prefix,
};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("reading {path} failed: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What to call the model and how to describe it; the rest comes from the family's defaults.
#[derive(Clone, Debug)]
pub struct ImportSpec {
    pub id: String,
    pub family: Family,
    pub name: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

/// The role a file plays, from its path: a folder or file name starting with the role's name
/// (`unet/diffusion_pytorch_model.safetensors`, `vae.safetensors`, `tokenizer_2/tokenizer.json`).
/// Weights must be safetensors, tokenizers `tokenizer.json`, and an architecture file a top-level
/// `config.json`. Other files are not part of the model.
pub fn role_of(relative: &Path) -> Option<FileRole> {
    let name = relative.file_name()?.to_str()?;
    let is_weights = name.ends_with(".safetensors");
    let parts: Vec<String> = relative
        .iter()
        .filter_map(|c| c.to_str())
        .map(|c| {
            c.trim_end_matches(".safetensors")
                .trim_end_matches(".json")
                .to_lowercase()
        })
        .collect();
    let named = |prefix: &str| parts.iter().any(|p| p.starts_with(prefix));
    // Longer names first: `text_encoder_2` also starts with `text_encoder`.
    if named("tokenizer_2") && name == "tokenizer.json" {
        Some(FileRole::Tokenizer2)
    } else if named("tokenizer") && name == "tokenizer.json" {
        Some(FileRole::Tokenizer)
    } else if named("text_encoder_2") && is_weights {
        Some(FileRole::TextEncoder2)
    } else if named("text_encoder") && is_weights {
        Some(FileRole::TextEncoder)
    } else if named("unet") && is_weights {
        Some(FileRole::Unet)
    } else if named("vae") && is_weights {
        Some(FileRole::Vae)
    } else if relative.parent().is_none_or(|p| p.as_os_str().is_empty()) && name == "config.json" {
        // Only at the top: diffusers folders hold `unet/config.json` and the like, which
        // describe presets the families already know.
        Some(FileRole::Config)
    } else {
        None
    }
}

/// Uploads the model files found in `folder` and its manifest. Fails before uploading anything if
/// a role the family needs is missing or found twice.
pub async fn import_folder(
    storage: &Storage,
    folder: &Path,
    spec: ImportSpec,
) -> Result<ModelManifest, ImportError> {
    let mut found: Vec<(PathBuf, FileRole)> = Vec::new();
    for path in walk(folder)? {
        let relative = path.strip_prefix(folder).unwrap_or(&path).to_path_buf();
        if let Some(role) = role_of(&relative) {
            if let Some((other, _)) = found.iter().find(|(_, r)| *r == role) {
                return Err(ImportError::Invalid(format!(
                    "both {} and {} look like the {role}; keep one",
                    other.display(),
                    relative.display()
                )));
            }
            found.push((relative, role));
        }
    }
    for role in spec.family.required_roles() {
        if !found.iter().any(|(_, r)| r == role) {
            return Err(ImportError::Invalid(format!(
                "{} has no {role} file, which a {} model needs",
                folder.display(),
                spec.family
            )));
        }
    }
    let mut files = Vec::new();
    for (relative, role) in &found {
        let path = folder.join(relative);
        let local = |source| ImportError::Local {
            path: path.display().to_string(),
            source,
        };
        let bytes = tokio::fs::read(&path).await.map_err(local)?;
        let sha256 = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || sha256_of(&path))
                .await
                .map_err(|e| ImportError::Invalid(e.to_string()))?
                .map_err(local)?
        };
        let relative = relative.to_string_lossy().replace('\\', "/");
        let file = ModelFile {
            path: relative,
            role: role.as_str().into(),
            sha256,
            size: bytes.len() as u64,
        };
        let key = format!("{}{}", model_prefix(&spec.id), file.path);
        info!(message = "Uploading a model file.", key, bytes = file.size);
        storage
            .put(&key, bytes, "application/octet-stream", Default::default())
            .await?;
        files.push(file);
    }
    let family = spec.family;
    let side = family.default_size();
    let manifest = ModelManifest {
        schema: MANIFEST_SCHEMA,
        id: spec.id.clone(),
        name: spec.name.unwrap_or_else(|| spec.id.clone()),
        description: spec
            .description
            .unwrap_or_else(|| format!("{family} model imported from {}", folder.display())),
        family: family.to_string(),
        tags: spec.tags,
        sizes: Vec::new(),
        files,
        defaults: Defaults {
            steps: family.default_steps(),
            guidance: family.default_guidance(),
            width: side,
            height: side,
            scheduler: family.scheduler_name().into(),
        },
        limits: Limits {
            max_width: side * 2,
            max_height: side * 2,
            max_steps: ducks_contract::limits::MAX_STEPS,
            max_images: 4,
        },
        resources: default_resources(family),
    };
    manifest
        .check()
        .map_err(|e| ImportError::Invalid(format!("the manifest would be invalid: {e}")))?;
    storage
        .put(
            &manifest_key(&spec.id),
            manifest.to_toml().into_bytes(),
            "application/toml",
            Default::default(),
        )
        .await?;
    Ok(manifest)
}

/// What a job of each family asks for, before anyone tunes the manifest: XL models need about
/// 16 GiB of GPU memory at 1024x1024, the 512-pixel families about 8; tiny-sd runs on CPU.
pub fn default_resources(family: Family) -> Resources {
    let (gpus, gpu_memory, memory) = match family {
        Family::Tiny => (0, 0, "1Gi"),
        Family::Sdxl | Family::SdxlTurbo => (1, 16, "24Gi"),
        Family::Sd15 | Family::Sd21 | Family::SdTurbo => (1, 8, "16Gi"),
    };
    Resources {
        gpus,
        min_gpu_memory_gib: gpu_memory,
        gpu_products: Vec::new(),
        cpu: if gpus == 0 { "1".into() } else { "4".into() },
        memory: memory.into(),
        runner_image: None,
    }
}

/// Every file under `folder`, sorted, so imports are repeatable.
fn walk(folder: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut files = Vec::new();
    let mut dirs = vec![folder.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ImportError::Local {
            path: dir.display().to_string(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| ImportError::Local {
                    path: dir.display().to_string(),
                    source,
                })?
                .path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_diffusers_and_flat_layouts() {
        let table = [
            (
                "unet/diffusion_pytorch_model.safetensors",
                Some(FileRole::Unet),
            ),
            ("vae.safetensors", Some(FileRole::Vae)),
            (
                "text_encoder/model.safetensors",
                Some(FileRole::TextEncoder),
            ),
            (
                "text_encoder_2/model.fp16.safetensors",
                Some(FileRole::TextEncoder2),
            ),
            ("tokenizer/tokenizer.json", Some(FileRole::Tokenizer)),
            ("tokenizer_2/tokenizer.json", Some(FileRole::Tokenizer2)),
            ("config.json", Some(FileRole::Config)),
            ("unet/config.json", None),
            ("unet/diffusion_pytorch_model.bin", None),
            ("README.md", None),
            ("tokenizer/vocab.json", None),
        ];
        for (path, expect) in table {
            assert_eq!(role_of(Path::new(path)), expect, "{path}");
        }
    }
}
