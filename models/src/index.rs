//! [`ManifestIndex`]: the bucket's manifests held in memory and kept fresh cheaply (only
//! manifests whose version (ETag, size, time) changed are read again), and the
//! [`ModelCatalogue`] snapshot made from them for front ends. Whoever holds the index (the
//! worker) publishes the snapshot.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ducks_contract::ModelCatalogue;
use tracing::{info, warn};

use crate::bucket::{self, LoadError};
use crate::manifest::ModelManifest;
use crate::storage::{Storage, StorageError};

/// The manifests known, by model id. Cheap to clone; clones share one map.
#[derive(Clone, Default)]
pub struct ManifestIndex {
    inner: Arc<RwLock<Known>>,
}

/// One manifest and what identifies the version it was read from.
struct Entry {
    version: String,
    /// When the manifest was written to the bucket (Unix seconds), if the listing said.
    modified_secs: Option<u64>,
    manifest: ModelManifest,
}

#[derive(Default)]
struct Known {
    models: HashMap<String, Entry>,
    /// Whether one refresh has completed (readiness).
    loaded: bool,
    /// Something changed since the snapshot was last published to Redis.
    unpublished: bool,
}

/// What a job's model resolves to.
pub enum Lookup {
    Found(Box<ModelManifest>),
    /// Unknown: the id looked for (`None` when no model was asked for and none is the default)
    /// and the ids that exist, sorted, for the message.
    Unknown {
        id: Option<String>,
        available: Vec<String>,
    },
}

impl ManifestIndex {
    pub fn is_loaded(&self) -> bool {
        self.read().loaded
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().models.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The model a job asked for (or the default), looking in S3 once more when it is not known
    /// yet, so a model imported a moment ago works without waiting for the next refresh.
    pub async fn lookup(
        &self,
        storage: &Storage,
        requested: Option<&str>,
        default_model: &str,
    ) -> Result<Lookup, StorageError> {
        // The catalogue's only model is the default: know the catalogue before choosing it.
        if requested.is_none() && default_model.is_empty() && !self.is_loaded() {
            self.refresh(storage).await?;
        }
        let id = match requested {
            Some(id) => id.to_owned(),
            None if !default_model.is_empty() => default_model.to_owned(),
            None => match self.ids().as_slice() {
                [only] => only.clone(),
                others => {
                    return Ok(Lookup::Unknown {
                        id: None,
                        available: others.to_vec(),
                    });
                }
            },
        };
        if let Some(entry) = self.read().models.get(&id) {
            return Ok(Lookup::Found(Box::new(entry.manifest.clone())));
        }
        match bucket::load(storage, &id).await {
            Ok(manifest) => {
                let mut known = self.write();
                let entry = Entry {
                    version: String::new(),
                    modified_secs: None,
                    manifest: manifest.clone(),
                };
                known.models.insert(id, entry);
                known.unpublished = true;
                Ok(Lookup::Found(Box::new(manifest)))
            }
            Err(LoadError::Storage(e)) => Err(e),
            Err(_) => Ok(Lookup::Unknown {
                id: Some(id),
                available: self.ids(),
            }),
        }
    }

    /// Reads the manifests that changed since the last refresh and drops the removed ones.
    /// Returns whether anything changed.
    pub async fn refresh(&self, storage: &Storage) -> Result<bool, StorageError> {
        let listed: HashMap<String, (String, Option<u64>)> = storage
            .list_objects("models/")
            .await?
            .into_iter()
            .filter_map(|object| {
                let id = object
                    .key
                    .strip_prefix("models/")?
                    .strip_suffix("/model.toml")?
                    .to_owned();
                Some((id, (object.version(), object.modified_secs)))
            })
            .collect();
        let stale: Vec<String> = {
            let known = self.read();
            listed
                .iter()
                .filter(|(id, (version, _))| {
                    known
                        .models
                        .get(*id)
                        .is_none_or(|seen| &seen.version != version)
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut fresh = Vec::new();
        for id in stale {
            match bucket::load(storage, &id).await {
                Ok(manifest) => {
                    let (version, modified_secs) = listed[&id].clone();
                    let entry = Entry {
                        version,
                        modified_secs,
                        manifest,
                    };
                    fresh.push((id.clone(), entry))
                }
                Err(LoadError::Storage(e)) => return Err(e),
                Err(e) => {
                    warn!(message = "Skipped a model whose manifest cannot be used.", model = %id, error = %e)
                }
            }
        }
        let mut known = self.write();
        let before = known.models.len();
        known.models.retain(|id, _| listed.contains_key(id));
        let changed = !fresh.is_empty() || known.models.len() != before || !known.loaded;
        for (id, entry) in fresh {
            info!(message = "Loaded a model manifest.", model = %id);
            known.models.insert(id, entry);
        }
        known.loaded = true;
        known.unpublished |= changed;
        Ok(changed)
    }

    /// The snapshot front ends read, stamped `updated_at_ms`.
    pub fn snapshot(&self, default_model: &str, updated_at_ms: u64) -> ModelCatalogue {
        let known = self.read();
        let mut models: Vec<_> = known
            .models
            .values()
            .map(|entry| {
                let mut info = entry.manifest.info();
                info.added_at_secs = entry.modified_secs;
                info
            })
            .collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        let default_model = if default_model.is_empty() && models.len() == 1 {
            Some(models[0].id.clone())
        } else {
            Some(default_model.to_owned()).filter(|d| !d.is_empty())
        };
        ModelCatalogue {
            default_model,
            models,
            updated_at_ms,
        }
    }

    /// Whether something changed since the snapshot was last taken for publishing; clears the
    /// mark. A publisher that fails calls [`ManifestIndex::mark_unpublished`] to try again.
    pub fn take_unpublished(&self) -> bool {
        std::mem::take(&mut self.write().unpublished)
    }

    pub fn mark_unpublished(&self) {
        self.write().unpublished = true;
    }

    /// Refreshes from S3, then the snapshot to publish when something changed since the last
    /// one was taken. A caller whose publishing fails calls [`ManifestIndex::mark_unpublished`].
    pub async fn changed_snapshot(
        &self,
        storage: &Storage,
        default_model: &str,
        updated_at_ms: u64,
    ) -> Result<Option<ModelCatalogue>, StorageError> {
        self.refresh(storage).await?;
        Ok(self
            .take_unpublished()
            .then(|| self.snapshot(default_model, updated_at_ms)))
    }
}
