//! The Job for one DUCKS job: a pure function of the launch, the S3 settings and the cluster's
//! settings, with snapshot tests of its YAML. See docs/kubernetes.md for the fields and why.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    HostPathVolumeSource, LocalObjectReference, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use ducks_contract::{JobId, RunFailure, Secret};
use ducks_models::S3Config;

use super::KubeConfig;
use crate::launcher::{LaunchSpec, RunnerPaths, runner_env};

/// The runner's container name, which the pod failure policy and log reads refer to.
pub const CONTAINER: &str = "runner";
/// Labels every managed Job and pod carries; the worker watches by these.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ducks-worker");
pub const JOB_ID_LABEL: &str = "ducks.dev/job-id";
pub const MODEL_LABEL: &str = "ducks.dev/model";
/// The user the runner image runs as (docker/runner.Dockerfile).
/// What the runner container runs: `ducks runner`, the image's entrypoint being `ducks`.
pub const RUNNER_COMMAND: &str = "runner";
const RUNNER_UID: i64 = 10001;
const TERMINATION_LOG: &str = "/dev/termination-log";

/// The Job's name: derived from the job id, so creating it twice answers 409 and the worker
/// adopts the first.
pub fn job_name(id: &JobId) -> String {
    format!("ducks-{id}")
}

/// The Job that runs `launch`. S3 keys never appear in it: they come from `kube.s3_secret` or the
/// service account.
pub fn job_for(launch: &LaunchSpec, s3: &S3Config, output_prefix: &str, kube: &KubeConfig) -> Job {
    let compute = &launch.compute;
    let mut labels = kube.labels.clone();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert("app.kubernetes.io/component".into(), "runner".into());
    labels.insert(JOB_ID_LABEL.into(), launch.job_id.to_string());
    labels.insert(MODEL_LABEL.into(), launch.job.model.clone());
    let mut job_labels = labels.clone();
    if !kube.kueue_queue.is_empty() {
        job_labels.insert("kueue.x-k8s.io/queue-name".into(), kube.kueue_queue.clone());
    }
    let annotations = (!kube.annotations.is_empty()).then(|| kube.annotations.clone());

    let s3_without_keys = S3Config {
        access_key_id: String::new(),
        secret_access_key: Secret::default(),
        ..s3.clone()
    };
    let paths = RunnerPaths {
        cache_dir: &kube.cache.mount_path,
        output_prefix,
        termination_log: TERMINATION_LOG,
    };
    let env = runner_env(launch, &s3_without_keys, &paths)
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            ..EnvVar::default()
        })
        .collect();

    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if compute.gpus > 0 {
        limits.insert(
            kube.gpu_resource.clone(),
            Quantity(compute.gpus.to_string()),
        );
    }
    limits.insert("memory".into(), Quantity(compute.memory.clone()));
    requests.insert("memory".into(), Quantity(compute.memory.clone()));
    requests.insert("cpu".into(), Quantity(compute.cpu.clone()));

    let container = Container {
        name: CONTAINER.into(),
        image: Some(
            compute
                .runner_image
                .clone()
                .unwrap_or_else(|| kube.runner_image.clone()),
        ),
        image_pull_policy: Some(kube.image_pull_policy.clone()),
        // Both images' entrypoint is the `ducks` binary (docker/*.Dockerfile), so a cluster
        // without GPUs can run its runners on the slim image.
        args: Some(vec![RUNNER_COMMAND.into()]),
        env: Some(env),
        env_from: (!kube.s3_secret.is_empty()).then(|| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: kube.s3_secret.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            }]
        }),
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            requests: Some(requests),
            ..ResourceRequirements::default()
        }),
        termination_message_path: Some(TERMINATION_LOG.into()),
        // The runner writes its result there; a runner killed before it could gets its log tail.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("tmp", "/tmp"),
            mount("shm", "/dev/shm"),
            mount("cache", &kube.cache.mount_path),
        ]),
        ..Container::default()
    };

    let cache = if kube.cache.claim.is_empty() {
        Volume {
            name: "cache".into(),
            host_path: Some(HostPathVolumeSource {
                path: kube.cache.host_path.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        }
    } else {
        Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: kube.cache.claim.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        }
    };
    let volumes = vec![
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "shm".into(),
            // A memory-backed /dev/shm (the container default is 64 MiB); counted against the
            // pod's memory.
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        cache,
    ];

    let gpu = compute.gpus > 0;
    let mut node_selector = kube.node_selector.clone();
    if gpu && let [product] = compute.gpu_products.as_slice() {
        node_selector.insert(kube.gpu_product_label.clone(), product.clone());
    }
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        service_account_name: Some(kube.service_account.clone()).filter(|s| !s.is_empty()),
        runtime_class_name: Some(kube.runtime_class.clone()).filter(|s| gpu && !s.is_empty()),
        priority_class_name: Some(kube.priority_class.clone()).filter(|s| !s.is_empty()),
        image_pull_secrets: (!kube.image_pull_secrets.is_empty()).then(|| {
            kube.image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        affinity: gpu_affinity(launch, kube),
        tolerations: gpu.then(|| kube.gpu_tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            fs_group: Some(RUNNER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };

    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&launch.job_id)),
            namespace: Some(kube.namespace.clone()),
            labels: Some(job_labels),
            annotations: annotations.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(kube.backoff_limit),
            active_deadline_seconds: Some(launch.timeout.as_secs() as i64),
            ttl_seconds_after_finished: Some(kube.ttl_seconds_after_finished),
            suspend: (!kube.kueue_queue.is_empty()).then_some(true),
            pod_failure_policy: Some(failure_policy()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// A bad request fails the Job at once (retrying cannot help); a disruption (preemption, drain)
/// does not count as a failure.
fn failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.into()),
                    operator: "In".into(),
                    values: vec![RunFailure::BadRequest.exit_code() as i32],
                }),
                ..PodFailurePolicyRule::default()
            },
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                ..PodFailurePolicyRule::default()
            },
        ],
    }
}

/// Node affinity for "any of these GPU products" and "at least N GiB per GPU".
fn gpu_affinity(launch: &LaunchSpec, kube: &KubeConfig) -> Option<Affinity> {
    let compute = &launch.compute;
    if compute.gpus == 0 {
        return None;
    }
    let mut requirements = Vec::new();
    if compute.gpu_products.len() > 1 {
        requirements.push(NodeSelectorRequirement {
            key: kube.gpu_product_label.clone(),
            operator: "In".into(),
            values: Some(compute.gpu_products.clone()),
        });
    }
    if compute.min_gpu_memory_gib > 0 {
        // The label is in MiB; `Gt` is strict.
        let at_least_mib = u64::from(compute.min_gpu_memory_gib) * 1024;
        requirements.push(NodeSelectorRequirement {
            key: kube.gpu_memory_label.clone(),
            operator: "Gt".into(),
            values: Some(vec![(at_least_mib - 1).to_string()]),
        });
    }
    (!requirements.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(requirements),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    })
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ducks_contract::{GenerateParams, RunnerJob};

    use super::*;
    use crate::sizing::Compute;

    fn launch(model: &str, compute: Compute) -> LaunchSpec {
        let id: JobId = "01a226d6-0219-7436-b43c-17e9349dd8dd".parse().unwrap();
        let job = RunnerJob {
            job_id: id.clone(),
            model: model.into(),
            params: GenerateParams {
                prompt: "a duck in space".into(),
                negative_prompt: String::new(),
                width: 512,
                height: 512,
                steps: 1,
                guidance: 0.0,
                seed: 42,
                count: 1,
            },
        };
        LaunchSpec {
            job_id: id,
            job,
            compute,
            timeout: Duration::from_secs(900),
        }
    }

    fn s3() -> S3Config {
        S3Config {
            endpoint: String::new(),
            region: "eu-west-1".into(),
            bucket: "ducks-images".into(),
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Secret::new("never-in-a-job"),
            force_path_style: false,
        }
    }

    /// S3 keys come from a Secret or the service account, never from the Job itself.
    fn assert_no_keys(job: &Job) {
        let rendered = format!("{job:?}");
        assert!(!rendered.contains("never-in-a-job") && !rendered.contains("AKIAEXAMPLE"));
    }

    #[test]
    fn tiny_sd_on_cpu_asks_for_no_gpu() {
        let compute = Compute {
            gpus: 0,
            min_gpu_memory_gib: 0,
            gpu_products: vec![],
            cpu: "1".into(),
            memory: "1Gi".into(),
            runner_image: None,
        };
        let job = job_for(
            &launch("tiny-sd", compute),
            &s3(),
            "images",
            &KubeConfig::default(),
        );
        assert_no_keys(&job);
        insta::assert_yaml_snapshot!(job);
    }

    #[test]
    fn sd_turbo_on_one_gpu_of_a_named_product() {
        let compute = Compute {
            gpus: 1,
            min_gpu_memory_gib: 8,
            gpu_products: vec!["NVIDIA-L4".into()],
            cpu: "4".into(),
            memory: "16Gi".into(),
            runner_image: None,
        };
        let kube = KubeConfig {
            runtime_class: "nvidia".into(),
            s3_secret: "ducks-s3".into(),
            ..KubeConfig::default()
        };
        let job = job_for(&launch("sd-turbo", compute), &s3(), "images", &kube);
        assert_no_keys(&job);
        insta::assert_yaml_snapshot!(job);
    }

    #[test]
    fn sdxl_through_kueue_with_irsa_a_cache_claim_and_overrides() {
        let compute = Compute {
            gpus: 1,
            min_gpu_memory_gib: 24,
            gpu_products: vec!["NVIDIA-A10G".into(), "NVIDIA-L40S".into()],
            cpu: "8".into(),
            memory: "32Gi".into(),
            runner_image: Some("registry.example.com/ducks-runner:xl".into()),
        };
        let kube = KubeConfig {
            namespace: "images".into(),
            image_pull_secrets: vec!["registry".into()],
            labels: BTreeMap::from([("team".into(), "art".into())]),
            annotations: BTreeMap::from([("cost-center".into(), "42".into())]),
            priority_class: "interactive".into(),
            node_selector: BTreeMap::from([("karpenter.sh/nodepool".into(), "gpu".into())]),
            kueue_queue: "gpu-queue".into(),
            service_account: "ducks-runner".into(),
            gpu_resource: "nvidia.com/mig-3g.40gb".into(),
            cache: super::super::CacheVolume {
                claim: "ducks-weights".into(),
                ..Default::default()
            },
            ..KubeConfig::default()
        };
        let job = job_for(&launch("sdxl", compute), &s3(), "images", &kube);
        assert_no_keys(&job);
        insta::assert_yaml_snapshot!(job);
    }

    #[test]
    fn names_derive_from_the_job_id() {
        let id: JobId = "01a226d6-0219-7436-b43c-17e9349dd8dd".parse().unwrap();
        assert_eq!(job_name(&id), "ducks-01a226d6-0219-7436-b43c-17e9349dd8dd");
        assert!(job_name(&id).len() <= 63, "a DNS label");
    }
}
