//! The kubelet: one task per pod the Job controller creates, moving it
//! through scheduling, container creation, running and termination as its
//! [`PodBehaviour`] says, each step a store write. For
//! [`PodBehaviour::Run`] it starts the kubelet's program as the container's
//! process, with the pod's environment and its volumes mapped to local
//! folders. A pod may be deleted at any time: every step checks it is still
//! there (same uid) and stops quietly otherwise.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::controller::str_at;
use super::lock;
use super::sim::{Kubelet, PodBehaviour, signal_group};
use super::store::{Resource, Store, now};

/// The node every pod is scheduled to.
const NODE: &str = "ducks-sim-node";
const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";
/// Kubernetes caps a termination message at 4 KiB.
const MAX_MESSAGE: usize = 4096;
/// FallbackToLogsOnError takes at most this many lines and bytes of the log.
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;

/// The log file of a container, which pods/log serves.
pub(super) fn log_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.log"))
}

/// Starts the kubelet's work on a new pod.
pub(super) fn start(
    store: Arc<Mutex<Store>>,
    namespace: String,
    name: String,
    uid: String,
    behaviour: PodBehaviour,
) {
    let pod = PodHandle {
        store,
        namespace,
        name,
        uid,
    };
    tokio::spawn(async move { pod.run(behaviour).await });
}

/// One pod, as the kubelet knows it.
struct PodHandle {
    store: Arc<Mutex<Store>>,
    namespace: String,
    name: String,
    uid: String,
}

/// How a container ended.
struct Ending {
    code: i32,
    signal: Option<i32>,
    reason: &'static str,
    started_at: Value,
}

impl PodHandle {
    async fn run(self, behaviour: PodBehaviour) {
        let timing = lock(&self.store).sim.timing.clone();
        pause(timing.schedule).await;
        let Some(pod) = self.get() else {
            return;
        };
        let container = str_at(&pod, "/spec/containers/0/name").to_owned();
        let image = str_at(&pod, "/spec/containers/0/image").to_owned();
        if let PodBehaviour::Unschedulable { message } = &behaviour {
            self.update(|pod| {
                set_condition(pod, "PodScheduled", "False", "Unschedulable", message);
            });
            return;
        }
        let scheduled = self.update(|pod| {
            pod["spec"]["nodeName"] = json!(NODE);
            let status = &mut pod["status"];
            status["hostIP"] = json!("10.0.0.1");
            status["podIP"] = json!("10.1.0.1");
            status["startTime"] = now();
            set_condition(pod, "PodScheduled", "True", "", "");
            set_condition(pod, "Initialized", "True", "", "");
            set_condition(pod, "Ready", "False", "ContainersNotReady", "");
            set_condition(pod, "ContainersReady", "False", "ContainersNotReady", "");
            pod["status"]["containerStatuses"] =
                json!([waiting(&container, &image, "ContainerCreating", "")]);
        });
        if !scheduled {
            return;
        }
        match &behaviour {
            PodBehaviour::AdmissionError => {
                self.update(|pod| {
                    let status = &mut pod["status"];
                    status["phase"] = json!("Failed");
                    status["reason"] = json!("UnexpectedAdmissionError");
                    status["message"] = json!(
                        "Allocate failed due to can't allocate unhealthy devices nvidia.com/gpu, which is unexpected"
                    );
                });
                return;
            }
            PodBehaviour::ImagePull { reason, message } => {
                self.update(|pod| {
                    pod["status"]["containerStatuses"] =
                        json!([waiting(&container, &image, reason, message)]);
                });
                return;
            }
            _ => {}
        }
        pause(timing.start).await;
        let (pod_dir, kubelet) = {
            let store = lock(&self.store);
            (store.sim.pod_dir(&self.uid), store.sim.kubelet.clone())
        };
        if std::fs::create_dir_all(&pod_dir).is_err() {
            return;
        }
        let log = log_path(&pod_dir, &container);
        let mut child = None;
        if let PodBehaviour::Run = behaviour {
            let prepared = match kubelet {
                Some(kubelet) => self.prepare(&pod, &kubelet, &pod_dir),
                None => Err((
                    "CreateContainerError",
                    "the simulator has no kubelet program: call KubeApi::set_kubelet".to_owned(),
                )),
            };
            let command = match prepared {
                Ok(command) => command,
                Err((reason, message)) => {
                    self.update(|pod| {
                        pod["status"]["containerStatuses"] =
                            json!([waiting(&container, &image, reason, &message)]);
                    });
                    return;
                }
            };
            match self.spawn(command, &log) {
                Ok(spawned) => child = Some(spawned),
                Err(message) => {
                    let started_at = now();
                    let ending = Ending {
                        code: 128,
                        signal: None,
                        reason: "StartError",
                        started_at,
                    };
                    let _ = std::fs::write(pod_dir.join("termination-log"), message);
                    self.terminate(&pod, &container, &image, &pod_dir, &ending);
                    return;
                }
            }
        } else {
            // Nothing written yet, but the log exists once the container runs.
            let _ = File::create(&log);
        }
        let started_at = now();
        let running = self.update(|pod| {
            pod["status"]["phase"] = json!("Running");
            pod["status"]["containerStatuses"] = json!([{
                "name": container,
                "image": image,
                "imageID": "",
                "containerID": format!("sim://{}", self.uid),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started_at}},
            }]);
            set_condition(pod, "Ready", "True", "", "");
            set_condition(pod, "ContainersReady", "True", "", "");
        });
        if !running {
            return;
        }
        let ending = match behaviour {
            PodBehaviour::Run => {
                let Some(mut child) = child else {
                    return;
                };
                let pid = child.id().map(|id| id as i32);
                let status = child.wait().await;
                if let Some(pid) = pid {
                    let mut store = lock(&self.store);
                    if store.sim.processes.get(&self.uid) == Some(&pid) {
                        store.sim.processes.remove(&self.uid);
                    }
                }
                let (code, signal) = match status {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => (code, None),
                        (None, Some(signal)) => (128 + signal, Some(signal)),
                        (None, None) => (1, None),
                    },
                    Err(_) => (1, None),
                };
                Ending {
                    code,
                    signal,
                    reason: if code == 0 { "Completed" } else { "Error" },
                    started_at,
                }
            }
            PodBehaviour::Exit { code, log, message } => {
                let _ = std::fs::write(log_path(&pod_dir, &container), log);
                let _ = std::fs::write(pod_dir.join("termination-log"), message);
                Ending {
                    code,
                    signal: None,
                    reason: if code == 0 { "Completed" } else { "Error" },
                    started_at,
                }
            }
            PodBehaviour::OomKilled => Ending {
                code: 137,
                signal: None,
                reason: "OOMKilled",
                started_at,
            },
            PodBehaviour::Disrupted => {
                let disrupted = self.update(|pod| {
                    set_condition(
                        pod,
                        "DisruptionTarget",
                        "True",
                        "PreemptionByScheduler",
                        "ducks-sim-scheduler: preempting to accommodate a higher priority pod",
                    );
                });
                if !disrupted {
                    return;
                }
                Ending {
                    code: 137,
                    signal: None,
                    reason: "Error",
                    started_at,
                }
            }
            PodBehaviour::Hang
            | PodBehaviour::Unschedulable { .. }
            | PodBehaviour::ImagePull { .. }
            | PodBehaviour::AdmissionError => return,
        };
        self.terminate(&pod, &container, &image, &pod_dir, &ending);
    }

    /// The command for a Run container: argv, environment, working folder;
    /// or the waiting reason and message that keep it from starting.
    fn prepare(
        &self,
        pod: &Value,
        kubelet: &Kubelet,
        pod_dir: &Path,
    ) -> Result<tokio::process::Command, (&'static str, String)> {
        let container = pod
            .pointer("/spec/containers/0")
            .cloned()
            .unwrap_or_default();
        let strings = |pointer: &str| -> Option<Vec<OsString>> {
            container
                .pointer(pointer)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(OsString::from)
                        .collect()
                })
        };
        let mut argv = match (strings("/command"), strings("/args")) {
            (Some(command), args) => command
                .into_iter()
                .chain(args.unwrap_or_default())
                .collect(),
            (None, Some(args)) => kubelet
                .entrypoint
                .first()
                .cloned()
                .into_iter()
                .chain(args)
                .collect(),
            (None, None) => kubelet.entrypoint.clone(),
        };
        if argv.is_empty() {
            return Err((
                "CreateContainerError",
                "no command specified and the kubelet has no entrypoint".into(),
            ));
        }
        let program = argv.remove(0);

        // Volumes: mount path → local folder; the termination file too.
        let root = &kubelet.root;
        let volumes = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = str_at(mount, "/name");
            let volume = volumes.iter().find(|v| str_at(v, "/name") == name);
            let mut local = match volume {
                Some(v) if v.get("hostPath").is_some() => root
                    .join("host")
                    .join(str_at(v, "/hostPath/path").trim_start_matches('/')),
                Some(v) if v.get("persistentVolumeClaim").is_some() => root
                    .join("pvc")
                    .join(str_at(v, "/persistentVolumeClaim/claimName")),
                Some(_) => pod_dir.join("volumes").join(name),
                None => {
                    return Err((
                        "CreateContainerConfigError",
                        format!("volume {name:?} not found in the pod"),
                    ));
                }
            };
            let sub_path = str_at(mount, "/subPath");
            if !sub_path.is_empty() {
                local = local.join(sub_path);
            }
            std::fs::create_dir_all(&local).map_err(|err| {
                (
                    "CreateContainerError",
                    format!("creating {}: {err}", local.display()),
                )
            })?;
            mounts.push((str_at(mount, "/mountPath").to_owned(), local));
        }
        let termination_path = container
            .get("terminationMessagePath")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_TERMINATION_PATH);
        let termination_file = pod_dir.join("termination-log");
        File::create(&termination_file).map_err(|err| {
            (
                "CreateContainerError",
                format!("creating the termination file: {err}"),
            )
        })?;
        mounts.push((termination_path.to_owned(), termination_file));
        // Longest mount path first, so the most specific one wins.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));

        // Environment: the kubelet's, then Secrets (envFrom), then `env`,
        // which wins over envFrom as in Kubernetes.
        let mut env: BTreeMap<String, String> = kubelet.env.iter().cloned().collect();
        for source in container
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(secret) = source.get("secretRef") else {
                continue;
            };
            let name = str_at(secret, "/name");
            let optional = secret.get("optional").and_then(Value::as_bool) == Some(true);
            let prefix = str_at(source, "/prefix");
            let data = lock(&self.store)
                .sim
                .secrets
                .get(&(self.namespace.clone(), name.to_owned()))
                .cloned();
            match data {
                Some(data) => {
                    env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                None if optional => {}
                None => {
                    return Err((
                        "CreateContainerConfigError",
                        format!("secret {name:?} not found"),
                    ));
                }
            }
        }
        for var in container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(value) = var.get("value").and_then(Value::as_str) {
                env.insert(str_at(var, "/name").to_owned(), value.to_owned());
            }
        }
        let env = env.into_iter().map(|(name, value)| {
            let local = mounts.iter().find_map(|(path, local)| {
                if value == *path {
                    Some(local.as_os_str().to_owned())
                } else {
                    value
                        .strip_prefix(path.as_str())
                        .and_then(|rest| rest.strip_prefix('/'))
                        .map(|rest| local.join(rest).into_os_string())
                }
            });
            (name, local.unwrap_or_else(|| OsString::from(value)))
        });

        let mut command = tokio::process::Command::new(program);
        command
            .args(argv)
            .env_clear()
            .envs(env)
            .current_dir(pod_dir)
            .stdin(Stdio::null())
            .process_group(0);
        Ok(command)
    }

    /// Starts the container's process with its output in the log, and
    /// registers its process group; kills it at once if the pod went away
    /// meanwhile.
    fn spawn(
        &self,
        mut command: tokio::process::Command,
        log: &Path,
    ) -> Result<tokio::process::Child, String> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|err| format!("opening the log: {err}"))?;
        let err = out
            .try_clone()
            .map_err(|err| format!("opening the log: {err}"))?;
        command.stdout(out).stderr(err);
        let child = command
            .spawn()
            .map_err(|err| format!("failed to start the container process: {err}"))?;
        if let Some(pid) = child.id() {
            let pid = pid as i32;
            let mut store = lock(&self.store);
            store.sim.processes.insert(self.uid.clone(), pid);
            let alive = store
                .get(Resource::Pods, &self.namespace, &self.name)
                .is_ok_and(|pod| str_at(&pod, "/metadata/uid") == self.uid);
            if !alive {
                signal_group(pid, Signal::SIGKILL);
            }
        }
        Ok(child)
    }

    /// Writes the container's end: terminated state, termination message,
    /// phase.
    fn terminate(
        &self,
        pod: &Value,
        container: &str,
        image: &str,
        pod_dir: &Path,
        ending: &Ending,
    ) {
        let policy = str_at(pod, "/spec/containers/0/terminationMessagePolicy");
        let mut message = std::fs::read(pod_dir.join("termination-log")).unwrap_or_default();
        if message.is_empty() && policy == "FallbackToLogsOnError" && ending.code != 0 {
            message = log_tail(&std::fs::read(log_path(pod_dir, container)).unwrap_or_default());
        }
        message.truncate(MAX_MESSAGE);
        let message = String::from_utf8_lossy(&message).into_owned();
        let mut terminated = json!({
            "exitCode": ending.code,
            "reason": ending.reason,
            "startedAt": ending.started_at,
            "finishedAt": now(),
            "containerID": format!("sim://{}", self.uid),
        });
        if let Some(signal) = ending.signal {
            terminated["signal"] = json!(signal);
        }
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        let succeeded = ending.code == 0;
        self.update(|pod| {
            pod["status"]["phase"] = json!(if succeeded { "Succeeded" } else { "Failed" });
            pod["status"]["containerStatuses"] = json!([{
                "name": container,
                "image": image,
                "imageID": "",
                "containerID": format!("sim://{}", self.uid),
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }]);
            let reason = if succeeded {
                "PodCompleted"
            } else {
                "PodFailed"
            };
            set_condition(pod, "Ready", "False", reason, "");
            set_condition(pod, "ContainersReady", "False", reason, "");
        });
    }

    fn get(&self) -> Option<Value> {
        let pod = lock(&self.store)
            .get(Resource::Pods, &self.namespace, &self.name)
            .ok()?;
        (str_at(&pod, "/metadata/uid") == self.uid).then_some(pod)
    }

    /// One status write; `false` if the pod is gone (or was replaced).
    fn update(&self, change: impl FnOnce(&mut Value)) -> bool {
        let mut store = lock(&self.store);
        let same = store
            .get(Resource::Pods, &self.namespace, &self.name)
            .is_ok_and(|pod| str_at(&pod, "/metadata/uid") == self.uid);
        same && store
            .modify(Resource::Pods, &self.namespace, &self.name, |pod| {
                if !pod.get("status").is_some_and(Value::is_object) {
                    pod["status"] = json!({});
                }
                change(pod);
            })
            .is_ok()
    }
}

/// The last 80 lines of a log, at most 2048 bytes of them.
fn log_tail(log: &[u8]) -> Vec<u8> {
    let text = log.strip_suffix(b"\n").unwrap_or(log);
    let start = text
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(FALLBACK_LINES - 1)
        .map_or(0, |(i, _)| i + 1);
    let tail = &log[start..];
    tail[tail.len().saturating_sub(FALLBACK_BYTES)..].to_vec()
}

fn waiting(container: &str, image: &str, reason: &str, message: &str) -> Value {
    let mut state = json!({"reason": reason});
    if !message.is_empty() {
        state["message"] = json!(message);
    }
    json!({
        "name": container,
        "image": image,
        "imageID": "",
        "ready": false,
        "started": false,
        "restartCount": 0,
        "state": {"waiting": state},
    })
}

/// Sets (or replaces) a pod condition.
fn set_condition(pod: &mut Value, kind: &str, status: &str, reason: &str, message: &str) {
    let mut condition = json!({
        "type": kind,
        "status": status,
        "lastProbeTime": null,
        "lastTransitionTime": now(),
    });
    if !reason.is_empty() {
        condition["reason"] = json!(reason);
    }
    if !message.is_empty() {
        condition["message"] = json!(message);
    }
    let conditions = &mut pod["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Some(conditions) = conditions.as_array_mut() {
        match conditions.iter_mut().find(|c| str_at(c, "/type") == kind) {
            Some(existing) => *existing = condition,
            None => conditions.push(condition),
        }
    }
}

async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_fallback_is_the_last_80_lines_within_2048_bytes() {
        let log: String = (1..=100).map(|n| format!("line {n}\n")).collect();
        let tail = String::from_utf8(log_tail(log.as_bytes())).unwrap();
        assert!(
            tail.starts_with("line 21\n") && tail.ends_with("line 100\n"),
            "{tail}"
        );
        let long = "x".repeat(5000);
        assert_eq!(log_tail(long.as_bytes()).len(), FALLBACK_BYTES);
        assert_eq!(log_tail(b"one\ntwo"), b"one\ntwo");
    }
}
