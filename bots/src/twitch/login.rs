//! The bot account's credentials for twitch-irc, which asks for them on every new connection.
//!
//! With only `twitch.token`, that token is used as it is. With a refresh token (and the
//! application's client id and secret), the bot keeps a fresh access token in Redis, shared by
//! every replica: the first replica exchanges the refresh token at start, and whichever replica
//! sees the stored token near its expiry refreshes it, one at a time under a short lock. Twitch
//! may hand back a new refresh token with each refresh; the stored one is always the newest.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ducks_contract::Secret;
use ducks_queue::{Queue, StoredToken, now_ms};
use serde::Deserialize;
use tracing::{info, warn};
use twitch_irc::login::{CredentialsPair, LoginCredentials};

use super::ORIGIN;
use super::config::TwitchConfig;

/// A token with less than this left is refreshed.
const REFRESH_BEFORE: Duration = Duration::from_secs(10 * 60);
/// How long one replica may take to refresh before another may try.
const REFRESH_LOCK: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Queue,
    login: String,
    config: TwitchConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Credentials")
            .field("login", &self.inner.login)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    expires_in: u64,
}

impl Credentials {
    pub fn new(queue: Queue, config: &TwitchConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("Could not build the HTTP client: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                login: config.login.trim().to_ascii_lowercase(),
                config: config.clone(),
                http,
            }),
        })
    }

    /// The access token to log in with, refreshed first when it is near its expiry.
    pub async fn access_token(&self) -> Result<Secret, String> {
        let inner = &self.inner;
        if !inner.config.refreshes() {
            return Ok(Secret::new(inner.config.bare_token()));
        }
        // Another replica may be refreshing: wait for its token rather than spend the same
        // refresh token twice.
        for _ in 0..40 {
            let stored = inner
                .queue
                .stored_token(ORIGIN, &inner.login)
                .await
                .map_err(|e| {
                    format!("Redis is unreachable, so the bot's token cannot be read: {e}")
                })?;
            if let Some(token) = &stored
                && token.expires_at_ms > now_ms() + REFRESH_BEFORE.as_millis() as u64
            {
                return Ok(token.access.clone());
            }
            if inner
                .queue
                .lock_token_refresh(ORIGIN, &inner.login, REFRESH_LOCK)
                .await
                .map_err(|e| e.to_string())?
            {
                let refresh = stored
                    .map(|t| t.refresh)
                    .unwrap_or_else(|| inner.config.refresh_token.clone());
                return self.refresh(&refresh).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err("Another replica took too long refreshing the bot's token.".into())
    }

    async fn refresh(&self, refresh: &Secret) -> Result<Secret, String> {
        let inner = &self.inner;
        let response = inner
            .http
            .post(&inner.config.token_url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
                ("client_id", inner.config.client_id.as_str()),
                ("client_secret", inner.config.client_secret.expose()),
            ])
            .send()
            .await
            .map_err(|e| format!("Could not reach Twitch to refresh the bot's token: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "Twitch refused to refresh the bot's token ({status}): make a new token and set twitch.token and twitch.refresh_token (docs/twitch.md)."
            ));
        }
        let fresh: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| format!("Twitch's token answer could not be read: {e}"))?;
        let token = StoredToken {
            access: Secret::new(fresh.access_token),
            refresh: fresh
                .refresh_token
                .map(Secret::new)
                .unwrap_or_else(|| refresh.clone()),
            expires_at_ms: now_ms() + fresh.expires_in * 1_000,
        };
        inner
            .queue
            .store_token(ORIGIN, &inner.login, &token)
            .await
            .map_err(|e| format!("The refreshed token could not be stored in Redis: {e}"))?;
        info!(
            message = "Refreshed the bot's Twitch token.",
            expires_in_secs = fresh.expires_in
        );
        Ok(token.access)
    }

    /// Keeps the shared token fresh while the bot runs, so a reconnect never waits on a refresh.
    pub async fn keep_fresh(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.inner.config.refreshes() {
            return;
        }
        loop {
            if let Err(error) = self.access_token().await {
                warn!(message = "Could not refresh the bot's Twitch token.", %error);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[async_trait]
impl LoginCredentials for Credentials {
    type Error = String;

    async fn get_credentials(&self) -> Result<CredentialsPair, String> {
        let token = self.access_token().await.inspect_err(|error| {
            warn!(message = "No token to log in to Twitch chat with.", %error);
        })?;
        Ok(CredentialsPair {
            login: self.inner.login.clone(),
            token: Some(token.expose().to_owned()),
        })
    }
}
