//! The local stack of `ducks dev` and `ducks demo`: Redis (a child `redis-server`, unless one is
//! configured), S3 (a server inside this process, SigV4 on, data under `.ducks/`), and a worker
//! with the local launcher, with tiny-sd in the catalogue. The S3 code path and the presigned
//! links are the production ones.

mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ducks_api::{ApiConfig, RunningApi};
use ducks_contract::{JobId, Secret};
use ducks_models::{Storage, embedded_s3};
use ducks_queue::Queue;
use ducks_runner::tiny::{self, TINY_MODEL_ID};
use ducks_worker::{JobEnd, LeftRunners, RunningWorker};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Error;
use crate::settings::Settings;
use redis::RedisChild;

/// Credentials of the embedded S3 server: local only, so fixed.
const DEV_ACCESS_KEY: &str = "ducks-dev";
const DEV_SECRET_KEY: &str = "ducks-dev-secret";

pub struct Stack {
    /// The settings every part uses, pointing at the local services.
    pub settings: Settings,
    pub queue: Queue,
    pub s3_endpoint: String,
    redis: Option<RedisChild>,
    s3_stop: oneshot::Sender<()>,
    s3_task: JoinHandle<()>,
    /// The HTTP API and its page, open (no keys) on this machine only.
    api: RunningApi,
    worker: RunningWorker,
}

impl Stack {
    pub async fn start(mut settings: Settings) -> Result<Self, Error> {
        let data = absolute(&settings.dev.data_dir)?;

        let redis = if redis_configured(&settings) {
            None
        } else {
            let child = RedisChild::start_on_a_free_port(&data.join("redis")).await?;
            settings.redis.url = Secret::new(child.url());
            settings.redis.cluster = false;
            Some(child)
        };

        let s3_root = data.join("s3");
        std::fs::create_dir_all(&s3_root)?;
        let listener = TcpListener::bind(&settings.dev.s3_listen)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen on {} (dev.s3_listen): {e}",
                    settings.dev.s3_listen
                )
            })?;
        let s3_addr: SocketAddr = listener.local_addr()?;
        let service = embedded_s3::service(&s3_root, DEV_ACCESS_KEY, DEV_SECRET_KEY)?;
        let (s3_stop, s3_stopped) = oneshot::channel::<()>();
        let s3_task = tokio::spawn(embedded_s3::serve(listener, service, async {
            let _ = s3_stopped.await;
        }));
        let s3_endpoint = format!("http://{s3_addr}");
        settings.s3.endpoint = s3_endpoint.clone();
        settings.s3.access_key_id = DEV_ACCESS_KEY.into();
        settings.s3.secret_access_key = Secret::new(DEV_SECRET_KEY);
        settings.s3.force_path_style = true;

        let storage = Storage::connect(&settings.s3).await;
        storage.ensure_bucket().await?;
        tiny::ensure(&storage).await?;

        // Short blocking reads, so the stack stops within a moment of being asked.
        settings.queue.block_ms = settings.queue.block_ms.min(250);
        let worker = &mut settings.worker;
        if worker.default_model.is_empty() {
            worker.default_model = TINY_MODEL_ID.into();
        }
        worker.local.runs_dir = data.join("runs");
        worker.local.cache_dir = data.join("cache");
        // The probes' default port may be taken (another stack runs): let the OS pick one.
        if worker.listen_may_move {
            worker.listen = "127.0.0.1:0".into();
        }
        // A dev stack finishes its jobs quickly; it need not linger on Ctrl-C.
        worker.shutdown_grace_secs = worker.shutdown_grace_secs.min(5);

        let queue = settings.connect_queue().await?;
        let api = start_api(&mut settings, &queue, &storage, &data).await?;
        let worker = RunningWorker::start(
            queue.clone(),
            &settings.s3,
            settings.worker.clone(),
            &settings.links,
            &settings.runner.output_prefix,
        )
        .await?;
        // The worker publishes the catalogue as it starts: wait for it, so the page and the API
        // list tiny-sd from the moment the stack says it is running.
        let published = async {
            while queue.models().await.map_or(true, |c| c.models.is_empty()) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), published)
            .await
            .map_err(|_| "the worker did not publish the model catalogue within 30 s")?;
        Ok(Self {
            settings,
            queue,
            s3_endpoint,
            redis,
            s3_stop,
            s3_task,
            api,
            worker,
        })
    }

    pub fn images_dir(&self) -> PathBuf {
        self.settings.dev.data_dir.join("images")
    }

    /// What `ducks dev` prints: where everything is and how to use it.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        match &self.redis {
            Some(redis) => text.push_str(&format!(
                "Redis      {} (a redis-server child)\n",
                redis.url()
            )),
            None => text.push_str("Redis      as configured (DUCKS_REDIS__URL)\n"),
        }
        text.push_str(&format!(
            "S3         {} bucket `{}` (access key {DEV_ACCESS_KEY}, secret {DEV_SECRET_KEY}), data in {}\n",
            self.s3_endpoint,
            self.settings.s3.bucket,
            self.settings.dev.data_dir.join("s3").display()
        ));
        text.push_str(&format!(
            "API        http://{}/ (open: no key needed; the page draws images, /v1 is OpenAI-compatible)\n",
            self.api.address
        ));
        if let Some(probes) = self.worker.probes {
            text.push_str(&format!(
                "Worker     http://{probes}/metrics, /healthz, /readyz\n"
            ));
        }
        text.push_str(&format!(
            "Models     {TINY_MODEL_ID} (draws noise; import real ones with `ducks models import`)\n\n\
             In another terminal, these settings point `ducks submit`, `ducks models` and `ducks status` here:\n"
        ));
        for (key, value) in self.client_env() {
            text.push_str(&format!("export {key}={value}\n"));
        }
        text.push_str("ducks submit \"a duck in space\" --wait\n");
        text
    }

    /// The settings a client in another terminal needs to use this stack.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let s3 = &self.settings.s3;
        vec![
            (
                "DUCKS_REDIS__URL",
                self.settings.redis.url.expose().to_owned(),
            ),
            ("DUCKS_S3__ENDPOINT", s3.endpoint.clone()),
            ("DUCKS_S3__BUCKET", s3.bucket.clone()),
            ("DUCKS_S3__ACCESS_KEY_ID", s3.access_key_id.clone()),
            (
                "DUCKS_S3__SECRET_ACCESS_KEY",
                s3.secret_access_key.expose().to_owned(),
            ),
            ("DUCKS_S3__FORCE_PATH_STYLE", "true".into()),
        ]
    }

    /// Stops the worker (gracefully), then the API, S3 and Redis. The runners of jobs still
    /// running after the worker's grace period are stopped and waited for, and their jobs handed
    /// back to the queue, before S3 goes: left running, they would fail to upload into an S3
    /// that is no more. Returns what became of each job that was running.
    pub async fn stop(self) -> Result<Vec<(JobId, JobEnd)>, Error> {
        let worker = self.worker.shut_down(LeftRunners::Stop).await;
        self.api.stop().await;
        let _ = self.s3_stop.send(());
        let _ = self.s3_task.await;
        if let Some(redis) = self.redis {
            redis.stop().await;
        }
        Ok(worker?.jobs)
    }
}

/// The API, open on this machine (unless keys are configured), on `api.listen` or a free port
/// when that is taken. Unless links are configured, images get permanent links to it, signed
/// with a key kept in the data folder so links survive a restart of the stack.
async fn start_api(
    settings: &mut Settings,
    queue: &Queue,
    storage: &Storage,
    data: &Path,
) -> Result<RunningApi, Error> {
    let links = &mut settings.links;
    if links.base_url.is_empty() && links.cdn_base_url.is_empty() && links.signing_key.is_empty() {
        links.signing_key = dev_signing_key(data)?;
    }
    if settings.api.pepper.is_empty() {
        // Open, so on this machine only, whatever api.listen says.
        settings.api.open = true;
        let port = settings.api.listen.rsplit(':').next().unwrap_or("8080");
        settings.api.listen = format!("127.0.0.1:{port}");
    }
    let start = |config: ApiConfig| {
        RunningApi::start(
            queue.clone(),
            storage.clone(),
            config,
            settings.links.clone(),
        )
    };
    let api = match start(settings.api.clone()).await {
        Err(ducks_api::StartError::Listen { .. }) => {
            start(ApiConfig {
                listen: "127.0.0.1:0".into(),
                ..settings.api.clone()
            })
            .await?
        }
        other => other?,
    };
    if settings.links.base_url.is_empty() && settings.links.cdn_base_url.is_empty() {
        settings.links.base_url = format!("http://{}", api.address);
    }
    Ok(api)
}

/// The dev stack's link signing key, made once.
fn dev_signing_key(data: &Path) -> Result<Secret, Error> {
    let path = data.join("link-signing-key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(Secret::new(key.trim())),
        _ => {
            let key = ducks_api::auth::random_secret();
            std::fs::write(&path, &key)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(Secret::new(key))
        }
    }
}

/// Whether the user pointed the stack at a Redis of their own.
fn redis_configured(settings: &Settings) -> bool {
    std::env::var_os("DUCKS_REDIS__URL").is_some()
        || settings.redis.url != crate::settings::RedisSettings::default().url
}

fn absolute(dir: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create {} (dev.data_dir): {e}", dir.display()))?;
    Ok(dir.canonicalize()?)
}
