//! [`ChatCommand`]: the commands people type into a text chat (Twitch): `!imagine …`, `!models`,
//! `!cancel`, and the moderators' `!ducks pause|resume|cancel @user|help`. The prefix and the
//! command words are a channel's to choose ([`CommandWords`]).

use ducks_contract::ValidationError;

use crate::{Imagine, chat_line};

/// The words the commands answer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandWords {
    /// What a command starts with: `!`.
    pub prefix: String,
    pub imagine: String,
    pub models: String,
    pub cancel: String,
    /// The moderators' command and help: `ducks`.
    pub admin: String,
}

impl Default for CommandWords {
    fn default() -> Self {
        Self {
            prefix: "!".into(),
            imagine: "imagine".into(),
            models: "models".into(),
            cancel: "cancel".into(),
            admin: "ducks".into(),
        }
    }
}

/// One chat message read as a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatCommand {
    /// `!imagine a duck --seed 7`: the request, or why it cannot be read.
    Imagine(Result<Imagine, ValidationError>),
    /// `!models`.
    Models,
    /// `!cancel`: the caller's newest unfinished job.
    Cancel,
    /// `!ducks` or `!ducks help`.
    Help,
    /// `!ducks pause`: moderators only.
    Pause,
    /// `!ducks resume`: moderators only.
    Resume,
    /// `!ducks cancel @login`: moderators only; the login lowercased, without `@`.
    CancelUser(String),
    /// `!ducks <something else>`: the words it did not understand.
    UnknownAdmin(String),
}

impl ChatCommand {
    /// `text` as a command, or `None` when it is ordinary chat. Words are matched without
    /// regard to case; `!imagine` needs a space (or the end) after it, so `!imagines` is chat.
    pub fn parse(text: &str, words: &CommandWords) -> Option<ChatCommand> {
        let rest = text.trim_start().strip_prefix(words.prefix.as_str())?;
        let (word, args) = match rest.find(char::is_whitespace) {
            Some(at) => (&rest[..at], rest[at..].trim()),
            None => (rest, ""),
        };
        let is = |expected: &str| word.eq_ignore_ascii_case(expected);
        if is(&words.imagine) {
            Some(ChatCommand::Imagine(Imagine::parse_line(args)))
        } else if is(&words.models) {
            Some(ChatCommand::Models)
        } else if is(&words.cancel) {
            Some(ChatCommand::Cancel)
        } else if is(&words.admin) {
            Some(admin(args))
        } else {
            None
        }
    }

    /// Whether only a channel's moderators and broadcaster may use it.
    pub fn for_moderators(&self) -> bool {
        matches!(
            self,
            ChatCommand::Pause | ChatCommand::Resume | ChatCommand::CancelUser(_)
        )
    }
}

fn admin(args: &str) -> ChatCommand {
    let mut parts = args.split_whitespace();
    let sub = parts.next().unwrap_or("help").to_ascii_lowercase();
    match (sub.as_str(), parts.next()) {
        ("help", _) => ChatCommand::Help,
        ("pause", None) => ChatCommand::Pause,
        ("resume", None) => ChatCommand::Resume,
        ("cancel", Some(login)) => {
            ChatCommand::CancelUser(login.trim_start_matches('@').to_ascii_lowercase())
        }
        _ => ChatCommand::UnknownAdmin(args.chars().take(32).collect()),
    }
}

/// How to write a request, for a reply to one written wrongly.
pub fn imagine_usage(words: &CommandWords) -> String {
    format!(
        "Write it as: {}{} a duck in space [--model ID] [--size WxH] [--steps N] [--seed N]",
        words.prefix, words.imagine
    )
}

/// `!ducks help`: every command in one line.
pub fn help_line(words: &CommandWords) -> String {
    let p = &words.prefix;
    chat_line(&format!(
        "DUCKS draws images: {p}{} <prompt> [--model ID] [--size WxH] [--steps N] [--seed N] · \
         {p}{} lists models · {p}{} stops your last one · moderators: {p}{a} pause, {p}{a} resume, \
         {p}{a} cancel @user",
        words.imagine,
        words.models,
        words.cancel,
        a = words.admin
    ))
}

/// A reply to `user` in one chat line: `@ada <text>`.
pub fn reply_line(user: &str, text: &str) -> String {
    chat_line(&format!("@{user} {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_table() {
        let words = CommandWords::default();
        let imagine = |prompt: &str| {
            Some(ChatCommand::Imagine(Ok(Imagine {
                prompt: prompt.into(),
                ..Imagine::default()
            })))
        };
        let cases: &[(&str, Option<ChatCommand>)] = &[
            ("!imagine a duck", imagine("a duck")),
            ("  !IMAGINE   a duck  ", imagine("a duck")),
            ("!imagine", imagine("")),
            ("!imagines a duck", None),
            ("imagine a duck", None),
            ("hello !imagine a duck", None),
            ("!models", Some(ChatCommand::Models)),
            ("!cancel", Some(ChatCommand::Cancel)),
            ("!ducks", Some(ChatCommand::Help)),
            ("!ducks help", Some(ChatCommand::Help)),
            ("!ducks pause", Some(ChatCommand::Pause)),
            ("!Ducks RESUME", Some(ChatCommand::Resume)),
            (
                "!ducks cancel @Mallard",
                Some(ChatCommand::CancelUser("mallard".into())),
            ),
            (
                "!ducks cancel",
                Some(ChatCommand::UnknownAdmin("cancel".into())),
            ),
            (
                "!ducks dance",
                Some(ChatCommand::UnknownAdmin("dance".into())),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(&ChatCommand::parse(text, &words), expected, "{text}");
        }
        assert!(matches!(
            ChatCommand::parse("!imagine a duck --steps many", &words),
            Some(ChatCommand::Imagine(Err(_)))
        ));
    }

    #[test]
    fn words_are_configurable() {
        let words = CommandWords {
            prefix: "?".into(),
            imagine: "draw".into(),
            ..CommandWords::default()
        };
        assert!(matches!(
            ChatCommand::parse("?draw a duck", &words),
            Some(ChatCommand::Imagine(Ok(_)))
        ));
        assert_eq!(ChatCommand::parse("!imagine a duck", &words), None);
        assert!(imagine_usage(&words).starts_with("Write it as: ?draw a duck"));
    }

    #[test]
    fn help_and_replies_fit_a_chat_line() {
        let words = CommandWords::default();
        insta::assert_snapshot!(help_line(&words));
        let long = "x".repeat(600);
        assert!(reply_line("ada", &long).chars().count() <= crate::MAX_LINE_CHARS);
        assert!(ChatCommand::CancelUser("a".into()).for_moderators());
        assert!(!ChatCommand::Cancel.for_moderators());
    }
}
