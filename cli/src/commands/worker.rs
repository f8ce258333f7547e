//! `ducks worker`: take jobs and launch one runner per job until SIGTERM or SIGINT.

use std::net::SocketAddr;

use ducks_queue::Queue;
use ducks_runner::storage::Storage;
use std::time::Duration;

use ducks_worker::config::LauncherKind;
use ducks_worker::kube::{KubeLauncher, rbac};
use ducks_worker::{Launcher, LocalLauncher, Worker, http};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::settings::Settings;

/// How long a starting worker waits for its first list of the cluster's Jobs.
const SYNC_LIMIT: Duration = Duration::from_secs(30);

pub async fn run(settings: &Settings) -> Result<(), super::Error> {
    let queue = super::connect(settings).await?;
    let worker = RunningWorker::start(settings, queue).await?;
    crate::signals::terminated().await;
    info!(message = "Shutting down: SIGTERM or SIGINT received.");
    worker.stop().await
}

/// A worker running in a task of this process, with its probes server.
pub struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<ducks_queue::Result<()>>,
    /// Where `/healthz`, `/readyz` and `/metrics` answer, when served.
    pub probes: Option<SocketAddr>,
}

impl RunningWorker {
    pub async fn start(settings: &Settings, queue: Queue) -> Result<Self, super::Error> {
        let config = &settings.worker;
        let output_prefix = settings.runner.output_prefix.clone();
        match config.launcher {
            LauncherKind::Local => {
                let launcher = LocalLauncher::new(
                    &config.local,
                    settings.s3.clone(),
                    output_prefix,
                    config.cancel_grace(),
                )
                .map_err(|e| format!("the local launcher's folders cannot be created: {e}"))?;
                Self::spawn(settings, queue, launcher).await
            }
            LauncherKind::Kubernetes => {
                let kube = &config.kubernetes;
                // The kubeconfig ($KUBECONFIG or ~/.kube/config), or the pod's service account.
                let client = kube::Client::try_default().await.map_err(|e| {
                    format!("cannot connect to Kubernetes (worker.launcher = kubernetes): {e}")
                })?;
                rbac::check(&client, &kube.namespace).await?;
                let launcher =
                    KubeLauncher::start(client, kube.clone(), settings.s3.clone(), output_prefix);
                // Know the Jobs an earlier worker left before taking jobs, to adopt them.
                if !launcher.synced(SYNC_LIMIT).await {
                    warn!(
                        message = "The cluster's Jobs are not listed yet; adopting relies on the API's answers meanwhile."
                    );
                }
                info!(message = "Launching runners as Kubernetes Jobs.", namespace = %kube.namespace);
                Self::spawn(settings, queue, launcher).await
            }
        }
    }

    async fn spawn<L: Launcher>(
        settings: &Settings,
        queue: Queue,
        launcher: L,
    ) -> Result<Self, super::Error> {
        let storage = Storage::connect(&settings.s3).await;
        let config = settings.worker.clone();
        let listen = config.listen.clone();
        let name = if config.name.is_empty() {
            default_name()
        } else {
            config.name.clone()
        };
        let worker = Worker::new(queue, storage, launcher, config, name);
        let (stop, stopped) = oneshot::channel::<()>();
        let (probes_stop, probes_stopped) = oneshot::channel::<()>();
        let probes = if listen.is_empty() {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("cannot listen on {listen} (worker.listen): {e}"))?;
            let addr = listener.local_addr()?;
            let probe = worker.probe();
            tokio::spawn(http::serve(listener, probe, async {
                let _ = probes_stopped.await;
            }));
            info!(message = "Serving /healthz, /readyz and /metrics.", address = %addr);
            Some(addr)
        };
        let task = tokio::spawn(async move {
            let result = worker
                .run(async {
                    let _ = stopped.await;
                })
                .await;
            let _ = probes_stop.send(());
            result
        });
        Ok(Self { stop, task, probes })
    }

    /// Stops taking jobs and waits for the worker's graceful shutdown.
    pub async fn stop(self) -> Result<(), super::Error> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// The consumer name when `worker.name` is empty: the host name (a pod's name in Kubernetes) and
/// the process id, unique per live process. In a container the pid is the same after a restart,
/// so a restarted worker takes its own jobs back at once; elsewhere, set `worker.name` for that.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}
