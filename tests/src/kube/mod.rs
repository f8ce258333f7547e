//! A local Kubernetes API server simulator, for testing the Kubernetes
//! launcher with the production `kube` client and no control plane.
//!
//! [`KubeApi::start`] serves the real REST and watch protocol on a free
//! loopback port; [`KubeApi::client`] is an ordinary `kube::Client` built from
//! a `kube::Config` pointed at `http://127.0.0.1:PORT`, so the code under test
//! runs unchanged.
//!
//! # What exists
//!
//! - batch/v1 Jobs and v1 Pods: create (409 AlreadyExists), get (404), list
//!   (equality label selectors, `limit`/`continue` as plain offsets), watch,
//!   delete. v1 Events: get, list and watch; the Job controller records
//!   them, and tests can add their own with [`KubeApi::record_event`].
//! - Field selectors with `=`, `==`, `!=`: `metadata.name` and
//!   `metadata.namespace` everywhere, `status.phase` on pods,
//!   `involvedObject.kind|name|namespace|uid`, `reason` and `type` on events.
//! - `GET pods/{name}/log` (`container`, `follow`, `tailLines`,
//!   `limitBytes`): the container's output as text/plain; a followed log
//!   streams until the container ends or the pod goes away; a container
//!   that has not started answers 400 with its waiting reason.
//! - Server-set metadata: uid, creationTimestamp, generation, and one global,
//!   monotonically increasing resourceVersion that starts above 0, as in a
//!   cluster with history (a list answering "0" would make the watch after it
//!   start "from now" and skip changes in between).
//! - Delete with `propagationPolicy`: Background and Foreground delete a
//!   Job's pods (by owner reference or job-name label) before the Job; Orphan
//!   (the default for Jobs) removes the owner reference and leaves them.
//!   Deletion is immediate: no graceful deletion, finalizers or
//!   deletionTimestamp, and Foreground is not observable as a separate phase.
//! - Watch: `resourceVersion`, `timeoutSeconds`, `allowWatchBookmarks`
//!   (a BOOKMARK every [`KubeApi::set_bookmark_interval`]), selectors (an object
//!   that enters or leaves the selection is ADDED or DELETED),
//!   `sendInitialEvents`, from a change log of 10 000 entries; an older
//!   resourceVersion gets an ERROR event with a 410 Expired Status.
//! - Errors as `Status` objects, as kube-client parses them.
//! - A Job controller (controller.rs) for one-pod Jobs: a pod per attempt
//!   (after [`Timing::create_pod`]), `status.active`/`startTime`,
//!   `podFailurePolicy` (onExitCodes, onPodConditions; FailJob, Ignore,
//!   Count), `backoffLimit` (default 6, without the exponential backoff
//!   delay), SuccessCriteriaMet/FailureTarget then Complete/Failed as two
//!   writes, `activeDeadlineSeconds` (DeadlineExceeded, active pods deleted),
//!   `ttlSecondsAfterFinished` (Background delete), FailedCreate events while
//!   [`KubeApi::refuse_pods`]. Suspended Jobs (`spec.suspend: true`) are left
//!   alone, so the hooks below drive them.
//! - A kubelet (kubelet.rs) for the pods the Job controller creates, each by
//!   its [`PodBehaviour`]: PodScheduled, ContainerCreating, Running/Ready,
//!   then terminated with exit code, reason and termination message
//!   (FallbackToLogsOnError included), or stuck Unschedulable / in an image
//!   pull / in CreateContainerConfigError (a missing Secret). With
//!   [`KubeApi::set_kubelet`], [`PodBehaviour::Run`] runs a real process
//!   (the real `ducks runner`) with the pod's environment, `envFrom` Secrets
//!   ([`KubeApi::put_secret`]) and volumes mapped to local folders; a
//!   deleted pod's process group gets SIGTERM, then SIGKILL after 2 s.
//!   Every transition is a store write: a new resourceVersion and a watch
//!   event.
//! - RBAC ([`KubeApi::enforce_rbac`]): 403 Forbidden with the API server's
//!   message; `POST selfsubjectaccessreviews` answers by the same rules.
//! - Per (verb, resource) request counts ([`KubeApi::requests`]; `pods/log`
//!   and `selfsubjectaccessreviews` too) and faults:
//!   429 with Retry-After or 500 for the next requests of a verb
//!   ([`KubeApi::fail_next`]), closing every open watch
//!   ([`KubeApi::drop_watches`]), 410 for the next watch
//!   ([`KubeApi::expire_next_watch`]).
//! - Hooks that change state as the Job controller and kubelet would, each a
//!   write with a new resourceVersion and a watch event:
//!   [`KubeApi::create_pod_for_job`], [`KubeApi::set_pod_status`],
//!   [`KubeApi::set_job_status`]. The kubelet does not run pods made by
//!   [`KubeApi::create_pod_for_job`] (or created over REST).
//!
//! # What does not exist yet
//!
//! - Jobs with completions or parallelism above 1, indexed Jobs, pod
//!   backoff delays, the Suspended condition, unsuspending, init or several
//!   containers (the kubelet runs the first container only), `valueFrom` and
//!   ConfigMaps in the environment, resource limits (nothing is OOM-killed
//!   unless scripted), restarts (`restartPolicy` is taken as Never).
//! - No update, patch or `status` subresource over REST, no Secrets over
//!   REST, no 409 Conflict on stale resourceVersions, no 422 validation
//!   beyond a missing name, no authentication (every request is the
//!   `ducks-worker` service account), no TLS, no other resources.
//! - Set-based label selectors (`in`, `notin`) answer 400.
//!
//! Note that kube 5's client retries 429, 503 and 504 by itself (up to 15
//! times, honouring Retry-After) unless `Config::default_retry` is off; 500
//! and other errors come back as `kube::Error::Api` at once.

mod controller;
mod http;
mod kubelet;
mod logs;
mod rbac;
mod selector;
mod sim;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::service::service_fn;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{Event, Pod, PodStatus};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use sim::Notice;
pub use sim::{Kubelet, PodBehaviour, Timing};
use store::{Resource, Store};

/// How long [`KubeApi::stop`] may take before it is called a hang.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Bookmarks come this often on watches that allow them, until changed.
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// An injected failure for [`KubeApi::fail_next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeFault {
    /// 429 TooManyRequests with `Retry-After` and
    /// `details.retryAfterSeconds`, as API Priority and Fairness answers.
    TooManyRequests { retry_after_secs: u32 },
    /// 500 InternalError.
    InternalError,
}

/// A running (or stopped) Kubernetes API server simulator.
///
/// Dropping it aborts the server task, which closes the listener and every
/// connection, watches included.
pub struct KubeApi {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    /// `None` once [`KubeApi::stop`] ran.
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The Job controller; aborted on drop.
    controller: JoinHandle<()>,
    /// Pod folders and logs while no kubelet root is set.
    _root: tempfile::TempDir,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("endpoint", &self.endpoint())
            .field("running", &self.task.is_some())
            .finish_non_exhaustive()
    }
}

impl KubeApi {
    /// Starts an empty server on `127.0.0.1:0`. The listener is bound before
    /// this returns, so no readiness wait is needed.
    ///
    /// Must be called inside a tokio runtime. Panics if the socket cannot be
    /// bound.
    pub async fn start() -> KubeApi {
        let root = tempfile::Builder::new()
            .prefix("ducks-kube-")
            .tempdir()
            .expect("a temporary folder for the simulated kubelet");
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let mut initial = Store::new(DEFAULT_BOOKMARK_INTERVAL);
        initial.sim.default_root = root.path().to_owned();
        initial.sim.notices = Some(notices.clone());
        let store = Arc::new(Mutex::new(initial));
        let controller =
            tokio::spawn(controller::Controller::new(Arc::clone(&store), notices).run(notices_rx));
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the Kubernetes API simulator to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the listener");
        crate::support::reserve_port(addr.port());
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, Arc::clone(&store), async {
            // An error means the sender was dropped: stop too.
            let _ = shutdown_rx.await;
        }));
        KubeApi {
            addr,
            store,
            shutdown: Some(shutdown),
            task: Some(task),
            controller,
            _root: root,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Config` for this server: default namespace `default`, no
    /// authentication, kube's defaults otherwise (including its retries of
    /// 429, 503 and 504).
    pub fn config(&self) -> ::kube::Config {
        let url = self
            .endpoint()
            .parse()
            .expect("http://127.0.0.1:PORT is a valid URI");
        ::kube::Config::new(url)
    }

    /// A client built from [`KubeApi::config`]. Panics if kube cannot build
    /// it (it would for any server).
    pub fn client(&self) -> ::kube::Client {
        ::kube::Client::try_from(self.config()).expect("build a kube client for the simulator")
    }

    /// How many requests with `verb` (`create`, `get`, `list`, `watch`,
    /// `delete`) reached `resource` (`jobs`, `pods`, `events`) since start
    /// or [`KubeApi::reset_requests`], faulted ones included.
    pub fn requests(&self, verb: &str, resource: &str) -> usize {
        lock(&self.store).requests(verb, resource)
    }

    pub fn reset_requests(&self) {
        lock(&self.store).reset_requests();
    }

    /// Makes the next `times` requests with `verb` on `resource` answer
    /// `fault` instead of being served. Queued faults add up, in order.
    pub fn fail_next(&self, verb: &str, resource: &str, times: usize, fault: KubeFault) {
        lock(&self.store).queue_faults(verb, resource, times, fault);
    }

    /// Ends every open watch response now (cleanly, as when the API server
    /// restarts or a load balancer cuts idle streams); returns how many
    /// there were. Clients resume from their last resourceVersion.
    pub fn drop_watches(&self) -> usize {
        lock(&self.store).drop_watches()
    }

    /// How many watch responses are open.
    pub fn open_watches(&self) -> usize {
        lock(&self.store).open_watches()
    }

    /// Makes the next watch request, whatever its resourceVersion, answer
    /// one ERROR event with a 410 Expired Status and end, as after etcd
    /// compaction.
    pub fn expire_next_watch(&self) {
        lock(&self.store).expire_next_watches(1);
    }

    /// How often watches that allow bookmarks get one (1 s at start); applies
    /// to watches opened afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        lock(&self.store).bookmark_interval = interval;
    }

    /// The Job, as stored now. Panics if it does not exist.
    pub fn job(&self, namespace: &str, name: &str) -> Job {
        from_value(self.get(Resource::Jobs, namespace, name))
    }

    /// The pod, as stored now. Panics if it does not exist.
    pub fn pod(&self, namespace: &str, name: &str) -> Pod {
        from_value(self.get(Resource::Pods, namespace, name))
    }

    /// Whether the pod exists.
    pub fn pod_exists(&self, namespace: &str, name: &str) -> bool {
        lock(&self.store)
            .get(Resource::Pods, namespace, name)
            .is_ok()
    }

    /// Creates a pod for `job` as the Job controller would: named
    /// `<job>-<suffix>`, the template's labels, spec and annotations, the
    /// job-name and controller-uid labels, a controller owner reference, and
    /// phase Pending. Watches see it ADDED. Panics if the Job does not exist.
    pub fn create_pod_for_job(&self, namespace: &str, job: &str) -> Pod {
        let mut store = lock(&self.store);
        let created = store
            .pod_for_job(namespace, job)
            .and_then(|pod| store.create(Resource::Pods, namespace, pod));
        from_value(created.unwrap_or_else(|err| {
            panic!("create a pod for Job {namespace}/{job}: {}", err.message)
        }))
    }

    /// Replaces a pod's status, as the kubelet would (MODIFIED). Panics if
    /// the pod does not exist.
    pub fn set_pod_status(&self, namespace: &str, name: &str, status: PodStatus) -> Pod {
        from_value(self.set_status(Resource::Pods, namespace, name, &status))
    }

    /// Replaces a Job's status, as the Job controller would (MODIFIED).
    /// Panics if the Job does not exist.
    pub fn set_job_status(&self, namespace: &str, name: &str, status: JobStatus) -> Job {
        from_value(self.set_status(Resource::Jobs, namespace, name, &status))
    }

    /// Stores an event (its `metadata.name` or `generateName` is needed), as
    /// a controller reporting on an object would.
    pub fn record_event(&self, namespace: &str, event: Event) -> Event {
        let value = to_value(&event);
        let created = lock(&self.store).create(Resource::Events, namespace, value);
        from_value(
            created.unwrap_or_else(|err| panic!("record an event in {namespace}: {}", err.message)),
        )
    }

    /// The behaviour of pods once the scripted ones are used up (at start:
    /// exit 0 with an empty log and no message).
    pub fn set_default_pod_behaviour(&self, behaviour: PodBehaviour) {
        lock(&self.store).sim.default_behaviour = behaviour;
    }

    /// Behaviours for the next pods the Job controller creates, in order,
    /// before the default; adds to those not used yet.
    pub fn script_pods(&self, behaviours: Vec<PodBehaviour>) {
        lock(&self.store).sim.scripted.extend(behaviours);
    }

    /// While `Some`, the Job controller creates no pod for a new (or
    /// replacement) pod of any Job and records a Warning Event, reason
    /// FailedCreate, on the Job instead, with this message (e.g. `Error
    /// creating: pods "ducks-x-abcde" is forbidden: exceeded quota: ...`).
    /// Back to `None`, it creates the pods of the Jobs it was refused for.
    pub fn refuse_pods(&self, message: Option<String>) {
        let mut store = lock(&self.store);
        let allowed_again = message.is_none() && store.sim.refuse.is_some();
        store.sim.refuse = message;
        if allowed_again {
            store.sim.notify(Notice::Retry);
        }
    }

    /// Delays between phases (all zero at start: "instant phases"); applies
    /// to what is scheduled afterwards.
    pub fn set_timing(&self, timing: Timing) {
        lock(&self.store).sim.timing = timing;
    }

    /// Enables running real processes for [`PodBehaviour::Run`]; pod
    /// folders, volumes and logs move to `kubelet.root` for pods started
    /// afterwards.
    pub fn set_kubelet(&self, kubelet: Kubelet) {
        lock(&self.store).sim.kubelet = Some(kubelet);
    }

    /// Stores a Secret's data (plain strings) for `envFrom.secretRef`; a
    /// hook only, Secrets have no REST here.
    pub fn put_secret(&self, namespace: &str, name: &str, data: BTreeMap<String, String>) {
        lock(&self.store)
            .sim
            .secrets
            .insert((namespace.to_owned(), name.to_owned()), data);
    }

    /// Pods that ran a process whose process is still alive (a deleted
    /// pod's process gets SIGTERM, then SIGKILL after 2 s).
    pub fn running_processes(&self) -> usize {
        lock(&self.store).sim.processes.len()
    }

    /// How many Jobs were ever created successfully with this name in this
    /// namespace; an empty `name` counts every name in the namespace, and
    /// an empty `namespace` too every namespace.
    pub fn jobs_created(&self, namespace: &str, name: &str) -> usize {
        lock(&self.store)
            .sim
            .jobs_created
            .iter()
            .filter(|((ns, n), _)| {
                (namespace.is_empty() || ns == namespace) && (name.is_empty() || n == name)
            })
            .map(|(_, count)| count)
            .sum()
    }

    /// From now on every request is checked against these rules (apiGroups,
    /// resources with subresources such as `pods/log`, verbs, resourceNames,
    /// `*` wildcards): one not allowed answers 403 Forbidden with the API
    /// server's message for user `system:serviceaccount:ducks:ducks-worker`.
    /// Before it is called, everything is allowed. SelfSubjectAccessReviews
    /// answer by the same rules.
    pub fn enforce_rbac(&self, rules: Vec<PolicyRule>) {
        lock(&self.store).rbac = Some(rules);
    }

    /// Stops accepting, closes the listener and every connection (watches
    /// included), and waits for that. Stored objects stay. Calling it again
    /// does nothing. Panics if that takes over 10 s.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // An error means the task already ended.
            let _ = shutdown.send(());
        }
        let Some(task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(STOP_LIMIT, task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("the Kubernetes API simulator task failed: {err}"),
            Err(_) => panic!("the Kubernetes API simulator did not stop within {STOP_LIMIT:?}"),
        }
    }

    fn get(&self, resource: Resource, namespace: &str, name: &str) -> Value {
        lock(&self.store)
            .get(resource, namespace, name)
            .unwrap_or_else(|err| panic!("{}", err.message))
    }

    fn set_status(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        status: &impl Serialize,
    ) -> Value {
        let status = to_value(status);
        lock(&self.store)
            .modify(resource, namespace, name, |object| {
                object["status"] = status
            })
            .unwrap_or_else(|err| panic!("set the status of {namespace}/{name}: {}", err.message))
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.controller.abort();
        lock(&self.store).sim.kill_all();
        if let Some(task) = self.task.take() {
            // Dropping the task's future drops the listener and the JoinSet of
            // connections, which aborts them.
            task.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    store: Arc<Mutex<Store>>,
    shutdown: impl Future<Output = ()>,
) {
    let service = service_fn(move |request| http::handle(Arc::clone(&store), request));
    ducks_models::embedded_s3::serve(listener, service, shutdown).await;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later call into a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("k8s-openapi types serialize to JSON")
}

fn from_value<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the simulator stores objects of the served types")
}
