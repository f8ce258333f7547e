//! Every Redis key and group name of a queue. No other module spells a key.
//!
//! All keys of one queue carry the hash tag `{<name>}`, so every script touches one slot and runs
//! on Redis Cluster. Event streams are inside the tag too (the design notes sketched them outside):
//! a terminal event and the acknowledgement it guards are written by one script, and a script
//! cannot span slots.
//!
//! Key names are built from values the front end set (requester ids, scopes, idempotency
//! keys): they are hashed into one slot by the tag alone, so no value can move a key elsewhere.

use ducks_contract::JobId;

/// The consumer group of workers on the work stream.
pub const WORKER_GROUP: &str = "workers";

#[derive(Clone, Debug)]
pub struct Keys {
    /// `ducks:{<name>}:`, the start of every key.
    prefix: String,
}

impl Keys {
    pub fn new(queue_name: &str) -> Self {
        Self {
            prefix: format!("ducks:{{{queue_name}}}:"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The work stream (consumer group [`WORKER_GROUP`]). Never trimmed by length.
    pub fn jobs(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    /// Sorted set of job ids waiting out a retry backoff, scored by due time (Redis clock, ms).
    pub fn delayed(&self) -> String {
        format!("{}delayed", self.prefix)
    }

    /// Hash job id → stream fields (JSON) of the jobs in [`Keys::delayed`].
    pub fn delayed_jobs(&self) -> String {
        format!("{}delayed-jobs", self.prefix)
    }

    /// Dead letters: entries that could not be decoded or kept failing, with the reason.
    pub fn dead_letters(&self) -> String {
        format!("{}dlq", self.prefix)
    }

    /// Status hash of one job, with a time to live.
    pub fn status(&self, id: &JobId) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// The idempotency key `key` of one scope of keys (an API client, or a requester on their
    /// platform): two clients that use the same key never see each other's job.
    pub fn idempotency(&self, scope: &str, key: &str) -> String {
        format!("{}idem:{scope}:{key}", self.prefix)
    }

    /// Event stream of one origin kind (`discord`, `twitch`, `api`, `cli`, `redis`).
    pub fn events(&self, origin_kind: &str) -> String {
        format!("{}events:{origin_kind}", self.prefix)
    }

    /// Sorted set of the requester's unfinished job ids, scored by submit time.
    pub fn in_flight(&self, requester_key: &str) -> String {
        format!("{}inflight:{requester_key}", self.prefix)
    }

    /// Sorted set of the requester's recent submits, scored by submit time (sliding window).
    pub fn rate(&self, requester_key: &str) -> String {
        format!("{}rate:{requester_key}", self.prefix)
    }

    /// Sorted set of a scope's unfinished job ids (`ducks_contract::Scope`), scored by submit
    /// time.
    pub fn scope_in_flight(&self, scope: &str) -> String {
        format!("{}scope-inflight:{scope}", self.prefix)
    }

    /// Sorted set of a scope's recent submits (sliding window).
    pub fn scope_rate(&self, scope: &str) -> String {
        format!("{}scope-rate:{scope}", self.prefix)
    }

    /// The model catalogue snapshot (JSON), kept fresh by workers.
    pub fn models(&self) -> String {
        format!("{}models", self.prefix)
    }
    /// The API client id an API key's digest names (`ducks api keys create`).
    pub fn api_key(&self, digest: &str) -> String {
        format!("{}api:key:{digest}", self.prefix)
    }

    /// One API client (`ducks_contract::ApiClient`, JSON).
    pub fn api_client(&self, id: &str) -> String {
        format!("{}api:client:{id}", self.prefix)
    }

    /// Set of every API client id, for `ducks api keys list`.
    pub fn api_clients(&self) -> String {
        format!("{}api:clients", self.prefix)
    }

    /// Hash of one API client's usage: `jobs`, `images`, `gpu_ms`.
    pub fn api_usage(&self, id: &str) -> String {
        format!("{}api:usage:{id}", self.prefix)
    }

    /// List of an API client's newest job ids, newest first and capped (`GET /v1/jobs`).
    pub fn api_recent(&self, client: &str) -> String {
        format!("{}api:recent:{client}", self.prefix)
    }

    /// The job an OpenAI-style request started, by a digest of its key and body, kept briefly so
    /// the client's automatic retry of that request follows the job instead of starting another.
    pub fn api_attempt(&self, fingerprint: &str) -> String {
        format!("{}api:attempt:{fingerprint}", self.prefix)
    }

    /// Sorted set of webhook delivery ids, scored by when each is due (Redis clock, ms).
    pub fn webhooks_due(&self) -> String {
        format!("{}api:webhooks-due", self.prefix)
    }

    /// Hash delivery id → the delivery (JSON, owned by the API) of every delivery not yet done.
    pub fn webhooks(&self) -> String {
        format!("{}api:webhooks", self.prefix)
    }

    /// Set once a webhook delivery is done (made or given up), so reading its event again
    /// never sends it twice; with a time to live.
    pub fn webhook_done(&self, id: &str) -> String {
        format!("{}api:webhook-done:{id}", self.prefix)
    }

    /// Set once a job's images and GPU time are counted in its key's usage, so reading its
    /// event again never counts them twice; with a time to live.
    pub fn api_counted(&self, job: &JobId) -> String {
        format!("{}api:counted:{job}", self.prefix)
    }

    /// List of a client's newest images (JSON, owned by the API), newest first and capped: the
    /// page's gallery, kept beyond the jobs' status lifetime.
    pub fn api_gallery(&self, client: &str) -> String {
        format!("{}api:gallery:{client}", self.prefix)
    }

    /// Hash of what a chat front end keeps about its reply to one job (the message it edits, its
    /// edit turn, whether the result went out), shared by its replicas; with a time to live.
    pub fn reply(&self, origin_kind: &str, job: &JobId) -> String {
        format!("{}reply:{origin_kind}:{job}", self.prefix)
    }

    /// List of a requester's results a chat front end could not post (newest first, capped),
    /// for the front end to show when asked.
    pub fn undelivered(&self, requester_key: &str) -> String {
        format!("{}reply:undelivered:{requester_key}", self.prefix)
    }

    /// Stream of the newest images made in one channel of a chat front end (capped, with a time
    /// to live renewed on every add): what the channel's stream overlay shows.
    pub fn overlay(&self, origin_kind: &str, channel: &str) -> String {
        format!("{}overlay:{origin_kind}:{channel}", self.prefix)
    }

    /// Sorted set of the send times of one chat account in one channel (`twitch:<login>:<channel>`),
    /// the sending budget every replica of a bot shares; it expires with its window.
    pub fn send_budget(&self, account: &str) -> String {
        format!("{}budget:{account}", self.prefix)
    }

    /// Set once a chat message has been taken by one replica of a chat bot (every replica in a
    /// channel receives every message); with a time to live.
    pub fn chat_seen(&self, origin_kind: &str, message_id: &str) -> String {
        format!("{}chat:seen:{origin_kind}:{message_id}", self.prefix)
    }

    /// A cooldown (`twitch:<channel>`, `twitch:<channel>:<user id>`); it expires when it ends.
    pub fn chat_cooldown(&self, name: &str) -> String {
        format!("{}chat:cooldown:{name}", self.prefix)
    }

    /// Set while a channel's moderators have paused the bot there.
    pub fn chat_paused(&self, origin_kind: &str, channel: &str) -> String {
        format!("{}chat:paused:{origin_kind}:{channel}", self.prefix)
    }

    /// Hash login → user id of the people who asked for images in a channel, so a moderator can
    /// name one by login; with a time to live.
    pub fn chat_chatters(&self, origin_kind: &str, channel: &str) -> String {
        format!("{}chat:chatters:{origin_kind}:{channel}", self.prefix)
    }

    /// Hash of a chat account's user access token (`access`, `refresh`, `expires_at_ms`), shared
    /// by the replicas that refresh it.
    pub fn chat_token(&self, origin_kind: &str, login: &str) -> String {
        format!("{}chat:token:{origin_kind}:{login}", self.prefix)
    }

    /// Held by the one replica refreshing a chat account's token; with a short time to live.
    pub fn chat_token_lock(&self, origin_kind: &str, login: &str) -> String {
        format!("{}chat:token-lock:{origin_kind}:{login}", self.prefix)
    }
}
