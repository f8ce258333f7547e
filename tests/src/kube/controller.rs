//! The Job controller (with the TTL-after-finished controller and the
//! garbage collector's part in killing deleted pods' processes): one task
//! reading the store's change notices and its own timers, writing through the
//! store like the real controllers, so every transition is a new
//! resourceVersion and a watch event.
//!
//! It follows kube-controller-manager for one-pod Jobs (completions and
//! parallelism 1): a pod per attempt, `podFailurePolicy` rules in order,
//! `backoffLimit` (default 6, without the 10 s·2ⁿ backoff delay), the
//! terminal condition in two writes (FailureTarget / SuccessCriteriaMet, then
//! Failed / Complete, as since 1.31), `activeDeadlineSeconds` from
//! `startTime`, and `ttlSecondsAfterFinished`. Suspended Jobs are left alone.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::kubelet;
use super::lock;
use super::sim::{Notice, signal_group};
use super::store::{Propagation, Resource, Store, now};

/// How long a deleted pod's process gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The default `backoffLimit` of a Job.
const DEFAULT_BACKOFF_LIMIT: i64 = 6;

/// (namespace, name, uid) of a Job.
type JobKey = (String, String, String);

/// What a pod failure policy decides.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    FailJob(String),
    Ignore,
    Count,
}

pub(super) struct Controller {
    store: Arc<Mutex<Store>>,
    notices: mpsc::UnboundedSender<Notice>,
    /// Jobs (by uid) this controller manages: seen unsuspended.
    known: HashSet<String>,
    /// Pods (by uid) whose end has been counted (or must not be).
    accounted: HashSet<String>,
    /// Jobs whose pod creation was refused, to retry when allowed again.
    refused: HashSet<JobKey>,
}

impl Controller {
    pub(super) fn new(store: Arc<Mutex<Store>>, notices: mpsc::UnboundedSender<Notice>) -> Self {
        Controller {
            store,
            notices,
            known: HashSet::new(),
            accounted: HashSet::new(),
            refused: HashSet::new(),
        }
    }

    /// Handles notices until the channel closes (never, while the store lives:
    /// the task is aborted with the server).
    pub(super) async fn run(mut self, mut notices: mpsc::UnboundedReceiver<Notice>) {
        while let Some(notice) = notices.recv().await {
            self.handle(notice);
        }
    }

    fn handle(&mut self, notice: Notice) {
        match notice {
            Notice::Change {
                resource: Resource::Jobs,
                deleted,
                object,
            } => self.job_changed(&object, deleted),
            Notice::Change {
                resource: Resource::Pods,
                deleted,
                object,
            } => self.pod_changed(&object, deleted),
            Notice::Change { .. } => {}
            Notice::CreatePod(ns, name, uid) => self.create_pod(&(ns, name, uid)),
            Notice::Deadline(ns, name, uid) => self.deadline(&(ns, name, uid)),
            Notice::Ttl(ns, name, uid) => {
                if self.job(&(ns.clone(), name.clone(), uid)).is_some() {
                    // Gone already is fine.
                    let _ = lock(&self.store).delete(
                        Resource::Jobs,
                        &ns,
                        &name,
                        Propagation::Background,
                    );
                }
            }
            Notice::Retry => {
                for key in std::mem::take(&mut self.refused) {
                    self.create_pod(&key);
                }
            }
        }
    }

    fn job_changed(&mut self, job: &Value, deleted: bool) {
        let key = key_of(job);
        if deleted {
            self.known.remove(&key.2);
            self.refused.remove(&key);
            return;
        }
        if self.known.contains(&key.2) || suspended(job) || finished(job) {
            return;
        }
        self.known.insert(key.2.clone());
        let delay = lock(&self.store).sim.timing.create_pod;
        self.after(delay, Notice::CreatePod(key.0, key.1, key.2));
    }

    fn pod_changed(&mut self, pod: &Value, deleted: bool) {
        let uid = str_at(pod, "/metadata/uid").to_owned();
        if deleted {
            self.kill_process(&uid);
        }
        let phase = str_at(pod, "/status/phase");
        let ended = matches!(phase, "Succeeded" | "Failed");
        if (ended || deleted) && !self.accounted.contains(&uid) {
            self.accounted.insert(uid);
            self.pod_ended(pod, phase == "Succeeded" && !deleted);
        }
    }

    /// SIGTERM to a deleted pod's process group, SIGKILL after the grace
    /// period if it is still running.
    fn kill_process(&self, pod_uid: &str) {
        let Some(group) = lock(&self.store).sim.processes.get(pod_uid).copied() else {
            return;
        };
        signal_group(group, Signal::SIGTERM);
        let store = Arc::clone(&self.store);
        let pod_uid = pod_uid.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(KILL_GRACE).await;
            if lock(&store).sim.processes.get(&pod_uid) == Some(&group) {
                signal_group(group, Signal::SIGKILL);
            }
        });
    }

    /// A pod of a Job succeeded, failed or vanished before ending.
    fn pod_ended(&mut self, pod: &Value, succeeded: bool) {
        let Some(key) = owner_of(pod) else {
            return;
        };
        let Some(job) = self.job(&key) else {
            return;
        };
        if !self.known.contains(&key.2) || finished(&job) {
            return;
        }
        let active = self.active_pods(&key).len();
        if succeeded {
            let reason = "CompletionsReached";
            let message = "Reached expected number of succeeded pods";
            self.update_job(&key, |status| {
                status["succeeded"] = json!(count(status, "succeeded") + 1);
                status["active"] = json!(active);
                push_condition(status, "SuccessCriteriaMet", reason, message);
            });
            self.finish(&key, "Complete", reason, message);
            return;
        }
        match policy_action(&job, pod) {
            Action::FailJob(message) => self.fail(&key, 1, "PodFailurePolicy", &message),
            Action::Ignore => {
                self.update_job(&key, |status| status["active"] = json!(active));
                self.replace(&key, active);
            }
            Action::Count => {
                let failed = count(job.get("status").unwrap_or(&Value::Null), "failed") + 1;
                let limit = job
                    .pointer("/spec/backoffLimit")
                    .and_then(Value::as_i64)
                    .unwrap_or(DEFAULT_BACKOFF_LIMIT);
                if failed > limit {
                    self.fail(
                        &key,
                        1,
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    );
                } else {
                    self.update_job(&key, |status| {
                        status["failed"] = json!(failed);
                        status["active"] = json!(active);
                    });
                    self.replace(&key, active);
                }
            }
        }
    }

    /// A new pod for a failed (or ignored) one, unless one is still active.
    fn replace(&self, key: &JobKey, active: usize) {
        if active == 0 {
            let delay = lock(&self.store).sim.timing.create_pod;
            let (ns, name, uid) = key.clone();
            self.after(delay, Notice::CreatePod(ns, name, uid));
        }
    }

    /// Fails the Job: its active pods are deleted, `failed` grows by
    /// `failed_pods`, FailureTarget then Failed.
    fn fail(&mut self, key: &JobKey, failed_pods: usize, reason: &str, message: &str) {
        let pods = self.active_pods(key);
        for (name, uid) in &pods {
            self.accounted.insert(uid.clone());
            // Gone already is fine.
            let _ = lock(&self.store).delete(Resource::Pods, &key.0, name, Propagation::Background);
        }
        let failed_pods = failed_pods + pods.len();
        self.update_job(key, |status| {
            status["failed"] = json!(count(status, "failed") as usize + failed_pods);
            status["active"] = json!(0);
            push_condition(status, "FailureTarget", reason, message);
        });
        self.finish(key, "Failed", reason, message);
    }

    /// Writes the terminal condition and starts the TTL clock.
    fn finish(&self, key: &JobKey, condition: &str, reason: &str, message: &str) {
        let updated = self.update_job(key, |status| {
            push_condition(status, condition, reason, message);
            if condition == "Complete" {
                status["completionTime"] = now();
            }
        });
        let ttl = updated
            .as_ref()
            .and_then(|job| job.pointer("/spec/ttlSecondsAfterFinished"))
            .and_then(Value::as_u64);
        if let Some(ttl) = ttl {
            let (ns, name, uid) = key.clone();
            self.after(Duration::from_secs(ttl), Notice::Ttl(ns, name, uid));
        }
    }

    fn create_pod(&mut self, key: &JobKey) {
        let Some(job) = self.job(key) else {
            return;
        };
        if suspended(&job) || finished(&job) || !self.active_pods(key).is_empty() {
            return;
        }
        let first_start = job.pointer("/status/startTime").is_none();
        if first_start
            && let Some(deadline) = job
                .pointer("/spec/activeDeadlineSeconds")
                .and_then(Value::as_u64)
        {
            let (ns, name, uid) = key.clone();
            self.after(
                Duration::from_secs(deadline),
                Notice::Deadline(ns, name, uid),
            );
        }
        let mut store = lock(&self.store);
        if let Some(message) = store.sim.refuse.clone() {
            let event = failed_create_event(&job, &message);
            // The namespace exists: the Job is in it.
            let _ = store.create(Resource::Events, &key.0, event);
            drop(store);
            self.refused.insert(key.clone());
            if first_start {
                self.update_job(key, |status| status["startTime"] = now());
            }
            return;
        }
        let created = store
            .pod_for_job(&key.0, &key.1)
            .and_then(|pod| store.create(Resource::Pods, &key.0, pod));
        let Ok(pod) = created else {
            return;
        };
        let behaviour = store.sim.next_behaviour();
        drop(store);
        self.update_job(key, |status| {
            status["active"] = json!(1);
            if first_start {
                status["startTime"] = now();
            }
        });
        kubelet::start(
            Arc::clone(&self.store),
            key.0.clone(),
            str_at(&pod, "/metadata/name").to_owned(),
            str_at(&pod, "/metadata/uid").to_owned(),
            behaviour,
        );
    }

    fn deadline(&mut self, key: &JobKey) {
        let Some(job) = self.job(key) else {
            return;
        };
        if finished(&job) || !self.known.contains(&key.2) {
            return;
        }
        self.refused.remove(key);
        self.fail(
            key,
            0,
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        );
    }

    /// The Job if it still exists with this uid.
    fn job(&self, key: &JobKey) -> Option<Value> {
        let job = lock(&self.store).get(Resource::Jobs, &key.0, &key.1).ok()?;
        (str_at(&job, "/metadata/uid") == key.2).then_some(job)
    }

    /// The Job's pods that have not ended: (name, uid).
    fn active_pods(&self, key: &JobKey) -> Vec<(String, String)> {
        let store = lock(&self.store);
        store
            .pods_of_job(&key.0, &key.1, &key.2)
            .into_iter()
            .filter_map(|name| store.get(Resource::Pods, &key.0, &name).ok())
            .filter(|pod| !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed"))
            .map(|pod| {
                (
                    str_at(&pod, "/metadata/name").to_owned(),
                    str_at(&pod, "/metadata/uid").to_owned(),
                )
            })
            .collect()
    }

    /// Changes the Job's status (one write), if it still exists.
    fn update_job(&self, key: &JobKey, change: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut store = lock(&self.store);
        let job = store.get(Resource::Jobs, &key.0, &key.1).ok()?;
        if str_at(&job, "/metadata/uid") != key.2 {
            return None;
        }
        store
            .modify(Resource::Jobs, &key.0, &key.1, |job| {
                if !job.get("status").is_some_and(Value::is_object) {
                    job["status"] = json!({});
                }
                change(&mut job["status"]);
            })
            .ok()
    }

    /// Sends `notice` to this controller after `delay`.
    fn after(&self, delay: Duration, notice: Notice) {
        if delay.is_zero() {
            // The receiver lives as long as the controller.
            let _ = self.notices.send(notice);
            return;
        }
        let notices = self.notices.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = notices.send(notice);
        });
    }
}

/// What the Job's `podFailurePolicy` says about a failed pod: the first rule
/// that matches, else Count.
fn policy_action(job: &Value, pod: &Value) -> Action {
    let empty = Vec::new();
    let rules = job
        .pointer("/spec/podFailurePolicy/rules")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let pod_name = format!(
        "{}/{}",
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name")
    );
    for (index, rule) in rules.iter().enumerate() {
        let action = str_at(rule, "/action");
        let described = if let Some(on_exit) = rule.get("onExitCodes") {
            exit_code_match(on_exit, pod).map(|(container, code)| {
                format!(
                    "Container {container} for pod {pod_name} failed with exit code {code} matching {action} rule at index {index}"
                )
            })
        } else if let Some(patterns) = rule.get("onPodConditions").and_then(Value::as_array) {
            patterns
                .iter()
                .find(|pattern| has_condition(pod, pattern))
                .map(|pattern| {
                    format!(
                        "Pod {pod_name} has condition {} matching {action} rule at index {index}",
                        str_at(pattern, "/type")
                    )
                })
        } else {
            None
        };
        if let Some(message) = described {
            return match action {
                "FailJob" => Action::FailJob(message),
                "Ignore" => Action::Ignore,
                _ => Action::Count,
            };
        }
    }
    Action::Count
}

/// The first terminated container (by `containerName` if given) whose
/// non-zero exit code meets the requirement.
fn exit_code_match(requirement: &Value, pod: &Value) -> Option<(String, i64)> {
    let container = requirement.get("containerName").and_then(Value::as_str);
    let values: Vec<i64> = requirement
        .get("values")
        .and_then(Value::as_array)
        .map(|values| values.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let wanted_in = str_at(requirement, "/operator") != "NotIn";
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)?;
    statuses.iter().find_map(|status| {
        let name = str_at(status, "/name");
        if container.is_some_and(|c| c != name) {
            return None;
        }
        let code = status
            .pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)?;
        // Exit code 0 is never matched, as in Kubernetes.
        (code != 0 && values.contains(&code) == wanted_in).then(|| (name.to_owned(), code))
    })
}

fn has_condition(pod: &Value, pattern: &Value) -> bool {
    let kind = str_at(pattern, "/type");
    let status = pattern
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("True");
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| str_at(c, "/type") == kind && str_at(c, "/status") == status)
        })
}

/// The Warning event the Job controller records when it cannot create a pod.
fn failed_create_event(job: &Value, message: &str) -> Value {
    let name = str_at(job, "/metadata/name");
    let namespace = str_at(job, "/metadata/namespace");
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}.")},
        "involvedObject": {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "namespace": namespace,
            "uid": job.pointer("/metadata/uid"),
            "resourceVersion": job.pointer("/metadata/resourceVersion"),
        },
        "reason": "FailedCreate",
        "message": message,
        "type": "Warning",
        "source": {"component": "job-controller"},
        "reportingComponent": "job-controller",
        "firstTimestamp": now(),
        "lastTimestamp": now(),
        "count": 1,
    })
}

fn push_condition(status: &mut Value, kind: &str, reason: &str, message: &str) {
    let condition = json!({
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now(),
        "lastTransitionTime": now(),
    });
    match status.get_mut("conditions").and_then(Value::as_array_mut) {
        Some(conditions) => conditions.push(condition),
        None => status["conditions"] = json!([condition]),
    }
}

fn count(status: &Value, field: &str) -> i64 {
    status.get(field).and_then(Value::as_i64).unwrap_or(0)
}

fn suspended(job: &Value) -> bool {
    job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true)
}

/// Whether a terminal (or about to be terminal) condition is set.
fn finished(job: &Value) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                matches!(
                    str_at(c, "/type"),
                    "Complete" | "Failed" | "FailureTarget" | "SuccessCriteriaMet"
                ) && str_at(c, "/status") == "True"
            })
        })
}

fn key_of(object: &Value) -> JobKey {
    (
        str_at(object, "/metadata/namespace").to_owned(),
        str_at(object, "/metadata/name").to_owned(),
        str_at(object, "/metadata/uid").to_owned(),
    )
}

/// The Job controlling a pod, from its controller owner reference.
fn owner_of(pod: &Value) -> Option<JobKey> {
    let owner = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|o| str_at(o, "/kind") == "Job" && o["controller"] == json!(true))?;
    Some((
        str_at(pod, "/metadata/namespace").to_owned(),
        str_at(owner, "/name").to_owned(),
        str_at(owner, "/uid").to_owned(),
    ))
}

pub(super) fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_pod(code: i64, conditions: Value) -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {
                "phase": "Failed",
                "conditions": conditions,
                "containerStatuses": [{"name": "runner", "state": {"terminated": {"exitCode": code}}}],
            },
        })
    }

    #[test]
    fn failure_policy_rules_apply_in_order() {
        let job = json!({"spec": {"podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "runner", "operator": "In", "values": [2]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [3]}},
        ]}}});
        assert_eq!(
            policy_action(&job, &failed_pod(2, json!([]))),
            Action::FailJob(
                "Container runner for pod ns/p failed with exit code 2 matching FailJob rule at index 0"
                    .into()
            )
        );
        let disrupted = json!([{"type": "DisruptionTarget", "status": "True"}]);
        assert_eq!(
            policy_action(&job, &failed_pod(137, disrupted)),
            Action::Ignore
        );
        assert_eq!(
            policy_action(&job, &failed_pod(1, json!([]))),
            Action::Count
        );
        assert_eq!(
            policy_action(&json!({}), &failed_pod(2, json!([]))),
            Action::Count
        );
    }
}
