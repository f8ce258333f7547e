//! [`Queue`]: the handle that front ends and workers share. Submitting, cancelling, status, the
//! model catalogue, and the plumbing (retries, group creation) that consumers build on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{FromRedisValue, RedisError, Value};
use tracing::{debug, warn};

use crate::connection::{Connection, RedisTarget, is_missing_group, is_transient};
use crate::keys::{Keys, WORKER_GROUP};
use crate::scripts::{self, POSITION_PLACEHOLDER};
use crate::{QueueConfig, QueueError, Result, ScopeLimits};
use ducks_contract::{
    Caller, EventKind, JobEvent, JobId, JobRequest, JobState, JobStatus, ModelCatalogue, wire,
};

/// How long a service's operation keeps retrying through connection trouble (a Redis restart, a
/// failover).
const RETRY_BUDGET: Duration = Duration::from_secs(30);
/// How long `submit_checked` trusts the catalogue snapshot it read last.
const CATALOGUE_CACHE: Duration = Duration::from_secs(2);

/// The last catalogue snapshot read, and when (`None` inside: none was published).
type CatalogueCache = Arc<Mutex<Option<(std::time::Instant, Option<Arc<ModelCatalogue>>)>>>;

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

/// How a queue handle rides out connection trouble: a Redis that is down, restarting or failing
/// over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Services (workers, the API, the bots): each operation retries for 30 s, and every retry is
    /// logged as a warning.
    Service,
    /// A command a person waits on (`ducks submit`, `status`, `cancel`): connecting, and then each
    /// operation, gives up after this long; retries are logged at debug level only, so the one
    /// error at the end is all the person reads.
    Command(Duration),
}

impl Patience {
    fn budget(self) -> Duration {
        match self {
            Patience::Service => RETRY_BUDGET,
            Patience::Command(wait) => wait,
        }
    }
}

/// A handle on one queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    pub(crate) conn: Connection,
    pub(crate) target: RedisTarget,
    pub(crate) keys: Keys,
    pub(crate) config: Arc<QueueConfig>,
    pub(crate) patience: Patience,
    catalogue_cache: CatalogueCache,
}

impl Queue {
    /// The same queue, riding out connection trouble as `patience` says from now on: a command
    /// that found Redis quickly and then follows a job for minutes waits out a failover like a
    /// service does.
    pub fn with_patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// Connects with a service's patience and makes sure the worker group exists.
    pub async fn connect(target: RedisTarget, config: QueueConfig) -> Result<Self> {
        Self::connect_with(target, config, Patience::Service).await
    }

    /// Connects and makes sure the worker group exists, retrying as `patience` says. With
    /// [`Patience::Command`], a Redis that does not answer within the wait is an error (one that
    /// [`QueueError::is_unreachable`]), whatever the client's own reconnection attempts take.
    pub async fn connect_with(
        target: RedisTarget,
        config: QueueConfig,
        patience: Patience,
    ) -> Result<Self> {
        let connect = async {
            let conn = retry_transient(patience, || target.connect()).await?;
            let queue = Self {
                conn,
                target: target.clone(),
                keys: Keys::new(&config.name),
                config: Arc::new(config),
                patience,
                catalogue_cache: CatalogueCache::default(),
            };
            queue.ensure_group().await?;
            Ok(queue)
        };
        match patience {
            Patience::Service => connect.await,
            Patience::Command(wait) => {
                tokio::time::timeout(wait, connect)
                    .await
                    .unwrap_or_else(|_| {
                        Err(QueueError::Redis(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer within {wait:?}"),
                        ))))
                    })
            }
        }
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
        Ok(retry_transient(self.patience, || {
            create_group(self.conn.clone(), &jobs, WORKER_GROUP)
        })
        .await?)
    }

    /// Runs `op` on a clone of the connection, retrying transient errors within the handle's
    /// [`Patience`] and creating the worker group again if Redis lost it (a restart without
    /// persistence).
    pub(crate) async fn with_retry<T, F, Fut>(&self, op: F) -> redis::RedisResult<T>
    where
        F: Fn(Connection, Keys) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        retry_transient(self.patience, || async {
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
    ///
    /// The front end sets `id` (or leaves it to this call), `origin` and `requester`: they decide
    /// the job's limits, its idempotency scope and who may cancel it, so they must never come
    /// from a client's own words.
    pub async fn submit(&self, request: JobRequest) -> Result<Submitted> {
        self.submit_limited(request, ScopeLimits::default()).await
    }

    /// [`Queue::submit`] with limits of the request's scope that come before the configured ones
    /// (an API key's own limits).
    async fn submit_limited(
        &self,
        mut request: JobRequest,
        own_limits: ScopeLimits,
    ) -> Result<Submitted> {
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
        let scope = request.origin.scope();
        let scope_limits = self.config.scope_limits_with(&scope, own_limits);
        let scope = scope.to_string();
        let status_key = self.keys.status(&id);
        let idem_key = match &request.idempotency_key {
            Some(key) => self.keys.idempotency(&request.idempotency_scope(), key),
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
                    .key(keys.scope_in_flight(&scope))
                    .key(keys.scope_rate(&scope))
                    .arg(WORKER_GROUP)
                    .arg(id.as_str())
                    .arg(&payload)
                    .arg(config.max_backlog)
                    .arg(config.per_requester_in_flight)
                    .arg(config.per_requester_rate)
                    .arg(config.per_requester_window_secs * 1000)
                    .arg(idem_ttl)
                    .arg(config.status_ttl_secs)
                    .arg(&queued)
                    .arg(format!("\"position\":{POSITION_PLACEHOLDER}"))
                    .arg(stale_ms)
                    .arg(request.deadline_ms.unwrap_or(0))
                    .arg(scope_limits.in_flight)
                    .arg(scope_limits.rate)
                    .arg(scope_limits.window_secs * 1000);
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
                .unwrap_or(0)
                .max(0) as u64
        };
        let noun = request.origin.scope().noun();
        match word(0).as_deref() {
            Some("queued") => Ok(Submitted::Queued {
                id,
                position: number(2),
            }),
            Some("duplicate") => {
                let first = word(1).unwrap_or_default();
                Ok(Submitted::Duplicate { id: first.parse()? })
            }
            Some("full") => Err(QueueError::QueueFull { backlog: number(1) }),
            Some("busy") => Err(QueueError::TooManyInFlight {
                in_flight: number(1),
                limit: config.per_requester_in_flight,
            }),
            Some("rate") => Err(QueueError::RateLimited {
                retry_after: Duration::from_millis(number(1)),
            }),
            Some("scope_busy") => Err(QueueError::ScopeBusy {
                noun,
                in_flight: number(1),
                limit: scope_limits.in_flight,
            }),
            Some("scope_rate") => Err(QueueError::ScopeRateLimited {
                noun,
                retry_after: Duration::from_millis(number(1)),
            }),
            Some("late") => Err(QueueError::DeadlinePassed),
            other => Err(unexpected_reply("submit", other)),
        }
    }

    /// [`Queue::submit`], after checking the request against the model catalogue snapshot in
    /// Redis (its model exists; its size, steps and count fit): what a front end calls, so a
    /// request the model cannot draw is refused at once with the reason instead of failing in
    /// the worker. Before any worker has published a catalogue, only the worker checks.
    pub async fn submit_checked(&self, request: JobRequest) -> Result<Submitted> {
        self.submit_checked_limited(request, ScopeLimits::default())
            .await
    }

    /// [`Queue::submit_checked`] with limits of the request's scope that come before the
    /// configured ones: an API key's own.
    pub async fn submit_checked_limited(
        &self,
        request: JobRequest,
        own_limits: ScopeLimits,
    ) -> Result<Submitted> {
        // The limits every model shares first: their wording names the contract's bounds.
        request.validate()?;
        if let Some(catalogue) = self.catalogue_snapshot().await? {
            catalogue.check(&request)?;
        }
        self.submit_limited(request, own_limits).await
    }

    /// Moves retries whose backoff is over back into the jobs stream; returns how long until the
    /// next one is due (at most `block_ms`). Workers call it as they read; the API calls it too,
    /// so retries come back when no worker runs (a deployment scaled to zero sees them as lag).
    pub async fn promote_due_retries(&self) -> Result<Duration> {
        let block = Duration::from_millis(self.config.block_ms);
        let (_, next_due_ms): (u64, i64) = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::PROMOTE.prepare_invoke();
                invocation
                    .key(keys.delayed())
                    .key(keys.delayed_jobs())
                    .key(keys.jobs())
                    .arg(crate::consumer::BATCH)
                    .arg(format!("{}job:", keys.prefix()))
                    .arg(self.config.status_ttl_secs);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(match u64::try_from(next_due_ms) {
            Ok(ms) => Duration::from_millis(ms).min(block),
            Err(_) => block,
        })
    }

    /// The published catalogue (`None` before any worker published one), read again at most
    /// every [`CATALOGUE_CACHE`]: a bot answering a burst of commands reads it once.
    pub async fn catalogue_snapshot(&self) -> Result<Option<Arc<ModelCatalogue>>> {
        if let Some((read_at, catalogue)) = &*lock(&self.catalogue_cache)
            && read_at.elapsed() < CATALOGUE_CACHE
        {
            return Ok(catalogue.clone());
        }
        let catalogue = self.read_models().await?.map(Arc::new);
        *lock(&self.catalogue_cache) = Some((std::time::Instant::now(), catalogue.clone()));
        Ok(catalogue)
    }

    /// Cancels a job for `caller`: one that has not started is never launched; a running one is
    /// marked and its worker told through its lease renewal. Only the requester, a moderator of
    /// the job's scope or an operator may cancel it.
    pub async fn cancel(&self, id: &JobId, caller: &Caller) -> Result<Cancelled> {
        // With the origin's credentials: the Cancelled event goes to the origin's own stream,
        // where a bot needs its interaction token to edit the job's message.
        let (status, _) = self.read_status(id, false, true).await?;
        let request = status.request.ok_or_else(|| {
            // A job that could not be read has already failed for good.
            QueueError::NotFound(id.to_string())
        })?;
        if !caller.may_cancel(&request) {
            return Err(QueueError::NotAllowed);
        }
        let event = wire::encode(&JobEvent {
            job_id: id.clone(),
            at_ms: now_ms(),
            origin: request.origin.clone(),
            requester: request.requester.clone(),
            kind: EventKind::Cancelled,
        });
        let requester = request.requester_key();
        let scope = request.origin.scope().to_string();
        let payload = wire::encode(&request.without_secrets());
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
                    .key(keys.scope_in_flight(&scope))
                    .arg(WORKER_GROUP)
                    .arg(id.as_str())
                    .arg(&event)
                    .arg(config.status_ttl_secs)
                    .arg(&payload)
                    .arg(config.events_max_age_secs * 1000);
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

    /// The unfinished jobs of a requester (by origin kind and requester id), oldest first: for
    /// "cancel my last job" and "my jobs".
    pub async fn jobs_of(&self, origin_kind: &str, requester_id: &str) -> Result<Vec<JobId>> {
        let key = self
            .keys
            .in_flight(&format!("{origin_kind}:{requester_id}"));
        let ids: Vec<String> = self
            .with_retry(|mut conn, _| {
                let key = key.clone();
                async move {
                    redis::cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(ids.into_iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// What the queue knows of a job, without the origin's credentials: safe to print or serve.
    pub async fn status(&self, id: &JobId) -> Result<JobStatus> {
        Ok(self.status_and_entry(id, true).await?.0)
    }

    /// The status, and the entry id of its newest event on the origin's stream (for watchers
    /// that start after the job).
    pub(crate) async fn status_and_entry(
        &self,
        id: &JobId,
        with_position: bool,
    ) -> Result<(JobStatus, Option<String>)> {
        self.read_status(id, with_position, false).await
    }

    /// The status; with `keep_secrets`, its request and last event keep the origin's
    /// credentials (for the queue's own events only: never returned to a caller).
    async fn read_status(
        &self,
        id: &JobId,
        with_position: bool,
        keep_secrets: bool,
    ) -> Result<(JobStatus, Option<String>)> {
        let reply: Option<StatusReply> = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::STATUS.prepare_invoke();
                invocation
                    .key(keys.jobs())
                    .key(keys.status(id))
                    .arg(WORKER_GROUP)
                    .arg(if with_position { "1" } else { "0" });
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
        let request: Option<JobRequest> = request
            .map(|json| wire::decode::<JobRequest>("job", &json))
            .transpose()?;
        let last_event: Option<JobEvent> = field("last_event")
            .map(|event| wire::decode("event", event))
            .transpose()?;
        let status = JobStatus {
            id: id.clone(),
            state,
            position: (position >= 0).then_some(position as u64),
            attempt: number("attempt") as u32,
            cancel_requested: field("cancel") == Some("1"),
            submitted_at_ms: number("submitted_ms"),
            updated_at_ms: number("updated_ms"),
            request: request.map(|r| if keep_secrets { r } else { r.without_secrets() }),
            last_event: last_event.map(|e| if keep_secrets { e } else { e.without_secrets() }),
        };
        Ok((status, field("event_entry").map(str::to_owned)))
    }

    /// Whether Redis answers right now, without retrying: for readiness probes.
    pub async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .is_ok()
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
        *lock(&self.catalogue_cache) = None;
        Ok(())
    }

    /// The model catalogue snapshot; empty until a worker has published one.
    pub async fn models(&self) -> Result<ModelCatalogue> {
        Ok(self.read_models().await?.unwrap_or_default())
    }

    async fn read_models(&self) -> Result<Option<ModelCatalogue>> {
        let json: Option<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("GET")
                    .arg(keys.models())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(json
            .map(|json| wire::decode("model catalogue", &json))
            .transpose()?)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are replaced whole: a panic cannot leave them half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Retries `op` on transient errors with a doubling pause, for at most `patience`'s budget.
pub(crate) async fn retry_transient<T, F, Fut>(
    patience: Patience,
    mut op: F,
) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match op().await {
            Err(e) if is_transient(&e) && started.elapsed() < patience.budget() => {
                let pause_ms = pause.as_millis() as u64;
                match patience {
                    Patience::Service => {
                        warn!(message = "Redis is unavailable; retrying.", error = %e, pause_ms);
                    }
                    Patience::Command(_) => {
                        debug!(message = "Redis is unavailable; retrying.", error = %e, pause_ms);
                    }
                }
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
