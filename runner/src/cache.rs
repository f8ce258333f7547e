//! The node-local weight cache: a folder shared by every runner on a node (a hostPath or PVC in
//! Kubernetes), files keyed by SHA-256.
//!
//! Layout: `blobs/<sha256>` (the file), `blobs/<sha256>.ok` (size and modification time when it
//! was last verified), `locks/<sha256>.lock`, `tmp/` (downloads in progress). A download goes to
//! `tmp/`, is checked for size and hash, then renamed into place, so no runner ever sees half a
//! file; an exclusive lock per file makes runners that start together download it once.
//! A cached file whose size or modification time no longer match its `.ok` marker is hashed
//! again, and fetched again if it does not match.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use ducks_models::digest::sha256_of;
use ducks_models::manifest::ModelFile;
use ducks_models::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("weight file {key} is missing from the bucket")]
    Missing { key: String },
    #[error("weight file {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error(transparent)]
    Storage(StorageError),
    #[error("the weight cache at {path} is unusable: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
}

/// Where a file came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    pub path: PathBuf,
    /// Whether it was read from S3 this time (false: it was in the cache).
    pub downloaded: bool,
}

pub struct WeightCache {
    root: PathBuf,
}

impl WeightCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The local path of `file` (S3 key `key`), downloading and verifying it unless a verified copy
    /// is already here.
    pub async fn fetch(
        &self,
        storage: &Storage,
        key: &str,
        file: &ModelFile,
    ) -> Result<Cached, CacheError> {
        let local = |path: &Path| {
            let path = path.display().to_string();
            move |source| CacheError::Local { path, source }
        };
        for dir in ["blobs", "locks", "tmp"] {
            let dir = self.root.join(dir);
            tokio::fs::create_dir_all(&dir).await.map_err(local(&dir))?;
        }
        let blob = self.root.join("blobs").join(&file.sha256);
        let lock_path = self
            .root
            .join("locks")
            .join(format!("{}.lock", file.sha256));
        // Held until this function returns: a second runner waits here, then finds the file.
        let _lock = {
            let path = lock_path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?;
                lock.lock()?;
                Ok(lock)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|locked| locked)
            .map_err(local(&lock_path))?
        };
        if self.is_verified(&blob, file).await {
            return Ok(Cached {
                path: blob,
                downloaded: false,
            });
        }
        if tokio::fs::try_exists(&blob).await.unwrap_or(false) {
            warn!(message = "A cached weight file is corrupt; fetching it again.", key, path = %blob.display());
            tokio::fs::remove_file(&blob).await.map_err(local(&blob))?;
        }
        // One retry: a download can be damaged in flight; a second mismatch means the object in
        // S3 itself is wrong.
        let mut last = None;
        for _ in 0..2 {
            match self.download(storage, key, file, &blob).await {
                Ok(()) => {
                    self.mark_verified(&blob).await.map_err(local(&blob))?;
                    info!(
                        message = "Downloaded a weight file.",
                        key,
                        bytes = file.size
                    );
                    return Ok(Cached {
                        path: blob,
                        downloaded: true,
                    });
                }
                Err(e @ CacheError::Corrupt { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("the loop ran"))
    }

    async fn download(
        &self,
        storage: &Storage,
        key: &str,
        file: &ModelFile,
        blob: &Path,
    ) -> Result<(), CacheError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}", file.sha256, std::process::id()));
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|source| CacheError::Local {
                path: tmp.display().to_string(),
                source,
            })?;
        let mut hasher = Sha256::new();
        let written = storage
            .download(key, &mut out, &tmp.display().to_string(), &mut |chunk| {
                hasher.update(chunk)
            })
            .await;
        drop(out);
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(match e {
                    StorageError::NotFound { .. } => CacheError::Missing {
                        key: key.to_owned(),
                    },
                    other => CacheError::Storage(other),
                });
            }
        };
        let digest = hex::encode(hasher.finalize());
        let problem = if written != file.size {
            Some(format!("{written} bytes, the manifest says {}", file.size))
        } else if digest != file.sha256 {
            Some(format!(
                "SHA-256 {digest}, the manifest says {}",
                file.sha256
            ))
        } else {
            None
        };
        if let Some(detail) = problem {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(CacheError::Corrupt {
                key: key.to_owned(),
                detail,
            });
        }
        tokio::fs::rename(&tmp, blob)
            .await
            .map_err(|source| CacheError::Local {
                path: blob.display().to_string(),
                source,
            })
    }

    /// True when the file is here and either its marker still matches or a fresh hash does.
    async fn is_verified(&self, blob: &Path, file: &ModelFile) -> bool {
        let Ok(meta) = tokio::fs::metadata(blob).await else {
            return false;
        };
        if meta.len() != file.size {
            return false;
        }
        let marker = tokio::fs::read_to_string(marker_path(blob))
            .await
            .unwrap_or_default();
        if marker == stamp(&meta) {
            return true;
        }
        let (path, expected) = (blob.to_path_buf(), file.sha256.clone());
        let matches =
            tokio::task::spawn_blocking(move || sha256_of(&path).is_ok_and(|d| d == expected))
                .await
                .unwrap_or(false);
        matches && self.mark_verified(blob).await.is_ok()
    }

    async fn mark_verified(&self, blob: &Path) -> std::io::Result<()> {
        let meta = tokio::fs::metadata(blob).await?;
        tokio::fs::write(marker_path(blob), stamp(&meta)).await
    }
}

fn marker_path(blob: &Path) -> PathBuf {
    blob.with_extension("ok")
}

/// What must not change for a verified file to stay verified.
fn stamp(meta: &std::fs::Metadata) -> String {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{} {modified}", meta.len())
}
