//! # ducks: the one DUCKS binary
//!
//! Thin wiring only: parse arguments, load [`settings::Settings`], start logging, and hand over to
//! a command in [`commands`]. All behaviour lives in the library crates.

mod commands;
mod dev;
mod follow;
mod settings;
mod signals;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
