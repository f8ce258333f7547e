//! What the HTTP API keeps about its clients and sends to them: [`ApiClient`] (one per API key),
//! [`ClientUsage`] (the receipt per key) and [`Webhook`] (where a job's events are posted).

use serde::{Deserialize, Serialize};

use crate::Secret;

/// One API key's client. The key itself is never stored: only its HMAC digest names the record
/// (see docs/api.md), so a copy of Redis cannot be used to call the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiClient {
    /// Short and public: it names the client in job origins, limits and logs.
    pub id: String,
    /// What the operator called it (`ducks api keys create --name`).
    pub name: String,
    /// Admin keys see and cancel every API job.
    #[serde(default)]
    pub admin: bool,
    pub created_at_ms: u64,
    /// Unfinished jobs this key may have at once; `None` uses `queue.scopes.api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
    /// Submits per minute; `None` uses `queue.scopes.api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Signs this client's webhooks (Standard Webhooks, `whsec_…`); shown once, at creation.
    pub webhook_secret: Secret,
    /// Set once the key is revoked; a revoked key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

/// What a client has used, counted by the API as its jobs start and end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientUsage {
    pub jobs: u64,
    pub images: u64,
    pub gpu_seconds: f64,
}

/// Where to post a job's events. The API checks the address when it accepts the job and again
/// on every delivery (see docs/api.md, "Webhooks").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// Post progress events too, not only the terminal one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
}
