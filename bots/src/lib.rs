//! The DUCKS chat bots: thin adapters between a chat platform and the queue. The grammar, the
//! checks against the catalogue and the wording live in `ducks-chat`; this crate receives a
//! platform's requests, submits jobs, and turns the events of its origin back into messages.
//! It touches Redis (through `ducks-queue`) and its platform only.
//!
//! # Layout
//! - `discord/`: the Discord bot ([`discord::run`]), over serenity's gateway client or an HTTP
//!   interactions endpoint, both feeding one handler.
//! - `twitch/`: the Twitch bot ([`twitch::run`]), on twitch-irc, within Twitch's chat limits.

pub mod discord;
pub mod twitch;
