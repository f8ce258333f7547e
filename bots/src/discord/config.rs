//! `[discord]` (`DUCKS_DISCORD__*`): how `ducks bots discord` reaches Discord and how it paces
//! its messages.

use ducks_contract::Secret;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordConfig {
    /// The bot token (Developer Portal → Bot → Reset Token).
    pub token: Secret,
    /// The application id (Developer Portal → General Information).
    pub application_id: u64,
    /// The application's public key, hex (General Information): the HTTP interactions endpoint
    /// checks every request's Ed25519 signature with it.
    pub public_key: String,
    /// How interactions arrive: `gateway` (a websocket the bot opens; no public URL needed; run
    /// one replica) or `http` (Discord posts to `/interactions` behind your ingress; run many).
    pub mode: ConnectMode,
    /// Where the bot serves `/healthz`, `/readyz`, `/metrics` and, in `http` mode,
    /// `/interactions`.
    pub listen: String,
    /// Discord's API base URL. Tests point it at a local Discord simulator.
    pub api_base: String,
    /// The least time between two progress edits of one job's message.
    pub progress_interval_ms: u64,
    /// How often a queued job's place in line is read again and shown.
    pub position_refresh_secs: u64,
    /// How long the first answer may wait for Redis before the bot defers (Discord fails an
    /// interaction that gets no answer within 3 seconds).
    pub answer_within_ms: u64,
    /// This replica's name in the event consumer group; empty: the host name and process id.
    pub consumer: String,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            application_id: 0,
            public_key: String::new(),
            mode: ConnectMode::Gateway,
            listen: "127.0.0.1:8091".into(),
            api_base: "https://discord.com".into(),
            progress_interval_ms: 1_500,
            position_refresh_secs: 10,
            answer_within_ms: 1_500,
            consumer: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectMode {
    Gateway,
    Http,
}

impl DiscordConfig {
    /// Refuses a configuration the bot cannot run with, naming the setting to fix.
    pub fn check(&self) -> Result<(), String> {
        if self.token.is_empty() {
            return Err("Set discord.token (DUCKS_DISCORD__TOKEN) to the bot's token.".into());
        }
        if self.application_id == 0 {
            return Err(
                "Set discord.application_id (DUCKS_DISCORD__APPLICATION_ID) to the application's id."
                    .into(),
            );
        }
        if self.answer_within_ms >= 2_500 {
            return Err(
                "discord.answer_within_ms must be under 2500: Discord fails an interaction not answered within 3 s."
                    .into(),
            );
        }
        if self.mode == ConnectMode::Http {
            self.public_key_bytes()?;
        }
        Ok(())
    }

    /// The public key as the 32 bytes the verifier takes.
    pub fn public_key_bytes(&self) -> Result<[u8; 32], String> {
        hex::decode(self.public_key.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| {
                "Set discord.public_key (DUCKS_DISCORD__PUBLIC_KEY) to the application's public key: 64 hex digits."
                    .into()
            })
    }
}
