//! # ducks: the one DUCKS binary
//!
//! Thin wiring only: parse arguments, load [`settings::Settings`], start logging, and hand over to
//! a command in [`commands`]. All behaviour lives in the library crates.

mod commands;
mod dev;
mod follow;
mod settings;
mod signals;

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, Settings};

/// What a command can fail with: its message is printed as is.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "ducks",
    version,
    about = "Chat-driven serverless GPU image generation."
)]
struct Cli {
    /// A TOML configuration file (default: ./ducks.toml when present).
    #[arg(long, global = true, env = "DUCKS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format; overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: commands::Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    // The demo's output is for a person reading along: only problems are logged unless asked.
    let default_level = match cli.command {
        commands::Command::Demo(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format.unwrap_or(settings.log.format), default_level);
    match commands::run(cli.command, settings).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let colour = log_colour(
        format,
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines carry colour codes: only text lines, only to a terminal (a file or a log
/// collector would keep the codes as noise), and not when `NO_COLOR` is set to anything
/// (<https://no-color.org>: an empty value does not count).
fn log_colour(format: LogFormat, stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    format == LogFormat::Text && stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_text_on_a_terminal_without_no_color() {
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        for (format, terminal, no_color, colour) in [
            (LogFormat::Text, true, None, true),
            (LogFormat::Text, true, empty, true),
            (LogFormat::Text, true, set, false),
            (LogFormat::Text, true, Some(OsStr::new("0")), false),
            (LogFormat::Text, false, None, false),
            (LogFormat::Text, false, empty, false),
            (LogFormat::Json, true, None, false),
            (LogFormat::Json, false, None, false),
        ] {
            assert_eq!(
                log_colour(format, terminal, no_color),
                colour,
                "{format:?}, terminal: {terminal}, NO_COLOR: {no_color:?}"
            );
        }
    }
}
