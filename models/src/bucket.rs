//! The models in the bucket: `models/<id>/model.toml` beside each model's files. The runner loads
//! one manifest; `ducks models list` loads them all; [`crate::index`] keeps them fresh.

use tracing::warn;

use crate::manifest::{ManifestError, ModelManifest, manifest_key};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("There is no model `{0}`.")]
    UnknownModel(String),
    #[error(transparent)]
    Malformed(#[from] ManifestError),
    #[error(transparent)]
    Storage(StorageError),
}

/// One model's manifest.
pub async fn load(storage: &Storage, id: &str) -> Result<ModelManifest, LoadError> {
    let key = manifest_key(id);
    let bytes = storage.get_bytes(&key).await.map_err(|e| match e {
        StorageError::NotFound { .. } => LoadError::UnknownModel(id.to_owned()),
        other => LoadError::Storage(other),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ManifestError {
        location: key.clone(),
        message: "the file is not UTF-8 text".into(),
    })?;
    let manifest = ModelManifest::parse(&key, &text)?;
    if manifest.id != id {
        return Err(ManifestError {
            location: key,
            message: format!(
                "key `id`: `{}` does not match its folder `{id}`",
                manifest.id
            ),
        }
        .into());
    }
    Ok(manifest)
}

/// Every model in the bucket, sorted by id, and the manifests that could not be read (each
/// reported whole, never half-loaded).
pub async fn list(storage: &Storage) -> Result<(Vec<ModelManifest>, Vec<LoadError>), StorageError> {
    let mut models = Vec::new();
    let mut broken = Vec::new();
    for key in storage.list("models/").await? {
        let Some(id) = key
            .strip_prefix("models/")
            .and_then(|k| k.strip_suffix("/model.toml"))
        else {
            continue;
        };
        match load(storage, id).await {
            Ok(manifest) => models.push(manifest),
            Err(LoadError::Storage(e)) => return Err(e),
            Err(e) => {
                warn!(message = "Skipped a model whose manifest cannot be used.", error = %e);
                broken.push(e);
            }
        }
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((models, broken))
}
