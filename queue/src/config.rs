//! Queue settings. Durations are whole milliseconds or seconds so they read well in environment variables.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Name inside the hash tag of every key; queues with different names are independent.
    pub name: String,
    /// Submit answers `QueueFull` once this many jobs wait (queued or delayed).
    pub max_backlog: u64,
    /// Largest accepted job message, in bytes.
    pub max_payload_bytes: usize,
    /// Unfinished jobs one requester may have; 0 means no limit.
    pub per_requester_in_flight: u32,
    /// Submits one requester may make per window; 0 means no limit.
    pub per_requester_rate: u32,
    pub per_requester_window_secs: u64,
    /// How long an idempotency key keeps returning the first job.
    pub idempotency_ttl_secs: u64,
    /// How long a job's status stays readable after its last change.
    pub status_ttl_secs: u64,
    /// Approximate length cap of each event stream and of the dead letters.
    pub events_max_len: u64,
    /// A job whose worker has not renewed its lease for this long is handed to another worker.
    pub lease_ms: u64,
    /// Deliveries after which a job that never finishes goes to the dead letters.
    pub max_deliveries: u32,
    /// Retries a job gets after failures that a retry can fix.
    pub max_retries: u32,
    /// First retry backoff; it doubles each attempt, with jitter, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Longest a blocking read waits for new jobs before checking for stale and delayed ones.
    pub block_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            name: "main".into(),
            max_backlog: 10_000,
            max_payload_bytes: 16 * 1024,
            per_requester_in_flight: 4,
            per_requester_rate: 20,
            per_requester_window_secs: 60,
            idempotency_ttl_secs: 24 * 3600,
            status_ttl_secs: 24 * 3600,
            events_max_len: 10_000,
            lease_ms: 30_000,
            max_deliveries: 3,
            max_retries: 3,
            retry_base_ms: 2_000,
            retry_max_ms: 60_000,
            block_ms: 2_000,
        }
    }
}
