//! Tests of the Kubernetes API server simulator ([`KubeApi`]) through the
//! production `kube` client: what the Kubernetes launcher will rely on
//! (server-set metadata, 409 AlreadyExists, selectors, delete propagation,
//! watches that resume and re-list, faults and request counts).

use std::future::Future;
use std::time::Duration;

use ducks_tests::{KubeApi, KubeFault};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod, PodStatus};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Deadline for every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

const NS: &str = "ducks";

/// Runs `fut` with the [`WAIT`] deadline.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
}

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
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: not seen within {WAIT:?}"))
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
