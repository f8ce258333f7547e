//! What the replicas of a chat bot (Twitch) share about a channel: which messages were already
//! taken, cooldowns, whether moderators paused the bot, who asked (login → user id), and the
//! account's refreshed access token. Every replica receives every chat message, so anything one
//! replica decides the others must see.

use std::collections::HashMap;
use std::time::Duration;

use ducks_contract::Secret;

use crate::scripts;
use crate::{Queue, Result};

/// How long a message id is remembered: longer than any replica lags behind another.
const SEEN_FOR: Duration = Duration::from_secs(3_600);
/// How long a login → user id mapping is kept after the person last asked.
const CHATTERS_FOR: Duration = Duration::from_secs(7 * 24 * 3_600);

/// A chat account's user access token as the replicas share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    pub access: Secret,
    pub refresh: Secret,
    /// When the access token expires (Unix ms).
    pub expires_at_ms: u64,
}

impl Queue {
    /// Whether this replica is the first to take chat message `message_id`: `false` means
    /// another replica already did.
    pub async fn first_to_take(&self, origin_kind: &str, message_id: &str) -> Result<bool> {
        let taken: Option<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("SET")
                    .arg(keys.chat_seen(origin_kind, message_id))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(SEEN_FOR.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(taken.is_some())
    }

    /// Takes every cooldown `(name, length)` at once, or none of them: `None` when taken,
    /// `Some(wait)` when one of them still runs for that long. A zero length does not apply.
    pub async fn take_cooldowns(&self, cooldowns: &[(&str, Duration)]) -> Result<Option<Duration>> {
        let wait_ms: u64 = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::COOLDOWN.prepare_invoke();
                for (name, length) in cooldowns {
                    invocation
                        .key(keys.chat_cooldown(name))
                        .arg(length.as_millis() as u64);
                }
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    /// Gives cooldowns back: the request that took them was refused.
    pub async fn return_cooldowns(&self, names: &[&str]) -> Result<()> {
        self.with_retry(|mut conn, keys| async move {
            let mut del = redis::cmd("DEL");
            for name in names {
                del.arg(keys.chat_cooldown(name));
            }
            del.query_async::<()>(&mut conn).await
        })
        .await?;
        Ok(())
    }

    /// Pauses (or resumes) the bot in one channel, for every replica.
    pub async fn set_paused(&self, origin_kind: &str, channel: &str, paused: bool) -> Result<()> {
        self.with_retry(|mut conn, keys| async move {
            let key = keys.chat_paused(origin_kind, channel);
            if paused {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .query_async::<()>(&mut conn)
                    .await
            } else {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await
            }
        })
        .await?;
        Ok(())
    }

    pub async fn paused(&self, origin_kind: &str, channel: &str) -> Result<bool> {
        Ok(self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("EXISTS")
                    .arg(keys.chat_paused(origin_kind, channel))
                    .query_async(&mut conn)
                    .await
            })
            .await?)
    }

    /// Remembers that `login` is user `user_id` in `channel`.
    pub async fn remember_chatter(
        &self,
        origin_kind: &str,
        channel: &str,
        login: &str,
        user_id: &str,
    ) -> Result<()> {
        self.with_retry(|mut conn, keys| async move {
            let key = keys.chat_chatters(origin_kind, channel);
            redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg(login)
                .arg(user_id)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(CHATTERS_FOR.as_millis() as u64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// The user id of `login` in `channel`, if they asked for an image there lately.
    pub async fn chatter(
        &self,
        origin_kind: &str,
        channel: &str,
        login: &str,
    ) -> Result<Option<String>> {
        Ok(self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("HGET")
                    .arg(keys.chat_chatters(origin_kind, channel))
                    .arg(login)
                    .query_async(&mut conn)
                    .await
            })
            .await?)
    }

    /// The shared token of chat account `login`, if one was stored.
    pub async fn stored_token(
        &self,
        origin_kind: &str,
        login: &str,
    ) -> Result<Option<StoredToken>> {
        let fields: HashMap<String, String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("HGETALL")
                    .arg(keys.chat_token(origin_kind, login))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match (fields.get("access"), fields.get("refresh")) {
            (Some(access), Some(refresh)) => Some(StoredToken {
                access: Secret::new(access.as_str()),
                refresh: Secret::new(refresh.as_str()),
                expires_at_ms: fields
                    .get("expires_at_ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0),
            }),
            _ => None,
        })
    }

    pub async fn store_token(
        &self,
        origin_kind: &str,
        login: &str,
        token: &StoredToken,
    ) -> Result<()> {
        self.with_retry(|mut conn, keys| async move {
            redis::cmd("HSET")
                .arg(keys.chat_token(origin_kind, login))
                .arg("access")
                .arg(token.access.expose())
                .arg("refresh")
                .arg(token.refresh.expose())
                .arg("expires_at_ms")
                .arg(token.expires_at_ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// Whether this replica may refresh `login`'s token now: one replica at a time, for `hold`.
    pub async fn lock_token_refresh(
        &self,
        origin_kind: &str,
        login: &str,
        hold: Duration,
    ) -> Result<bool> {
        let taken: Option<String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("SET")
                    .arg(keys.chat_token_lock(origin_kind, login))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(hold.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(taken.is_some())
    }
}
