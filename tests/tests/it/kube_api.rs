//! Tests of the Kubernetes API server simulator ([`KubeApi`]) through the
//! production `kube` client: what the Kubernetes launcher will rely on
//! (server-set metadata, 409 AlreadyExists, selectors, delete propagation,
//! watches that resume and re-list, faults and request counts; the Job
//! controller and kubelet with every pod behaviour, pods/log, RBAC, and the
//! real runner in a Job).

use std::future::Future;
use std::time::Duration;

use ducks_contract::Line;
use ducks_contract::{GenerateParams, JobId, RunnerJob, wire};
use ducks_tests::{KubeApi, KubeFault, Kubelet, PodBehaviour, ducks_binary};
use futures_util::stream::BoxStream;
use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Event as KubeEvent, Pod, PodStatus};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::{BUCKET, eventually, tiny_bucket};

/// Deadline for every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

const NS: &str = "ducks";

/// Runs `fut` with the [`WAIT`] deadline.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
}

/// A suspended Job: the Job controller leaves it alone, so the hooks drive
/// its pods.
fn job(name: &str, model: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "ducks-worker", "ducks.dev/model": model},
        },
        "spec": {
            "backoffLimit": 0,
            "suspend": true,
            "template": {
                "metadata": {"labels": {"ducks.dev/model": model}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "runner", "image": "ducks-runner:test"}],
                },
            },
        },
    }))
    .expect("a valid Job")
}

fn jobs(client: &Client) -> Api<Job> {
    Api::namespaced(client.clone(), NS)
}

fn pods(client: &Client) -> Api<Pod> {
    Api::namespaced(client.clone(), NS)
}

async fn create(api: &Api<Job>, name: &str, model: &str) -> Job {
    within(
        "create a Job",
        api.create(&PostParams::default(), &job(name, model)),
    )
    .await
    .unwrap_or_else(|err| panic!("create Job {name}: {err}"))
}

/// The `Status` of a `kube::Error::Api`; panics on success or another error.
fn api_status<T: std::fmt::Debug>(result: kube::Result<T>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn resource_version(object: &impl ResourceExt) -> u64 {
    object
        .resource_version()
        .expect("a resourceVersion")
        .parse()
        .expect("a numeric resourceVersion")
}

async fn names(api: &Api<Job>, params: &ListParams) -> Vec<String> {
    within("list Jobs", api.list(params))
        .await
        .expect("list Jobs")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

/// A `kube-runtime` watcher, with every error it reports kept for the test.
struct Watch<K: Clone + Send + 'static> {
    stream: BoxStream<'static, Result<Event<K>, watcher::Error>>,
    errors: Vec<watcher::Error>,
}

impl<K> Watch<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    fn new(api: Api<K>, config: watcher::Config) -> Self {
        Watch {
            stream: watcher::watcher(api, config).boxed(),
            errors: Vec::new(),
        }
    }

    /// The first event `wanted` accepts, skipping others. The watcher
    /// retries by itself after an error, so errors are only recorded.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Event<K>) -> bool) -> Event<K> {
        self.until_within(WAIT, what, wanted).await
    }

    /// [`Watch::until`] with another deadline.
    async fn until_within(
        &mut self,
        limit: Duration,
        what: &str,
        wanted: impl Fn(&Event<K>) -> bool,
    ) -> Event<K> {
        let wait = async {
            loop {
                match self.stream.next().await {
                    Some(Ok(event)) if wanted(&event) => return event,
                    Some(Ok(_)) => {}
                    Some(Err(err)) => self.errors.push(err),
                    None => panic!("the watcher ended while waiting for {what}"),
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: not seen within {limit:?}"))
    }
}

fn is_apply_of<K: ResourceExt>(name: &str) -> impl Fn(&Event<K>) -> bool {
    move |event| matches!(event, Event::Apply(o) if o.name_any() == name)
}

fn is_delete_of<K: ResourceExt>(name: &str) -> impl Fn(&Event<K>) -> bool {
    move |event| matches!(event, Event::Delete(o) if o.name_any() == name)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

#[tokio::test]
async fn create_then_get_has_server_set_fields() {
    let api = KubeApi::start().await;
    let jobs = jobs(&api.client());

    let created = create(&jobs, "ducks-one", "tiny-sd").await;
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some(NS));
    assert!(meta.uid.as_ref().is_some_and(|uid| !uid.is_empty()));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert!(resource_version(&created) > 0);

    let fetched = within("get", jobs.get("ducks-one"))
        .await
        .expect("get the Job");
    assert_eq!(fetched.metadata.uid, created.metadata.uid);
    assert_eq!(fetched.resource_version(), created.resource_version());
    assert_eq!(fetched.labels()["ducks.dev/model"], "tiny-sd");
    assert!(fetched.spec.is_some());

    let missing = api_status(within("get missing", jobs.get("ducks-none")).await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        within("get_opt", jobs.get_opt("ducks-none"))
            .await
            .expect("get_opt"),
        None
    );

    // One resourceVersion counter for every resource.
    let pod = api.create_pod_for_job(NS, "ducks-one");
    assert!(resource_version(&pod) > resource_version(&created));
    assert_eq!(api.requests("create", "jobs"), 1);
    assert_eq!(api.requests("get", "jobs"), 3);
}

#[tokio::test]
async fn creating_twice_is_already_exists() {
    let api = KubeApi::start().await;
    let jobs = jobs(&api.client());
    let first = create(&jobs, "ducks-twice", "tiny-sd").await;

    let again = within(
        "create again",
        jobs.create(&PostParams::default(), &job("ducks-twice", "other")),
    )
    .await;
    let status = api_status(again);
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "AlreadyExists");
    assert!(status.is_already_exists());
    assert!(status.message.contains("ducks-twice"), "{}", status.message);

    // The first Job is untouched.
    let kept = within("get", jobs.get("ducks-twice")).await.expect("get");
    assert_eq!(kept.resource_version(), first.resource_version());
    assert_eq!(kept.labels()["ducks.dev/model"], "tiny-sd");
    assert_eq!(api.requests("create", "jobs"), 2);
}

#[tokio::test]
async fn lists_filter_by_labels_and_fields_and_page() {
    let api = KubeApi::start().await;
    let client = api.client();
    let jobs = jobs(&client);
    create(&jobs, "ducks-a", "x").await;
    create(&jobs, "ducks-b", "y").await;
    create(&jobs, "ducks-c", "x").await;
    let elsewhere: Api<Job> = Api::namespaced(client.clone(), "other");
    create(&elsewhere, "ducks-d", "x").await;

    let list = |selector: &str| ListParams::default().labels(selector);
    assert_eq!(
        names(&jobs, &list("ducks.dev/model=x")).await,
        ["ducks-a", "ducks-c"]
    );
    assert_eq!(names(&jobs, &list("ducks.dev/model!=x")).await, ["ducks-b"]);
    assert_eq!(
        names(
            &jobs,
            &list("ducks.dev/model=x,app.kubernetes.io/managed-by=ducks-worker")
        )
        .await,
        ["ducks-a", "ducks-c"]
    );
    assert_eq!(names(&jobs, &list("ducks.dev/model")).await.len(), 3);
    assert_eq!(names(&jobs, &list("nothing")).await, Vec::<String>::new());
    assert_eq!(
        names(
            &jobs,
            &ListParams::default().fields("metadata.name=ducks-b")
        )
        .await,
        ["ducks-b"]
    );
    let all: Api<Job> = Api::all(client.clone());
    assert_eq!(names(&all, &list("ducks.dev/model=x")).await.len(), 3);

    let unsupported = within(
        "set-based selector",
        jobs.list(&list("ducks.dev/model in (x)")),
    )
    .await;
    assert_eq!(api_status(unsupported).code, 400);

    let first = within("first page", jobs.list(&ListParams::default().limit(2)))
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let second = within(
        "second page",
        jobs.list(&ListParams::default().limit(2).continue_token(&token)),
    )
    .await
    .expect("second page");
    assert_eq!(
        second
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["ducks-c"]
    );
    assert!(
        second
            .metadata
            .continue_
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );

    let event: KubeEvent = serde_json::from_value(json!({
        "metadata": {"name": "ducks-a.1"},
        "involvedObject": {"kind": "Job", "name": "ducks-a", "namespace": NS},
        "reason": "FailedCreate",
        "message": "exceeded quota",
        "type": "Warning",
    }))
    .expect("a valid Event");
    api.record_event(NS, event);
    let events: Api<KubeEvent> = Api::namespaced(client, NS);
    let listed = within("list events", events.list(&ListParams::default()))
        .await
        .expect("list events");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].reason.as_deref(), Some("FailedCreate"));
}

#[tokio::test]
async fn delete_propagation_decides_the_fate_of_pods() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    let of_job =
        |name: &str| ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}"));

    create(&jobs, "ducks-bg", "x").await;
    api.create_pod_for_job(NS, "ducks-bg");
    api.create_pod_for_job(NS, "ducks-bg");
    let before = within("list pods", pods.list(&of_job("ducks-bg")))
        .await
        .expect("list");
    assert_eq!(before.items.len(), 2);
    let owner = &before.items[0].owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Job", "ducks-bg")
    );

    let deleted = within(
        "delete",
        jobs.delete("ducks-bg", &DeleteParams::background()),
    )
    .await
    .expect("delete in the background");
    assert!(deleted.is_left(), "the deleted Job comes back");
    assert_eq!(
        api_status(within("get", jobs.get("ducks-bg")).await).code,
        404
    );
    let after = within("list pods", pods.list(&of_job("ducks-bg")))
        .await
        .expect("list");
    assert!(after.items.is_empty(), "pods left: {:?}", after.items);

    // Foreground removes them too (at once: no foreground phase here).
    create(&jobs, "ducks-fg", "x").await;
    let pod = api.create_pod_for_job(NS, "ducks-fg");
    within(
        "delete",
        jobs.delete("ducks-fg", &DeleteParams::foreground()),
    )
    .await
    .expect("delete in the foreground");
    assert!(!api.pod_exists(NS, &pod.name_any()));

    // Without a policy a Job orphans its pods, as in Kubernetes.
    create(&jobs, "ducks-orphan", "x").await;
    let pod = api.create_pod_for_job(NS, "ducks-orphan");
    within(
        "delete",
        jobs.delete("ducks-orphan", &DeleteParams::default()),
    )
    .await
    .expect("delete orphaning");
    let orphan = within("get pod", pods.get(&pod.name_any()))
        .await
        .expect("the pod stays");
    assert!(orphan.owner_references().is_empty());
    assert_eq!(api.requests("delete", "jobs"), 3);
}

#[tokio::test]
async fn watcher_sees_api_and_hook_changes() {
    let api = KubeApi::start().await;
    let client = api.client();
    let jobs = jobs(&client);
    let config = watcher::Config::default().labels("batch.kubernetes.io/job-name=ducks-w");
    let mut watch = Watch::new(pods(&client), config);
    watch
        .until("the initial list", |e| matches!(e, Event::InitDone))
        .await;

    create(&jobs, "ducks-w", "x").await;
    create(&jobs, "ducks-unwatched", "x").await;
    api.create_pod_for_job(NS, "ducks-unwatched");
    let pod = api.create_pod_for_job(NS, "ducks-w");
    let name = pod.name_any();
    let Event::Apply(seen) = watch.until("the new pod", is_apply_of(&name)).await else {
        unreachable!()
    };
    assert_eq!(phase(&seen), Some("Pending"));

    let running = PodStatus {
        phase: Some("Running".into()),
        ..PodStatus::default()
    };
    api.set_pod_status(NS, &name, running);
    let Event::Apply(seen) = watch.until("the running pod", is_apply_of(&name)).await else {
        unreachable!()
    };
    assert_eq!(phase(&seen), Some("Running"));

    within(
        "delete",
        jobs.delete("ducks-w", &DeleteParams::background()),
    )
    .await
    .expect("delete the Job");
    watch.until("the pod's deletion", is_delete_of(&name)).await;
    assert!(watch.errors.is_empty(), "{:?}", watch.errors);
}

#[tokio::test]
async fn watcher_resumes_after_dropped_streams_and_relists_after_410() {
    let api = KubeApi::start().await;
    let jobs = jobs(&api.client());
    let mut watch = Watch::new(jobs.clone(), watcher::Config::default());
    watch
        .until("the initial list", |e| matches!(e, Event::InitDone))
        .await;

    create(&jobs, "ducks-1", "x").await;
    watch.until("ducks-1", is_apply_of("ducks-1")).await;
    // Seen through the watch, so it is open.
    assert_eq!(api.drop_watches(), 1);

    // The watcher resumes from ducks-1's resourceVersion: no re-list.
    create(&jobs, "ducks-2", "x").await;
    watch.until("ducks-2", is_apply_of("ducks-2")).await;
    assert_eq!(api.requests("list", "jobs"), 1);
    assert_eq!(api.requests("watch", "jobs"), 2);

    // Now its resourceVersion is too old: 410, a re-list, and nothing missed.
    api.expire_next_watch();
    assert_eq!(api.drop_watches(), 1);
    create(&jobs, "ducks-3", "x").await;
    watch
        .until(
            "ducks-3",
            |e| matches!(e, Event::Apply(j) | Event::InitApply(j) if j.name_any() == "ducks-3"),
        )
        .await;
    watch
        .until("the end of the re-list", |e| matches!(e, Event::InitDone))
        .await;
    assert!(
        watch
            .errors
            .iter()
            .any(|err| matches!(err, watcher::Error::WatchError(status) if status.code == 410)),
        "{:?}",
        watch.errors
    );
    assert_eq!(api.requests("list", "jobs"), 2);

    // And it watches again after the re-list.
    let done = JobStatus {
        succeeded: Some(1),
        ..JobStatus::default()
    };
    api.set_job_status(NS, "ducks-3", done);
    let Event::Apply(seen) = watch
        .until("ducks-3 succeeded", is_apply_of("ducks-3"))
        .await
    else {
        unreachable!()
    };
    assert_eq!(seen.status.and_then(|s| s.succeeded), Some(1));
}

#[tokio::test]
async fn faults_are_api_errors_and_requests_are_counted() {
    let api = KubeApi::start().await;
    let client = api.client();
    let jobs = jobs(&client);

    // 500 is never retried by kube.
    api.fail_next("create", "jobs", 1, KubeFault::InternalError);
    let failed = within(
        "create",
        jobs.create(&PostParams::default(), &job("ducks-f", "x")),
    )
    .await;
    let status = api_status(failed);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );
    create(&jobs, "ducks-f", "x").await;
    assert_eq!(api.requests("create", "jobs"), 2);

    // 429 comes back as an error to a client without kube's default retries.
    let mut config = api.config();
    config.default_retry = false;
    let plain: Api<Job> = Api::namespaced(Client::try_from(config).expect("client"), NS);
    api.fail_next(
        "get",
        "jobs",
        1,
        KubeFault::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    let status = api_status(within("get", plain.get("ducks-f")).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert_eq!(status.details.map(|d| d.retry_after_seconds), Some(1));
    assert_eq!(api.requests("get", "jobs"), 1);

    // kube 5's default client retries a 429 after Retry-After by itself.
    api.fail_next(
        "get",
        "jobs",
        1,
        KubeFault::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    within("get with retries", jobs.get("ducks-f"))
        .await
        .expect("retried get");
    assert_eq!(api.requests("get", "jobs"), 3);

    // Counts are per verb and resource.
    within("list", jobs.list(&ListParams::default()))
        .await
        .expect("list");
    assert_eq!(api.requests("list", "jobs"), 1);
    assert_eq!(api.requests("list", "pods"), 0);
    assert_eq!(api.requests("delete", "jobs"), 0);
    api.reset_requests();
    assert_eq!(api.requests("create", "jobs"), 0);
}

// ---------------------------------------------------------------------------
// The Job controller and the kubelet
// ---------------------------------------------------------------------------

/// A Job as the launcher makes it, in short: one `runner` container with the
/// termination message policy and pod failure policy of
/// worker/src/kube/spec.rs.
fn controlled_job(name: &str, backoff_limit: i32) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "ducks-worker"}},
        "spec": {
            "backoffLimit": backoff_limit,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "runner", "operator": "In", "values": [2]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/managed-by": "ducks-worker"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "runner",
                        "image": "ducks-runner:test",
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                },
            },
        },
    })
}

async fn submit(jobs: &Api<Job>, job: Value) -> Job {
    let job: Job = serde_json::from_value(job).expect("a valid Job");
    within("create a Job", jobs.create(&PostParams::default(), &job))
        .await
        .expect("create the Job")
}

/// Waits (through a watch) until the Job satisfies `done`.
async fn job_until(jobs: &Api<Job>, name: &str, what: &str, done: impl Fn(&Job) -> bool) -> Job {
    job_within(WAIT, jobs, name, what, done).await
}

async fn job_within(
    limit: Duration,
    jobs: &Api<Job>,
    name: &str,
    what: &str,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut watch = Watch::new(jobs.clone(), config);
    let event = watch
        .until_within(
            limit,
            what,
            |e| matches!(e, Event::Apply(j) | Event::InitApply(j) if done(j)),
        )
        .await;
    match event {
        Event::Apply(job) | Event::InitApply(job) => job,
        _ => unreachable!(),
    }
}

/// Waits until the pod `name` satisfies `done`.
async fn pod_until(pods: &Api<Pod>, name: &str, what: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut watch = Watch::new(pods.clone(), config);
    let event = watch
        .until(
            what,
            |e| matches!(e, Event::Apply(p) | Event::InitApply(p) if done(p)),
        )
        .await;
    match event {
        Event::Apply(pod) | Event::InitApply(pod) => pod,
        _ => unreachable!(),
    }
}

/// The first pod of a Job, once the Job controller created it.
async fn first_pod(pods: &Api<Pod>, job: &str) -> Pod {
    let config = watcher::Config::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    let mut watch = Watch::new(pods.clone(), config);
    let event = watch
        .until("the Job's pod", |e| {
            matches!(e, Event::Apply(_) | Event::InitApply(_))
        })
        .await;
    match event {
        Event::Apply(pod) | Event::InitApply(pod) => pod,
        _ => unreachable!(),
    }
}

/// The types of the Job's conditions that are True, in order.
fn conditions(job: &Job) -> Vec<String> {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| c.status == "True")
        .map(|c| c.type_.clone())
        .collect()
}

fn has_condition(job: &Job, kind: &str) -> bool {
    conditions(job).iter().any(|c| c == kind)
}

/// (reason, message) of the Job's condition `kind`.
fn condition(job: &Job, kind: &str) -> (String, String) {
    let found = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind} condition: {:?}", job.status));
    (
        found.reason.clone().unwrap_or_default(),
        found.message.clone().unwrap_or_default(),
    )
}

fn ended(job: &Job) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

/// The Job's pods, oldest first.
async fn pods_of(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    let params = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    let mut list = within("list pods", pods.list(&params))
        .await
        .expect("list pods")
        .items;
    list.sort_by_key(resource_version);
    list
}

/// The terminated state of the pod's `runner` container.
fn terminated(pod: &Pod) -> ContainerStateTerminated {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|s| s.name == "runner"))
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("runner has not terminated: {:?}", pod.status))
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn pod_condition(pod: &Pod, kind: &str) -> Option<(String, String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn exit(code: i32, log: &str, message: &str) -> PodBehaviour {
    PodBehaviour::Exit {
        code,
        log: log.into(),
        message: message.into(),
    }
}

#[tokio::test]
async fn a_pod_that_exits_0_completes_its_job() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    api.set_default_pod_behaviour(exit(0, "hello\n", "{\"event\":\"result\"}"));
    let mut pod_watch = Watch::new(
        pods.clone(),
        watcher::Config::default().labels("batch.kubernetes.io/job-name=ducks-ok"),
    );
    pod_watch
        .until("the initial list", |e| matches!(e, Event::InitDone))
        .await;
    let mut job_watch = Watch::new(
        jobs.clone(),
        watcher::Config::default().fields("metadata.name=ducks-ok"),
    );
    job_watch
        .until("the initial list", |e| matches!(e, Event::InitDone))
        .await;

    submit(&jobs, controlled_job("ducks-ok", 0)).await;

    // Every Job transition is a watch event: active, SuccessCriteriaMet, Complete.
    let mut seen = Vec::new();
    let done = job_watch
        .until("Complete", |e| match e {
            Event::Apply(job) => ended(job),
            _ => false,
        })
        .await;
    let Event::Apply(done) = done else {
        unreachable!()
    };
    assert_eq!(conditions(&done), ["SuccessCriteriaMet", "Complete"]);
    let status = done.status.clone().unwrap();
    assert_eq!((status.succeeded, status.active), (Some(1), Some(0)));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(condition(&done, "Complete").0, "CompletionsReached");

    // The pod went Pending → Running → Succeeded, one write at a time.
    loop {
        let Event::Apply(pod) = pod_watch
            .until("pod changes", |e| matches!(e, Event::Apply(_)))
            .await
        else {
            unreachable!()
        };
        let phase = phase(&pod).unwrap_or_default().to_owned();
        if seen.last() != Some(&phase) {
            seen.push(phase.clone());
        }
        if phase == "Succeeded" {
            let end = terminated(&pod);
            assert_eq!(
                (end.exit_code, end.reason.as_deref()),
                (0, Some("Completed"))
            );
            assert_eq!(end.message.as_deref(), Some("{\"event\":\"result\"}"));
            assert!(end.started_at.is_some() && end.finished_at.is_some());
            break;
        }
    }
    assert_eq!(seen, ["Pending", "Running", "Succeeded"]);
    let all = pods_of(&pods, "ducks-ok").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].owner_references()[0].name, "ducks-ok");
    assert_eq!(api.jobs_created(NS, "ducks-ok"), 1);
    assert_eq!(api.jobs_created("", ""), 1);

    // Its log is served.
    let log = within("log", pods.logs(&all[0].name_any(), &LogParams::default()))
        .await
        .expect("the log");
    assert_eq!(log, "hello\n");
}

#[tokio::test]
async fn exit_2_fails_the_job_by_its_pod_failure_policy() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    api.script_pods(vec![exit(
        2,
        "",
        "{\"event\":\"error\",\"failure\":\"bad_request\"}",
    )]);
    submit(&jobs, controlled_job("ducks-bad", 3)).await;
    let job = job_until(&jobs, "ducks-bad", "Failed", ended).await;
    assert_eq!(conditions(&job), ["FailureTarget", "Failed"]);
    let pod = &pods_of(&pods, "ducks-bad").await[0];
    let (reason, message) = condition(&job, "Failed");
    assert_eq!(reason, "PodFailurePolicy");
    assert_eq!(
        message,
        format!(
            "Container runner for pod {NS}/{} failed with exit code 2 matching FailJob rule at index 0",
            pod.name_any()
        )
    );
    assert_eq!(job.status.as_ref().unwrap().failed, Some(1));
    let end = terminated(pod);
    assert_eq!((end.exit_code, end.reason.as_deref()), (2, Some("Error")));
    assert!(end.message.unwrap().contains("bad_request"));
}

#[tokio::test]
async fn other_failures_count_against_the_backoff_limit() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));

    // backoffLimit 1: one failure gets a retry pod, which succeeds.
    api.script_pods(vec![exit(1, "starting\nboom\n", "")]);
    submit(&jobs, controlled_job("ducks-retry", 1)).await;
    let job = job_until(&jobs, "ducks-retry", "Complete", ended).await;
    assert_eq!(conditions(&job), ["SuccessCriteriaMet", "Complete"]);
    let status = job.status.clone().unwrap();
    assert_eq!((status.failed, status.succeeded), (Some(1), Some(1)));
    let tried = pods_of(&pods, "ducks-retry").await;
    assert_eq!(tried.len(), 2);
    assert_eq!(phase(&tried[0]), Some("Failed"));
    // No termination message: FallbackToLogsOnError takes the log's tail.
    assert_eq!(
        terminated(&tried[0]).message.as_deref(),
        Some("starting\nboom\n")
    );
    assert_eq!(phase(&tried[1]), Some("Succeeded"));

    // Two failures (OOM, then a GPU admission error) exceed it.
    api.script_pods(vec![PodBehaviour::OomKilled, PodBehaviour::AdmissionError]);
    submit(&jobs, controlled_job("ducks-crash", 1)).await;
    let job = job_until(&jobs, "ducks-crash", "Failed", ended).await;
    assert_eq!(conditions(&job), ["FailureTarget", "Failed"]);
    assert_eq!(
        condition(&job, "Failed"),
        (
            "BackoffLimitExceeded".to_owned(),
            "Job has reached the specified backoff limit".to_owned()
        )
    );
    assert_eq!(job.status.as_ref().unwrap().failed, Some(2));
    let tried = pods_of(&pods, "ducks-crash").await;
    assert_eq!(tried.len(), 2);
    let oom = terminated(&tried[0]);
    assert_eq!(
        (oom.exit_code, oom.reason.as_deref()),
        (137, Some("OOMKilled"))
    );
    let admission = tried[1].status.as_ref().unwrap();
    assert_eq!(admission.phase.as_deref(), Some("Failed"));
    assert_eq!(
        admission.reason.as_deref(),
        Some("UnexpectedAdmissionError")
    );
}

#[tokio::test]
async fn a_disrupted_pod_is_ignored_and_replaced() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    api.script_pods(vec![PodBehaviour::Disrupted]);
    submit(&jobs, controlled_job("ducks-preempted", 0)).await;
    let job = job_until(&jobs, "ducks-preempted", "Complete", ended).await;
    assert_eq!(conditions(&job), ["SuccessCriteriaMet", "Complete"]);
    let status = job.status.unwrap();
    assert_eq!(status.failed.unwrap_or(0), 0, "an ignored failure");
    let tried = pods_of(&pods, "ducks-preempted").await;
    assert_eq!(tried.len(), 2);
    assert_eq!(
        pod_condition(&tried[0], "DisruptionTarget").map(|c| (c.0, c.1)),
        Some(("True".into(), "PreemptionByScheduler".into()))
    );
    assert_eq!(phase(&tried[0]), Some("Failed"));
    assert_eq!(terminated(&tried[0]).exit_code, 137);
    assert_eq!(phase(&tried[1]), Some("Succeeded"));
}

#[tokio::test]
async fn the_deadline_fails_a_job_and_kills_its_pod() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    let root = tempfile::tempdir().unwrap();
    api.set_kubelet(Kubelet {
        entrypoint: vec!["sleep".into(), "600".into()],
        root: root.path().to_owned(),
        env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
    });
    // One pod that hangs without a process, one that runs `sleep 600`.
    api.script_pods(vec![PodBehaviour::Hang]);
    let mut hung = controlled_job("ducks-hung", 0);
    hung["spec"]["activeDeadlineSeconds"] = json!(1);
    submit(&jobs, hung).await;
    let hung_pod = pod_until(
        &pods,
        &first_pod(&pods, "ducks-hung").await.name_any(),
        "running",
        |p| phase(p) == Some("Running"),
    )
    .await;
    api.script_pods(vec![PodBehaviour::Run]);
    let mut sleeping = controlled_job("ducks-sleeping", 0);
    sleeping["spec"]["activeDeadlineSeconds"] = json!(1);
    submit(&jobs, sleeping).await;
    let sleeping_pod = pod_until(
        &pods,
        &first_pod(&pods, "ducks-sleeping").await.name_any(),
        "running",
        |p| phase(p) == Some("Running"),
    )
    .await;
    assert_eq!(api.running_processes(), 1);

    for name in ["ducks-hung", "ducks-sleeping"] {
        let job = job_until(&jobs, name, "DeadlineExceeded", ended).await;
        assert_eq!(conditions(&job), ["FailureTarget", "Failed"]);
        assert_eq!(
            condition(&job, "Failed"),
            (
                "DeadlineExceeded".to_owned(),
                "Job was active longer than specified deadline".to_owned()
            )
        );
        assert_eq!(job.status.unwrap().active, Some(0));
    }
    assert!(!api.pod_exists(NS, &hung_pod.name_any()));
    assert!(!api.pod_exists(NS, &sleeping_pod.name_any()));
    eventually(WAIT, "the deleted pod's process is killed", || async {
        api.running_processes() == 0
    })
    .await;
}

#[tokio::test]
async fn the_ttl_deletes_a_finished_job_and_its_pod() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    let mut watch = Watch::new(
        jobs.clone(),
        watcher::Config::default().fields("metadata.name=ducks-ttl"),
    );
    watch
        .until("the initial list", |e| matches!(e, Event::InitDone))
        .await;
    let mut pod_watch = Watch::new(
        pods.clone(),
        watcher::Config::default().labels("batch.kubernetes.io/job-name=ducks-ttl"),
    );
    pod_watch
        .until("the initial list", |e| matches!(e, Event::InitDone))
        .await;
    let mut ttl = controlled_job("ducks-ttl", 0);
    ttl["spec"]["ttlSecondsAfterFinished"] = json!(1);
    submit(&jobs, ttl).await;
    watch
        .until(
            "Complete",
            |e| matches!(e, Event::Apply(j) if has_condition(j, "Complete")),
        )
        .await;
    let pod = pod_watch
        .until("the pod", |e| matches!(e, Event::Apply(_)))
        .await;
    let Event::Apply(pod) = pod else {
        unreachable!()
    };
    watch
        .until("the Job's deletion", is_delete_of("ducks-ttl"))
        .await;
    pod_watch
        .until("the pod's deletion", is_delete_of(&pod.name_any()))
        .await;
    assert_eq!(
        api_status(within("get", jobs.get("ducks-ttl")).await).code,
        404
    );
}

#[tokio::test]
async fn refused_pods_are_failed_create_events_on_the_job() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), NS);
    let mut watch = Watch::new(
        events,
        watcher::Config::default().fields("involvedObject.kind=Job,reason=FailedCreate"),
    );
    watch
        .until("the initial list", |e| matches!(e, Event::InitDone))
        .await;
    let quota = "Error creating: pods \"ducks-q-abcde\" is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4";
    api.refuse_pods(Some(quota.into()));
    let job = submit(&jobs, controlled_job("ducks-q", 0)).await;
    let Event::Apply(event) = watch
        .until("FailedCreate", |e| matches!(e, Event::Apply(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.message.as_deref(), Some(quota));
    let involved = &event.involved_object;
    assert_eq!(involved.kind.as_deref(), Some("Job"));
    assert_eq!(involved.name.as_deref(), Some("ducks-q"));
    assert_eq!(involved.namespace.as_deref(), Some(NS));
    assert_eq!(involved.uid, job.metadata.uid);
    assert_eq!(involved.api_version.as_deref(), Some("batch/v1"));
    assert!(pods_of(&pods, "ducks-q").await.is_empty());
    assert_eq!(api.requests("watch", "events"), 1);

    // Allowed again, the pod is created and the Job completes.
    api.refuse_pods(None);
    job_until(&jobs, "ducks-q", "Complete", ended).await;
    assert_eq!(pods_of(&pods, "ducks-q").await.len(), 1);
}

#[tokio::test]
async fn unschedulable_and_image_pull_pods_stay_pending() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    let no_gpu = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.";
    api.script_pods(vec![
        PodBehaviour::Unschedulable {
            message: no_gpu.into(),
        },
        PodBehaviour::ImagePull {
            reason: "ImagePullBackOff".into(),
            message: "Back-off pulling image \"ducks-runner:nope\"".into(),
        },
    ]);
    submit(&jobs, controlled_job("ducks-nogpu", 0)).await;
    let waiting = first_pod(&pods, "ducks-nogpu").await;
    let pod = pod_until(&pods, &waiting.name_any(), "Unschedulable", |p| {
        pod_condition(p, "PodScheduled").is_some()
    })
    .await;
    assert_eq!(
        pod_condition(&pod, "PodScheduled"),
        Some(("False".into(), "Unschedulable".into(), no_gpu.into()))
    );
    assert_eq!(phase(&pod), Some("Pending"));

    submit(&jobs, controlled_job("ducks-nopull", 0)).await;
    let pulling = first_pod(&pods, "ducks-nopull").await;
    let pod = pod_until(&pods, &pulling.name_any(), "ImagePullBackOff", |p| {
        waiting_reason(p).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(phase(&pod), Some("Pending"));
    assert_eq!(
        pod_condition(&pod, "PodScheduled").map(|c| c.0),
        Some("True".into())
    );

    // Its log cannot be read yet.
    let params = LogParams {
        container: Some("runner".into()),
        ..LogParams::default()
    };
    let status = api_status(within("log", pods.logs(&pod.name_any(), &params)).await);
    assert_eq!(status.code, 400);
    assert_eq!(
        status.message,
        format!(
            "container \"runner\" in pod \"{}\" is waiting to start: ImagePullBackOff",
            pod.name_any()
        )
    );
    assert_eq!(
        api_status(within("log", pods.logs("ducks-none", &params)).await).code,
        404
    );
    // The Job controller does not fail either Job.
    for name in ["ducks-nogpu", "ducks-nopull"] {
        let job = api.job(NS, name);
        assert!(conditions(&job).is_empty(), "{:?}", job.status);
        assert_eq!(job.status.unwrap().active, Some(1));
    }
    // Field selectors on the phase.
    let pending = within(
        "list pending pods",
        pods.list(&ListParams::default().fields("status.phase=Pending")),
    )
    .await
    .expect("list");
    assert_eq!(pending.items.len(), 2);
    let other = within(
        "list other pods",
        pods.list(&ListParams::default().fields("status.phase!=Pending")),
    )
    .await
    .expect("list");
    assert!(other.items.is_empty());
}

#[tokio::test]
async fn pod_logs_follow_until_the_container_ends() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    let root = tempfile::tempdir().unwrap();
    api.set_kubelet(Kubelet {
        entrypoint: vec!["false".into()],
        root: root.path().to_owned(),
        env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
    });
    api.set_default_pod_behaviour(PodBehaviour::Run);
    // The container's own command replaces the entrypoint; it waits for a
    // file in its working folder (the pod's folder) between two lines.
    let mut job = controlled_job("ducks-log", 0);
    job["spec"]["template"]["spec"]["containers"][0]["command"] = json!([
        "sh",
        "-c",
        "echo line 1; while [ ! -e go ]; do sleep 0.02; done; echo line 2; echo line 3 >&2"
    ]);
    submit(&jobs, job).await;
    let name = first_pod(&pods, "ducks-log").await.name_any();
    let pod = pod_until(&pods, &name, "running", |p| phase(p) == Some("Running")).await;

    let params = LogParams {
        follow: true,
        container: Some("runner".into()),
        ..LogParams::default()
    };
    let stream = within("log stream", pods.log_stream(&name, &params))
        .await
        .expect("follow the log");
    let mut lines = std::pin::pin!(stream.lines());
    let first = within("the first line", lines.try_next())
        .await
        .expect("read the log");
    assert_eq!(first.as_deref(), Some("line 1"));
    // Still running: the line came while the container was.
    assert_eq!(phase(&api.pod(NS, &name)), Some("Running"));
    let uid = pod.uid().unwrap();
    std::fs::write(root.path().join("pods").join(&uid).join("go"), "").unwrap();
    let mut rest = Vec::new();
    while let Some(line) = within("more lines", lines.try_next())
        .await
        .expect("read the log")
    {
        rest.push(line);
    }
    assert_eq!(rest, ["line 2", "line 3"], "then the stream ends");
    let pod = pod_until(&pods, &name, "Succeeded", |p| phase(p) == Some("Succeeded")).await;
    assert_eq!(terminated(&pod).exit_code, 0);

    let tail = LogParams {
        tail_lines: Some(1),
        ..LogParams::default()
    };
    let last = within("tail", pods.logs(&name, &tail)).await.expect("tail");
    assert_eq!(last, "line 3\n");
    let limited = LogParams {
        limit_bytes: Some(4),
        ..LogParams::default()
    };
    let start = within("limit", pods.logs(&name, &limited))
        .await
        .expect("limit");
    assert_eq!(start, "line");
    assert_eq!(api.requests("get", "pods/log"), 3);
    assert_eq!(api.running_processes(), 0);
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

async fn review(client: &Client, verb: &str, group: &str, resource: &str, sub: &str) -> bool {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asked = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(NS.into()),
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: Some(sub.into()).filter(|s: &String| !s.is_empty()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answered = within("review", reviews.create(&PostParams::default(), &asked))
        .await
        .expect("a SelfSubjectAccessReview");
    assert_eq!(
        answered.spec.resource_attributes,
        asked.spec.resource_attributes
    );
    answered.status.expect("a status").allowed
}

#[tokio::test]
async fn rbac_rules_allow_deny_and_answer_access_reviews() {
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    assert!(review(&client, "delete", "batch", "jobs", "").await);

    api.enforce_rbac(vec![
        rule(&["batch"], &["jobs"], &["create", "get", "list", "watch"]),
        rule(&[""], &["pods", "pods/log"], &["get", "list", "watch"]),
    ]);
    submit(&jobs, controlled_job("ducks-rbac", 0)).await;
    job_until(&jobs, "ducks-rbac", "Complete", ended).await;
    let name = pods_of(&pods, "ducks-rbac").await[0].name_any();
    within("log", pods.logs(&name, &LogParams::default()))
        .await
        .expect("pods/log is allowed");

    let denied = api_status(
        within(
            "delete",
            jobs.delete("ducks-rbac", &DeleteParams::background()),
        )
        .await,
    );
    assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        denied.message,
        "jobs.batch \"ducks-rbac\" is forbidden: User \"system:serviceaccount:ducks:ducks-worker\" cannot delete resource \"jobs\" in API group \"batch\" in the namespace \"ducks\""
    );
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), NS);
    let denied = api_status(within("list events", events.list(&ListParams::default())).await);
    assert_eq!(
        denied.message,
        "events is forbidden: User \"system:serviceaccount:ducks:ducks-worker\" cannot list resource \"events\" in API group \"\" in the namespace \"ducks\""
    );
    assert!(api.pod_exists(NS, &name), "nothing was deleted");

    assert!(review(&client, "create", "batch", "jobs", "").await);
    assert!(review(&client, "get", "", "pods", "log").await);
    assert!(!review(&client, "delete", "batch", "jobs", "").await);
    assert!(!review(&client, "watch", "", "events", "").await);
    assert_eq!(api.requests("create", "selfsubjectaccessreviews"), 5);
    assert_eq!(api.requests("delete", "jobs"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_the_real_runner() {
    let scratch = tempfile::tempdir().unwrap();
    let (s3, config, _storage) = tiny_bucket().await;
    let api = KubeApi::start().await;
    let client = api.client();
    let (jobs, pods) = (jobs(&client), pods(&client));
    api.set_kubelet(Kubelet {
        entrypoint: vec![ducks_binary().into(), "runner".into()],
        root: scratch.path().join("kubelet"),
        env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
    });
    api.set_default_pod_behaviour(PodBehaviour::Run);
    let keys = [
        ("DUCKS_S3__ACCESS_KEY_ID", config.access_key_id.clone()),
        (
            "DUCKS_S3__SECRET_ACCESS_KEY",
            config.secret_access_key.expose().to_owned(),
        ),
    ];
    api.put_secret(
        NS,
        "ducks-s3",
        keys.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );

    let id = JobId::generate();
    let request = RunnerJob {
        job_id: id.clone(),
        model: "tiny-sd".into(),
        params: GenerateParams {
            prompt: "a rubber duck in space".into(),
            negative_prompt: String::new(),
            width: 64,
            height: 64,
            steps: 2,
            guidance: 7.5,
            seed: 42,
            count: 1,
        },
    };
    // As worker/src/kube/spec.rs builds it (docs/runner-contract.md).
    let env = [
        ("DUCKS_RUNNER__JOB", wire::encode(&request)),
        ("DUCKS_RUNNER__CACHE_DIR", "/var/cache/ducks".into()),
        ("DUCKS_RUNNER__OUTPUT_PREFIX", "images".into()),
        (
            "DUCKS_RUNNER__TERMINATION_LOG",
            "/dev/termination-log".into(),
        ),
        ("DUCKS_S3__ENDPOINT", config.endpoint.clone()),
        ("DUCKS_S3__REGION", config.region.clone()),
        ("DUCKS_S3__BUCKET", BUCKET.into()),
        ("DUCKS_S3__FORCE_PATH_STYLE", "true".into()),
        ("DUCKS_LOG__FORMAT", "json".into()),
    ]
    .map(|(name, value)| json!({"name": name, "value": value}));
    let name = format!("ducks-{id}");
    let mut job = controlled_job(&name, 0);
    job["spec"]["activeDeadlineSeconds"] = json!(300);
    job["spec"]["ttlSecondsAfterFinished"] = json!(600);
    let template = &mut job["spec"]["template"]["spec"];
    template["volumes"] = json!([
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "cache", "hostPath": {"path": "/var/cache/ducks", "type": "DirectoryOrCreate"}},
    ]);
    let container = &mut template["containers"][0];
    container["env"] = json!(env);
    container["envFrom"] = json!([{"secretRef": {"name": "ducks-s3", "optional": false}}]);
    container["volumeMounts"] = json!([
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": "/var/cache/ducks"},
    ]);
    submit(&jobs, job).await;

    let runner_wait = Duration::from_secs(180);
    let done = job_within(runner_wait, &jobs, &name, "the runner's end", ended).await;
    let pod = &pods_of(&pods, &name).await[0];
    let log = within("log", pods.logs(&pod.name_any(), &LogParams::default()))
        .await
        .unwrap_or_default();
    assert_eq!(
        conditions(&done),
        ["SuccessCriteriaMet", "Complete"],
        "{log}"
    );
    let end = terminated(pod);
    assert_eq!(end.exit_code, 0);
    let message = end.message.expect("a termination message");
    let Some(Line::Result(result)) = Line::parse(&message) else {
        panic!("not a result line: {message}\n{log}");
    };
    assert_eq!(result.job_id, id.to_string());
    let key = &result.images[0].key;
    assert!(
        key.contains(&format!("/{id}/")) && key.ends_with("-0.png"),
        "{key}"
    );
    let image = s3
        .client()
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("the PNG is in S3");
    assert_eq!(image.content_type(), Some("image/png"));
    // The weights went to the hostPath cache, shared by the node's pods.
    assert!(
        scratch
            .path()
            .join("kubelet/host/var/cache/ducks/blobs")
            .is_dir()
    );
    assert_eq!(api.running_processes(), 0);
}
