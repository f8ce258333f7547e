//! [`RunningWorker`]: a worker started with its launcher and its probes server, running in a
//! task of this process until it is stopped. `ducks worker`, `ducks dev`, the test suite and the
//! benchmarks all start workers this one way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ducks_models::{S3Config, Storage};
use ducks_queue::Queue;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{LauncherKind, WorkerConfig};
use crate::http::{self, Probe};
use crate::kube::{KubeLauncher, rbac};
use crate::{Launcher, LocalLauncher, Metrics, Worker};
use ducks_contract::links::LinkConfig;
use ducks_models::links::Links;

/// How long a starting worker waits for its first list of the cluster's Jobs.
const SYNC_LIMIT: Duration = Duration::from_secs(30);

/// Why a worker could not start; the text names the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the local launcher's folders cannot be created (worker.local.*): {0}")]
    LocalFolders(std::io::Error),
    #[error("cannot connect to Kubernetes (worker.launcher = kubernetes): {0}")]
    Kubernetes(String),
    #[error("{0}")]
    Permissions(String),
    #[error("{0}")]
    Links(String),
    #[error("cannot listen on {address} (worker.listen): {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// A worker running in a task of this process, with its probes server.
pub struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<ducks_queue::Result<()>>,
    /// Where `/healthz`, `/readyz` and `/metrics` answer, when `worker.listen` is set.
    pub probes: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// What the probes look at.
    pub probe: Probe,
}

impl RunningWorker {
    /// Starts a worker with the launcher its configuration names: runners as child processes of
    /// this one, or one Kubernetes Job each (after checking the worker's permissions, and listing
    /// the Jobs an earlier worker left so they are adopted).
    pub async fn start(
        queue: Queue,
        s3: &S3Config,
        config: WorkerConfig,
        links: &LinkConfig,
        output_prefix: &str,
    ) -> Result<Self, StartError> {
        let storage = Storage::connect(s3).await;
        match config.launcher {
            LauncherKind::Local => {
                let launcher = LocalLauncher::new(
                    &config.local,
                    s3.clone(),
                    output_prefix.to_owned(),
                    config.cancel_grace(),
                )
                .map_err(StartError::LocalFolders)?;
                Self::with_launcher(queue, storage, launcher, config, links).await
            }
            LauncherKind::Kubernetes => {
                let kube = &config.kubernetes;
                // The kubeconfig ($KUBECONFIG or ~/.kube/config), or the pod's service account.
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| StartError::Kubernetes(e.to_string()))?;
                rbac::check(&client, &kube.namespace)
                    .await
                    .map_err(StartError::Permissions)?;
                let launcher =
                    KubeLauncher::start(client, kube.clone(), s3.clone(), output_prefix.to_owned());
                if !launcher.synced(SYNC_LIMIT).await {
                    warn!(
                        message = "The cluster's Jobs are not listed yet; adopting relies on the API's answers meanwhile."
                    );
                }
                info!(message = "Launching runners as Kubernetes Jobs.", namespace = %kube.namespace);
                Self::with_launcher(queue, storage, launcher, config, links).await
            }
        }
    }

    /// Starts a worker with a launcher of the caller's (the benchmarks' instant launcher).
    pub async fn with_launcher<L: Launcher>(
        queue: Queue,
        storage: Storage,
        launcher: L,
        config: WorkerConfig,
        links: &LinkConfig,
    ) -> Result<Self, StartError> {
        let links = Links::new(links).map_err(StartError::Links)?;
        let listen = config.listen.clone();
        let name = if config.name.is_empty() {
            ducks_queue::default_consumer_name("worker")
        } else {
            config.name.clone()
        };
        let worker = Worker::new(queue, storage, launcher, config, links, name);
        let (metrics, probe) = (worker.metrics(), worker.probe());
        let (stop, stopped) = oneshot::channel::<()>();
        let (probes_stop, probes_stopped) = oneshot::channel::<()>();
        let probes = if listen.is_empty() {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|source| StartError::Listen {
                    address: listen.clone(),
                    source,
                })?;
            let address = listener.local_addr().map_err(|source| StartError::Listen {
                address: listen.clone(),
                source,
            })?;
            tokio::spawn(http::serve(listener, probe.clone(), async {
                let _ = probes_stopped.await;
            }));
            info!(message = "Serving /healthz, /readyz and /metrics.", %address);
            Some(address)
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
        Ok(Self {
            stop,
            task,
            probes,
            metrics,
            probe,
        })
    }

    /// Stops taking jobs and waits for the worker's graceful shutdown (SIGTERM's path).
    pub async fn stop(self) -> ducks_queue::Result<Arc<Metrics>> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result.map(|()| self.metrics),
            // The worker's task panicked: let the panic reach whoever stopped it.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Ends the worker at once, as a crash would: nothing is handed back, nothing acknowledged.
    pub async fn kill(self) -> Arc<Metrics> {
        self.task.abort();
        let _ = self.task.await;
        self.metrics
    }
}
