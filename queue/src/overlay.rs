//! A channel's stream overlay: the newest images made in one chat channel, which the API serves to
//! a page the streamer adds to OBS. The Twitch bot adds each result it delivers; the page asks
//! for what came after its cursor every few seconds.
//!
//! One capped stream per channel: its entry ids are the cursors, its length cap keeps the newest
//! [`OVERLAY_IMAGES`], and a channel that stops drawing is forgotten after [`OVERLAY_TTL_SECS`].

use ducks_contract::{ValidationError, wire};
use tracing::warn;

use crate::scripts;
use crate::{Queue, QueueError, Result};

/// Images kept per channel, and the most one answer holds.
const OVERLAY_IMAGES: usize = 50;
/// A channel's overlay is forgotten this long after its last image (7 days).
const OVERLAY_TTL_SECS: u64 = 7 * 24 * 60 * 60;
/// The longest channel name: Twitch logins are 4 to 25 characters.
const MAX_CHANNEL_LEN: usize = 25;
/// The cursor of an overlay that has shown nothing yet: everything comes after it.
const START: &str = "0-0";

/// One image on a channel's overlay.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OverlayImage {
    /// The job that drew it.
    pub job: String,
    /// Short permanent link to the PNG.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// Display name of who asked.
    pub requester: String,
    pub prompt: String,
    pub model: String,
    /// When it was delivered (unix ms).
    pub at_ms: u64,
}

impl Queue {
    /// Adds `image` to the overlay of `channel` of front end `origin_kind` ("twitch"); keeps the
    /// newest 50; adding the same job's image twice (a redelivered result) shows it once.
    ///
    /// An image is the same when its job and its link are, so a job's several images each
    /// show. Only the kept images are compared: one redelivered after 50 newer ones would show
    /// again.
    pub async fn add_to_overlay(
        &self,
        origin_kind: &str,
        channel: &str,
        image: &OverlayImage,
    ) -> Result<()> {
        check_place(origin_kind, channel)?;
        let name = format!("{} {}", image.job, image.url);
        let json = wire::encode(image);
        let _added: i64 = self
            .with_retry(|mut conn, keys| {
                let mut invocation = scripts::OVERLAY_ADD.prepare_invoke();
                invocation
                    .key(keys.overlay(origin_kind, channel))
                    .arg(&name)
                    .arg(&json)
                    .arg(OVERLAY_IMAGES)
                    .arg(OVERLAY_TTL_SECS);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(())
    }

    /// Images added after `after` (a cursor from an earlier answer; None = the newest `limit`),
    /// oldest first, at most `limit`, with the cursor to pass next time.
    ///
    /// `limit` is taken as 1 to 50. After a cursor, the answer is the oldest `limit` images that
    /// followed it, so a caller that asks again with each cursor misses none. A cursor older
    /// than every kept image answers them all; an unreadable one is refused.
    pub async fn overlay(
        &self,
        origin_kind: &str,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<OverlayImage>, String)> {
        check_place(origin_kind, channel)?;
        if let Some(cursor) = after
            && !is_cursor(cursor)
        {
            return Err(invalid(
                "`after` is not an overlay cursor: pass the `cursor` of an earlier answer, or nothing.",
            ));
        }
        let limit = limit.clamp(1, OVERLAY_IMAGES);
        let mut entries: Vec<(String, Vec<(String, String)>)> = self
            .with_retry(|mut conn, keys| async move {
                let key = keys.overlay(origin_kind, channel);
                match after {
                    Some(cursor) => {
                        redis::cmd("XRANGE")
                            .arg(key)
                            .arg(format!("({cursor}"))
                            .arg("+")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn)
                            .await
                    }
                    None => {
                        redis::cmd("XREVRANGE")
                            .arg(key)
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn)
                            .await
                    }
                }
            })
            .await?;
        if after.is_none() {
            entries.reverse();
        }
        let cursor = entries
            .last()
            .map(|(id, _)| id.clone())
            .or_else(|| after.map(str::to_owned))
            .unwrap_or_else(|| START.to_owned());
        let images = entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let json = fields.into_iter().find(|(name, _)| name == "image")?.1;
                wire::decode("overlay image", &json)
                    .inspect_err(|error| {
                        warn!(
                            message = "Skipped an unreadable overlay image.",
                            %error,
                            channel,
                            entry = %id
                        );
                    })
                    .ok()
            })
            .collect();
        Ok((images, cursor))
    }
}

fn invalid(message: &str) -> QueueError {
    QueueError::Invalid(ValidationError(message.to_owned()))
}

/// Refuses a front end or channel name that is no overlay's: key names are built from them.
fn check_place(origin_kind: &str, channel: &str) -> Result<()> {
    if origin_kind.is_empty()
        || origin_kind.len() > 16
        || !origin_kind.bytes().all(|b| b.is_ascii_lowercase())
    {
        return Err(invalid(
            "This is not a front end's name: use its lowercase name, such as `twitch`.",
        ));
    }
    if !is_channel(channel) {
        return Err(invalid(
            "This is not a channel's name: use its login, 1 to 25 lowercase letters, digits or '_'.",
        ));
    }
    Ok(())
}

/// A Twitch login: 1 to 25 lowercase letters, digits or '_'.
fn is_channel(channel: &str) -> bool {
    (1..=MAX_CHANNEL_LEN).contains(&channel.len())
        && channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A stream entry id, `<ms>-<sequence>`, both within 64 bits (Redis refuses anything else).
fn is_cursor(cursor: &str) -> bool {
    cursor.split_once('-').is_some_and(|(ms, sequence)| {
        [ms, sequence]
            .iter()
            .all(|part| part.bytes().all(|b| b.is_ascii_digit()) && part.parse::<u64>().is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_cursors_are_checked_before_they_name_a_key() {
        let longest = "d".repeat(25);
        let too_long = "d".repeat(26);
        for (channel, ok) in [
            ("ducks_tv", true),
            ("a", true),
            ("2duck", true),
            (&longest, true),
            (&too_long, false),
            ("", false),
            ("Ducks", false),
            ("du cks", false),
            ("ducks:*", false),
            ("{other}", false),
            ("dücks", false),
        ] {
            assert_eq!(is_channel(channel), ok, "{channel:?}");
        }
        for (cursor, ok) in [
            ("0-0", true),
            ("1718000000000-3", true),
            ("18446744073709551615-18446744073709551615", true),
            ("18446744073709551616-0", false),
            ("1718000000000", false),
            ("-1-0", false),
            ("+1-0", false),
            ("1-", false),
            ("$", false),
            ("", false),
        ] {
            assert_eq!(is_cursor(cursor), ok, "{cursor:?}");
        }
        assert!(check_place("twitch", "ducks").is_ok());
        assert!(check_place("Twitch", "ducks").is_err());
        assert!(check_place("", "ducks").is_err());
    }
}
