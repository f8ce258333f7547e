//! The JSON Discord sends and answers with, complete as Discord sends it today: interactions
//! (slash commands, autocomplete, buttons, pings), users, messages, commands, the application.
//!
//! serenity 0.12.5 refuses an interaction that lacks a field Discord always sends now
//! (`application_id`, `channel_id`, `token`, `version`, `locale`, `entitlements`,
//! `attachment_size_limit`, `member.deaf`/`mute`/`flags` in guilds, `message` on a component
//! interaction ...); over the gateway such an INTERACTION_CREATE silently becomes
//! `Event::Unknown`. So every builder here checks its own output against serenity's
//! `Interaction` before handing it out, and panics with serenity's complaint if it does not parse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

/// The simulated application's id, which is also its bot user's id (as for every application
/// created since 2020).
pub const APPLICATION_ID: u64 = 1_187_001_000_000_000_001;

/// The bot token the simulator accepts (`Authorization: Bot <token>` on bot routes, IDENTIFY and
/// RESUME on the gateway). Any other token gets 401 / close code 4004.
pub const BOT_TOKEN: &str =
    "MTE4NzAwMTAwMDAwMDAwMDAwMQ.GdUcKs.simulated-discord-bot-token-for-ducks-tests";

/// The bot user's name.
pub const BOT_USERNAME: &str = "DUCKS";

/// `attachment_size_limit` of every interaction: 10 MiB, Discord's default for a guild without
/// boosts. Uploads over it answer 413 (code 40005).
pub const ATTACHMENT_SIZE_LIMIT: u64 = 10 * 1024 * 1024;

/// `app_permissions` of every interaction: what a bot invited with the usual scopes may do in the
/// channel (VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY,
/// USE_EXTERNAL_EMOJIS, ADD_REACTIONS, USE_APPLICATION_COMMANDS, SEND_MESSAGES_IN_THREADS).
pub const APP_PERMISSIONS: u64 = (1 << 10)
    | (1 << 11)
    | (1 << 14)
    | (1 << 15)
    | (1 << 16)
    | (1 << 18)
    | (1 << 6)
    | (1 << 31)
    | (1 << 38);

/// The permissions of an ordinary member (the `@everyone` defaults of a new server), for
/// [`Actor::in_guild`]. Add `MANAGE_MESSAGES` (`1 << 13`) for a moderator.
pub const MEMBER_PERMISSIONS: u64 = APP_PERMISSIONS | (1 << 0) | (1 << 20) | (1 << 21) | (1 << 26);

/// `MANAGE_MESSAGES`, the permission moderators have.
pub const MANAGE_MESSAGES: u64 = 1 << 13;

/// The application's flags (GATEWAY_MESSAGE_CONTENT_LIMITED, APPLICATION_COMMAND_BADGE).
pub(crate) const APPLICATION_FLAGS: u64 = (1 << 19) | (1 << 23);

/// The milliseconds of 2015-01-01T00:00:00Z, the start of Discord's snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Message flags.
pub(crate) const FLAG_SUPPRESS_EMBEDS: u64 = 1 << 2;
pub(crate) const FLAG_EPHEMERAL: u64 = 1 << 6;
pub(crate) const FLAG_LOADING: u64 = 1 << 7;
pub(crate) const FLAG_SUPPRESS_NOTIFICATIONS: u64 = 1 << 12;
pub(crate) const FLAG_COMPONENTS_V2: u64 = 1 << 15;

/// Who triggers an interaction, and where.
///
/// With a `guild_id` the interaction carries `member` (with `permissions`) and `guild_id`, as in
/// a server channel; without one it carries `user`, as in a DM with the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub user_id: u64,
    pub username: String,
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    /// The member's permissions in the channel (a bit set: `MANAGE_MESSAGES` is `1 << 13`);
    /// unused in DMs.
    pub permissions: u64,
}

impl Actor {
    /// An ordinary member ([`MEMBER_PERMISSIONS`]) in a server channel.
    pub fn in_guild(user_id: u64, username: &str, guild_id: u64, channel_id: u64) -> Actor {
        Actor {
            user_id,
            username: username.to_owned(),
            guild_id: Some(guild_id),
            channel_id,
            permissions: MEMBER_PERMISSIONS,
        }
    }

    /// A user in their DM channel with the bot.
    pub fn in_dm(user_id: u64, username: &str, channel_id: u64) -> Actor {
        Actor {
            user_id,
            username: username.to_owned(),
            guild_id: None,
            channel_id,
            permissions: MEMBER_PERMISSIONS,
        }
    }

    /// The same actor with these member permissions.
    pub fn with_permissions(mut self, permissions: u64) -> Actor {
        self.permissions = permissions;
        self
    }
}

/// An interaction as Discord delivers it (over the gateway as INTERACTION_CREATE's `d`, or as the
/// body of a POST to the bot's endpoint), with its id and token for the test's own lookups.
#[derive(Clone, Debug, PartialEq)]
pub struct InteractionPayload {
    pub json: Value,
    pub id: u64,
    pub token: String,
}

/// A fresh snowflake: milliseconds since Discord's epoch, then a process-wide increment, so ids
/// made later sort later (as Discord's do).
pub fn snowflake() -> u64 {
    static INCREMENT: AtomicU64 = AtomicU64::new(0);
    let ms = unix_ms().saturating_sub(DISCORD_EPOCH_MS);
    (ms << 22) | (INCREMENT.fetch_add(1, Ordering::Relaxed) & 0x3F_FFFF)
}

/// The id [`slash_command`] puts in `data.id` and the simulator gives a registered command of that
/// name (global or in a guild), so the two agree.
pub fn command_id(name: &str) -> u64 {
    // FNV-1a, folded into the low bits of a snowflake from 2023.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (1_100_000_000_000u64 << 22) | (hash & 0x3F_FFFF)
}

/// A CHAT_INPUT command (interaction type 2, `data.type` 1) named `name`, with options given as
/// `(name, value)`: a JSON string is a STRING option (type 3), an integer an INTEGER (4), another
/// number a NUMBER (10), a boolean a BOOLEAN (5).
///
/// # Panics
/// If an option value is of another JSON type.
pub fn slash_command(name: &str, options: &[(&str, Value)], actor: &Actor) -> InteractionPayload {
    let options: Vec<Value> = options
        .iter()
        .map(|(option, value)| option_json(option, value, false))
        .collect();
    interaction(2, command_data(name, options), None, actor)
}

/// An APPLICATION_COMMAND_AUTOCOMPLETE interaction (type 4) for command `name` while the user
/// types into option `focused`: that option has `focused: true` and, as Discord sends it, its
/// partial input as a string whatever the option's type.
///
/// # Panics
/// If `focused` is not among `options`, or an option value is not a string, number or boolean.
pub fn autocomplete(
    name: &str,
    options: &[(&str, Value)],
    focused: &str,
    actor: &Actor,
) -> InteractionPayload {
    assert!(
        options.iter().any(|(option, _)| *option == focused),
        "autocomplete: the focused option {focused:?} is not among the options {:?}",
        options.iter().map(|(option, _)| option).collect::<Vec<_>>()
    );
    let options: Vec<Value> = options
        .iter()
        .map(|(option, value)| option_json(option, value, *option == focused))
        .collect();
    interaction(4, command_data(name, options), None, actor)
}

/// A MESSAGE_COMPONENT interaction (type 3) for a click on the button `custom_id` of `message`
/// (a message object as the simulator returns it, e.g. [`crate::DiscordSim::original`]).
///
/// # Panics
/// If `message` has no `id` (serenity needs the whole message).
pub fn button(custom_id: &str, message: &Value, actor: &Actor) -> InteractionPayload {
    assert!(
        message.get("id").is_some(),
        "button: the message the button is on has no id: {message}"
    );
    let data = json!({
        "custom_id": custom_id,
        "component_type": 2,
    });
    interaction(3, data, Some(message.clone()), actor)
}

/// A PING (type 1), which Discord sends to an HTTP interactions endpoint when its URL is saved
/// and now and then afterwards; the endpoint must answer `{"type": 1}`.
pub fn ping() -> InteractionPayload {
    let id = snowflake();
    let token = interaction_token(id);
    let json = json!({
        "id": id.to_string(),
        "application_id": APPLICATION_ID.to_string(),
        "type": 1,
        "token": token,
        "version": 1,
        "user": user_json(643_945_264_868_098_049, "discord", false),
        "entitlements": [],
        "authorizing_integration_owners": {},
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    });
    checked(InteractionPayload { json, id, token })
}

fn command_data(name: &str, options: Vec<Value>) -> Value {
    let mut data = json!({
        "id": command_id(name).to_string(),
        "name": name,
        "type": 1,
    });
    if !options.is_empty() {
        data["options"] = Value::Array(options);
    }
    data
}

fn option_json(name: &str, value: &Value, focused: bool) -> Value {
    let kind = match value {
        Value::String(_) => 3,
        Value::Number(number) if number.is_i64() || number.is_u64() => 4,
        Value::Number(_) => 10,
        Value::Bool(_) => 5,
        other => panic!(
            "option {name:?}: only strings, integers, numbers and booleans are supported, not {other}"
        ),
    };
    if focused {
        let partial = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        json!({"name": name, "type": kind, "value": partial, "focused": true})
    } else {
        json!({"name": name, "type": kind, "value": value})
    }
}

/// The fields every interaction but a PING has.
fn interaction(kind: u8, data: Value, message: Option<Value>, actor: &Actor) -> InteractionPayload {
    let id = snowflake();
    let token = interaction_token(id);
    let user = user_json(actor.user_id, &actor.username, false);
    let mut json = json!({
        "id": id.to_string(),
        "application_id": APPLICATION_ID.to_string(),
        "type": kind,
        "data": data,
        "channel_id": actor.channel_id.to_string(),
        "token": token,
        "version": 1,
        "app_permissions": APP_PERMISSIONS.to_string(),
        "locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    });
    match actor.guild_id {
        Some(guild) => {
            json["guild_id"] = json!(guild.to_string());
            json["guild"] = json!({
                "id": guild.to_string(),
                "locale": "en-US",
                "features": [],
            });
            json["guild_locale"] = json!("en-US");
            json["member"] = json!({
                "user": user,
                "roles": [],
                "premium_since": null,
                "permissions": actor.permissions.to_string(),
                "pending": false,
                "nick": null,
                "mute": false,
                "joined_at": rfc3339(SystemTime::now() - std::time::Duration::from_secs(86_400)),
                "flags": 0,
                "deaf": false,
                "communication_disabled_until": null,
                "unusual_dm_activity_until": null,
                "banner": null,
                "avatar": null,
                "avatar_decoration_data": null,
            });
            json["channel"] = json!({
                "id": actor.channel_id.to_string(),
                "type": 0,
                "guild_id": guild.to_string(),
                "name": "general",
                "position": 0,
                "parent_id": null,
                "topic": null,
                "nsfw": false,
                "last_message_id": null,
                "rate_limit_per_user": 0,
                "flags": 0,
                "permissions": actor.permissions.to_string(),
            });
            json["authorizing_integration_owners"] = json!({"0": guild.to_string()});
            json["context"] = json!(0);
        }
        None => {
            json["user"] = user.clone();
            json["channel"] = json!({
                "id": actor.channel_id.to_string(),
                "type": 1,
                "last_message_id": null,
                "flags": 0,
                "recipients": [user],
            });
            // "0" as the guild install's value: a guild-installed app invoked in a DM with its
            // bot user.
            json["authorizing_integration_owners"] = json!({"0": "0"});
            json["context"] = json!(1);
        }
    }
    if let Some(message) = message {
        json["message"] = message;
    }
    checked(InteractionPayload { json, id, token })
}

/// Panics unless serenity parses the payload as an `Interaction`.
fn checked(payload: InteractionPayload) -> InteractionPayload {
    if let Err(err) =
        serde_json::from_value::<serenity::model::application::Interaction>(payload.json.clone())
    {
        panic!(
            "the Discord simulator built an interaction serenity cannot parse ({err}); \
             Discord always sends the fields serenity asks for, so fix the builder: {}",
            payload.json
        );
    }
    payload
}

/// A long random token like Discord's interaction tokens (URL-safe base64 of
/// `interaction:<id>:<secret>`).
fn interaction_token(id: u64) -> String {
    let secret: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(128)
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("interaction:{id}:{secret}"))
}

/// A user object as Discord sends it in interactions and messages (new-style username, no
/// discriminator: `"0"`).
pub(crate) fn user_json(id: u64, username: &str, bot: bool) -> Value {
    let mut user = json!({
        "id": id.to_string(),
        "username": username,
        "discriminator": "0",
        "global_name": if bot { Value::Null } else { json!(username) },
        "avatar": null,
        "avatar_decoration_data": null,
        "collectibles": null,
        "primary_guild": null,
        "public_flags": 0,
    });
    if bot {
        user["bot"] = json!(true);
    }
    user
}

/// The bot user as `GET /users/@me` and READY describe it.
pub(crate) fn current_user_json() -> Value {
    let mut user = user_json(APPLICATION_ID, BOT_USERNAME, true);
    user["verified"] = json!(true);
    user["mfa_enabled"] = json!(false);
    user["email"] = Value::Null;
    user["flags"] = json!(0);
    user["locale"] = json!("en-US");
    user["premium_type"] = json!(0);
    user["banner"] = Value::Null;
    user["accent_color"] = Value::Null;
    user
}

/// `GET /oauth2/applications/@me`.
pub(crate) fn application_json(verify_key: &str) -> Value {
    json!({
        "id": APPLICATION_ID.to_string(),
        "name": BOT_USERNAME,
        "icon": null,
        "description": "DUCKS image generation",
        "summary": "",
        "type": null,
        "hook": true,
        "bot_public": true,
        "bot_require_code_grant": false,
        "verify_key": verify_key,
        "flags": APPLICATION_FLAGS,
        "owner": user_json(1_100_000_000_000_000_001, "ducks-owner", false),
        "team": null,
        "rpc_origins": [],
        "tags": [],
        "redirect_uris": [],
        "interactions_endpoint_url": null,
        "role_connections_verification_url": null,
        "integration_types_config": {"0": {}, "1": {}},
        "approximate_guild_count": 1,
        "approximate_user_install_count": 0,
        "bot": user_json(APPLICATION_ID, BOT_USERNAME, true),
    })
}

/// Now as Discord writes timestamps: `2024-05-01T12:34:56.789012+00:00`.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub(crate) fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Howard Hinnant's days-to-civil-date algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

pub(crate) fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A snowflake or number field as `u64` (Discord sends ids as strings).
pub(crate) fn id_of(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
