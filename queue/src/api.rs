//! What the HTTP API keeps in Redis besides jobs: its clients (one per API key, found by the key's
//! digest), their usage, their recent jobs, the jobs its OpenAI-style requests started (so a
//! client's automatic retry follows the job), and webhook deliveries waiting to be sent. Every
//! replica of the API shares them, so the API itself holds no state.

use std::time::Duration;

use ducks_contract::{ApiClient, ClientUsage, JobId, wire};

use crate::scripts;
use crate::{Queue, QueueError, Result};

/// Job ids kept per client for `GET /v1/jobs`.
const RECENT_JOBS: isize = 100;
/// Images kept per client for the page's gallery.
const GALLERY_IMAGES: isize = 48;

impl Queue {
    /// Stores a new client under its key's digest. Fails if the digest is taken (a key made
    /// twice: it cannot happen with random keys, but it must not replace a client).
    pub async fn add_api_client(&self, digest: &str, client: &ApiClient) -> Result<()> {
        let json = wire::encode(client);
        let added: bool = self
            .with_retry(|mut conn, keys| {
                let json = json.clone();
                async move {
                    let added: bool = redis::cmd("SET")
                        .arg(keys.api_key(digest))
                        .arg(&client.id)
                        .arg("NX")
                        .query_async::<Option<String>>(&mut conn)
                        .await?
                        .is_some();
                    if added {
                        redis::pipe()
                            .cmd("SET")
                            .arg(keys.api_client(&client.id))
                            .arg(json)
                            .ignore()
                            .cmd("SADD")
                            .arg(keys.api_clients())
                            .arg(&client.id)
                            .ignore()
                            .query_async::<()>(&mut conn)
                            .await?;
                    }
                    Ok(added)
                }
            })
            .await?;
        if added {
            Ok(())
        } else {
            Err(QueueError::Conflict(
                "An API key with this digest exists already.".into(),
            ))
        }
    }

    /// The client whose key has this digest, revoked or not.
    pub async fn api_client_by_digest(&self, digest: &str) -> Result<Option<ApiClient>> {
        let id: Option<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("GET")
                    .arg(keys.api_key(digest))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        match id {
            Some(id) => self.api_client(&id).await,
            None => Ok(None),
        }
    }

    pub async fn api_client(&self, id: &str) -> Result<Option<ApiClient>> {
        let json: Option<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("GET")
                    .arg(keys.api_client(id))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(json
            .map(|json| wire::decode("API client", &json))
            .transpose()?)
    }

    /// Every client with its usage, oldest first.
    pub async fn api_clients(&self) -> Result<Vec<(ApiClient, ClientUsage)>> {
        let ids: Vec<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("SMEMBERS")
                    .arg(keys.api_clients())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut clients = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(client) = self.api_client(&id).await? {
                let usage = self.api_usage(&id).await?;
                clients.push((client, usage));
            }
        }
        clients.sort_by_key(|(client, _)| client.created_at_ms);
        Ok(clients)
    }

    /// Marks a client revoked; its key is refused from then on (after the API's key cache
    /// expires). Answers the client as it is now, or `None` for an unknown id.
    pub async fn revoke_api_client(&self, id: &str, at_ms: u64) -> Result<Option<ApiClient>> {
        let Some(mut client) = self.api_client(id).await? else {
            return Ok(None);
        };
        client.revoked_at_ms.get_or_insert(at_ms);
        let json = wire::encode(&client);
        self.with_retry(|mut conn, keys| {
            let json = json.clone();
            async move {
                redis::cmd("SET")
                    .arg(keys.api_client(id))
                    .arg(json)
                    .query_async::<()>(&mut conn)
                    .await
            }
        })
        .await?;
        Ok(Some(client))
    }

    pub async fn api_usage(&self, id: &str) -> Result<ClientUsage> {
        let fields: Vec<Option<u64>> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("HMGET")
                    .arg(keys.api_usage(id))
                    .arg("jobs")
                    .arg("images")
                    .arg("gpu_ms")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let field = |i: usize| fields.get(i).copied().flatten().unwrap_or(0);
        Ok(ClientUsage {
            jobs: field(0),
            images: field(1),
            gpu_seconds: field(2) as f64 / 1000.0,
        })
    }

    /// Counts a finished job's images and GPU time in its client's usage, once per job however
    /// often its event is read; the job is remembered for `remember`. Answers whether this was
    /// the first time.
    pub async fn count_api_images_once(
        &self,
        job: &JobId,
        client: &str,
        images: u64,
        gpu_seconds: f64,
        remember: Duration,
    ) -> Result<bool> {
        let gpu_ms = (gpu_seconds * 1000.0).round() as u64;
        let counted: bool = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::USAGE_ONCE.prepare_invoke();
                invocation
                    .key(keys.api_counted(job))
                    .key(keys.api_usage(client))
                    .arg(images)
                    .arg(gpu_ms)
                    .arg(remember.as_secs().max(1));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(counted)
    }

    /// Adds an image (JSON, the API's) to the front of a client's gallery, capped.
    pub async fn add_to_gallery(&self, client: &str, image: &str) -> Result<()> {
        self.with_retry(|mut conn, keys| async move {
            redis::pipe()
                .cmd("LPUSH")
                .arg(keys.api_gallery(client))
                .arg(image)
                .ignore()
                .cmd("LTRIM")
                .arg(keys.api_gallery(client))
                .arg(0)
                .arg(GALLERY_IMAGES - 1)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// A client's newest images, newest first.
    pub async fn gallery(&self, client: &str, limit: usize) -> Result<Vec<String>> {
        let stop = limit.clamp(1, GALLERY_IMAGES as usize) as isize - 1;
        Ok(self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("LRANGE")
                    .arg(keys.api_gallery(client))
                    .arg(0)
                    .arg(stop)
                    .query_async(&mut conn)
                    .await
            })
            .await?)
    }

    /// Files a new job among a client's newest (`client` is the client id, or `open` without
    /// keys) and, for a keyed client, counts it in the client's usage: one round trip.
    pub async fn file_api_job(&self, client: &str, id: &JobId, count: bool) -> Result<()> {
        self.with_retry(|mut conn, keys| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("LPUSH")
                .arg(keys.api_recent(client))
                .arg(id.as_str())
                .ignore()
                .cmd("LTRIM")
                .arg(keys.api_recent(client))
                .arg(0)
                .arg(RECENT_JOBS - 1)
                .ignore();
            if count {
                pipe.cmd("HINCRBY")
                    .arg(keys.api_usage(client))
                    .arg("jobs")
                    .arg(1)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await?;
        Ok(())
    }

    /// A client's newest job ids, newest first.
    pub async fn api_jobs(&self, client: &str, limit: usize) -> Result<Vec<JobId>> {
        let stop = limit.clamp(1, RECENT_JOBS as usize) as isize - 1;
        let ids: Vec<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("LRANGE")
                    .arg(keys.api_recent(client))
                    .arg(0)
                    .arg(stop)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(ids.into_iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Records that the request with this fingerprint started `id`, for `ttl`.
    pub async fn record_api_attempt(
        &self,
        fingerprint: &str,
        id: &JobId,
        ttl: Duration,
    ) -> Result<()> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.with_retry(|mut conn, keys| async move {
            redis::cmd("SET")
                .arg(keys.api_attempt(fingerprint))
                .arg(id.as_str())
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// The job the request with this fingerprint started, while it is remembered.
    pub async fn api_attempt(&self, fingerprint: &str) -> Result<Option<JobId>> {
        let id: Option<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("GET")
                    .arg(keys.api_attempt(fingerprint))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(id.and_then(|id| id.parse().ok()))
    }

    /// Adds webhook delivery `id`, due now, unless it is waiting already or was done. Answers
    /// whether it was added.
    pub async fn add_webhook(&self, id: &str, delivery: &str) -> Result<bool> {
        Ok(self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::WEBHOOK_ADD.prepare_invoke();
                invocation
                    .key(keys.webhooks_due())
                    .key(keys.webhooks())
                    .key(keys.webhook_done(id))
                    .arg(id)
                    .arg(delivery);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?)
    }

    /// Stores webhook delivery `id` again after a failed attempt, due in `delay`.
    pub async fn retry_webhook(&self, id: &str, delivery: &str, delay: Duration) -> Result<()> {
        self.with_retry(|mut conn, keys| {
            let mut invocation = scripts::WEBHOOK_SCHEDULE.prepare_invoke();
            invocation
                .key(keys.webhooks_due())
                .key(keys.webhooks())
                .arg(id)
                .arg(delivery)
                .arg(delay.as_millis() as u64);
            async move { invocation.invoke_async::<()>(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Up to `count` due deliveries, each leased to the caller for `lease`: no other replica
    /// takes one before that unless the caller finishes or reschedules it.
    pub async fn take_due_webhooks(
        &self,
        count: usize,
        lease: Duration,
    ) -> Result<Vec<(String, String)>> {
        let flat: Vec<String> = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::WEBHOOK_TAKE.prepare_invoke();
                invocation
                    .key(keys.webhooks_due())
                    .key(keys.webhooks())
                    .arg(lease.as_millis() as u64)
                    .arg(count);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(flat
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect())
    }

    /// Forgets a delivery that was made or given up, and remembers it is done for `remember`.
    pub async fn finish_webhook(&self, id: &str, remember: Duration) -> Result<()> {
        self.with_retry(|mut conn, keys| {
            let mut invocation = scripts::WEBHOOK_DONE.prepare_invoke();
            invocation
                .key(keys.webhooks_due())
                .key(keys.webhooks())
                .key(keys.webhook_done(id))
                .arg(id)
                .arg(remember.as_secs().max(1));
            async move { invocation.invoke_async::<()>(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    /// Deliveries not yet made or given up (the tests wait on it; an operator may too).
    pub async fn pending_webhooks(&self) -> Result<u64> {
        Ok(self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("ZCARD")
                    .arg(keys.webhooks_due())
                    .query_async(&mut conn)
                    .await
            })
            .await?)
    }
}
