//! What clusters differ in, for the Jobs the worker creates.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use serde::{Deserialize, Serialize};

use super::classify::Budgets;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// Where the Jobs go.
    pub namespace: String,
    /// The runner image, unless the model's manifest names its own. Pin it by digest or tag.
    pub runner_image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// Secrets for a private registry: a list in `ducks.toml`, comma-separated in the
    /// environment.
    #[serde(deserialize_with = "list_or_commas")]
    pub image_pull_secrets: Vec<String>,
    /// Extra labels and annotations on every Job and its pod (cost allocation, policies).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// A PriorityClass for runner pods; empty for none.
    pub priority_class: String,
    /// A RuntimeClass such as `nvidia` (the GPU operator creates it); empty for the default.
    pub runtime_class: String,
    /// Node labels every runner pod requires.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for GPU pods; by default the `nvidia.com/gpu` taint GPU node pools carry.
    pub gpu_tolerations: Vec<Toleration>,
    /// The extended resource one GPU is (`nvidia.com/gpu`, or a MIG profile such as
    /// `nvidia.com/mig-1g.10gb`).
    pub gpu_resource: String,
    /// Node label holding the GPU product name (GPU Feature Discovery's).
    pub gpu_product_label: String,
    /// Node label holding each GPU's memory in MiB (GPU Feature Discovery's).
    pub gpu_memory_label: String,
    /// Kueue's LocalQueue for the Jobs; when set, Jobs are created suspended for Kueue to admit.
    pub kueue_queue: String,
    /// Pod retries by the Job controller; 0, because the queue retries with its own backoff.
    pub backoff_limit: i32,
    /// How long a finished Job stays before the TTL controller removes it.
    pub ttl_seconds_after_finished: i32,
    /// The weight cache the runners of one node share.
    pub cache: CacheVolume,
    /// A Secret whose keys become the runner's environment (`DUCKS_S3__ACCESS_KEY_ID`,
    /// `DUCKS_S3__SECRET_ACCESS_KEY`); empty when a service account grants S3 (IRSA).
    pub s3_secret: String,
    /// The runner pods' service account, for IRSA or workload identity; empty for none (and then
    /// no token is mounted at all).
    pub service_account: String,
    /// How long a pod may wait for a GPU (unschedulable) before the job fails with "no GPU
    /// capacity".
    pub scheduling_budget_secs: u64,
    /// How long the runner image may fail to pull before the job fails (the Job controller never
    /// gives up on these by itself).
    pub image_pull_budget_secs: u64,
}

/// Where a node's weight cache lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheVolume {
    /// A folder on the node (created if missing); used when `claim` is empty.
    pub host_path: String,
    /// A PersistentVolumeClaim instead (ReadWriteMany, or one per node pool).
    pub claim: String,
    /// Where the runner sees it.
    pub mount_path: String,
}

impl KubeConfig {
    pub fn budgets(&self) -> Budgets {
        Budgets {
            scheduling: Duration::from_secs(self.scheduling_budget_secs),
            image_pull: Duration::from_secs(self.image_pull_budget_secs),
        }
    }
}

impl Default for CacheVolume {
    fn default() -> Self {
        Self {
            host_path: "/var/cache/ducks".into(),
            claim: String::new(),
            mount_path: "/var/cache/ducks".into(),
        }
    }
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            namespace: "ducks".into(),
            runner_image: "ghcr.io/ducks-dev/ducks-runner:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            image_pull_secrets: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            priority_class: String::new(),
            runtime_class: String::new(),
            node_selector: BTreeMap::new(),
            gpu_tolerations: vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }],
            gpu_resource: "nvidia.com/gpu".into(),
            gpu_product_label: "nvidia.com/gpu.product".into(),
            gpu_memory_label: "nvidia.com/gpu.memory".into(),
            kueue_queue: String::new(),
            backoff_limit: 0,
            ttl_seconds_after_finished: 600,
            cache: CacheVolume::default(),
            s3_secret: String::new(),
            service_account: String::new(),
            scheduling_budget_secs: 300,
            image_pull_budget_secs: 180,
        }
    }
}

/// A list of names, or one string of comma-separated names (how an environment variable holds a
/// list); empty names are dropped.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Commas(String),
    }
    let names = match Names::deserialize(deserializer)? {
        Names::List(names) => names,
        Names::Commas(text) => text.split(',').map(|s| s.trim().to_owned()).collect(),
    };
    Ok(names.into_iter().filter(|name| !name.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secrets_are_a_list_or_comma_separated() {
        let parse = |json: serde_json::Value| -> Vec<String> {
            serde_json::from_value::<KubeConfig>(serde_json::json!({"image_pull_secrets": json}))
                .unwrap()
                .image_pull_secrets
        };
        assert_eq!(parse(serde_json::json!(["a", "b"])), ["a", "b"]);
        assert_eq!(parse(serde_json::json!("a, b")), ["a", "b"]);
        assert!(parse(serde_json::json!("")).is_empty());
    }
}
