//! The front ends' shared core: what a person asked for, checked against the model catalogue,
//! and a job's events rendered into what a person reads. Pure: no I/O, no platform client, so
//! the Discord and Twitch bots and the HTTP API share one grammar and one wording, and every
//! sentence is pinned by a table or snapshot test.
//!
//! # Layout
//! - `command.rs`: [`Imagine`], one image request, from a platform's typed options or from one
//!   line of chat text (`a duck --size 512x768 --seed 7`), and the [`JobRequest`] it becomes.
//! - `catalogue.rs`: what autocomplete offers: models filtered by what is typed, a model's sizes,
//!   and the GPU a model needs in words.
//! - `chat_command.rs`: [`ChatCommand`], a line of text chat read as a command (`!imagine …`,
//!   `!models`, `!cancel`, the moderators' `!ducks …`) with configurable words.
//! - `line.rs`: the same as one chat line for Twitch: at most 500 characters, never read as a
//!   chat command, acknowledgements merged when the sending budget is short.
//! - `render.rs`: a job's state in sentences: queue place, cold-start phases, a progress bar,
//!   failures with what to do next, the receipt (waits, generation time, GPU-seconds), and text
//!   shortened visibly to a platform's field limits.
//!
//! [`JobRequest`]: ducks_contract::JobRequest

mod catalogue;
mod chat_command;
mod command;
mod line;
mod render;

pub use catalogue::{Choice, MAX_CHOICES, describe_gpu, model_choices, size_choices};
pub use chat_command::{ChatCommand, CommandWords, help_line, imagine_usage, reply_line};
pub use command::Imagine;
pub use line::{
    MAX_LINE_CHARS, chat_line, ended_line, merged_queued_line, models_line, queued_line,
    result_line,
};
pub use render::{
    Summary, duration, failure_sentence, phase_sentence, progress_bar, receipt, shorten,
    status_line,
};
