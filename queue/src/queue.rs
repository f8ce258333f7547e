//! [`Queue`]: the handle that front ends and workers share. Submitting, cancelling, status, the
//! model catalogue, and the plumbing (retries, group creation) that consumers build on.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{FromRedisValue, RedisError, Value};
use tracing::warn;

use crate::connection::{Connection, RedisTarget, is_missing_group, is_transient};
use crate::keys::{Keys, WORKER_GROUP};
use crate::scripts::{self, POSITION_PLACEHOLDER};
use crate::{QueueConfig, QueueError, Result};
use ducks_contract::{
    EventKind, JobEvent, JobId, JobRequest, JobState, JobStatus, ModelCatalogue, wire,
};

/// How long an operation keeps retrying through connection trouble (a Redis restart, a failover).
const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// The status script's reply: the hash fields, whether a worker holds the job, its position, and
/// the request (absent only if the job vanished between its hash and its entry).
type StatusReply = (Vec<(String, String)>, i64, i64, Option<String>);

/// What `submit` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// A new job, `position` jobs waiting (itself included).
    Queued { id: JobId, position: u64 },
    /// The idempotency key (or the job id) was seen before: this is the first job's id.
    Duplicate { id: JobId },
}

impl Submitted {
    pub fn id(&self) -> &JobId {
        match self {
            Submitted::Queued { id, .. } | Submitted::Duplicate { id } => id,
        }
    }
}

/// What `cancel` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It had not started and never will; its Cancelled event is written.
    Cancelled,
    /// It is running; its worker is told and will stop it.
    Requested,
    /// It had already ended in this state.
    AlreadyEnded(JobState),
}

/// A handle on one queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    pub(crate) conn: Connection,
    pub(crate) target: RedisTarget,
    pub(crate) keys: Keys,
    pub(crate) config: Arc<QueueConfig>,
}

impl Queue {
    /// Connects and makes sure the worker group exists.
    pub async fn connect(target: RedisTarget, config: QueueConfig) -> Result<Self> {
        let conn = retry_transient(|| target.connect()).await?;
        let queue = Self {
            conn,
            target,
            keys: Keys::new(&config.name),
            config: Arc::new(config),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection for tools and tests that inspect the queue directly.
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    pub(crate) async fn ensure_group(&self) -> Result<()> {
        let jobs = self.keys.jobs();
        Ok(retry_transient(|| create_group(self.conn.clone(), &jobs, WORKER_GROUP)).await?)
    }

    /// Runs `op` on a clone of the connection, retrying transient errors within [`RETRY_BUDGET`]
    /// and creating the worker group again if Redis lost it (a restart without persistence).
    pub(crate) async fn with_retry<T, F, Fut>(&self, op: F) -> redis::RedisResult<T>
    where
        F: Fn(Connection, Keys) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        retry_transient(|| async {
            match op(self.conn.clone(), self.keys.clone()).await {
                Err(e) if is_missing_group(&e) => {
                    warn!(message = "The worker group is missing; creating it again.", error = %e);
                    create_group(self.conn.clone(), &self.keys.jobs(), WORKER_GROUP).await?;
                    op(self.conn.clone(), self.keys.clone()).await
                }
                other => other,
            }
        })
        .await
    }

    /// Validates and queues a job. Safe to call again with the same request after an error: the
    /// job id (or idempotency key) makes the second call answer `Duplicate`.
    pub async fn submit(&self, mut request: JobRequest) -> Result<Submitted> {
        request.validate()?;
        let id = request.id.get_or_insert_with(JobId::generate).clone();
        let now = now_ms();
        request.submitted_at_ms.get_or_insert(now);
        let payload = wire::encode(&request);
        if payload.len() > self.config.max_payload_bytes {
            return Err(QueueError::PayloadTooLarge {
                size: payload.len(),
                limit: self.config.max_payload_bytes,
            });
        }
        let queued = wire::encode(&JobEvent {
            job_id: id.clone(),
            at_ms: now,
            origin: request.origin.clone(),
            requester: request.requester.clone(),
            kind: EventKind::Queued {
                position: POSITION_PLACEHOLDER,
            },
        });
        let requester = request.requester_key();
        let status_key = self.keys.status(&id);
        let idem_key = match &request.idempotency_key {
            Some(key) => self.keys.idempotency(key),
            None => status_key.clone(),
        };
        let idem_ttl = if request.idempotency_key.is_some() {
            self.config.idempotency_ttl_secs
        } else {
            0
        };
        let config = &self.config;
        // A requester's job cannot be in flight longer than its status lives.
        let stale_ms = config.status_ttl_secs * 1000;
        let reply: Vec<Value> = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::SUBMIT.prepare_invoke();
                invocation
                    .key(keys.jobs())
                    .key(keys.delayed())
                    .key(&status_key)
                    .key(&idem_key)
                    .key(keys.in_flight(&requester))
                    .key(keys.rate(&requester))
                    .key(keys.events(request.origin.kind()))
                    .arg(WORKER_GROUP)
                    .arg(id.as_str())
                    .arg(&payload)
                    .arg(config.max_backlog)
                    .arg(config.per_requester_in_flight)
                    .arg(config.per_requester_rate)
                    .arg(config.per_requester_window_secs * 1000)
                    .arg(idem_ttl)
                    .arg(config.status_ttl_secs)
                    .arg(config.events_max_len)
                    .arg(&queued)
                    .arg(format!("\"position\":{POSITION_PLACEHOLDER}"))
                    .arg(stale_ms)
                    .arg(request.deadline_ms.unwrap_or(0));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let word = |i: usize| {
            reply
                .get(i)
                .and_then(|v| String::from_redis_value(v.clone()).ok())
        };
        let number = |i: usize| {
            reply
                .get(i)
                .and_then(|v| i64::from_redis_value(v.clone()).ok())
        };
        match word(0).as_deref() {
            Some("queued") => Ok(Submitted::Queued {
                id,
                position: number(2).unwrap_or(0).max(0) as u64,
            }),
            Some("duplicate") => {
                let first = word(1).unwrap_or_default();
                Ok(Submitted::Duplicate { id: first.parse()? })
            }
            Some("full") => Err(QueueError::QueueFull {
                backlog: number(1).unwrap_or(0).max(0) as u64,
            }),
            Some("busy") => Err(QueueError::TooManyInFlight {
                in_flight: number(1).unwrap_or(0).max(0) as u64,
                limit: config.per_requester_in_flight,
            }),
            Some("rate") => Err(QueueError::RateLimited {
                retry_after: Duration::from_millis(number(1).unwrap_or(0).max(0) as u64),
            }),
            Some("late") => Err(QueueError::DeadlinePassed),
            other => Err(unexpected_reply("submit", other)),
        }
    }

    /// Cancels a job: one that has not started is never launched; a running one is marked and
    /// its worker told through its lease renewal.
    pub async fn cancel(&self, id: &JobId) -> Result<Cancelled> {
        let status = self.status(id).await?;
        let request = status.request;
        let event = wire::encode(&JobEvent {
            job_id: id.clone(),
            at_ms: now_ms(),
            origin: request.origin.clone(),
            requester: request.requester.clone(),
            kind: EventKind::Cancelled,
        });
        let requester = request.requester_key();
        let payload = wire::encode(&request);
        let config = &self.config;
        let reply: String = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::CANCEL.prepare_invoke();
                invocation
                    .key(keys.jobs())
                    .key(keys.status(id))
                    .key(keys.delayed())
                    .key(keys.delayed_jobs())
                    .key(keys.events(request.origin.kind()))
                    .key(keys.in_flight(&requester))
                    .arg(WORKER_GROUP)
                    .arg(id.as_str())
                    .arg(&event)
                    .arg(config.events_max_len)
                    .arg(config.status_ttl_secs)
                    .arg(&payload);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        match reply.as_str() {
            "cancelled" => Ok(Cancelled::Cancelled),
            "requested" => Ok(Cancelled::Requested),
            "missing" => Err(QueueError::NotFound(id.to_string())),
            other => other
                .strip_prefix("ended:")
                .and_then(JobState::parse)
                .map(Cancelled::AlreadyEnded)
                .ok_or_else(|| unexpected_reply("cancel", Some(other))),
        }
    }

    /// What the queue knows of a job.
    pub async fn status(&self, id: &JobId) -> Result<JobStatus> {
        let reply: Option<StatusReply> = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::STATUS.prepare_invoke();
                invocation
                    .key(keys.jobs())
                    .key(keys.status(id))
                    .arg(WORKER_GROUP);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let Some((fields, held, position, request)) = reply else {
            return Err(QueueError::NotFound(id.to_string()));
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let mut state = field("state")
            .and_then(JobState::parse)
            .unwrap_or(JobState::Queued);
        if state == JobState::Queued && held == 1 {
            state = JobState::Running;
        }
        let request: JobRequest = match request {
            Some(json) => wire::decode("job", &json)?,
            None => return Err(QueueError::NotFound(id.to_string())),
        };
        let last_event = field("last_event")
            .map(|event| wire::decode("event", event))
            .transpose()?;
        Ok(JobStatus {
            id: id.clone(),
            state,
            position: (position >= 0).then_some(position as u64),
            attempt: number("attempt") as u32,
            cancel_requested: field("cancel") == Some("1"),
            submitted_at_ms: number("submitted_ms"),
            updated_at_ms: number("updated_ms"),
            request,
            last_event,
        })
    }

    /// Replaces the model catalogue snapshot that front ends read.
    pub async fn publish_models(&self, catalogue: &ModelCatalogue) -> Result<()> {
        let json = wire::encode(catalogue);
        self.with_retry(|mut conn, keys| {
            let json = json.clone();
            async move {
                redis::cmd("SET")
                    .arg(keys.models())
                    .arg(json)
                    .query_async::<()>(&mut conn)
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// The model catalogue snapshot; empty until a worker has published one.
    pub async fn models(&self) -> Result<ModelCatalogue> {
        let json: Option<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("GET")
                    .arg(keys.models())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match json {
            Some(json) => wire::decode("model catalogue", &json)?,
            None => ModelCatalogue::default(),
        })
    }
}

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM`, where a group that already exists is fine.
pub(crate) async fn create_group(
    mut conn: Connection,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Retries `op` on transient errors with a doubling pause, for at most [`RETRY_BUDGET`].
pub(crate) async fn retry_transient<T, F, Fut>(mut op: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match op().await {
            Err(e) if is_transient(&e) && started.elapsed() < RETRY_BUDGET => {
                warn!(message = "Redis is unavailable; retrying.", error = %e, pause_ms = pause.as_millis() as u64);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

pub(crate) fn unexpected_reply(script: &str, reply: Option<&str>) -> QueueError {
    QueueError::Redis(RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected script reply",
        format!("{script}: {reply:?}"),
    )))
}

/// Wall-clock Unix time in milliseconds, for event timestamps.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
