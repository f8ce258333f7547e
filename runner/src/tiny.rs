//! tiny-sd in a bucket: the test model that `ducks dev`, `ducks demo`, `ducks models create-tiny`,
//! the test suite and the benchmarks all use, created and imported in this one place.

use ducks_models::import::{ImportError, ImportSpec, import_folder};
use ducks_models::{Family, ModelManifest, Storage, bucket};

use crate::diffusion::{self, DiffusionError};

/// The id tiny-sd is seeded under.
pub const TINY_MODEL_ID: &str = "tiny-sd";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot write tiny-sd's files: {0}")]
    Files(String),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Load(#[from] bucket::LoadError),
}

/// Writes tiny-sd's files into a temporary folder and imports them as model `id`.
pub async fn seed(storage: &Storage, id: &str) -> Result<ModelManifest, SeedError> {
    let dir = tempfile::tempdir().map_err(|e| SeedError::Files(e.to_string()))?;
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || diffusion::create_tiny(&path))
        .await
        .map_err(|e| SeedError::Files(e.to_string()))?
        .map_err(|e: DiffusionError| SeedError::Files(e.to_string()))?;
    let spec = ImportSpec {
        id: id.to_owned(),
        family: Family::Tiny,
        name: Some("Tiny SD".into()),
        description: Some(
            "A structurally real Stable Diffusion model with tiny random weights, for tests and the demo: it draws noise."
                .into(),
        ),
        tags: vec!["test".into()],
    };
    Ok(import_folder(storage, dir.path(), spec).await?)
}

/// [`seed`]s tiny-sd as [`TINY_MODEL_ID`] unless the bucket has it already.
pub async fn ensure(storage: &Storage) -> Result<(), SeedError> {
    match bucket::load(storage, TINY_MODEL_ID).await {
        Ok(_) => Ok(()),
        Err(bucket::LoadError::UnknownModel(_)) => seed(storage, TINY_MODEL_ID).await.map(drop),
        Err(e) => Err(e.into()),
    }
}
