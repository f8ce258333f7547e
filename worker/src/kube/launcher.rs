//! The Kubernetes launcher: one `batch/v1` Job per DUCKS job, and one shared watcher over every
//! Job, pod and `FailedCreate` event the worker manages, whatever the number of jobs in flight.
//!
//! The watcher keeps what it sees in [`State`]; every change re-classifies the launches it
//! touches ([`classify`]) and sends what is new to that launch's channel. A launch costs one
//! create, one log stream while its runner runs (for progress) and, when it failed and its Job is
//! still there, one delete when it is released. Nothing per job polls or watches.
//!
//! A re-list (after a watch drop or a 410) is handled as kube-runtime documents: an object not
//! listed again is gone, so a Job deleted while the watch was down is still noticed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, LogParams, PostParams};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Resource, ResourceExt};
use ducks_contract::{JobId, Line};
use ducks_models::S3Config;
use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::KubeConfig;
use super::classify::{Budgets, Observed, Seen, classify};
use super::spec::{CONTAINER, JOB_ID_LABEL, MANAGED_BY, job_for, job_name};
use crate::launcher::{Launch, LaunchError, LaunchSpec, Launcher, Update};
use crate::outcome::Outcome;

/// How often waiting launches are looked at again, so a budget runs out without a new event.
const TICK: Duration = Duration::from_secs(1);
/// How long an API call is retried on 429, 5xx and connection errors before the launch gives up.
const API_RETRY_LIMIT: Duration = Duration::from_secs(30);
/// How long a Job's end may wait for its pod's end to arrive before it is classified without it.
const POD_LAG_LIMIT: Duration = Duration::from_secs(5);
/// The events that say the Job controller could not create a pod (quota, admission).
const FAILED_CREATE: &str = "involvedObject.kind=Job,reason=FailedCreate";
/// Labels the Job controller puts on its pods, holding the Job's uid (new and old spelling).
const CONTROLLER_UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];

#[derive(Clone)]
pub struct KubeLauncher {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Api<Job>,
    config: KubeConfig,
    s3: S3Config,
    output_prefix: String,
    shared: Arc<Shared>,
    watcher: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// What the watcher task and the launches share.
struct Shared {
    state: Mutex<State>,
    pods: Api<Pod>,
    budgets: Budgets,
    /// True once every watcher has listed its objects once.
    synced: watch::Sender<bool>,
}

impl KubeLauncher {
    /// Starts the shared watcher in `config.namespace`. S3 keys never go into a Job: they come
    /// from `config.s3_secret` or the runner's service account.
    pub fn start(client: Client, config: KubeConfig, s3: S3Config, output_prefix: String) -> Self {
        let namespace = config.namespace.as_str();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            pods: Api::namespaced(client.clone(), namespace),
            budgets: config.budgets(),
            synced: watch::channel(false).0,
        });
        let task = tokio::spawn(watch_cluster(
            shared.clone(),
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
        ));
        Self {
            inner: Arc::new(Inner {
                jobs: Api::namespaced(client, namespace),
                config,
                s3,
                output_prefix,
                shared,
                watcher: task.abort_handle(),
            }),
        }
    }

    /// Waits until the watcher has listed the cluster once (a restarted worker then knows its
    /// running Jobs); false if that did not happen within `limit`.
    pub async fn synced(&self, limit: Duration) -> bool {
        let mut synced = self.inner.shared.synced.subscribe();
        tokio::time::timeout(limit, synced.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.shared.lock()
    }

    /// Creates the Job, or finds the one an earlier launch created (409): its uid either way.
    async fn create_or_adopt(&self, spec: &LaunchSpec) -> Result<(String, bool), LaunchError> {
        let jobs = &self.inner.jobs;
        let job = job_for(
            spec,
            &self.inner.s3,
            &self.inner.output_prefix,
            &self.inner.config,
        );
        let name = job_name(&spec.job_id);
        let post = PostParams::default();
        // The Job may vanish between a 409 and the read (a cancel, the TTL): then create again.
        for _ in 0..3 {
            match with_retry("create a Job", || jobs.create(&post, &job)).await {
                Ok(created) => return Ok((created.uid().unwrap_or_default(), false)),
                Err(::kube::Error::Api(status)) if status.is_already_exists() => {}
                Err(e) => return Err(launch_error(e)),
            }
            match with_retry("read a Job", || jobs.get_opt(&name)).await {
                Ok(Some(existing)) => return Ok((existing.uid().unwrap_or_default(), true)),
                Ok(None) => continue,
                Err(e) => return Err(launch_error(e)),
            }
        }
        Err(LaunchError::Unavailable(format!(
            "the Job {name} keeps appearing and disappearing"
        )))
    }

    async fn delete(&self, job_id: &JobId) -> Result<(), ::kube::Error> {
        let name = job_name(job_id);
        let params = DeleteParams::background();
        match with_retry("delete a Job", || self.inner.jobs.delete(&name, &params)).await {
            Ok(_) => Ok(()),
            // Already gone: deleted by the TTL controller, a sweep, or an earlier call.
            Err(::kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Launcher for KubeLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launch, LaunchError> {
        let (updates, receiver) = mpsc::channel(64);
        // Registered before the create, so no watch event about the Job can come first.
        self.state().followers.insert(
            spec.job_id.clone(),
            Follower {
                updates,
                uid: None,
                cancelled: false,
                finished: false,
                succeeded: false,
                waiting: None,
                log: None,
                ended_at: None,
            },
        );
        let (uid, adopted) = match self.create_or_adopt(spec).await {
            Ok(created) => created,
            Err(e) => {
                self.state().followers.remove(&spec.job_id);
                return Err(e);
            }
        };
        if adopted {
            info!(message = "Adopted the Job an earlier worker created.", job_id = %spec.job_id);
        }
        let mut state = self.state();
        if let Some(follower) = state.followers.get_mut(&spec.job_id) {
            follower.uid = Some(uid);
        }
        // The watcher may have seen the Job already (an adopted one may even have finished).
        state.evaluate(&spec.job_id, &self.inner.shared, Instant::now());
        Ok(Launch {
            adopted,
            updates: receiver,
        })
    }

    async fn cancel(&self, job_id: &JobId) -> Result<(), LaunchError> {
        if let Some(follower) = self.state().followers.get_mut(job_id) {
            follower.cancelled = true;
        }
        // Background propagation: the Job goes at once, its pod right after.
        self.delete(job_id)
            .await
            .map_err(|e| LaunchError::Unavailable(format!("cannot delete the Job: {e}")))
    }

    async fn release(&self, job_id: &JobId) {
        let leftover = {
            let mut state = self.state();
            let follower = state.followers.remove(job_id);
            if let Some(log) = follower.as_ref().and_then(|f| f.log.as_ref()) {
                log.abort();
            }
            let succeeded = follower.is_some_and(|f| f.succeeded);
            let job = state.seen.get(job_id).and_then(|seen| seen.job.as_ref());
            let leftover = job.is_some_and(|job| !succeeded && finished(job) != Some(true));
            if job.is_none() {
                state.seen.remove(job_id);
            }
            leftover
        };
        // A succeeded Job is left to its TTL (its pod's log stays readable for a while); any
        // other still there is deleted now, so a retry creates a fresh one instead of adopting
        // it. One already gone (cancelled, deleted outside) costs nothing.
        if leftover && let Err(e) = self.delete(job_id).await {
            warn!(message = "Could not delete a finished Job; its TTL removes it.", job_id = %job_id, error = %e);
        }
    }

    async fn running(&self) -> Vec<JobId> {
        if !*self.inner.shared.synced.borrow() {
            return Vec::new();
        }
        let state = self.state();
        state
            .seen
            .iter()
            .filter(|(_, seen)| seen.job.as_ref().is_some_and(|job| finished(job).is_none()))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the watcher knows, and the launches it reports to.
#[derive(Default)]
struct State {
    /// What the cluster shows, by job id.
    seen: HashMap<JobId, Objects>,
    followers: HashMap<JobId, Follower>,
    /// During a re-list of a kind: the names listed so far.
    relisting: HashMap<Kind, HashSet<String>>,
    /// The kinds listed at least once.
    listed: HashSet<Kind>,
}

/// A DUCKS job's objects in the cluster.
#[derive(Default)]
struct Objects {
    job: Option<Job>,
    /// The uid of the Job last seen deleted.
    deleted: Option<String>,
    pods: BTreeMap<String, Pod>,
    /// The last `FailedCreate` message, with the uid of the Job it was about.
    refused: Option<(String, String)>,
}

/// One launch being followed.
struct Follower {
    updates: mpsc::Sender<Update>,
    /// The uid of this launch's Job, once created or found; nothing is reported before.
    uid: Option<String>,
    cancelled: bool,
    finished: bool,
    /// Whether it ended with the runner's result.
    succeeded: bool,
    /// The current waiting message and since when, for the budgets.
    waiting: Option<(String, Instant)>,
    /// The task following the runner's log.
    log: Option<AbortHandle>,
    /// When the Job was first seen ended while its pod was not yet.
    ended_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Jobs,
    Pods,
    Events,
}

/// One item from any of the three watchers. Each lives only from the stream to `State::apply`.
#[allow(clippy::large_enum_variant)]
enum Change {
    Job(Event<Job>),
    Pod(Event<Pod>),
    Event(Event<KubeEvent>),
}

impl State {
    /// Applies one change; returns the job ids whose launches may see something new.
    fn apply(&mut self, change: Change) -> Vec<JobId> {
        match change {
            Change::Job(event) => {
                self.apply_event(Kind::Jobs, event, job_id_of, |o, job| o.job = Some(job))
            }
            Change::Pod(event) => self.apply_event(Kind::Pods, event, job_id_of, |o, pod| {
                let name = pod.name_any();
                o.pods.insert(name, pod);
            }),
            Change::Event(event) => {
                self.apply_event(Kind::Events, event, refused_job_id, |o, event| {
                    let uid = event.involved_object.uid.clone().unwrap_or_default();
                    o.refused = Some((uid, event.message.clone().unwrap_or_default()));
                })
            }
        }
    }

    fn apply_event<K: Resource + Clone>(
        &mut self,
        kind: Kind,
        event: Event<K>,
        id_of: fn(&K) -> Option<JobId>,
        store: fn(&mut Objects, K),
    ) -> Vec<JobId> {
        match event {
            Event::Init => {
                self.relisting.insert(kind, HashSet::new());
                Vec::new()
            }
            Event::InitApply(object) | Event::Apply(object) => {
                if let Some(listed) = self.relisting.get_mut(&kind) {
                    listed.insert(object.meta().name.clone().unwrap_or_default());
                }
                let Some(id) = id_of(&object) else {
                    return Vec::new();
                };
                store(self.seen.entry(id.clone()).or_default(), object);
                vec![id]
            }
            Event::Delete(object) => {
                let Some(id) = id_of(&object) else {
                    return Vec::new();
                };
                let name = object.meta().name.clone().unwrap_or_default();
                let uid = object.meta().uid.clone().unwrap_or_default();
                // The object as deleted is its last state: a pod's may hold its end.
                store(self.seen.entry(id.clone()).or_default(), object);
                self.forget(kind, &id, &name, &uid);
                vec![id]
            }
            Event::InitDone => {
                self.listed.insert(kind);
                let Some(listed) = self.relisting.remove(&kind) else {
                    return Vec::new();
                };
                // What was not listed again was deleted while the watch was down.
                let mut gone = Vec::new();
                for (id, objects) in &self.seen {
                    match kind {
                        Kind::Jobs => {
                            if let Some(job) = &objects.job
                                && !listed.contains(&job.name_any())
                            {
                                gone.push((id.clone(), job.name_any(), job.uid()));
                            }
                        }
                        Kind::Pods => {
                            for (name, pod) in &objects.pods {
                                if !listed.contains(name) {
                                    gone.push((id.clone(), name.clone(), pod.uid()));
                                }
                            }
                        }
                        Kind::Events => {}
                    }
                }
                for (id, name, uid) in &gone {
                    self.forget(kind, id, name, uid.as_deref().unwrap_or_default());
                }
                gone.into_iter().map(|(id, _, _)| id).collect()
            }
        }
    }

    fn forget(&mut self, kind: Kind, id: &JobId, name: &str, uid: &str) {
        let Some(objects) = self.seen.get_mut(id) else {
            return;
        };
        match kind {
            Kind::Jobs => {
                if objects
                    .job
                    .as_ref()
                    .is_some_and(|job| job.uid().as_deref() == Some(uid))
                {
                    objects.job = None;
                }
                objects.deleted = Some(uid.to_owned());
            }
            // A finished pod's last state (its termination message) stays: the Job's end may be
            // read after its pod is gone (the TTL, a re-list).
            Kind::Pods => {
                if objects.pods.get(name).is_none_or(|pod| !pod_finished(pod)) {
                    objects.pods.remove(name);
                }
            }
            Kind::Events => {}
        }
        // No Job, and nobody asking: forget the job entirely.
        if objects.job.is_none() && !self.followers.contains_key(id) {
            self.seen.remove(id);
        }
    }

    /// Classifies a followed launch and reports what changed: a new waiting reason, the start of
    /// the runner (its log is followed from then on), or the end.
    fn evaluate(&mut self, id: &JobId, shared: &Shared, now: Instant) {
        let Some(follower) = self.followers.get_mut(id) else {
            return;
        };
        let Some(uid) = follower.uid.clone() else {
            return;
        };
        if follower.finished {
            return;
        }
        let objects = self.seen.get(id);
        let job = objects
            .and_then(|o| o.job.as_ref())
            .filter(|job| job.uid().as_deref() == Some(uid.as_str()));
        let deleted = objects.is_some_and(|o| o.deleted.as_deref() == Some(uid.as_str()));
        if job.is_none() && !deleted {
            // Created, but not seen by the watcher yet.
            return;
        }
        let pod = objects.and_then(|o| current_pod(o, &uid));
        // The Job's end and its pod's come through different watches: the pod's termination
        // message (the runner's result) may be a moment behind the Job's condition.
        let pod_behind = job.is_some_and(|job| finished(job).is_some())
            && pod.is_none_or(|pod| !pod_finished(pod));
        if pod_behind {
            let since = *follower.ended_at.get_or_insert(now);
            if now.duration_since(since) < POD_LAG_LIMIT {
                return;
            }
        }
        let refused = objects
            .and_then(|o| o.refused.as_ref())
            .filter(|(about, _)| *about == uid)
            .map(|(_, message)| message.as_str());
        let observed = |waiting_for| Observed {
            job,
            pod,
            refused,
            waiting_for,
        };
        let budgets = &shared.budgets;
        let mut seen = classify(observed(Duration::ZERO), budgets);
        if let Seen::Waiting(phase, message) = &seen {
            match &follower.waiting {
                // Still waiting for the same thing: the budget counts from when that began.
                Some((current, since)) if current == message => {
                    seen = classify(observed(now.duration_since(*since)), budgets);
                }
                _ => {
                    follower.waiting = Some((message.clone(), now));
                    // Droppable: a newer waiting reason or the end follows.
                    let _ = follower.updates.try_send(Update::Waiting {
                        phase: *phase,
                        message: message.clone(),
                    });
                }
            }
        }
        match seen {
            Seen::Waiting(..) => {}
            Seen::Running => {
                follower.waiting = None;
                if follower.log.is_none()
                    && let Some(pod) = pod
                {
                    let task = tokio::spawn(follow_log(
                        shared.pods.clone(),
                        pod.name_any(),
                        follower.updates.clone(),
                    ));
                    follower.log = Some(task.abort_handle());
                }
            }
            Seen::Finished(outcome) => {
                follower.finished = true;
                follower.succeeded = matches!(outcome, Outcome::Succeeded(_));
                let outcome = match outcome {
                    Outcome::Succeeded(result) => Outcome::Succeeded(result),
                    // A cancelled runner's end (killed, or its Job deleted) is the cancel.
                    _ if follower.cancelled => Outcome::Cancelled,
                    other => other,
                };
                let updates = follower.updates.clone();
                // Not awaited under the lock; the end is the last update, so order holds.
                tokio::spawn(async move { updates.send(Update::Finished(outcome)).await });
            }
        }
    }

    /// Looks at every followed launch again (for budgets that run out without an event).
    fn evaluate_all(&mut self, shared: &Shared, now: Instant) {
        let ids: Vec<JobId> = self.followers.keys().cloned().collect();
        for id in ids {
            self.evaluate(&id, shared, now);
        }
    }
}

/// The pod that tells how the launch is going: a live one before finished ones (a disrupted pod
/// is replaced), the newest first.
fn current_pod<'a>(objects: &'a Objects, job_uid: &str) -> Option<&'a Pod> {
    objects
        .pods
        .values()
        .filter(|pod| owned_by(pod, job_uid))
        .max_by_key(|pod| (!pod_finished(pod), pod.creation_timestamp(), pod.name_any()))
}

/// Whether the pod has ended (or never will start: a failed admission).
fn pod_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn owned_by(pod: &Pod, job_uid: &str) -> bool {
    let labels = pod.labels();
    CONTROLLER_UID_LABELS
        .iter()
        .any(|label| labels.get(*label).map(String::as_str) == Some(job_uid))
        || pod
            .owner_references()
            .iter()
            .any(|owner| owner.uid == job_uid)
}

/// `Some(true)` once the Job completed, `Some(false)` once it failed, `None` while it runs.
fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => Some(true),
            "Failed" | "FailureTarget" => Some(false),
            _ => None,
        })
}

fn job_id_of<K: Resource>(object: &K) -> Option<JobId> {
    object
        .meta()
        .labels
        .as_ref()?
        .get(JOB_ID_LABEL)?
        .parse()
        .ok()
}

/// The job a `FailedCreate` event is about, from its Job's name.
fn refused_job_id(event: &KubeEvent) -> Option<JobId> {
    let name = event.involved_object.name.as_deref()?;
    name.strip_prefix("ducks-")?.parse().ok()
}

/// The one watcher task: Jobs and pods by the managed-by label, `FailedCreate` events, and a
/// tick for budgets. Runs until the launcher is dropped.
async fn watch_cluster(shared: Arc<Shared>, jobs: Api<Job>, events: Api<KubeEvent>) {
    let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let by_label = watcher::Config::default().labels(&managed);
    let streams = [
        watcher::watcher(jobs, by_label.clone())
            .default_backoff()
            .map(|e| e.map(Change::Job))
            .boxed(),
        watcher::watcher(shared.pods.clone(), by_label)
            .default_backoff()
            .map(|e| e.map(Change::Pod))
            .boxed(),
        watcher::watcher(events, watcher::Config::default().fields(FAILED_CREATE))
            .default_backoff()
            .map(|e| e.map(Change::Event))
            .boxed(),
    ];
    // Each stream decodes its objects in a task of its own, so the decoding of many Jobs' and
    // pods' events spreads over the runtime's threads; the state changes in one place.
    let (sender, mut changes) = mpsc::channel(256);
    let mut forwarders = tokio::task::JoinSet::new();
    for mut stream in streams {
        let sender = sender.clone();
        forwarders.spawn(async move {
            while let Some(change) = stream.next().await {
                if sender.send(change).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(sender);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(Ok(change)) => {
                    let mut state = shared.lock();
                    let touched = state.apply(change);
                    for id in touched {
                        state.evaluate(&id, &shared, Instant::now());
                    }
                    if state.listed.len() == 3 && !*shared.synced.borrow() {
                        shared.synced.send_replace(true);
                        debug!(message = "Listed the cluster's managed Jobs and pods.", jobs = state.seen.len());
                    }
                }
                // The watcher retries by itself, with backoff.
                Some(Err(e)) => warn!(message = "Watching the cluster failed; retrying.", error = %e),
                None => return,
            },
            _ = tick.tick() => shared.lock().evaluate_all(&shared, Instant::now()),
        }
    }
}

/// Relays the runner's progress lines from its pod's log until the log ends.
async fn follow_log(pods: Api<Pod>, pod: String, updates: mpsc::Sender<Update>) {
    let params = LogParams {
        follow: true,
        container: Some(CONTAINER.into()),
        ..LogParams::default()
    };
    let log = match pods.log_stream(&pod, &params).await {
        Ok(log) => log,
        Err(e) => {
            // Progress is best effort: the outcome comes from the Job and the pod.
            warn!(message = "Cannot follow the runner's log; no progress for this job.", pod, error = %e);
            return;
        }
    };
    let mut lines = log.lines();
    while let Some(Ok(line)) = lines.next().await {
        if let Some(line) = Line::parse(&line)
            && updates.send(Update::Line(line)).await.is_err()
        {
            return;
        }
    }
}

/// Runs an API call again on 429, 5xx and connection errors, with growing pauses, for up to
/// [`API_RETRY_LIMIT`]. (kube's client already retries 429, 503 and 504 a few times itself.)
async fn with_retry<T, F>(what: &str, mut call: impl FnMut() -> F) -> Result<T, ::kube::Error>
where
    F: Future<Output = Result<T, ::kube::Error>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        match call().await {
            Err(e) if transient(&e) && started.elapsed() + pause < API_RETRY_LIMIT => {
                debug!(message = "A Kubernetes API call failed; retrying.", call = what, error = %e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

fn transient(error: &::kube::Error) -> bool {
    match error {
        ::kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        // Connection trouble, timeouts: the API server may be restarting.
        ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => true,
        _ => false,
    }
}

/// A failed create, as the job's failure: refusals name their reason; the rest may pass.
fn launch_error(error: ::kube::Error) -> LaunchError {
    match error {
        ::kube::Error::Api(status) if status.code == 403 || status.code == 422 => {
            LaunchError::Refused {
                retryable: status.message.contains("exceeded quota"),
                message: status.message,
            }
        }
        other => LaunchError::Unavailable(format!("the Kubernetes API failed: {other}")),
    }
}
