//! [`Consumer`]: how a worker takes jobs, and [`Delivery`]: one taken job with the right to finish it.
//!
//! A consumer reads new entries with a blocking `XREADGROUP` on a connection of its own, and
//! between reads it takes back its own pending entries (after a restart), hands itself the jobs of
//! dead consumers (lease expired), and moves due retries back into the stream. A background task
//! renews the lease of every job it holds, so a live worker's long job is never taken over.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::streams::{StreamClaimReply, StreamId, StreamReadReply};
use redis::{FromRedisValue, Value};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::connection::{Connection, is_missing_group, is_transient};
use crate::keys::WORKER_GROUP;
use crate::queue::{now_ms, unexpected_reply};
use crate::{Queue, Result, backoff, scripts};
use ducks_contract::{EventKind, FailureCode, JobEvent, JobId, JobRequest, JobState, wire};

/// Entries handled per reclaim, renewal or completion round; far below Lua's `unpack` ceiling
/// (about 8,000 values).
pub(crate) const BATCH: usize = 500;

/// What a held job's worker should know between its own calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Running,
    /// Someone cancelled the job: stop it and complete it with `EventKind::Cancelled`.
    CancelRequested,
    /// The lease ran out and another consumer took the job, or it ended elsewhere: stop it and do
    /// not complete it.
    Lost,
    /// The entry is a second one for a job id that has its own life (docs/job-contract.md): it
    /// was set aside in the dead letters. Launch nothing, write nothing.
    Duplicate,
}

/// Jobs this consumer holds, by stream entry id: what the lease keeper renews.
#[derive(Default)]
struct Held {
    jobs: Mutex<HashMap<String, HeldJob>>,
}

struct HeldJob {
    id: JobId,
    signal: watch::Sender<Signal>,
    /// Its end is being written: a renewal that finds the entry gone meanwhile is no news.
    finishing: bool,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldJob>> {
        // A panic while holding this lock leaves a plain map behind: nothing to repair.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells the worker holding `entry`; false when no delivery holds it (any more), or its end
    /// is being written.
    fn signal(&self, entry: &str, signal: Signal) -> bool {
        match self.lock().get(entry) {
            Some(job) if !job.finishing => {
                job.signal.send_replace(signal);
                true
            }
            _ => false,
        }
    }

    fn finishing(&self, entry: &str) {
        if let Some(job) = self.lock().get_mut(entry) {
            job.finishing = true;
        }
    }
}

/// Finisher calls that may be in flight at once: one can run in Redis while the worker handles the
/// results of the other.
const FINISH_CALLS_IN_FLIGHT: usize = 2;

/// New entries that the finisher read for this consumer in the same script call that finished
/// jobs: a busy worker then needs no read of its own. Prefetching stops while the consumer is
/// blocked in its own read (it would not see them until that read returns) and once it is
/// dropped (their entries are given back at once).
#[derive(Default)]
struct Prefetch {
    entries: Mutex<VecDeque<StreamId>>,
    /// Finisher calls that asked for entries and have not stored them yet.
    in_flight: AtomicUsize,
    /// The consumer is about to block, or blocked, in `XREADGROUP`.
    reading: AtomicBool,
    closed: AtomicBool,
    stored: Notify,
    /// A finisher call that asked for entries failed: Redis may have delivered them anyway.
    reply_lost: AtomicBool,
}

impl Prefetch {
    fn take(&self, max: usize) -> Vec<StreamId> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let n = max.min(entries.len());
        entries.drain(..n).collect()
    }

    fn ids(&self) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().map(|e| e.id.clone()).collect()
    }

    /// Drops an entry another consumer took over.
    fn forget(&self, entry: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|e| e.id != entry);
    }

    fn contains(&self, entry: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().any(|e| e.id == entry)
    }

    /// How many entries a finisher call for `finished` jobs should read: as many as it frees,
    /// unless the consumer is reading for itself or gone. A non-zero answer must be followed by
    /// [`Prefetch::store`].
    fn ask(&self, finished: usize) -> usize {
        self.in_flight.fetch_add(1, SeqCst);
        if self.reading.load(SeqCst) || self.closed.load(SeqCst) {
            self.in_flight.fetch_sub(1, SeqCst);
            return 0;
        }
        finished
    }

    /// Stores what a call read. Returns the entries nobody will take (the consumer is gone), to be
    /// given back.
    fn store(&self, read: Option<Vec<StreamId>>) -> Vec<StreamId> {
        let orphans = match read {
            Some(read) if self.closed.load(SeqCst) => read,
            Some(read) => {
                self.entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(read);
                Vec::new()
            }
            None => {
                self.reply_lost.store(true, SeqCst);
                Vec::new()
            }
        };
        self.in_flight.fetch_sub(1, SeqCst);
        self.stored.notify_waiters();
        orphans
    }
}

pub struct Consumer {
    queue: Queue,
    name: Arc<str>,
    blocking: Connection,
    /// Shared with every delivery; the lease keeper runs while any of them lives, so jobs still
    /// running when the consumer is dropped (graceful shutdown) keep their leases.
    held: Arc<Held>,
    finisher: mpsc::UnboundedSender<Finish>,
    prefetch: Arc<Prefetch>,
    /// Own pending entries are taken back at start and after any failed read (its reply may have
    /// been lost after Redis had already delivered the entries).
    check_own_pending: bool,
    next_reclaim: Instant,
    next_promote: Instant,
}

impl Drop for Consumer {
    /// Gives prefetched jobs back at once, so other workers need not wait out their lease.
    fn drop(&mut self) {
        self.prefetch.closed.store(true, SeqCst);
        let orphans = self.prefetch.take(usize::MAX);
        if !orphans.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(give_back_orphans(
                self.queue.clone(),
                self.name.clone(),
                orphans,
            ));
        }
    }
}

/// Makes entries this consumer still owns claimable by other workers right away (idle time set to
/// a whole lease). Entries another consumer took over are left alone (see give_back.lua).
async fn give_back(queue: &Queue, consumer: &str, entries: &[&str]) -> redis::RedisResult<()> {
    let _: u64 = queue
        .with_retry(|mut conn, keys| {
            let mut invocation = scripts::GIVE_BACK.prepare_invoke();
            invocation
                .key(keys.jobs())
                .arg(WORKER_GROUP)
                .arg(consumer)
                .arg(queue.config.lease_ms)
                .arg(entries);
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await?;
    Ok(())
}

/// Deletes consumers of `stream`'s `group` that hold nothing and have been silent for `idle`.
pub(crate) async fn prune_consumers(
    queue: &Queue,
    stream: &str,
    group: &str,
    idle: Duration,
) -> redis::RedisResult<u64> {
    queue
        .with_retry(|mut conn, _| {
            let mut invocation = scripts::PRUNE.prepare_invoke();
            invocation
                .key(stream)
                .arg(group)
                .arg(idle.as_millis() as u64);
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await
}

/// [`give_back`] for prefetched entries nobody will run, from places that cannot report errors.
async fn give_back_orphans(queue: Queue, consumer: Arc<str>, orphans: Vec<StreamId>) {
    let ids: Vec<&str> = orphans.iter().map(|e| e.id.as_str()).collect();
    if let Err(e) = give_back(&queue, &consumer, &ids).await {
        warn!(message = "Could not give back prefetched jobs; they return after the lease.", error = %e);
    }
}

impl Consumer {
    /// A consumer named `name` in the worker group. Give a restarted worker the same name so it
    /// takes its own unfinished jobs back at once instead of after the lease.
    pub async fn new(queue: Queue, name: impl Into<String>) -> Result<Self> {
        let block = Duration::from_millis(queue.config.block_ms);
        let blocking =
            crate::queue::retry_transient(queue.patience, || queue.target.connect_blocking(block))
                .await?;
        let held = Arc::new(Held::default());
        let name: Arc<str> = name.into().into();
        let prefetch = Arc::new(Prefetch::default());
        tokio::spawn(keep_leases(
            queue.clone(),
            name.clone(),
            Arc::downgrade(&held),
            Arc::downgrade(&prefetch),
        ));
        let (finisher, finishes) = mpsc::unbounded_channel();
        tokio::spawn(finish_in_batches(
            queue.clone(),
            name.clone(),
            finishes,
            prefetch.clone(),
        ));
        let now = Instant::now();
        Ok(Self {
            queue,
            name,
            blocking,
            held,
            finisher,
            prefetch,
            check_own_pending: true,
            next_reclaim: now,
            next_promote: now,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops reading ahead (a worker shutting down takes no more jobs) and gives back at once
    /// what was read ahead. Jobs already handed out keep their leases.
    pub async fn stop_prefetching(&self) {
        self.prefetch.closed.store(true, SeqCst);
        let orphans = self.prefetch.take(usize::MAX);
        if !orphans.is_empty() {
            give_back_orphans(self.queue.clone(), self.name.clone(), orphans).await;
        }
    }

    /// Up to `max` jobs to run, waiting at most the configured block time. Entries that cannot run
    /// (undecodable, invalid, expired, delivered too often) are finished here and never returned.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // Prefetched jobs first: they are this consumer's already, and waiting only ages them.
        let prefetched = self.prefetch.take(max);
        if !prefetched.is_empty() {
            return self.admit_all(prefetched).await;
        }
        if self.prefetch.reply_lost.swap(false, SeqCst) {
            self.check_own_pending = true;
        }
        // Not while a finisher call may be reading: its entries would look like lost ones.
        if self.check_own_pending && self.prefetch.in_flight.load(SeqCst) == 0 {
            self.check_own_pending = false;
            let own = self.claim_pending(Some(&self.name.clone()), 0, max).await?;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        let now = Instant::now();
        if now >= self.next_promote {
            self.next_promote = now + self.queue.promote_due_retries().await?;
        }
        if now >= self.next_reclaim {
            let lease = self.queue.config.lease_ms;
            self.next_reclaim = now + Duration::from_millis(lease / 2);
            let stale = self.claim_pending(None, lease, max).await?;
            if !stale.is_empty() {
                return Ok(stale);
            }
            let silent = Duration::from_millis(lease)
                .max(Duration::from_secs(self.queue.config.dead_consumer_secs));
            prune_consumers(&self.queue, &self.queue.keys.jobs(), WORKER_GROUP, silent).await?;
        }
        // Announce the read before looking for prefetches in flight: a finisher call that starts
        // after this sees it and reads nothing, and one already running is waited for.
        let prefetch = self.prefetch.clone();
        prefetch.reading.store(true, SeqCst);
        let stored = prefetch.stored.notified();
        tokio::pin!(stored);
        stored.as_mut().enable();
        if self.prefetch.in_flight.load(SeqCst) > 0 {
            self.prefetch.reading.store(false, SeqCst);
            let block = Duration::from_millis(self.queue.config.block_ms);
            let _ = tokio::time::timeout(block, stored).await;
            let prefetched = self.prefetch.take(max);
            return self.admit_all(prefetched).await;
        }
        let prefetched = self.prefetch.take(max);
        if !prefetched.is_empty() {
            self.prefetch.reading.store(false, SeqCst);
            return self.admit_all(prefetched).await;
        }
        let wait = Duration::from_millis(self.queue.config.block_ms)
            .min(self.next_promote.saturating_duration_since(Instant::now()))
            .min(self.next_reclaim.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKER_GROUP)
            .arg(&*self.name)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(wait.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.queue.keys.jobs())
            .arg(">")
            .query_async(&mut self.blocking)
            .await;
        self.prefetch.reading.store(false, SeqCst);
        let reply = match read {
            Ok(reply) => reply,
            Err(e) if is_missing_group(&e) => {
                self.queue.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) if is_transient(&e) => {
                warn!(message = "Reading jobs failed; will retry.", error = %e);
                self.check_own_pending = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let entries = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect::<Vec<_>>();
        self.admit_all(entries).await
    }

    /// Admits freshly read entries (their first delivery).
    async fn admit_all(&mut self, entries: Vec<StreamId>) -> Result<Vec<Delivery>> {
        let mut deliveries = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.admit(entry, 1).await {
                Ok(Some(delivery)) => deliveries.push(delivery),
                Ok(None) => {}
                Err(e) => {
                    // The rest of the batch stays pending here: take it back on the next call.
                    self.check_own_pending = true;
                    return Err(e);
                }
            }
        }
        Ok(deliveries)
    }

    /// Claims pending entries idle for at least `min_idle_ms`: this consumer's own when `owner`
    /// is given, anyone's otherwise. The claim counts a delivery, which is how poison jobs are
    /// caught.
    async fn claim_pending(
        &mut self,
        owner: Option<&str>,
        min_idle_ms: u64,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        let jobs = self.queue.keys.jobs();
        let count = max.min(BATCH);
        let pending: Vec<(String, String, u64, u32)> = self
            .queue
            .with_retry(|mut conn, _| {
                let mut cmd = redis::cmd("XPENDING");
                cmd.arg(&jobs)
                    .arg(WORKER_GROUP)
                    .arg("IDLE")
                    .arg(min_idle_ms)
                    .arg("-")
                    .arg("+")
                    .arg(count);
                if let Some(owner) = owner {
                    cmd.arg(owner);
                }
                async move { cmd.query_async(&mut conn).await }
            })
            .await?;
        let candidates: HashMap<String, u32> = {
            let held = self.held.lock();
            pending
                .into_iter()
                .filter(|(entry, ..)| !held.contains_key(entry) && !self.prefetch.contains(entry))
                .map(|(entry, _, _, deliveries)| (entry, deliveries))
                .collect()
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&String> = candidates.keys().collect();
        let claimed: StreamClaimReply = self
            .queue
            .with_retry(|mut conn, _| {
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(&jobs)
                    .arg(WORKER_GROUP)
                    .arg(&*self.name)
                    .arg(min_idle_ms)
                    .arg(&ids);
                async move { cmd.query_async(&mut conn).await }
            })
            .await?;
        let mut deliveries = Vec::new();
        for entry in claimed.ids {
            let count = candidates.get(&entry.id).copied().unwrap_or(0) + 1;
            if owner.is_none() {
                debug!(message = "Took over a stale job.", entry = %entry.id, deliveries = count);
            }
            match self.admit(entry, count).await {
                Ok(Some(delivery)) => deliveries.push(delivery),
                Ok(None) => {}
                Err(e) => {
                    self.check_own_pending = true;
                    return Err(e);
                }
            }
        }
        Ok(deliveries)
    }

    /// Turns a claimed entry into a delivery, or finishes it here when it must not run.
    async fn admit(&self, entry: StreamId, deliveries: u32) -> Result<Option<Delivery>> {
        // One delivery per entry in this process, however the entry was read twice.
        if self.held.lock().contains_key(&entry.id) {
            return Ok(None);
        }
        let field = |name: &str| {
            entry
                .map
                .get(name)
                .and_then(|v| String::from_redis_value(v.clone()).ok())
        };
        let payload = field("job").unwrap_or_default();
        let attempt = field("attempt").and_then(|a| a.parse().ok()).unwrap_or(0);
        let decoded = if entry.map.contains_key("job") {
            wire::decode::<JobRequest>("job", &payload).map_err(|e| e.to_string())
        } else {
            Err("the entry has no `job` field (see docs/job-contract.md)".to_owned())
        };
        let mut job = match decoded {
            Ok(job) => job,
            Err(reason) => {
                warn!(message = "Moved an unreadable entry to the dead letters.", entry = %entry.id, %reason);
                let raw = raw_fields(&entry);
                // Where the id and origin can be read, whoever added the entry is told why.
                let told = wire::sender_of(&payload).map(|(id, origin, requester)| {
                    let event = wire::encode(&JobEvent {
                        job_id: id.clone(),
                        at_ms: now_ms(),
                        origin: origin.clone(),
                        requester: requester.clone(),
                        kind: EventKind::Failed {
                            code: FailureCode::InvalidRequest,
                            message: reason.clone(),
                            retryable: false,
                        },
                    });
                    let request = JobRequest {
                        requester,
                        ..JobRequest::new("", origin)
                    };
                    Told::new(&self.queue, id, &request, event, String::new())
                });
                self.dead_letter(&entry.id, &reason, &raw, told).await?;
                return Ok(None);
            }
        };
        // A job from a raw client gets its id from the entry; the payload is rewritten to hold
        // it, so a retry or a status read sees the same id.
        let (id, payload) = match &job.id {
            Some(id) => (id.clone(), payload),
            None => {
                let id = JobId::from_entry_id(&entry.id)
                    .ok_or_else(|| unexpected_reply("XREADGROUP", Some(&entry.id)))?;
                job.id = Some(id.clone());
                (id, wire::encode(&job))
            }
        };
        let (signal_tx, signal) = watch::channel(Signal::Running);
        let held = HeldJob {
            id: id.clone(),
            signal: signal_tx,
            finishing: false,
        };
        self.held.lock().insert(entry.id.clone(), held);
        let delivery = Delivery {
            id,
            entry_id: entry.id,
            attempt,
            deliveries,
            payload,
            job,
            queue: self.queue.clone(),
            consumer: self.name.clone(),
            held: self.held.clone(),
            finisher: self.finisher.clone(),
            signal,
        };
        let config = &self.queue.config;
        if deliveries > config.max_deliveries {
            let message = format!(
                "This job stopped its worker {} times, so it was set aside. Try a smaller size or fewer steps.",
                deliveries - 1
            );
            let reason = format!("delivered {deliveries} times without finishing");
            let event = delivery.event(EventKind::Failed {
                code: FailureCode::TooManyDeliveries,
                message,
                retryable: false,
            });
            let raw = raw_fields_of(&delivery);
            let told = Told::new(
                &self.queue,
                delivery.id.clone(),
                &delivery.job,
                event,
                delivery.payload.clone(),
            );
            self.dead_letter(&delivery.entry_id, &reason, &raw, Some(told))
                .await?;
            return Ok(None);
        }
        if let Err(invalid) = delivery.job.validate() {
            delivery
                .complete(EventKind::Failed {
                    code: FailureCode::InvalidRequest,
                    message: invalid.to_string(),
                    retryable: false,
                })
                .await?;
            return Ok(None);
        }
        if delivery
            .job
            .deadline_ms
            .is_some_and(|deadline| deadline <= now_ms())
        {
            delivery
                .complete(EventKind::Failed {
                    code: FailureCode::DeadlineExceeded,
                    message: "The request waited past its deadline, so it was not started.".into(),
                    retryable: false,
                })
                .await?;
            return Ok(None);
        }
        Ok(Some(delivery))
    }

    async fn dead_letter(
        &self,
        entry: &str,
        reason: &str,
        raw: &str,
        told: Option<Told>,
    ) -> Result<()> {
        let queue = &self.queue;
        let dlq = queue.keys.dead_letters();
        let nobody = || Told {
            job_id: String::new(),
            status: dlq.clone(),
            events: dlq.clone(),
            in_flight: dlq.clone(),
            scope_in_flight: dlq.clone(),
            event: String::new(),
            payload: String::new(),
        };
        let told = told.unwrap_or_else(nobody);
        let _: String = queue
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::DEAD_LETTER.prepare_invoke();
                invocation
                    .key(keys.jobs())
                    .key(&dlq)
                    .key(&told.status)
                    .key(&told.events)
                    .key(&told.in_flight)
                    .key(&told.scope_in_flight)
                    .arg(WORKER_GROUP)
                    .arg(&*self.name)
                    .arg(entry)
                    .arg(reason)
                    .arg(raw)
                    .arg(queue.config.dead_letters_max_len)
                    .arg(&told.event)
                    .arg(&told.job_id)
                    .arg(queue.config.status_ttl_secs)
                    .arg(&told.payload)
                    .arg(queue.config.events_max_age_secs * 1000);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(())
    }
}

/// A dead letter's job and the Failed event its requester is told, with the keys that reach
/// them.
struct Told {
    job_id: String,
    status: String,
    events: String,
    in_flight: String,
    scope_in_flight: String,
    event: String,
    /// The request as it is kept in the status; empty when it could not be read.
    payload: String,
}

impl Told {
    fn new(queue: &Queue, id: JobId, job: &JobRequest, event: String, payload: String) -> Self {
        let keys = &queue.keys;
        Self {
            status: keys.status(&id),
            events: keys.events(job.origin.kind()),
            in_flight: keys.in_flight(&job.requester_key()),
            scope_in_flight: keys.scope_in_flight(&job.origin.scope().to_string()),
            job_id: id.to_string(),
            event,
            payload,
        }
    }
}

/// Renews the leases of held jobs every third of the lease, and tells their workers about
/// cancel requests and lost leases.
async fn keep_leases(queue: Queue, consumer: Arc<str>, held: Weak<Held>, prefetch: Weak<Prefetch>) {
    let period = Duration::from_millis((queue.config.lease_ms / 3).max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Gone once the consumer and all its deliveries are: a killed worker renews nothing.
        let Some(held) = held.upgrade() else { return };
        // Prefetched entries are held too, though not yet decoded: they have no job id to check
        // for a cancel request (an empty id names no status hash).
        let mut snapshot: Vec<(String, String)> = held
            .lock()
            .iter()
            .map(|(entry, job)| (entry.clone(), job.id.to_string()))
            .collect();
        if let Some(prefetch) = prefetch.upgrade() {
            snapshot.extend(
                prefetch
                    .ids()
                    .into_iter()
                    .map(|entry| (entry, String::new())),
            );
        }
        for chunk in snapshot.chunks(BATCH) {
            let renewed: redis::RedisResult<(Vec<String>, Vec<String>, Vec<String>)> = queue
                .with_retry(|mut conn, keys| {
                    let mut invocation = scripts::RENEW.prepare_invoke();
                    invocation
                        .key(keys.jobs())
                        .arg(WORKER_GROUP)
                        .arg(&*consumer)
                        .arg(format!("{}job:", keys.prefix()));
                    for (entry, id) in chunk {
                        invocation.arg(entry).arg(id);
                    }
                    async move { invocation.invoke_async(&mut conn).await }
                })
                .await;
            match renewed {
                Ok((taken, gone, cancel)) => {
                    let prefetch = prefetch.upgrade();
                    // The snapshot was taken before the script ran: a job finished meanwhile is
                    // no longer held, and its entry being gone is no news.
                    for entry in taken {
                        if held.signal(&entry, Signal::Lost) {
                            warn!(message = "Lost the lease of a job; another worker has it.", %entry);
                        }
                        if let Some(prefetch) = &prefetch {
                            prefetch.forget(&entry);
                        }
                    }
                    for entry in gone {
                        if held.signal(&entry, Signal::Lost) {
                            info!(message = "A job this worker holds ended elsewhere; letting it go.", %entry);
                        }
                        if let Some(prefetch) = &prefetch {
                            prefetch.forget(&entry);
                        }
                    }
                    for entry in cancel {
                        held.signal(&entry, Signal::CancelRequested);
                    }
                }
                Err(e) => warn!(message = "Renewing job leases failed.", error = %e),
            }
        }
    }
}

/// A terminal write waiting for the finisher's next batch.
struct Finish {
    entry: String,
    status: String,
    events: String,
    in_flight: String,
    scope_in_flight: String,
    job_id: String,
    state: JobState,
    event: String,
    payload: String,
    reply: oneshot::Sender<Result<Completion>>,
}

/// Writes terminal events in batches: whatever arrived while earlier calls were in flight goes in
/// the next one. An idle worker pays no delay (a lone request goes at once); a busy one pays one
/// round trip and one script call for many jobs, and the same call reads its next jobs.
async fn finish_in_batches(
    queue: Queue,
    consumer: Arc<str>,
    mut requests: mpsc::UnboundedReceiver<Finish>,
    prefetch: Arc<Prefetch>,
) {
    let calls = Arc::new(Semaphore::new(FINISH_CALLS_IN_FLIGHT));
    while let Some(first) = requests.recv().await {
        let Ok(permit) = calls.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match requests.try_recv() {
                Ok(finish) => batch.push(finish),
                Err(_) => break,
            }
        }
        let (queue, consumer, prefetch) = (queue.clone(), consumer.clone(), prefetch.clone());
        tokio::spawn(async move {
            finish_batch(&queue, &consumer, batch, &prefetch).await;
            drop(permit);
        });
    }
}

async fn finish_batch(queue: &Queue, consumer: &Arc<str>, batch: Vec<Finish>, prefetch: &Prefetch) {
    let read = prefetch.ask(batch.len());
    let attempts = AtomicUsize::new(0);
    let replies: redis::RedisResult<(Vec<String>, Vec<StreamId>)> = queue
        .with_retry(|mut conn, keys| {
            attempts.fetch_add(1, SeqCst);
            let mut invocation = scripts::COMPLETE.prepare_invoke();
            invocation
                .key(keys.jobs())
                .key(keys.dead_letters())
                .arg(WORKER_GROUP)
                .arg(&**consumer)
                .arg(queue.config.status_ttl_secs)
                .arg(read)
                .arg(queue.config.dead_letters_max_len)
                .arg(queue.config.events_max_age_secs * 1000);
            for f in &batch {
                invocation
                    .key(&f.status)
                    .key(&f.events)
                    .key(&f.in_flight)
                    .key(&f.scope_in_flight);
                invocation
                    .arg(&f.entry)
                    .arg(&f.job_id)
                    .arg(f.state.as_str())
                    .arg(&f.event)
                    .arg(&f.payload);
            }
            async move {
                let (results, fresh): (Vec<String>, Option<StreamReadReply>) =
                    invocation.invoke_async(&mut conn).await?;
                let fresh = fresh.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
                Ok((results, fresh.collect()))
            }
        })
        .await;
    // Entries first, replies second: a worker that sees its slot free finds its next job waiting.
    // A call that had to be repeated may have read entries whose reply was lost.
    let repeated = attempts.load(SeqCst) > 1;
    let replies = match replies {
        Ok((results, fresh)) => {
            if read > 0 {
                if repeated {
                    prefetch.reply_lost.store(true, SeqCst);
                }
                let orphans = prefetch.store(Some(fresh));
                if !orphans.is_empty() {
                    give_back_orphans(queue.clone(), consumer.clone(), orphans).await;
                }
            }
            Ok(results)
        }
        Err(e) => {
            if read > 0 {
                prefetch.store(None);
            }
            Err(e)
        }
    };
    match replies {
        Ok(replies) if replies.len() == batch.len() => {
            for (finish, reply) in batch.into_iter().zip(replies) {
                let _ = finish.reply.send(completion(&reply));
            }
        }
        Ok(replies) => {
            let detail = format!("{} replies for {} jobs", replies.len(), batch.len());
            for finish in batch {
                let _ = finish
                    .reply
                    .send(Err(unexpected_reply("complete", Some(&detail))));
            }
        }
        Err(e) => {
            for finish in batch {
                let _ = finish.reply.send(Err(e.clone().into()));
            }
        }
    }
}

/// What a terminal write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The terminal event is written and the entry acknowledged.
    Done,
    /// The job had already ended (an earlier call whose reply was lost, say).
    AlreadyFinished,
    /// Another consumer holds the job now: nothing was written.
    Lost,
    /// The entry was a second one for a job id that has its own life: it was set aside in the
    /// dead letters, and nothing was written for the job.
    Duplicate,
}

impl Completion {
    /// Whether the job's end is written (by this call or an earlier one): only then may a worker
    /// let go of what it launched for it.
    pub fn recorded(self) -> bool {
        matches!(self, Completion::Done | Completion::AlreadyFinished)
    }
}

/// What `fail` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailResult {
    /// The job comes back after this backoff.
    Retrying { attempt: u32, delay: Duration },
    /// The job ended with a Failed event.
    Failed(Completion),
    /// The job had been cancelled while it ran: it ended with a Cancelled event instead.
    Cancelled(Completion),
}

/// One job taken from the queue. Finish it with [`Delivery::complete`] or [`Delivery::fail`];
/// dropping it unfinished stops its lease renewal, so another worker takes it after the lease.
pub struct Delivery {
    pub id: JobId,
    /// The request, with `id` always set.
    pub job: JobRequest,
    pub entry_id: String,
    /// Retries before this one (0 on the first attempt).
    pub attempt: u32,
    /// Times this entry has been delivered, this one included.
    pub deliveries: u32,
    payload: String,
    queue: Queue,
    consumer: Arc<str>,
    held: Arc<Held>,
    finisher: mpsc::UnboundedSender<Finish>,
    signal: watch::Receiver<Signal>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.held.lock().remove(&self.entry_id);
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("entry_id", &self.entry_id)
            .field("attempt", &self.attempt)
            .field("deliveries", &self.deliveries)
            .finish()
    }
}

impl Delivery {
    /// Replaces the request (a worker settles the model and the seed), so a retry runs the settled
    /// request. The stream entry itself is not rewritten: a worker that takes the job over after
    /// a lost lease reads the original.
    pub fn settle(&mut self, job: JobRequest) {
        self.payload = wire::encode(&job);
        self.job = job;
    }

    /// The latest news from the lease keeper.
    pub fn signal(&self) -> Signal {
        *self.signal.borrow()
    }

    /// Resolves when the job is cancelled or its lease is lost.
    pub async fn interrupted(&mut self) -> Signal {
        match self.signal.wait_for(|s| *s != Signal::Running).await {
            Ok(signal) => *signal,
            // The sender lives as long as the delivery is held.
            Err(_) => Signal::Lost,
        }
    }

    fn event(&self, kind: EventKind) -> String {
        wire::encode(&JobEvent {
            job_id: self.id.clone(),
            at_ms: now_ms(),
            origin: self.job.origin.clone(),
            requester: self.job.requester.clone(),
            kind,
        })
    }

    /// Writes a non-terminal event (Starting, Progress). Returns the job's signal afterwards, so
    /// a cancel request is seen at the next progress report.
    pub async fn publish(&self, kind: EventKind) -> Result<Signal> {
        debug_assert!(!kind.is_terminal(), "terminal events go through complete()");
        let event = self.event(kind);
        let config = &self.queue.config;
        let (owner, cancel): (String, u8) = self
            .queue
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::PUBLISH.prepare_invoke();
                invocation
                    .key(keys.jobs())
                    .key(keys.status(&self.id))
                    .key(keys.events(self.job.origin.kind()))
                    .key(keys.dead_letters())
                    .arg(WORKER_GROUP)
                    .arg(&*self.consumer)
                    .arg(&self.entry_id)
                    .arg(&event)
                    .arg(config.status_ttl_secs)
                    .arg(self.id.as_str())
                    .arg(config.dead_letters_max_len);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let signal = match (owner.as_str(), cancel) {
            ("mine", 1) => Signal::CancelRequested,
            ("mine", _) => self.signal(),
            ("duplicate", _) => Signal::Duplicate,
            _ => Signal::Lost,
        };
        if signal != Signal::Running {
            self.held.signal(&self.entry_id, signal);
        }
        Ok(signal)
    }

    /// Writes the terminal event (Succeeded, Failed or Cancelled), then acknowledges and deletes
    /// the entry, in one script.
    pub async fn complete(self, kind: EventKind) -> Result<Completion> {
        let state = match &kind {
            EventKind::Succeeded { .. } => JobState::Succeeded,
            EventKind::Failed { .. } => JobState::Failed,
            EventKind::Cancelled => JobState::Cancelled,
            other => panic!("complete() takes a terminal event, not {other:?}"),
        };
        self.held.finishing(&self.entry_id);
        let (reply, result) = oneshot::channel();
        let finish = Finish {
            entry: self.entry_id.clone(),
            status: self.queue.keys.status(&self.id),
            events: self.queue.keys.events(self.job.origin.kind()),
            in_flight: self.queue.keys.in_flight(&self.job.requester_key()),
            scope_in_flight: self
                .queue
                .keys
                .scope_in_flight(&self.job.origin.scope().to_string()),
            job_id: self.id.to_string(),
            state,
            event: self.event(kind),
            payload: self.payload.clone(),
            reply,
        };
        if self.finisher.send(finish).is_err() {
            unreachable!("the finisher runs while any delivery holds its sender");
        }
        result
            .await
            .unwrap_or_else(|_| unreachable!("the finisher answers every request"))
    }

    /// Ends this attempt with a failure. When `retryable` and retries remain, the job waits out
    /// an exponential backoff with jitter and comes back; otherwise it fails for good.
    pub async fn fail(
        self,
        code: FailureCode,
        message: String,
        retryable: bool,
    ) -> Result<FailResult> {
        let config = self.queue.config.clone();
        if !retryable || self.attempt >= config.max_retries {
            let message = if retryable {
                format!("{message} (gave up after {} attempts)", self.attempt + 1)
            } else {
                message
            };
            let done = self
                .complete(EventKind::Failed {
                    code,
                    message,
                    retryable: false,
                })
                .await?;
            return Ok(FailResult::Failed(done));
        }
        let attempt = self.attempt + 1;
        let delay = backoff::retry_delay(
            attempt,
            Duration::from_millis(config.retry_base_ms),
            Duration::from_millis(config.retry_max_ms),
            fastrand::f64(),
        );
        let event = self.event(EventKind::Retrying {
            attempt,
            retry_in_ms: delay.as_millis() as u64,
            message,
        });
        self.held.finishing(&self.entry_id);
        let reply: String = self
            .queue
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::RETRY.prepare_invoke();
                invocation
                    .key(keys.jobs())
                    .key(keys.status(&self.id))
                    .key(keys.events(self.job.origin.kind()))
                    .key(keys.delayed())
                    .key(keys.delayed_jobs())
                    .key(keys.dead_letters())
                    .arg(WORKER_GROUP)
                    .arg(&*self.consumer)
                    .arg(&self.entry_id)
                    .arg(self.id.as_str())
                    .arg(delay.as_millis() as u64)
                    .arg(&event)
                    .arg(config.status_ttl_secs)
                    .arg(&self.payload)
                    .arg(attempt)
                    .arg(config.dead_letters_max_len);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        if reply == "cancelled" {
            return Ok(FailResult::Cancelled(
                self.complete(EventKind::Cancelled).await?,
            ));
        }
        match completion(&reply)? {
            Completion::Done => Ok(FailResult::Retrying { attempt, delay }),
            other => Ok(FailResult::Failed(other)),
        }
    }

    /// Gives the job back unfinished (graceful shutdown): it becomes claimable by other workers at
    /// once instead of after the lease.
    pub async fn abandon(self) -> Result<()> {
        give_back(&self.queue, &self.consumer, &[self.entry_id.as_str()]).await?;
        Ok(())
    }
}

fn completion(reply: &str) -> Result<Completion> {
    match reply {
        "done" => Ok(Completion::Done),
        "finished" => Ok(Completion::AlreadyFinished),
        "lost" => Ok(Completion::Lost),
        "duplicate" => Ok(Completion::Duplicate),
        other => Err(unexpected_reply("complete", Some(other))),
    }
}

/// The entry's fields as a JSON object, kept in the dead letters for inspection.
fn raw_fields(entry: &StreamId) -> String {
    let fields: serde_json::Map<String, serde_json::Value> = entry
        .map
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                other => format!("{other:?}"),
            };
            (k.clone(), serde_json::Value::String(text))
        })
        .collect();
    serde_json::Value::Object(fields).to_string()
}

fn raw_fields_of(delivery: &Delivery) -> String {
    serde_json::json!({ "job": delivery.payload, "attempt": delivery.attempt.to_string() })
        .to_string()
}

/// A consumer name unique per live process: the host name (a pod's name in Kubernetes) and the
/// process id, `fallback` where there is no host name. In a container the pid is the same after a
/// restart, so a restarted process takes back its own pending entries at once; elsewhere a
/// configured name does that.
pub fn default_consumer_name(fallback: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_owned());
    format!("{host}-{}", std::process::id())
}
