//! `[twitch]` (`DUCKS_TWITCH__*`): the bot's account, the channels it joins and each channel's
//! rules, and how it paces its messages within Twitch's limits.

use std::collections::BTreeMap;
use std::time::Duration;

use ducks_chat::CommandWords;
use ducks_contract::Secret;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwitchConfig {
    /// The bot account's login (its user name, lowercase).
    pub login: String,
    /// The account's user access token with the `chat:read` and `chat:edit` scopes, with or
    /// without `oauth:` in front.
    pub token: Secret,
    /// The token's refresh token: with `client_id` and `client_secret`, the bot refreshes the
    /// access token before it expires and keeps it in Redis, where every replica finds it.
    pub refresh_token: Secret,
    /// The Twitch application's client id and secret (dev.twitch.tv → Your Console).
    pub client_id: String,
    pub client_secret: Secret,
    /// Where tokens are refreshed. Tests point it at a local server.
    pub token_url: String,
    /// Twitch chat's address: `tls://host:port` or, for a local test server only,
    /// `tcp://host:port`.
    pub server: String,
    /// The channels to join, comma-separated logins: `ducks, mallard`.
    pub channels: String,
    /// The command prefix and words: `!imagine`, `!models`, `!cancel`, `!ducks`.
    pub prefix: String,
    pub imagine_command: String,
    pub models_command: String,
    pub cancel_command: String,
    pub admin_command: String,
    /// The rules of every channel, unless the channel's own entry in `channel` says otherwise.
    pub defaults: ChannelSettings,
    /// One channel's rules by login (`[twitch.channel.mallard]`,
    /// `DUCKS_TWITCH__CHANNEL__MALLARD__ALLOWED`); unset fields come from `defaults`.
    pub channel: BTreeMap<String, ChannelSettings>,
    /// The sending budget: at most `budget_limit` messages per account and channel in any
    /// `budget_window_ms`, or `budget_moderator_limit` where the bot moderates (Twitch: 20 or
    /// 100 per 30 s, and 30 minutes locked out for going over).
    pub budget_window_ms: u64,
    pub budget_limit: u32,
    pub budget_moderator_limit: u32,
    /// How long to wait for Twitch to accept (USERSTATE) or refuse (NOTICE) a message before
    /// sending it again.
    pub confirm_within_ms: u64,
    /// An acknowledgement or refusal still unsent after this long is dropped: the result matters
    /// more, and a refusal told a minute late only adds noise to a busy chat.
    pub ack_max_age_secs: u64,
    /// Where the bot serves `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    /// This replica's name in the event consumer group; empty: the host name and process id.
    pub consumer: String,
}

impl Default for TwitchConfig {
    fn default() -> Self {
        Self {
            login: String::new(),
            token: Secret::default(),
            refresh_token: Secret::default(),
            client_id: String::new(),
            client_secret: Secret::default(),
            token_url: "https://id.twitch.tv/oauth2/token".into(),
            server: "tls://irc.chat.twitch.tv:6697".into(),
            channels: String::new(),
            prefix: "!".into(),
            imagine_command: "imagine".into(),
            models_command: "models".into(),
            cancel_command: "cancel".into(),
            admin_command: "ducks".into(),
            defaults: ChannelSettings::default(),
            channel: BTreeMap::new(),
            budget_window_ms: 30_000,
            budget_limit: 20,
            budget_moderator_limit: 100,
            confirm_within_ms: 3_000,
            ack_max_age_secs: 20,
            listen: "127.0.0.1:8092".into(),
            consumer: String::new(),
        }
    }
}

/// One channel's rules; unset fields fall back to `twitch.defaults`, then to the built-in ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    /// Who may ask for images: `everyone`, `subscribers`, `vips` or `moderators` (each includes
    /// the ones after it; the broadcaster always may).
    pub allowed: Option<Audience>,
    /// The least time between two requests of one viewer (moderators are exempt). Built in: 30.
    pub user_cooldown_secs: Option<u64>,
    /// The least time between two requests in the channel. Built in: 0.
    pub channel_cooldown_secs: Option<u64>,
    /// Unfinished jobs the whole channel may have at once (a raid cannot queue a thousand);
    /// unset: `queue.scopes` decides (built in: 10 per channel, and 30 new ones a minute).
    pub max_jobs: Option<u32>,
    /// Comma-separated words or phrases that refuse a prompt, matched without regard to case.
    pub blocked_words: Option<String>,
}

/// Who may use `!imagine` in a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    #[default]
    Everyone,
    Subscribers,
    Vips,
    Moderators,
}

/// What a chatter is in a channel, from their badges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    pub broadcaster: bool,
    pub moderator: bool,
    pub vip: bool,
    pub subscriber: bool,
}

impl Standing {
    /// From the `badges` tag's names: `broadcaster`, `moderator`, `vip`, `subscriber`, `founder`.
    pub fn from_badges<'a>(badges: impl IntoIterator<Item = &'a str>) -> Standing {
        let mut standing = Standing::default();
        for badge in badges {
            match badge {
                "broadcaster" => standing.broadcaster = true,
                "moderator" => standing.moderator = true,
                "vip" => standing.vip = true,
                "subscriber" | "founder" => standing.subscriber = true,
                _ => {}
            }
        }
        standing
    }

    /// A moderator of the channel, or its broadcaster.
    pub fn moderates(&self) -> bool {
        self.broadcaster || self.moderator
    }
}

impl Audience {
    pub fn admits(self, standing: &Standing) -> bool {
        standing.moderates()
            || match self {
                Audience::Everyone => true,
                Audience::Subscribers => standing.subscriber || standing.vip,
                Audience::Vips => standing.vip,
                Audience::Moderators => false,
            }
    }

    /// Why someone outside the audience is refused.
    pub fn refusal(self) -> &'static str {
        match self {
            Audience::Everyone => "",
            Audience::Subscribers => "images are for subscribers in this channel.",
            Audience::Vips => "images are for VIPs in this channel.",
            Audience::Moderators => "images are for moderators in this channel.",
        }
    }
}

/// A channel's rules with every field settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRules {
    pub allowed: Audience,
    pub user_cooldown: Duration,
    pub channel_cooldown: Duration,
    pub max_jobs: Option<u32>,
    /// Lowercased.
    pub blocked_words: Vec<String>,
}

impl ChannelRules {
    /// The first blocked word or phrase `prompt` contains.
    pub fn blocked_word(&self, prompt: &str) -> Option<&str> {
        let prompt = prompt.to_lowercase();
        self.blocked_words
            .iter()
            .find(|word| prompt.contains(word.as_str()))
            .map(String::as_str)
    }
}

impl TwitchConfig {
    /// The channels to join: lowercase logins without `#`.
    pub fn channel_list(&self) -> Vec<String> {
        let mut channels: Vec<String> = self
            .channels
            .split(',')
            .map(|c| c.trim().trim_start_matches('#').to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        channels.sort();
        channels.dedup();
        channels
    }

    pub fn words(&self) -> CommandWords {
        CommandWords {
            prefix: self.prefix.clone(),
            imagine: self.imagine_command.clone(),
            models: self.models_command.clone(),
            cancel: self.cancel_command.clone(),
            admin: self.admin_command.clone(),
        }
    }

    /// `channel`'s rules: its own entry, then the defaults, then the built-in ones.
    pub fn rules(&self, channel: &str) -> ChannelRules {
        let own = self.channel.get(channel).cloned().unwrap_or_default();
        let defaults = &self.defaults;
        let blocked = own
            .blocked_words
            .or_else(|| defaults.blocked_words.clone())
            .unwrap_or_default();
        ChannelRules {
            allowed: own.allowed.or(defaults.allowed).unwrap_or_default(),
            user_cooldown: Duration::from_secs(
                own.user_cooldown_secs
                    .or(defaults.user_cooldown_secs)
                    .unwrap_or(30),
            ),
            channel_cooldown: Duration::from_secs(
                own.channel_cooldown_secs
                    .or(defaults.channel_cooldown_secs)
                    .unwrap_or(0),
            ),
            max_jobs: own.max_jobs.or(defaults.max_jobs),
            blocked_words: blocked
                .split(',')
                .map(|w| w.trim().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }

    /// The access token without `oauth:`.
    pub fn bare_token(&self) -> &str {
        let token = self.token.expose().trim();
        token.strip_prefix("oauth:").unwrap_or(token)
    }

    /// Whether the bot refreshes its token itself.
    pub fn refreshes(&self) -> bool {
        !self.refresh_token.is_empty()
    }

    /// Refuses a configuration the bot cannot run with, naming the setting to fix.
    pub fn check(&self) -> Result<(), String> {
        if self.login.trim().is_empty() {
            return Err(
                "Set twitch.login (DUCKS_TWITCH__LOGIN) to the bot account's login.".into(),
            );
        }
        if self.token.is_empty() && !self.refreshes() {
            return Err(
                "Set twitch.token (DUCKS_TWITCH__TOKEN) to the bot account's user access token (scopes chat:read and chat:edit)."
                    .into(),
            );
        }
        if self.refreshes() && (self.client_id.is_empty() || self.client_secret.is_empty()) {
            return Err(
                "twitch.refresh_token is set: set twitch.client_id and twitch.client_secret too, which refreshing needs."
                    .into(),
            );
        }
        if self.channel_list().is_empty() {
            return Err("Set twitch.channels (DUCKS_TWITCH__CHANNELS) to the channels to join, comma-separated.".into());
        }
        if let Some(bad) = self
            .channel_list()
            .into_iter()
            .find(|c| c.len() > 25 || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(format!(
                "twitch.channels: `{bad}` is not a Twitch login (letters, digits and _, at most 25)."
            ));
        }
        if self.prefix.is_empty() || self.prefix.chars().any(char::is_whitespace) {
            return Err(
                "twitch.prefix must be one or more characters without spaces, e.g. `!`.".into(),
            );
        }
        if self.budget_limit == 0 || self.budget_moderator_limit == 0 || self.budget_window_ms == 0
        {
            return Err(
                "twitch.budget_limit, budget_moderator_limit and budget_window_ms must be above 0."
                    .into(),
            );
        }
        if self.budget_limit > 20 && self.budget_window_ms >= 30_000 {
            return Err("twitch.budget_limit above 20 per 30 s gets the account locked out of chat for 30 minutes.".into());
        }
        Server::parse(&self.server)?;
        Ok(())
    }
}

/// Where Twitch chat is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Server {
    pub fn parse(address: &str) -> Result<Server, String> {
        let (tls, rest) = match address.split_once("://") {
            Some(("tls", rest)) => (true, rest),
            Some(("tcp", rest)) => (false, rest),
            None => (true, address),
            Some((scheme, _)) => {
                return Err(format!(
                    "twitch.server: `{scheme}://` is not understood: write tls://host:port (or tcp://host:port for a local test server)."
                ));
            }
        };
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse().ok()?)))
            .filter(|(host, _)| !host.is_empty())
            .ok_or_else(|| format!("twitch.server: `{address}` needs a host and a port, e.g. tls://irc.chat.twitch.tv:6697."))?;
        Ok(Server {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_table() {
        let viewer = Standing::default();
        let sub = Standing::from_badges(["subscriber"]);
        let founder = Standing::from_badges(["founder", "premium"]);
        let vip = Standing::from_badges(["vip"]);
        let moderator = Standing::from_badges(["moderator"]);
        let broadcaster = Standing::from_badges(["broadcaster", "subscriber"]);
        let cases = [
            (Audience::Everyone, [true, true, true, true, true, true]),
            (Audience::Subscribers, [false, true, true, true, true, true]),
            (Audience::Vips, [false, false, false, true, true, true]),
            (
                Audience::Moderators,
                [false, false, false, false, true, true],
            ),
        ];
        for (audience, expected) in cases {
            let got =
                [viewer, sub, founder, vip, moderator, broadcaster].map(|s| audience.admits(&s));
            assert_eq!(got, expected, "{audience:?}");
        }
    }

    #[test]
    fn rules_fall_back_from_the_channel_to_the_defaults() {
        let mut config = TwitchConfig {
            channels: "Ducks, #mallard,ducks".into(),
            ..TwitchConfig::default()
        };
        config.defaults.blocked_words = Some("Gore, very bad".into());
        config.defaults.user_cooldown_secs = Some(10);
        config.channel.insert(
            "mallard".into(),
            ChannelSettings {
                allowed: Some(Audience::Subscribers),
                max_jobs: Some(3),
                ..ChannelSettings::default()
            },
        );
        assert_eq!(config.channel_list(), ["ducks", "mallard"]);
        let mallard = config.rules("mallard");
        assert_eq!(mallard.allowed, Audience::Subscribers);
        assert_eq!(mallard.max_jobs, Some(3));
        assert_eq!(mallard.user_cooldown, Duration::from_secs(10));
        assert_eq!(mallard.blocked_word("A VERY BAD duck"), Some("very bad"));
        assert_eq!(mallard.blocked_word("a good duck"), None);
        let ducks = config.rules("ducks");
        assert_eq!(ducks.allowed, Audience::Everyone);
        assert_eq!(ducks.channel_cooldown, Duration::ZERO);
    }

    #[test]
    fn servers_and_checks() {
        assert_eq!(
            Server::parse("tls://irc.chat.twitch.tv:6697").unwrap(),
            Server {
                host: "irc.chat.twitch.tv".into(),
                port: 6697,
                tls: true
            }
        );
        assert_eq!(
            Server::parse("tcp://127.0.0.1:4000").unwrap(),
            Server {
                host: "127.0.0.1".into(),
                port: 4000,
                tls: false
            }
        );
        assert!(Server::parse("irc://x:1").unwrap_err().contains("irc://"));
        assert!(Server::parse("tls://nohost").is_err());
        let good = TwitchConfig {
            login: "duckbot".into(),
            token: Secret::new("oauth:abc"),
            channels: "ducks".into(),
            ..TwitchConfig::default()
        };
        assert_eq!(good.check(), Ok(()));
        assert_eq!(good.bare_token(), "abc");
        let no_channels = TwitchConfig {
            channels: String::new(),
            ..good.clone()
        };
        assert!(no_channels.check().unwrap_err().contains("twitch.channels"));
        let bad_channel = TwitchConfig {
            channels: "a b".into(),
            ..good.clone()
        };
        assert!(bad_channel.check().unwrap_err().contains("`a b`"));
        let too_fast = TwitchConfig {
            budget_limit: 30,
            ..good.clone()
        };
        assert!(too_fast.check().unwrap_err().contains("locked out"));
        let half_refresh = TwitchConfig {
            refresh_token: Secret::new("r"),
            ..good
        };
        assert!(half_refresh.check().unwrap_err().contains("client_id"));
    }
}
