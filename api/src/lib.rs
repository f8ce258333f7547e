//! # ducks-api: the HTTP API
//!
//! One call spins up the compute for that call and answers its image: `POST
//! /v1/images/generations` (OpenAI's shape, so OpenAI clients work by changing their base URL)
//! queues one job and waits for it; `POST /v1/jobs` answers at once and streams progress. The API
//! touches Redis (through `ducks-queue`) and S3 only to sign links, read images and read model
//! manifests; never
//! Kubernetes. It keeps no state of its own: any number of replicas serve one queue.
//!
//! ## Layout
//! - [`router`] (`router(state)`: every route in one place), [`openai`] (models, images),
//!   [`jobs`] (native jobs and their server-sent events), [`links`] (`/i/{slug}`), [`page`] (the
//!   web page), [`overlay`] (a Twitch channel's stream overlay and its images, public),
//!   [`openapi`] (the document, generated from the handlers).
//! - The pure core: [`view`] (what jobs, models and events look like), [`body`] (request bodies
//!   whose mistakes name their field), [`auth`] (keys and who may see what), [`error`] (OpenAI's
//!   error shape), the request checks in [`openai::to_job`] and [`jobs::to_job`], and the
//!   webhook address and signature rules in [`webhooks`].
//! - Background work, one task each per replica: [`follow`] (usage and webhook deliveries from
//!   the `api` event stream), [`webhooks::Sender`], and `upkeep` (retries back into the queue
//!   when their backoff ends, and the model catalogue published, so neither waits for a worker).

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod follow;
pub mod jobs;
pub mod links;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod overlay;
pub mod page;
pub mod router;
mod server;
mod upkeep;
pub mod view;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use ducks_contract::links::LinkConfig;
use ducks_models::Storage;
use ducks_models::links::Links;
use ducks_queue::{EventTail, Queue, QueueError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::ApiConfig;

use crate::auth::{Authenticator, Identity};
use crate::error::{ApiError, Result};
use crate::metrics::Metrics;

/// How long one Redis operation of a request may take before the request answers 503: the
/// queue retries through connection trouble for longer than a caller should wait.
const REDIS_DEADLINE: Duration = Duration::from_secs(5);

/// What every handler shares.
pub struct Api {
    pub queue: Queue,
    pub storage: Storage,
    pub config: ApiConfig,
    /// Permanent links (`/i/<slug>`) are checked with `signing_key`.
    pub links: LinkConfig,
    /// Where `/i/<slug>` redirects: the CDN, or a fresh presigned link.
    pub redirect: Links,
    pub auth: Authenticator,
    /// One reader of the `api` event stream for every waiting request and event stream.
    pub tail: EventTail,
    pub metrics: Arc<Metrics>,
    /// Turns true when the API stops.
    pub stopping: watch::Receiver<bool>,
}

pub type AppState = Arc<Api>;

impl Api {
    /// Who is calling, from the request's key.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Identity> {
        tokio::time::timeout(REDIS_DEADLINE, self.auth.identify(&self.queue, headers))
            .await
            .unwrap_or_else(|_| Err(not_answering()))
    }

    /// Runs `work` until it ends or the API stops (`None`): long waits (for images, event
    /// streams) must not hold up a shutdown.
    pub async fn until_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            done = work => Some(done),
            _ = stopping.wait_for(|stop| *stop) => None,
        }
    }

    /// Runs a queue operation within [`REDIS_DEADLINE`].
    pub async fn deadline<T>(
        &self,
        operation: impl Future<Output = Result<T, QueueError>>,
    ) -> Result<T> {
        match tokio::time::timeout(REDIS_DEADLINE, operation).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(not_answering()),
        }
    }

    /// The address clients reach this API at: `api.public_url`, or the request's own host.
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        if !self.config.public_url.is_empty() {
            return self.config.public_url.trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .filter(|host| {
                host.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("localhost");
        format!("http://{host}")
    }
}

fn not_answering() -> ApiError {
    ApiError::unavailable("The job queue is not answering right now. Try again in a few seconds.")
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot listen on {address} (api.listen): {error}")]
    Listen {
        address: String,
        error: std::io::Error,
    },
}

/// A started API: its address, and its server and background tasks.
pub struct RunningApi {
    pub address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningApi {
    /// Starts the API on `config.listen` (port 0 picks a free one).
    pub async fn start(
        queue: Queue,
        storage: Storage,
        config: ApiConfig,
        links: LinkConfig,
    ) -> Result<Self, StartError> {
        config.check().map_err(StartError::Config)?;
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|error| StartError::Listen {
                    address: config.listen.clone(),
                    error,
                })?;
        let address = listener.local_addr().map_err(|error| StartError::Listen {
            address: config.listen.clone(),
            error,
        })?;
        let metrics = Arc::new(Metrics::default());
        let sender = webhooks::Sender::new(queue.clone(), &config, metrics.clone())
            .map_err(StartError::Config)?;
        let tail = EventTail::start(&queue, "api").await?;
        let (stop, stopped) = watch::channel(false);
        let api = Arc::new(Api {
            stopping: stopped.clone(),
            auth: Authenticator::new(
                config.open,
                config.pepper.clone(),
                Duration::from_secs(config.key_cache_secs),
            ),
            redirect: Links::behind_permanent(&links),
            queue: queue.clone(),
            storage,
            config,
            links,
            tail,
            metrics,
        });
        let consumer = format!("api-{}", ducks_queue::default_consumer_name("local"));
        let upkeep = upkeep::run(
            queue.clone(),
            api.storage.clone(),
            Duration::from_secs(api.config.catalogue_refresh_secs.max(1)),
            stopped.clone(),
        );
        let header_timeout = Duration::from_secs(api.config.header_timeout_secs.max(1));
        let app = router::router(api);
        let tasks = vec![
            tokio::spawn(server::serve(
                listener,
                app,
                header_timeout,
                stopped.clone(),
            )),
            tokio::spawn(follow::run(queue, consumer, stopped.clone())),
            tokio::spawn(upkeep),
            tokio::spawn(sender.run(stopped)),
        ];
        Ok(Self {
            address,
            stop,
            tasks,
        })
    }

    /// Stops taking requests, lets open ones finish (event streams end), and stops the
    /// background tasks. Anything unfinished stays in Redis for the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(15), &mut task)
                .await
                .is_err()
            {
                tracing::warn!(message = "An API task did not stop within 15 s; stopping it.");
                task.abort();
            }
        }
    }
}
