//! [`RunningWorker`]: a worker started with its launcher and its probes server, running in a
//! task of this process until it is stopped. `ducks worker`, `ducks dev`, the test suite and the
//! benchmarks all start workers this one way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ducks_models::{S3Config, Storage};
use ducks_queue::Queue;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{LauncherKind, WorkerConfig};
use crate::http::{self, Probe};
use crate::kube::{KubeLauncher, rbac};
use crate::{JobEnd, Launcher, LeftRunners, LocalLauncher, Metrics, Worker};
use ducks_contract::JobId;
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
    #[error(
        "cannot serve the probes on {address}: another process is listening there (a second \
         worker on this machine?); choose a free address with worker.listen in ducks.toml or \
         DUCKS_WORKER__LISTEN, or set it empty to serve no probes"
    )]
    ListenTaken { address: String },
}

/// A worker running in a task of this process, with its probes server.
pub struct RunningWorker {
    stop: oneshot::Sender<LeftRunners>,
    task: JoinHandle<ducks_queue::Result<Vec<(JobId, JobEnd)>>>,
    /// Where `/healthz`, `/readyz` and `/metrics` answer, when `worker.listen` is set.
    pub probes: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// What the probes look at.
    pub probe: Probe,
}

/// What a graceful shutdown did.
pub struct Stopped {
    pub metrics: Arc<Metrics>,
    /// Each job that was running when the worker was asked to stop, and what became of it.
    pub jobs: Vec<(JobId, JobEnd)>,
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
        let (listen, listen_may_move) = (config.listen.clone(), config.listen_may_move);
        let name = if config.name.is_empty() {
            ducks_queue::default_consumer_name("worker")
        } else {
            config.name.clone()
        };
        let worker = Worker::new(queue, storage, launcher, config, links, name);
        let (metrics, probe) = (worker.metrics(), worker.probe());
        let (stop, stopped) = oneshot::channel::<LeftRunners>();
        let (probes_stop, probes_stopped) = oneshot::channel::<()>();
        let probes = if listen.is_empty() {
            None
        } else {
            let listener = bind_probes(&listen, listen_may_move).await?;
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
            // Dropped without a word: the runners keep running, as on SIGTERM.
            let result = worker
                .run(async { stopped.await.unwrap_or_default() })
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

    /// Stops taking jobs and waits for the worker's graceful shutdown (SIGTERM's path): jobs
    /// still running after the grace period are given back, their runners left running.
    pub async fn stop(self) -> ducks_queue::Result<Arc<Metrics>> {
        self.shut_down(LeftRunners::KeepRunning)
            .await
            .map(|stopped| stopped.metrics)
    }

    /// The graceful shutdown, with the runners of jobs still running after the grace period
    /// kept running or stopped as `runners` says; reports what became of each running job.
    pub async fn shut_down(self, runners: LeftRunners) -> ducks_queue::Result<Stopped> {
        let _ = self.stop.send(runners);
        match self.task.await {
            Ok(result) => result.map(|jobs| Stopped {
                metrics: self.metrics,
                jobs,
            }),
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

/// The probes' listener on `listen`. A taken address is refused with a sentence saying how to
/// choose another, unless it is only the default (`may_move`): then the OS picks a free port on the
/// same host, and the log says where.
async fn bind_probes(listen: &str, may_move: bool) -> Result<TcpListener, StartError> {
    match TcpListener::bind(listen).await {
        Ok(listener) => return Ok(listener),
        Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {}
        Err(source) => {
            return Err(StartError::Listen {
                address: listen.to_owned(),
                source,
            });
        }
    }
    if !may_move {
        return Err(StartError::ListenTaken {
            address: listen.to_owned(),
        });
    }
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    let anywhere = format!("{host}:0");
    let listener = TcpListener::bind(&anywhere)
        .await
        .map_err(|source| StartError::Listen {
            address: anywhere,
            source,
        })?;
    if let Ok(address) = listener.local_addr() {
        info!(
            message = "The probes' default address is taken (a second worker on this machine?), so they answer on a free port; set worker.listen to choose one.",
            taken = %listen,
            %address
        );
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_default_moves_to_a_free_port_and_a_chosen_address_is_refused() {
        let holder = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taken = holder.local_addr().unwrap().to_string();

        let moved = bind_probes(&taken, true).await.unwrap();
        let moved = moved.local_addr().unwrap();
        assert!(moved.ip().is_loopback(), "{moved}");
        assert_ne!(moved.to_string(), taken);

        let refused = bind_probes(&taken, false).await.unwrap_err().to_string();
        assert!(refused.contains(&taken), "{refused}");
        assert!(refused.contains("DUCKS_WORKER__LISTEN"), "{refused}");
        assert!(refused.contains("worker.listen"), "{refused}");
    }
}
