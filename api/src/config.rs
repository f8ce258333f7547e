//! `[api]` (`DUCKS_API__*`): how `ducks api` listens, who may call it, and how long it waits.

use ducks_contract::Secret;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The address to listen on.
    pub listen: String,
    /// The address people reach the API at (`https://ducks.example.com`): job URLs in responses
    /// and the page use it. Empty: the address each request came to (its `Host`).
    pub public_url: String,
    /// Serve without API keys: every caller is one anonymous client. For development only; an
    /// API without keys refuses to start unless this is set.
    pub open: bool,
    /// The secret API keys are digested with (HMAC-SHA256). Shared by every replica and by
    /// `ducks api keys`; changing it invalidates every key.
    pub pepper: Secret,
    /// How long a key's lookup is trusted: a revoked key works at most this long afterwards.
    pub key_cache_secs: u64,
    /// How long `POST /v1/images/generations` waits for its images before answering with the
    /// job's URL (the job goes on).
    pub generation_wait_secs: u64,
    /// The longest `Prefer: wait=N` honoured on `POST /v1/jobs`.
    pub max_prefer_wait_secs: u64,
    /// How long one server-sent-event stream stays open; a client reconnects with
    /// `Last-Event-ID` and misses nothing that matters.
    pub events_max_secs: u64,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a client may take to send its request's headers, and then its body.
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    /// Origins allowed to call the API from a browser (CORS), comma-separated; empty: none but
    /// the API's own page. `*` allows any.
    pub cors_origins: String,
    /// How long a webhook delivery is retried before it is given up.
    pub webhook_retry_secs: u64,
    /// How long one webhook request may take.
    pub webhook_timeout_secs: u64,
    /// How often the API reads the model catalogue in S3 and publishes it when it changed, so a
    /// model imported while no worker runs can be used.
    pub catalogue_refresh_secs: u64,
    /// Allow webhooks to private, loopback and link-local addresses (tests, a private network).
    /// Off by default: a client could otherwise make the API call into its own network.
    pub webhook_allow_private: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: String::new(),
            open: false,
            pepper: Secret::default(),
            key_cache_secs: 10,
            generation_wait_secs: 300,
            max_prefer_wait_secs: 60,
            events_max_secs: 3_600,
            max_body_bytes: 64 * 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            cors_origins: String::new(),
            webhook_retry_secs: 24 * 3_600,
            webhook_timeout_secs: 10,
            catalogue_refresh_secs: 60,
            webhook_allow_private: false,
        }
    }
}

impl ApiConfig {
    /// The CORS origins, one by one.
    pub fn cors_origins(&self) -> Vec<&str> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|origin| !origin.is_empty())
            .collect()
    }

    /// Refuses a configuration that would serve the public without keys by mistake.
    pub fn check(&self) -> Result<(), String> {
        if !self.open && self.pepper.is_empty() {
            return Err("api.pepper is empty: set it (DUCKS_API__PEPPER, a long random secret) to check API keys, \
                 or set api.open = true for a development API without keys"
                .into());
        }
        Ok(())
    }
}
