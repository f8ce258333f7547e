//! The Kubernetes launcher end to end: real Redis, the embedded S3 server, the worker with its
//! production `KubeLauncher` talking to the Kubernetes API simulator through an ordinary `kube`
//! client, and the simulator's kubelet running the real `ducks runner` with the pod's environment.

use std::collections::BTreeMap;
use std::time::Duration;

use ducks_contract::links::LinkConfig;
use ducks_contract::{Caller, EventKind, FailureCode, JobId, JobPhase, JobRequest};
use ducks_models::{S3Config, Storage};
use ducks_queue::Queue;
use ducks_tests::{
    KubeApi, KubeFault, Kubelet, PodBehaviour, RedisServer, S3Server, ducks_binary, http_get,
    s3_env,
};
use ducks_worker::kube::{KubeConfig, KubeLauncher, rbac, spec};
use ducks_worker::{RunningWorker, WorkerConfig};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, PostParams};

use crate::support::{
    GATE_LIMIT, JOB_LIMIT, WEIGHT_KEY, events_of, events_until_end, eventually, png_size, queue_on,
    quick, submit, terminal, tiny_bucket, worker_queue_config,
};

const NS: &str = "ducks";
const S3_SECRET: &str = "ducks-s3";

/// Redis, S3 with tiny-sd, and a simulated cluster whose kubelet runs the real runner.
struct World {
    redis: RedisServer,
    s3: S3Server,
    s3_config: S3Config,
    storage: Storage,
    queue: Queue,
    api: KubeApi,
    scratch: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let redis = RedisServer::start().await;
        let (s3, s3_config, storage) = tiny_bucket().await;
        let queue = queue_on(&redis, worker_queue_config()).await;
        let api = KubeApi::start().await;
        api.set_kubelet(Kubelet {
            entrypoint: vec![ducks_binary().into(), "runner".into()],
            root: scratch.path().join("node"),
            env: std::env::var("PATH")
                .map(|path| vec![("PATH".to_owned(), path)])
                .unwrap_or_default(),
        });
        // The S3 keys reach the runner only through the Secret, as in a cluster.
        api.put_secret(
            NS,
            S3_SECRET,
            BTreeMap::from([
                (
                    "DUCKS_S3__ACCESS_KEY_ID".to_owned(),
                    s3_config.access_key_id.clone(),
                ),
                (
                    "DUCKS_S3__SECRET_ACCESS_KEY".to_owned(),
                    s3_config.secret_access_key.expose().to_owned(),
                ),
            ]),
        );
        api.set_default_pod_behaviour(PodBehaviour::Run);
        // The worker gets exactly the Role it ships with.
        api.enforce_rbac(rbac::required_rules());
        Self {
            redis,
            s3,
            s3_config,
            storage,
            queue,
            api,
            scratch,
        }
    }

    fn kube_config(&self) -> KubeConfig {
        KubeConfig {
            namespace: NS.into(),
            runner_image: "ducks-runner:test".into(),
            s3_secret: S3_SECRET.into(),
            scheduling_budget_secs: 1,
            image_pull_budget_secs: 1,
            ..KubeConfig::default()
        }
    }

    fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            concurrency: 2,
            progress_interval_ms: 0,
            job_timeout_secs: JOB_LIMIT.as_secs(),
            listen: String::new(),
            kubernetes: self.kube_config(),
            ..WorkerConfig::default()
        }
    }

    async fn start_worker(&self, config: WorkerConfig, name: &str) -> RunningWorker {
        let launcher = KubeLauncher::start(
            self.api.client(),
            config.kubernetes.clone(),
            self.s3_config.clone(),
            "images".into(),
        );
        assert!(
            launcher.synced(Duration::from_secs(10)).await,
            "the launcher lists the cluster"
        );
        let queue = queue_on(&self.redis, worker_queue_config()).await;
        let config = WorkerConfig {
            name: name.into(),
            ..config
        };
        RunningWorker::with_launcher(
            queue,
            self.storage.clone(),
            launcher,
            config,
            &LinkConfig::default(),
        )
        .await
        .unwrap()
    }

    async fn submit(&self, job: JobRequest) -> JobId {
        submit(&self.queue, job).await
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.api.client(), NS)
    }
}

#[tokio::test]
async fn a_job_runs_as_a_kubernetes_job_and_returns_a_working_link() {
    let world = World::new().await;
    rbac::check(&world.api.client(), NS)
        .await
        .expect("the declared Role is enough");
    let worker = world.start_worker(world.worker_config(), "w1").await;
    let watches = world.api.open_watches();
    assert_eq!(watches, 3, "one watch each for Jobs, pods and events");

    let id = world.submit(quick("a duck in space")).await;
    let events = events_until_end(&world.queue, &id).await;

    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::Progress { step: 1, total: 1 })),
        "progress comes from the pod's log: {events:?}"
    );
    let EventKind::Succeeded { images, .. } = terminal(&events) else {
        panic!("not a success: {events:?}");
    };
    let response = http_get(&images[0].url).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(png_size(&response.body), (64, 64));

    // The Job is the one the spec builds, as the API server stored it.
    let job = world.api.job(NS, &spec::job_name(&id));
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels[spec::JOB_ID_LABEL], id.as_str());
    assert_eq!(labels[spec::MODEL_LABEL], "tiny-sd");
    assert_eq!(labels[spec::MANAGED_BY.0], spec::MANAGED_BY.1);
    let job_spec = job.spec.unwrap();
    assert_eq!(job_spec.backoff_limit, Some(0));
    assert_eq!(
        job_spec.active_deadline_seconds,
        Some(JOB_LIMIT.as_secs() as i64)
    );
    assert!(job_spec.pod_failure_policy.is_some());
    let container = &job_spec.template.spec.unwrap().containers[0];
    let env = container.env.clone().unwrap();
    assert!(
        env.iter().all(|e| !e.name.contains("SECRET_ACCESS_KEY")),
        "S3 keys come from the Secret, never the Job"
    );
    assert_eq!(
        container.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        S3_SECRET
    );

    // One create and one log stream for the job; watches stay three; a succeeded Job is left to
    // its TTL, so no delete.
    assert_eq!(world.api.requests("create", "jobs"), 1);
    assert_eq!(world.api.requests("get", "pods/log"), 1);
    assert_eq!(world.api.requests("delete", "jobs"), 0);
    assert_eq!(world.api.open_watches(), 3);
    let metrics = worker.stop().await.unwrap();
    assert_eq!(
        (metrics.launches_total(false), metrics.launches_total(true)),
        (1, 0)
    );
}

/// A Discord job's interaction token is a credential: the Job the API server stores (and so its
/// pod, built from it) never carries it, whoever can read Jobs in the namespace.
#[tokio::test]
async fn an_interaction_token_never_reaches_the_job_spec() {
    const TOKEN: &str = "interaction-token-that-must-stay-with-the-bot";
    let world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w1").await;
    let mut job = quick("a duck from discord");
    job.origin = ducks_contract::Origin::Discord {
        application_id: "1".into(),
        interaction_token: ducks_contract::Secret::new(TOKEN),
        channel_id: "2".into(),
        guild_id: Some("3".into()),
    };
    let id = world.submit(job).await;
    let name = spec::job_name(&id);
    crate::support::eventually(JOB_LIMIT, "the Job is created", || async {
        world.api.jobs_created(NS, &name) == 1
    })
    .await;
    let stored = serde_json::to_string(&world.api.job(NS, &name)).unwrap();
    assert!(
        stored.contains(id.as_str()),
        "the Job is this job's: {stored}"
    );
    assert!(
        !stored.contains(TOKEN),
        "the token leaked into the Job: {stored}"
    );
    worker.stop().await.unwrap();
}

/// One failure the cluster can show, and what the user must see.
struct Case {
    name: &'static str,
    behaviour: Option<PodBehaviour>,
    refuse: Option<&'static str>,
    code: FailureCode,
    /// A retryable failure is retried once (max_retries 1) with a fresh Job.
    retryable: bool,
    says: &'static str,
}

#[tokio::test]
async fn every_failure_class_reaches_the_user_with_its_retry_decision() {
    let world = World::new().await;
    let mut config = world.worker_config();
    config.job_timeout_secs = 4;
    let worker = world.start_worker(config, "w1").await;
    let bad_request = r#"{"event":"error","failure":"bad_request","exit_code":2,"message":"The size is too big."}"#;
    let cases = [
        Case {
            name: "bad request",
            behaviour: Some(PodBehaviour::Exit {
                code: 2,
                log: format!("{bad_request}\n"),
                message: bad_request.into(),
            }),
            refuse: None,
            code: FailureCode::InvalidRequest,
            retryable: false,
            says: "too big",
        },
        Case {
            name: "crash",
            behaviour: Some(PodBehaviour::Exit {
                code: 101,
                log: "thread 'main' panicked at src/main.rs\n".into(),
                message: String::new(),
            }),
            refuse: None,
            code: FailureCode::RunnerCrashed,
            retryable: true,
            says: "",
        },
        Case {
            name: "out of memory",
            behaviour: Some(PodBehaviour::OomKilled),
            refuse: None,
            code: FailureCode::OutOfMemory,
            retryable: false,
            says: "memory",
        },
        Case {
            name: "no free GPU",
            behaviour: Some(PodBehaviour::Unschedulable {
                message: "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into(),
            }),
            refuse: None,
            code: FailureCode::NoGpuCapacity,
            retryable: true,
            says: "GPU",
        },
        Case {
            name: "no node fits",
            behaviour: Some(PodBehaviour::Unschedulable {
                message:
                    "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
                        .into(),
            }),
            refuse: None,
            code: FailureCode::NoGpuCapacity,
            retryable: false,
            says: "No node in the cluster can run this model",
        },
        Case {
            name: "image cannot be pulled",
            behaviour: Some(PodBehaviour::ImagePull {
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image \"ducks-runner:test\"".into(),
            }),
            refuse: None,
            code: FailureCode::ImagePullFailed,
            retryable: false,
            says: "cannot be pulled",
        },
        Case {
            name: "invalid image",
            behaviour: Some(PodBehaviour::ImagePull {
                reason: "InvalidImageName".into(),
                message: "couldn't parse image name".into(),
            }),
            refuse: None,
            code: FailureCode::ImagePullFailed,
            retryable: false,
            says: "an invalid reference",
        },
        Case {
            name: "GPU fault on the node",
            behaviour: Some(PodBehaviour::AdmissionError),
            refuse: None,
            code: FailureCode::Interrupted,
            retryable: true,
            says: "GPU",
        },
        Case {
            name: "quota",
            behaviour: None,
            refuse: Some(
                "Error creating: pods \"x\" is forbidden: exceeded quota: gpu, requested: requests.nvidia.com/gpu=1",
            ),
            code: FailureCode::Refused,
            retryable: true,
            says: "GPU quota is used up",
        },
        Case {
            name: "admission",
            behaviour: None,
            refuse: Some("Error creating: admission webhook \"policy\" denied the request"),
            code: FailureCode::Refused,
            retryable: false,
            says: "refused to start the image generator",
        },
        Case {
            name: "deadline",
            behaviour: Some(PodBehaviour::Hang),
            refuse: None,
            code: FailureCode::DeadlineExceeded,
            retryable: false,
            says: "",
        },
    ];
    for case in cases {
        world.api.refuse_pods(case.refuse.map(String::from));
        if let Some(behaviour) = case.behaviour.clone() {
            world.api.set_default_pod_behaviour(behaviour);
        }
        let id = world.submit(quick(case.name)).await;
        let events = events_until_end(&world.queue, &id).await;
        let EventKind::Failed { code, message, .. } = terminal(&events) else {
            panic!("{}: not a failure: {events:?}", case.name);
        };
        assert_eq!(*code, case.code, "{}: {message}", case.name);
        assert!(
            message.contains(case.says),
            "{}: the message says why: {message}",
            case.name
        );
        let retried = events
            .iter()
            .any(|e| matches!(e, EventKind::Retrying { .. }));
        assert_eq!(retried, case.retryable, "{}: {events:?}", case.name);
        // A retry never adopts the failed Job: it was deleted, and a fresh one made.
        let created = world.api.jobs_created(NS, &spec::job_name(&id));
        assert_eq!(
            created,
            1 + usize::from(case.retryable),
            "{}: Jobs created",
            case.name
        );
        let job_gone = world
            .jobs()
            .get_opt(&spec::job_name(&id))
            .await
            .unwrap()
            .is_none();
        assert!(job_gone, "{}: a failed Job is deleted", case.name);
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_disrupted_pod_is_replaced_and_the_job_still_succeeds() {
    let world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w1").await;
    world.api.script_pods(vec![PodBehaviour::Disrupted]);
    let id = world.submit(quick("a preempted duck")).await;
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, EventKind::Starting { message, .. } if message.contains("interrupted"))
        ),
        "the user hears of the interruption: {events:?}"
    );
    assert_eq!(world.api.jobs_created(NS, &spec::job_name(&id)), 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn waiting_reasons_reach_the_user_while_a_pod_waits() {
    let world = World::new().await;
    let mut config = world.worker_config();
    config.kubernetes.scheduling_budget_secs = 30;
    let worker = world.start_worker(config, "w1").await;
    world
        .api
        .set_default_pod_behaviour(PodBehaviour::Unschedulable {
            message: "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into(),
        });
    let id = world.submit(quick("a patient duck")).await;
    eventually(
        JOB_LIMIT,
        "a Starting event says the job waits for a GPU",
        || async {
            events_of(&world.queue, &id).await.iter().any(|e| {
                matches!(e, EventKind::Starting { phase: JobPhase::WaitingForGpu, message }
                    if message == "Waiting for a free GPU.")
            })
        },
    )
    .await;
    world.queue.cancel(&id, &Caller::Operator).await.unwrap();
    let events = events_until_end(&world.queue, &id).await;
    assert_eq!(terminal(&events), &EventKind::Cancelled);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_worker_reattaches_and_never_creates_a_second_job() {
    let world = World::new().await;
    let first = world.start_worker(world.worker_config(), "w1").await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let id = world.submit(quick("a duck that outlives its worker")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    first.kill().await;
    assert_eq!(gate.held(), 1, "the pod outlived its worker");

    // The same consumer name takes its unfinished job back at once and adopts the running Job.
    let second = world.start_worker(world.worker_config(), "w1").await;
    gate.open();
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    assert_eq!(world.api.jobs_created(NS, &spec::job_name(&id)), 1);
    let metrics = second.stop().await.unwrap();
    assert_eq!(metrics.launches_total(true), 1, "the second worker adopted");
    assert_eq!(metrics.launches_total(false), 0);
}

#[tokio::test]
async fn cancel_deletes_the_job_and_its_pod() {
    let world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w1").await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let id = world.submit(quick("a duck nobody wants")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    assert_eq!(world.api.running_processes(), 1);

    world.queue.cancel(&id, &Caller::Operator).await.unwrap();
    let events = events_until_end(&world.queue, &id).await;
    assert_eq!(terminal(&events), &EventKind::Cancelled);
    let name = spec::job_name(&id);
    assert!(world.jobs().get_opt(&name).await.unwrap().is_none());
    // Background propagation: the pod went with the Job, and its runner was stopped.
    eventually(Duration::from_secs(10), "the runner is stopped", || async {
        world.api.running_processes() == 0
    })
    .await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(world.api.client(), NS);
    let left = pods
        .list(&kube::api::ListParams::default().labels(&format!("{}={id}", spec::JOB_ID_LABEL)))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "no pod is left: {:?}", left.items);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_job_deleted_while_the_watch_is_down_is_noticed_after_the_relist() {
    let world = World::new().await;
    // The first pod runs until its Job is deleted; the retry's pod fails at once, for good.
    world.api.script_pods(vec![PodBehaviour::Hang]);
    world.api.set_default_pod_behaviour(PodBehaviour::Exit {
        code: 2,
        log: String::new(),
        message: String::new(),
    });
    let worker = world.start_worker(world.worker_config(), "w1").await;
    let id = world.submit(quick("a duck lost in a relist")).await;
    let name = spec::job_name(&id);
    eventually(Duration::from_secs(10), "the pod runs", || async {
        world.api.requests("get", "pods/log") > 0
    })
    .await;

    // Every watch ends, comes back to a 410 and must list again; the Jobs list fails twice
    // first, and meanwhile someone deletes the Job outside DUCKS.
    world
        .api
        .fail_next("list", "jobs", 2, ducks_tests::KubeFault::InternalError);
    for _ in 0..3 {
        world.api.expire_next_watch();
    }
    world.api.drop_watches();
    world
        .jobs()
        .delete(&name, &DeleteParams::background())
        .await
        .unwrap();

    let events = events_until_end(&world.queue, &id).await;
    let deleted_outside = events.iter().any(
        |e| matches!(e, EventKind::Retrying { message, .. } if message.contains("deleted outside")),
    );
    assert!(deleted_outside, "{events:?}");
    eventually(Duration::from_secs(10), "watches are back", || async {
        world.api.open_watches() == 3
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_outcome_arrives_across_a_watch_drop_and_a_410() {
    let world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w1").await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    let id = world.submit(quick("a duck across a reconnect")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    world.api.expire_next_watch();
    assert_eq!(world.api.drop_watches(), 3);
    assert_eq!(
        gate.held(),
        1,
        "the pod still ran while the watches were down"
    );
    gate.open();
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_worker_needs_every_rule_of_its_role_and_names_a_missing_one() {
    let api = KubeApi::start().await;
    let client = api.client();
    api.enforce_rbac(rbac::required_rules());
    rbac::check(&client, NS).await.expect("the whole Role");

    // Without any one verb, the check fails and names it.
    for (index, rule) in rbac::required_rules().iter().enumerate() {
        for verb in &rule.verbs {
            let mut rules = rbac::required_rules();
            rules[index].verbs.retain(|v| v != verb);
            api.enforce_rbac(rules);
            let error = rbac::check(&client, NS).await.unwrap_err();
            let resource = &rule.resources.as_ref().unwrap()[0];
            assert!(
                error.contains(&format!("{verb} {resource}")) && error.contains(NS),
                "{error}"
            );
        }
    }

    // And the API server itself refuses what the Role lacks: the worker asks for nothing more.
    api.enforce_rbac(vec![]);
    let jobs: Api<Job> = Api::namespaced(client, NS);
    let refused = jobs
        .create(&PostParams::default(), &Job::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 403),
        "{refused}"
    );
}

#[tokio::test]
async fn the_sweep_deletes_jobs_whose_queue_entry_is_gone() {
    let world = World::new().await;
    world.api.set_default_pod_behaviour(PodBehaviour::Hang);
    // A Job left by a job the queue no longer knows (its record expired).
    let orphan: JobId = "orphan-1".parse().unwrap();
    let spec = ducks_worker::LaunchSpec {
        job_id: orphan.clone(),
        job: ducks_contract::RunnerJob {
            job_id: orphan.clone(),
            model: "tiny-sd".into(),
            params: ducks_contract::GenerateParams {
                prompt: "forgotten".into(),
                negative_prompt: String::new(),
                width: 64,
                height: 64,
                steps: 1,
                guidance: 7.5,
                seed: 7,
                count: 1,
            },
        },
        compute: ducks_worker::sizing::Compute {
            gpus: 0,
            gpu_products: vec![],
            min_gpu_memory_gib: 0,
            cpu: "1".into(),
            memory: "1Gi".into(),
            runner_image: None,
        },
        timeout: JOB_LIMIT,
    };
    let job = spec::job_for(&spec, &world.s3_config, "images", &world.kube_config());
    world
        .jobs()
        .create(&PostParams::default(), &job)
        .await
        .unwrap();

    let mut config = world.worker_config();
    config.sweep_interval_secs = 1;
    let worker = world.start_worker(config, "w1").await;
    let name = spec::job_name(&orphan);
    eventually(
        Duration::from_secs(20),
        "the orphaned Job is deleted",
        || async { world.jobs().get_opt(&name).await.unwrap().is_none() },
    )
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn api_errors_on_create_and_delete_are_retried() {
    let world = World::new().await;
    let worker = world.start_worker(world.worker_config(), "w1").await;

    // The create answers 500 twice and 429 once before it is served: one Job all the same.
    world
        .api
        .fail_next("create", "jobs", 2, KubeFault::InternalError);
    world.api.fail_next(
        "create",
        "jobs",
        1,
        KubeFault::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    let id = world.submit(quick("a duck past a busy API server")).await;
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    assert_eq!(world.api.requests("create", "jobs"), 4);
    assert_eq!(world.api.jobs_created(NS, &spec::job_name(&id)), 1);

    // The cancel's delete answers 500 twice: the Job is deleted all the same.
    // The weights are cached now: hold the runner at its upload instead.
    let gate = world.s3.gate("PUT", "images/");
    let id = world.submit(quick("a duck cancelled through errors")).await;
    gate.wait_held(1, GATE_LIMIT).await;
    world
        .api
        .fail_next("delete", "jobs", 2, KubeFault::InternalError);
    world.queue.cancel(&id, &Caller::Operator).await.unwrap();
    let events = events_until_end(&world.queue, &id).await;
    assert_eq!(terminal(&events), &EventKind::Cancelled);
    assert!(
        world
            .jobs()
            .get_opt(&spec::job_name(&id))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(world.api.requests("delete", "jobs"), 3);
    drop(gate);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn ducks_worker_finds_the_cluster_through_a_kubeconfig_and_refuses_a_short_role() {
    let world = World::new().await;
    let kubeconfig = world.scratch.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: sim, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: worker, user: {{}}}}]\n\
             contexts: [{{name: sim, context: {{cluster: sim, user: worker, namespace: {NS}}}}}]\n\
             current-context: sim\n",
            world.api.endpoint()
        ),
    )
    .unwrap();
    let worker = || {
        let mut command = tokio::process::Command::new(ducks_binary());
        command
            .arg("worker")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", world.scratch.path())
            .env("KUBECONFIG", &kubeconfig)
            .env("DUCKS_REDIS__URL", world.redis.url())
            .envs(s3_env(&world.s3_config))
            .env("DUCKS_WORKER__LISTEN", "")
            .env("DUCKS_WORKER__LAUNCHER", "kubernetes")
            .env("DUCKS_WORKER__KUBERNETES__NAMESPACE", NS)
            .env(
                "DUCKS_WORKER__KUBERNETES__RUNNER_IMAGE",
                "ducks-runner:test",
            )
            .env("DUCKS_WORKER__KUBERNETES__S3_SECRET", S3_SECRET)
            .env("RUST_LOG", "warn")
            .current_dir(world.scratch.path())
            .kill_on_drop(true);
        command
    };

    // Without `get pods/log`, the worker stops at once and says what to grant.
    let mut short = rbac::required_rules();
    short.retain(|rule| rule.resources.as_ref().unwrap()[0] != "pods/log");
    world.api.enforce_rbac(short);
    let refused = tokio::time::timeout(JOB_LIMIT, worker().output())
        .await
        .expect("the worker exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("get pods/log") && stderr.contains("docs/kubernetes.md"),
        "{stderr}"
    );
    assert_eq!(world.api.requests("create", "jobs"), 0);

    // With the whole Role, it runs a job through a Job, and stops cleanly on SIGTERM.
    world.api.enforce_rbac(rbac::required_rules());
    let mut running = worker().spawn().unwrap();
    let id = world.submit(quick("a duck from the binary")).await;
    let events = events_until_end(&world.queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    assert_eq!(world.api.jobs_created(NS, &spec::job_name(&id)), 1);
    let pid = nix::unistd::Pid::from_raw(running.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(JOB_LIMIT, running.wait())
        .await
        .expect("the worker stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
