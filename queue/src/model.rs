//! What front ends need to list models and check requests against them.

use serde::{Deserialize, Serialize};

/// One model of the catalogue, as the worker publishes it into Redis from the manifests in S3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Pipeline family, e.g. `sd15`, `sdxl`, `sd-turbo`.
    pub family: String,
    pub default_width: u32,
    pub default_height: u32,
    pub default_steps: u32,
    pub default_guidance: f32,
    pub max_width: u32,
    pub max_height: u32,
    pub max_images: u32,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The catalogue snapshot kept in Redis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCatalogue {
    /// The model used when a request names none.
    pub default_model: Option<String>,
    pub models: Vec<ModelInfo>,
    /// Unix time in milliseconds when the worker last refreshed it.
    pub updated_at_ms: u64,
}

impl ModelCatalogue {
    pub fn get(&self, id: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|model| model.id == id)
    }
}
