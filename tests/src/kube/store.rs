//! The simulator's state: objects as JSON by (resource, namespace, name), the
//! global resourceVersion counter, the change log watches replay from, the
//! open watches, request counts and pending faults. Everything sits behind
//! one mutex (never held across an await), so a watch registers and reads its
//! backlog atomically with respect to writes: no change falls in between.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::KubeFault;
use super::selector::{FieldSelector, LabelSelector};
use super::sim::{Notice, Sim};

/// How many changes the log keeps; a watch from an older resourceVersion
/// gets 410 Expired, as after etcd compaction.
const LOG_CAPACITY: usize = 10_000;

/// Labels the Job controller puts on its pods (both spellings, old and new).
pub(super) const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];
const CONTROLLER_UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];

/// The resources the simulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Resource {
    Jobs,
    Pods,
    Events,
}

impl Resource {
    pub(super) fn from_plural(plural: &str) -> Option<Resource> {
        match plural {
            "jobs" => Some(Resource::Jobs),
            "pods" => Some(Resource::Pods),
            "events" => Some(Resource::Events),
            _ => None,
        }
    }

    pub(super) fn plural(self) -> &'static str {
        match self {
            Resource::Jobs => "jobs",
            Resource::Pods => "pods",
            Resource::Events => "events",
        }
    }

    /// The API group: `batch` for Jobs, the core group (`""`) otherwise.
    pub(super) fn group(self) -> &'static str {
        match self {
            Resource::Jobs => "batch",
            Resource::Pods | Resource::Events => "",
        }
    }

    pub(super) fn api_version(self) -> &'static str {
        match self {
            Resource::Jobs => "batch/v1",
            Resource::Pods | Resource::Events => "v1",
        }
    }

    pub(super) fn kind(self) -> &'static str {
        match self {
            Resource::Jobs => "Job",
            Resource::Pods => "Pod",
            Resource::Events => "Event",
        }
    }

    /// `jobs.batch` or `pods`, as in the API server's messages.
    pub(super) fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            group => format!("{}.{group}", self.plural()),
        }
    }
}

/// An error the API server answers as a `Status` object.
#[derive(Clone, Debug)]
pub(super) struct ApiError {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
    /// `details` of the Status: the object's name, its group and its
    /// resource (plural).
    pub(super) details: Option<Box<(String, String, String)>>,
    /// Seconds for `Retry-After` and `details.retryAfterSeconds`.
    pub(super) retry_after_secs: Option<u32>,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after_secs: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub(super) fn not_found(resource: Resource, name: &str) -> ApiError {
        ApiError {
            details: Some(Box::new(details(resource, name))),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} {name:?} not found", resource.qualified()),
            )
        }
    }

    fn already_exists(resource: Resource, name: &str) -> ApiError {
        ApiError {
            details: Some(Box::new(details(resource, name))),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{} {name:?} already exists", resource.qualified()),
            )
        }
    }

    pub(super) fn from_fault(fault: KubeFault) -> ApiError {
        match fault {
            KubeFault::TooManyRequests { retry_after_secs } => ApiError {
                retry_after_secs: Some(retry_after_secs),
                ..ApiError::new(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                )
            },
            KubeFault::InternalError => ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: injected by the test",
            ),
        }
    }

    /// The `Status` object kube-client parses into `kube::Error::Api`.
    pub(super) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if let Some((name, group, kind)) = self.details.as_deref() {
            details.insert("name".into(), json!(name));
            details.insert("group".into(), json!(group));
            details.insert("kind".into(), json!(kind));
        }
        if let Some(seconds) = self.retry_after_secs {
            details.insert("retryAfterSeconds".into(), json!(seconds));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

fn details(resource: Resource, name: &str) -> (String, String, String) {
    (
        name.to_owned(),
        resource.group().to_owned(),
        resource.plural().to_owned(),
    )
}

pub(super) type Result<T, E = ApiError> = std::result::Result<T, E>;

/// What a delete does to a Job's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Propagation {
    Orphan,
    Background,
    Foreground,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One entry of the change log.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    resource: Resource,
    kind: ChangeKind,
    /// The object after the change (for a delete: as deleted, with the
    /// delete's resourceVersion).
    object: Value,
    /// The object before a modification, so a watch with a selector sees an
    /// object enter (ADDED) or leave (DELETED) its selection.
    previous: Option<Value>,
}

/// What a watch is for; checked against every change.
#[derive(Clone, Debug)]
pub(super) struct WatchFilter {
    pub(super) resource: Resource,
    /// `None`: all namespaces.
    pub(super) namespace: Option<String>,
    pub(super) labels: LabelSelector,
    pub(super) fields: FieldSelector,
}

impl WatchFilter {
    fn selects(&self, object: &Value) -> bool {
        let namespace_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(object) == ns);
        namespace_ok && self.labels.matches(object) && self.fields.matches(object)
    }

    /// The watch event type this change is to this watch, if any.
    fn event_type(&self, change: &Change) -> Option<&'static str> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.selects(&change.object);
        match change.kind {
            ChangeKind::Added => now.then_some("ADDED"),
            ChangeKind::Deleted => now.then_some("DELETED"),
            ChangeKind::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }
}

/// An open watch: its filter and the channel its response body reads.
struct OpenWatch {
    id: u64,
    filter: WatchFilter,
    lines: mpsc::UnboundedSender<Bytes>,
}

/// How a watch request starts.
pub(super) enum WatchStart {
    /// Registered: the backlog is already in the channel.
    Open {
        id: u64,
        lines: mpsc::UnboundedReceiver<Bytes>,
    },
    /// The resourceVersion is too old (or a test forced it): one ERROR event
    /// with a 410 Status, then the stream ends.
    Expired(Bytes),
}

/// Where a watch starts.
pub(super) enum WatchFrom {
    /// No resourceVersion or "0": every current object as ADDED first.
    Now,
    /// `sendInitialEvents=true`: every current object as ADDED, then a
    /// BOOKMARK annotated `k8s.io/initial-events-end`.
    StreamingList,
    /// Every change after this resourceVersion.
    After(u64),
}

type Key = (Resource, String, String);

#[derive(Default)]
pub(super) struct Store {
    /// The resourceVersion of the latest write; 0 before any.
    last_resource_version: u64,
    last_uid: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Change>,
    /// The highest resourceVersion no longer in the log.
    compacted: u64,
    watches: Vec<OpenWatch>,
    last_watch_id: u64,
    /// By (verb, resource plural).
    requests: HashMap<(String, String), usize>,
    /// By (verb, resource plural): faults to answer, in order.
    faults: HashMap<(String, String), VecDeque<KubeFault>>,
    /// How many coming watch requests answer 410 whatever their version.
    expire_watches: usize,
    pub(super) bookmark_interval: Duration,
    /// The Job controller's and kubelet's settings and bookkeeping.
    pub(super) sim: Sim,
    /// `None`: everything is allowed.
    pub(super) rbac: Option<Vec<PolicyRule>>,
}

impl Store {
    pub(super) fn new(bookmark_interval: Duration) -> Store {
        Store {
            bookmark_interval,
            // As in a real cluster, whose store has seen writes before any client lists: a list
            // never answers resourceVersion "0", which a watch would read as "from now" and so
            // skip every change made between the list and the watch.
            last_resource_version: 1,
            ..Store::default()
        }
    }

    /// Counts a request to `resource` (a plural, or `pods/log`).
    pub(super) fn count(&mut self, verb: &str, resource: &str) {
        let key = (verb.to_owned(), resource.to_owned());
        *self.requests.entry(key).or_default() += 1;
    }

    /// Hands out the next fault queued for requests with `verb` to `resource`.
    pub(super) fn take_fault(&mut self, verb: &str, resource: &str) -> Option<KubeFault> {
        let key = (verb.to_owned(), resource.to_owned());
        let faults = self.faults.get_mut(&key)?;
        let fault = faults.pop_front();
        if faults.is_empty() {
            self.faults.remove(&key);
        }
        fault
    }

    pub(super) fn requests(&self, verb: &str, resource: &str) -> usize {
        self.requests
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn reset_requests(&mut self) {
        self.requests.clear();
    }

    pub(super) fn queue_faults(
        &mut self,
        verb: &str,
        resource: &str,
        times: usize,
        fault: KubeFault,
    ) {
        self.faults
            .entry((verb.to_owned(), resource.to_owned()))
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    pub(super) fn expire_next_watches(&mut self, count: usize) {
        self.expire_watches += count;
    }

    /// Closes every open watch; returns how many there were.
    pub(super) fn drop_watches(&mut self) -> usize {
        std::mem::take(&mut self.watches).len()
    }

    pub(super) fn open_watches(&self) -> usize {
        self.watches.len()
    }

    fn next_resource_version(&mut self) -> u64 {
        self.last_resource_version += 1;
        self.last_resource_version
    }

    pub(super) fn get(&self, resource: Resource, namespace: &str, name: &str) -> Result<Value> {
        self.objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// Creates `object` in `namespace`, setting what the API server sets:
    /// apiVersion and kind if missing, namespace, uid, creationTimestamp,
    /// resourceVersion, generation, and an initial status.
    pub(super) fn create(
        &mut self,
        resource: Resource,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value> {
        let Some(fields) = object.as_object_mut() else {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        };
        fields
            .entry("apiVersion")
            .or_insert_with(|| json!(resource.api_version()));
        fields
            .entry("kind")
            .or_insert_with(|| json!(resource.kind()));
        let metadata = fields.entry("metadata").or_insert_with(|| json!({}));
        let Some(metadata) = metadata.as_object_mut() else {
            return Err(ApiError::bad_request("metadata is not an object"));
        };
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(ns) if ns != namespace => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
                )));
            }
            _ => {}
        }
        let name = match (
            metadata.get("name").and_then(Value::as_str),
            metadata.get("generateName").and_then(Value::as_str),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => {
                format!("{prefix}{:05x}", self.last_uid + 1)
            }
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        resource.kind()
                    ),
                ));
            }
        };
        let key = (resource, namespace.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        self.last_uid += 1;
        let resource_version = self.next_resource_version();
        if resource == Resource::Jobs {
            *self
                .sim
                .jobs_created
                .entry((namespace.to_owned(), name.clone()))
                .or_default() += 1;
        }
        metadata.insert("name".into(), json!(name));
        metadata.insert("namespace".into(), json!(namespace));
        metadata.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", self.last_uid)),
        );
        metadata.insert("creationTimestamp".into(), now());
        metadata.insert(
            "resourceVersion".into(),
            json!(resource_version.to_string()),
        );
        metadata.insert("generation".into(), json!(1));
        match resource {
            Resource::Pods => {
                let status = fields.entry("status").or_insert_with(|| json!({}));
                if let Some(status) = status.as_object_mut() {
                    status.entry("phase").or_insert_with(|| json!("Pending"));
                }
            }
            Resource::Jobs => {
                fields.entry("status").or_insert_with(|| json!({}));
            }
            Resource::Events => {}
        }
        self.objects.insert(key, object.clone());
        self.record(Change {
            resource_version,
            resource,
            kind: ChangeKind::Added,
            object: object.clone(),
            previous: None,
        });
        Ok(object)
    }

    /// Changes an object in place, as a controller's update would: a new
    /// resourceVersion and a MODIFIED event. `generation` is left alone (the
    /// hooks only change status and owner references).
    pub(super) fn modify(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Value> {
        let key = (resource, namespace.to_owned(), name.to_owned());
        let resource_version = self.last_resource_version + 1;
        let Some(object) = self.objects.get_mut(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        let previous = object.clone();
        change(object);
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let object = object.clone();
        self.last_resource_version = resource_version;
        self.record(Change {
            resource_version,
            resource,
            kind: ChangeKind::Modified,
            object: object.clone(),
            previous: Some(previous),
        });
        Ok(object)
    }

    /// Deletes an object at once (no graceful deletion, no finalizers) and
    /// returns it as deleted. A Job's pods (by owner reference or job-name
    /// label) are deleted first under Background and Foreground, and lose
    /// their owner reference under Orphan.
    pub(super) fn delete(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value> {
        let object = self.get(resource, namespace, name)?;
        if resource == Resource::Jobs {
            let uid = object
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            for pod in self.pods_of_job(namespace, name, &uid) {
                let result = match propagation {
                    Propagation::Background | Propagation::Foreground => self
                        .delete(Resource::Pods, namespace, &pod, Propagation::Background)
                        .map(drop),
                    Propagation::Orphan => self
                        .modify(Resource::Pods, namespace, &pod, |pod| {
                            if let Some(owners) = pod
                                .pointer_mut("/metadata/ownerReferences")
                                .and_then(Value::as_array_mut)
                            {
                                owners.retain(|owner| owner["uid"] != json!(uid));
                            }
                        })
                        .map(drop),
                };
                result.expect("a pod found under the same lock exists");
            }
        }
        let resource_version = self.next_resource_version();
        let mut object = self
            .objects
            .remove(&(resource, namespace.to_owned(), name.to_owned()))
            .unwrap_or(object);
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        self.record(Change {
            resource_version,
            resource,
            kind: ChangeKind::Deleted,
            object: object.clone(),
            previous: None,
        });
        Ok(object)
    }

    /// Names of the pods a Job owns: an owner reference to its uid, or (for
    /// pods made without one) its job-name label.
    pub(super) fn pods_of_job(&self, namespace: &str, job: &str, uid: &str) -> Vec<String> {
        self.objects
            .iter()
            .filter(|((resource, ns, _), _)| *resource == Resource::Pods && ns == namespace)
            .filter(|(_, pod)| {
                let owned = pod
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|owners| owners.iter().any(|o| o["uid"] == json!(uid)));
                let labelled = JOB_NAME_LABELS.iter().any(|label| {
                    pod.pointer("/metadata/labels")
                        .and_then(|labels| labels.get(*label))
                        .and_then(Value::as_str)
                        == Some(job)
                });
                owned || labelled
            })
            .map(|((_, _, name), _)| name.clone())
            .collect()
    }

    /// A pod as the Job controller would make it for `job`: the template's
    /// metadata and spec, the job-name and controller-uid labels, and a
    /// controller owner reference.
    pub(super) fn pod_for_job(&self, namespace: &str, job: &str) -> Result<Value> {
        let job_object = self.get(Resource::Jobs, namespace, job)?;
        let uid = job_object["metadata"]["uid"].clone();
        let template = job_object
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let mut labels = template
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for label in JOB_NAME_LABELS {
            labels.insert(label.into(), json!(job));
        }
        for label in CONTROLLER_UID_LABELS {
            labels.insert(label.into(), uid.clone());
        }
        let mut metadata = template
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        metadata.remove("name");
        metadata.insert("generateName".into(), json!(format!("{job}-")));
        metadata.insert("labels".into(), Value::Object(labels));
        metadata.insert(
            "ownerReferences".into(),
            json!([{
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": job,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
        );
        Ok(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        }))
    }

    /// A list response: matching objects sorted by namespace and name, the
    /// current resourceVersion, and an offset as the `continue` token when
    /// `limit` cut it short.
    pub(super) fn list(
        &self,
        filter: &WatchFilter,
        limit: Option<usize>,
        continue_from: Option<usize>,
    ) -> Value {
        let matching: Vec<&Value> = self
            .objects
            .iter()
            .filter(|((resource, _, _), object)| {
                *resource == filter.resource && filter.selects(object)
            })
            .map(|(_, object)| object)
            .collect();
        let start = continue_from.unwrap_or(0).min(matching.len());
        // A limit of 0 means none, as in Kubernetes.
        let end = match limit {
            Some(limit) if limit > 0 => (start + limit).min(matching.len()),
            _ => matching.len(),
        };
        let mut metadata = json!({"resourceVersion": self.last_resource_version.to_string()});
        if end < matching.len() {
            metadata["continue"] = json!(end.to_string());
            metadata["remainingItemCount"] = json!(matching.len() - end);
        }
        json!({
            "apiVersion": filter.resource.api_version(),
            "kind": format!("{}List", filter.resource.kind()),
            "metadata": metadata,
            "items": matching[start..end],
        })
    }

    /// Opens a watch: its backlog goes into the channel now, later changes as
    /// they happen.
    pub(super) fn watch(&mut self, filter: WatchFilter, from: WatchFrom) -> WatchStart {
        if self.expire_watches > 0 || matches!(from, WatchFrom::After(v) if v < self.compacted) {
            self.expire_watches = self.expire_watches.saturating_sub(1);
            let requested = match from {
                WatchFrom::After(v) => v.to_string(),
                WatchFrom::Now | WatchFrom::StreamingList => "0".to_owned(),
            };
            let gone = ApiError::new(
                410,
                "Expired",
                format!(
                    "too old resource version: {requested} ({})",
                    self.compacted.max(self.last_resource_version)
                ),
            );
            return WatchStart::Expired(line("ERROR", &gone.status()));
        }
        let (sender, lines) = mpsc::unbounded_channel();
        match from {
            WatchFrom::Now | WatchFrom::StreamingList => {
                for ((resource, _, _), object) in &self.objects {
                    if *resource == filter.resource && filter.selects(object) {
                        // The receiver is alive: it is returned below.
                        let _ = sender.send(line("ADDED", object));
                    }
                }
                if matches!(from, WatchFrom::StreamingList) {
                    let _ = sender.send(self.bookmark(filter.resource, true));
                }
            }
            WatchFrom::After(version) => {
                for change in self.log.iter().filter(|c| c.resource_version > version) {
                    if let Some(kind) = filter.event_type(change) {
                        let _ = sender.send(line(kind, &change.object));
                    }
                }
            }
        }
        self.last_watch_id += 1;
        let id = self.last_watch_id;
        self.watches.push(OpenWatch {
            id,
            filter,
            lines: sender,
        });
        WatchStart::Open { id, lines }
    }

    /// Sends a BOOKMARK at the current resourceVersion to watch `id`;
    /// `false` when that watch is closed.
    pub(super) fn send_bookmark(&mut self, id: u64) -> bool {
        let Some(position) = self.watches.iter().position(|w| w.id == id) else {
            return false;
        };
        let bookmark = self.bookmark(self.watches[position].filter.resource, false);
        if self.watches[position].lines.send(bookmark).is_err() {
            self.watches.remove(position);
            return false;
        }
        true
    }

    pub(super) fn close_watch(&mut self, id: u64) {
        self.watches.retain(|w| w.id != id);
    }

    fn bookmark(&self, resource: Resource, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.last_resource_version.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({
                "apiVersion": resource.api_version(),
                "kind": resource.kind(),
                "metadata": metadata,
            }),
        )
    }

    /// Appends to the log (dropping the oldest beyond its capacity) and sends
    /// the change to every open watch that selects it.
    fn record(&mut self, change: Change) {
        self.sim.notify(Notice::Change {
            resource: change.resource,
            deleted: change.kind == ChangeKind::Deleted,
            object: change.object.clone(),
        });
        self.watches
            .retain(|watch| match watch.filter.event_type(&change) {
                Some(kind) => watch.lines.send(line(kind, &change.object)).is_ok(),
                None => !watch.lines.is_closed(),
            });
        self.log.push_back(change);
        while self.log.len() > LOG_CAPACITY {
            if let Some(dropped) = self.log.pop_front() {
                self.compacted = dropped.resource_version;
            }
        }
    }
}

/// One line of a watch stream.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn namespace_of(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds).
pub(super) fn now() -> Value {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let timestamp = i64::try_from(seconds)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    serde_json::to_value(Time(timestamp)).unwrap_or(Value::Null)
}
