//! The worker's copy of the model catalogue: manifests read from S3, kept fresh cheaply (only
//! manifests whose version (ETag, size, time) changed are read again), and published to Redis for
//! front ends.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ducks_queue::{ModelCatalogue, Queue, queue::now_ms};
use ducks_runner::catalogue::{self as bucket_catalogue, CatalogueError};
use ducks_runner::manifest::ModelManifest;
use ducks_runner::storage::{Storage, StorageError};
use tracing::{info, warn};

/// The manifests this worker knows, by model id. Cheap to clone; clones share one map.
#[derive(Clone, Default)]
pub struct Catalogue {
    inner: Arc<RwLock<Known>>,
}

#[derive(Default)]
struct Known {
    /// Model id → (manifest version, manifest).
    models: HashMap<String, (String, ModelManifest)>,
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

impl Catalogue {
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
        if let Some((_, manifest)) = self.read().models.get(&id) {
            return Ok(Lookup::Found(Box::new(manifest.clone())));
        }
        match bucket_catalogue::load(storage, &id).await {
            Ok(manifest) => {
                let mut known = self.write();
                known.models.insert(id, (String::new(), manifest.clone()));
                known.unpublished = true;
                Ok(Lookup::Found(Box::new(manifest)))
            }
            Err(CatalogueError::Storage(e)) => Err(e),
            Err(_) => Ok(Lookup::Unknown {
                id: Some(id),
                available: self.ids(),
            }),
        }
    }

    /// Reads the manifests that changed since the last refresh and drops the removed ones.
    /// Returns whether anything changed.
    pub async fn refresh(&self, storage: &Storage) -> Result<bool, StorageError> {
        let listed: HashMap<String, String> = storage
            .list_objects("models/")
            .await?
            .into_iter()
            .filter_map(|object| {
                let id = object
                    .key
                    .strip_prefix("models/")?
                    .strip_suffix("/model.toml")?
                    .to_owned();
                Some((id, object.version()))
            })
            .collect();
        let stale: Vec<String> = {
            let known = self.read();
            listed
                .iter()
                .filter(|(id, etag)| known.models.get(*id).is_none_or(|(seen, _)| seen != *etag))
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut fresh = Vec::new();
        for id in stale {
            match bucket_catalogue::load(storage, &id).await {
                Ok(manifest) => fresh.push((id.clone(), listed[&id].clone(), manifest)),
                Err(CatalogueError::Storage(e)) => return Err(e),
                Err(e) => {
                    warn!(message = "Skipped a model whose manifest cannot be used.", model = %id, error = %e)
                }
            }
        }
        let mut known = self.write();
        let before = known.models.len();
        known.models.retain(|id, _| listed.contains_key(id));
        let changed = !fresh.is_empty() || known.models.len() != before || !known.loaded;
        for (id, etag, manifest) in fresh {
            info!(message = "Loaded a model manifest.", model = %id);
            known.models.insert(id, (etag, manifest));
        }
        known.loaded = true;
        known.unpublished |= changed;
        Ok(changed)
    }

    /// The snapshot front ends read.
    pub fn snapshot(&self, default_model: &str) -> ModelCatalogue {
        let known = self.read();
        let mut models: Vec<_> = known.models.values().map(|(_, m)| m.info()).collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        let default_model = if default_model.is_empty() && models.len() == 1 {
            Some(models[0].id.clone())
        } else {
            Some(default_model.to_owned()).filter(|d| !d.is_empty())
        };
        ModelCatalogue {
            default_model,
            models,
            updated_at_ms: now_ms(),
        }
    }

    /// Refreshes from S3 and, when something changed, publishes the snapshot to Redis.
    pub async fn sync(
        &self,
        storage: &Storage,
        queue: &Queue,
        default_model: &str,
    ) -> Result<(), SyncError> {
        self.refresh(storage).await?;
        // A change a lookup's refresh saw, or one whose publish failed, is published now.
        let pending = std::mem::take(&mut self.write().unpublished);
        if pending && let Err(e) = queue.publish_models(&self.snapshot(default_model)).await {
            self.write().unpublished = true;
            return Err(e.into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Queue(#[from] ducks_queue::QueueError),
}
