//! What the in-process Job controller and kubelet are told to do (pod
//! behaviours, delays, the kubelet's program, Secrets), and what they keep
//! (running processes). It lives inside the store, behind the same mutex.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::mpsc;

/// What the next pods do; each pod created takes the first scripted
/// behaviour ([`KubeApi::script_pods`](super::KubeApi::script_pods)), then the
/// default ([`KubeApi::set_default_pod_behaviour`](super::KubeApi::set_default_pod_behaviour)).
#[derive(Clone, Debug)]
pub enum PodBehaviour {
    /// Run the kubelet's program as the `runner` container with the pod's
    /// environment (needs [`KubeApi::set_kubelet`](super::KubeApi::set_kubelet)).
    Run,
    /// No process: the container runs, prints `log` (its log, served by
    /// pods/log), writes `message` as its termination message and exits with
    /// `code`.
    Exit {
        code: i32,
        log: String,
        message: String,
    },
    /// Terminated with reason OOMKilled, exit code 137.
    OomKilled,
    /// Stays Pending: condition PodScheduled=False, reason Unschedulable,
    /// with this message (e.g. "0/3 nodes are available: 3 Insufficient
    /// nvidia.com/gpu.").
    Unschedulable { message: String },
    /// Scheduled, but the runner container stays waiting with this reason
    /// ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
    /// "ErrImageNeverPull") and message.
    ImagePull { reason: String, message: String },
    /// Runs, then the cluster evicts it: condition DisruptionTarget=True
    /// (reason "PreemptionByScheduler"), phase Failed, container terminated
    /// exit 137.
    Disrupted,
    /// Phase Failed, status.reason "UnexpectedAdmissionError", no container
    /// ever started.
    AdmissionError,
    /// Runs and never ends by itself (until deleted or the Job's deadline).
    Hang,
}

impl Default for PodBehaviour {
    fn default() -> Self {
        PodBehaviour::Exit {
            code: 0,
            log: String::new(),
            message: String::new(),
        }
    }
}

/// Delays between phases (all zero by default: "instant phases").
#[derive(Clone, Debug, Default)]
pub struct Timing {
    /// From a Job's creation (or a pod's failure) to its (next) pod.
    pub create_pod: Duration,
    /// From a pod's creation to PodScheduled.
    pub schedule: Duration,
    /// From PodScheduled to the container running.
    pub start: Duration,
}

/// How the kubelet runs [`PodBehaviour::Run`] pods.
#[derive(Clone, Debug)]
pub struct Kubelet {
    /// The image's entrypoint, standing in for every image: program and args
    /// (e.g. `[ducks_binary(), "runner"]`). A container's own `command`
    /// replaces all of it and its `args` replace the arguments, as in
    /// Kubernetes.
    pub entrypoint: Vec<OsString>,
    /// Where pod folders, volumes, logs and termination files live.
    pub root: PathBuf,
    /// Extra environment for every container (e.g. PATH), applied before the
    /// pod's own.
    pub env: Vec<(String, String)>,
}

/// A change the controller reacts to, or a timer it set going off.
#[derive(Debug)]
pub(super) enum Notice {
    /// A store write: the resource, whether it was a deletion, the object
    /// after it.
    Change {
        resource: super::store::Resource,
        deleted: bool,
        object: Value,
    },
    /// Time to create a pod for this Job (namespace, name, uid).
    CreatePod(String, String, String),
    /// The Job's activeDeadlineSeconds passed.
    Deadline(String, String, String),
    /// The Job's ttlSecondsAfterFinished passed.
    Ttl(String, String, String),
    /// Pod creation is allowed again: retry for Jobs that were refused.
    Retry,
}

/// The simulation's settings and bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Sim {
    pub(super) default_behaviour: PodBehaviour,
    pub(super) scripted: VecDeque<PodBehaviour>,
    pub(super) refuse: Option<String>,
    pub(super) timing: Timing,
    pub(super) kubelet: Option<Kubelet>,
    /// Pod folders and logs go here while no kubelet is set.
    pub(super) default_root: PathBuf,
    pub(super) secrets: HashMap<(String, String), BTreeMap<String, String>>,
    /// Process group ids of running containers, by pod uid.
    pub(super) processes: HashMap<String, i32>,
    /// Successful Job creates, by (namespace, name).
    pub(super) jobs_created: HashMap<(String, String), usize>,
    /// Where store writes are announced to the controller.
    pub(super) notices: Option<mpsc::UnboundedSender<Notice>>,
}

impl Sim {
    /// The behaviour of the next pod.
    pub(super) fn next_behaviour(&mut self) -> PodBehaviour {
        self.scripted
            .pop_front()
            .unwrap_or_else(|| self.default_behaviour.clone())
    }

    pub(super) fn root(&self) -> PathBuf {
        self.kubelet
            .as_ref()
            .map_or_else(|| self.default_root.clone(), |k| k.root.clone())
    }

    /// The folder of a pod (its working directory, log and termination file).
    pub(super) fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root().join("pods").join(uid)
    }

    pub(super) fn notify(&self, notice: Notice) {
        if let Some(notices) = &self.notices {
            // The controller is gone only when the server is.
            let _ = notices.send(notice);
        }
    }

    /// Kills every process the kubelet started (when the server goes away).
    pub(super) fn kill_all(&mut self) {
        for (_, group) in self.processes.drain() {
            signal_group(group, Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to a process group; a group that is gone is fine.
pub(super) fn signal_group(group: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(group), signal);
}
