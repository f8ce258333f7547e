//! The worker's settings (`[worker]` in `ducks.toml`, `DUCKS_WORKER__*`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kube::KubeConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// This worker's consumer name in the queue. A worker restarted under the same name takes its
    /// own unfinished jobs back at once. Empty: the host name (a pod's name) and the process id.
    pub name: String,
    /// Jobs this worker runs at once; each holds one launch (one pod, or one child process).
    pub concurrency: usize,
    /// The model for jobs that name none; empty means the catalogue's only model, if it has one.
    pub default_model: String,
    /// At most one Progress event per job this often; the last step always goes out.
    pub progress_interval_ms: u64,
    /// How often the catalogue in S3 is checked for changed manifests.
    pub catalogue_refresh_secs: u64,
    /// On SIGTERM or SIGINT, how long running jobs may take to finish before they are left,
    /// unacknowledged and still running, for another worker to adopt.
    pub shutdown_grace_secs: u64,
    /// The longest one attempt may take from launch to result.
    pub job_timeout_secs: u64,
    /// How long a cancelled runner has to stop before it is killed.
    pub cancel_grace_secs: u64,
    /// How often runners whose job has ended or left the queue are looked for and stopped.
    pub sweep_interval_secs: u64,
    /// Address of `/healthz`, `/readyz` and `/metrics`; empty serves nothing.
    pub listen: String,
    /// Whether `listen` is only the built-in default, so that when its port is taken (a second
    /// worker on this machine) the probes move to a free port of the same host instead of the
    /// worker refusing to start. Not a setting: `ducks` sets it when neither ducks.toml nor the
    /// environment names `worker.listen`; an address someone chose is kept or refused.
    #[serde(skip)]
    pub listen_may_move: bool,
    /// Where runners run: `local` (child processes of the worker) or `kubernetes` (one Job each).
    pub launcher: LauncherKind,
    pub local: LocalConfig,
    pub kubernetes: KubeConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    /// Each runner is a `ducks runner` child process: no cluster needed.
    #[default]
    Local,
    /// Each runner is a Kubernetes Job, in the cluster the kubeconfig (or the pod's service
    /// account) points at.
    Kubernetes,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            concurrency: 4,
            default_model: String::new(),
            progress_interval_ms: 500,
            catalogue_refresh_secs: 60,
            shutdown_grace_secs: 30,
            job_timeout_secs: 900,
            cancel_grace_secs: 10,
            sweep_interval_secs: 60,
            listen: "127.0.0.1:9464".into(),
            listen_may_move: false,
            launcher: LauncherKind::Local,
            local: LocalConfig::default(),
            kubernetes: KubeConfig::default(),
        }
    }
}

impl WorkerConfig {
    pub fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.progress_interval_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_secs)
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs.max(1))
    }

    pub fn cancel_grace(&self) -> Duration {
        Duration::from_secs(self.cancel_grace_secs)
    }
}

/// The local launcher: each job runs `ducks runner` as a child process on this machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// The runner program; empty means this very `ducks` executable (`ducks runner`).
    pub runner_program: PathBuf,
    /// One folder per job: the runner's stdout, termination message and pid, so a restarted
    /// worker can adopt a runner that outlived it. Workers on one machine share it.
    pub runs_dir: PathBuf,
    /// The weight cache the runners share (a pod gets the node's cache volume instead).
    pub cache_dir: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            runner_program: PathBuf::new(),
            runs_dir: PathBuf::from(".ducks/runs"),
            cache_dir: PathBuf::from(".ducks/cache"),
        }
    }
}
