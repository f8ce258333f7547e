//! What a chat front end keeps about its replies, shared by all its replicas: for each job the
//! message it edits and the turn to edit it, and a sending budget per chat account.
//!
//! Over a consumer group, one job's events can reach different replicas, so without a turn a late
//! progress edit from one could overwrite the result another just posted. The hash lives as long
//! as the job's status. A chat platform's send limit counts an account's messages, whichever
//! replica sends them, so the budget lives in Redis too.

use std::collections::HashMap;
use std::time::Duration;

use ducks_contract::JobId;

use crate::scripts;
use crate::{Queue, Result};

/// The reply to one job from one front end (`origin_kind`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// What the front end remembered with [`Queue::remember_reply`] (a message id, a channel).
    pub fields: HashMap<String, String>,
    /// The result was delivered.
    pub delivered: bool,
}

/// The answer to [`Queue::begin_reply_edit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditTurn {
    /// Edit now, then call [`Queue::end_reply_edit`].
    Granted,
    /// Another replica is editing; a progress edit skips, a result asks again shortly.
    Busy,
    /// The result is on its way: a progress edit must not happen.
    Finished,
    /// The result went out already: nothing more to send.
    Delivered,
}

/// Undelivered results kept per requester.
const UNDELIVERED_KEPT: isize = 10;

/// Fields the edit turn uses; what front ends remember must not collide with them.
const RESERVED: [&str; 4] = ["editor", "editor_until", "final", "delivered"];

impl Queue {
    /// Remembers `fields` about the reply to `job` (kept as long as the job's status).
    pub async fn remember_reply(
        &self,
        origin_kind: &str,
        job: &JobId,
        fields: &[(&str, &str)],
    ) -> Result<()> {
        debug_assert!(fields.iter().all(|(name, _)| !RESERVED.contains(name)));
        let ttl = self.config.status_ttl_secs.max(1);
        Ok(self
            .with_retry(|mut conn, keys| async move {
                let key = keys.reply(origin_kind, job);
                let mut pipe = redis::pipe();
                pipe.cmd("HSET").arg(&key);
                for (name, value) in fields {
                    pipe.arg(*name).arg(*value);
                }
                pipe.ignore().cmd("EXPIRE").arg(&key).arg(ttl).ignore();
                pipe.query_async::<()>(&mut conn).await
            })
            .await?)
    }

    /// What is kept about the reply to `job`.
    pub async fn reply(&self, origin_kind: &str, job: &JobId) -> Result<Reply> {
        let mut fields: HashMap<String, String> = self
            .with_retry(|mut conn, keys| async move {
                redis::cmd("HGETALL")
                    .arg(keys.reply(origin_kind, job))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let delivered = fields.get("delivered").is_some_and(|v| v == "1");
        fields.retain(|name, _| !RESERVED.contains(&name.as_str()));
        Ok(Reply { fields, delivered })
    }

    /// Asks for the turn to edit the reply to `job` as `editor` (a token unique to this replica)
    /// for at most `lease`. A `result` edit also closes the reply to progress edits.
    pub async fn begin_reply_edit(
        &self,
        origin_kind: &str,
        job: &JobId,
        editor: &str,
        lease: Duration,
        result: bool,
    ) -> Result<EditTurn> {
        let ttl = self.config.status_ttl_secs.max(1);
        let answer: String = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::REPLY_BEGIN_EDIT.prepare_invoke();
                invocation
                    .key(keys.reply(origin_kind, job))
                    .arg(editor)
                    .arg(lease.as_millis() as u64)
                    .arg(if result { "1" } else { "0" })
                    .arg(ttl);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(match answer.as_str() {
            "granted" => EditTurn::Granted,
            "busy" => EditTurn::Busy,
            "finished" => EditTurn::Finished,
            _ => EditTurn::Delivered,
        })
    }

    /// Gives the edit turn back; `delivered` records that the result went out.
    pub async fn end_reply_edit(
        &self,
        origin_kind: &str,
        job: &JobId,
        editor: &str,
        delivered: bool,
    ) -> Result<()> {
        let _: i64 = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::REPLY_END_EDIT.prepare_invoke();
                invocation
                    .key(keys.reply(origin_kind, job))
                    .arg(editor)
                    .arg(if delivered { "1" } else { "0" });
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(())
    }

    /// Records that a result could not be posted where it was asked for (the channel refused
    /// the bot), so the front end can show it to its requester when asked.
    pub async fn note_undelivered(
        &self,
        origin_kind: &str,
        requester_id: &str,
        job: &JobId,
    ) -> Result<()> {
        let ttl = self.config.status_ttl_secs.max(1);
        let requester = format!("{origin_kind}:{requester_id}");
        Ok(self
            .with_retry(|mut conn, keys| {
                let key = keys.undelivered(&requester);
                async move {
                    redis::pipe()
                        .cmd("LPUSH")
                        .arg(&key)
                        .arg(job.to_string())
                        .ignore()
                        .cmd("LTRIM")
                        .arg(&key)
                        .arg(0)
                        .arg(UNDELIVERED_KEPT - 1)
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(ttl)
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await?)
    }

    /// The results [`Queue::note_undelivered`] recorded for a requester, newest first.
    pub async fn undelivered(&self, origin_kind: &str, requester_id: &str) -> Result<Vec<JobId>> {
        let requester = format!("{origin_kind}:{requester_id}");
        let ids: Vec<String> = self
            .with_retry(|mut conn, keys| {
                let key = keys.undelivered(&requester);
                async move {
                    redis::cmd("LRANGE")
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

    /// Takes one message from a sending budget shared by every replica of a chat bot: at most
    /// `limit` messages in any `window` for `account` (a login in one channel). `None`: send
    /// now, counted; `Some(wait)`: the budget is spent until then.
    pub async fn take_send_budget(
        &self,
        account: &str,
        window: Duration,
        limit: u32,
    ) -> Result<Option<Duration>> {
        static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let member = format!(
            "{}-{}-{}",
            std::process::id(),
            SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            fastrand::u64(..)
        );
        let wait_ms: u64 = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::SEND_BUDGET.prepare_invoke();
                invocation
                    .key(keys.send_budget(account))
                    .arg(window.as_millis() as u64)
                    .arg(limit)
                    .arg(&member);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }
}
