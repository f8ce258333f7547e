//! One file per command; [`Command`] gathers them and [`run`] dispatches.

mod api;
mod bots;
mod cancel;
mod config;
mod demo;
mod dev;
mod models;
mod runner;
mod status;
mod submit;
mod worker;

use crate::settings::Settings;

use crate::Error;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Queue an image job; with --wait, follow it to the link and save the image.
    Submit(submit::Args),
    /// Show what the queue knows of a job.
    Status(status::Args),
    /// Cancel a job: a queued one never starts, a running one is stopped.
    Cancel(cancel::Args),
    /// Print the effective configuration (secrets redacted).
    Config,
    /// The model catalogue in S3 (a table, unless a subcommand says otherwise).
    Models {
        #[command(subcommand)]
        command: Option<models::Command>,
    },
    /// Take jobs from the queue and launch one runner per job, until SIGTERM or SIGINT.
    Worker,
    /// Serve the HTTP API until SIGTERM or SIGINT; `ducks api keys …` manages its keys.
    Api {
        #[command(subcommand)]
        command: Option<api::Command>,
    },
    /// The chat bots: `ducks bots discord` and `ducks bots twitch`.
    Bots {
        #[command(subcommand)]
        command: bots::Command,
    },
    /// Run one job as a GPU pod does: everything from the environment (docs/runner-contract.md).
    Runner,
    /// Run the whole stack on this machine (Redis, S3, a worker, tiny-sd) until Ctrl-C.
    Dev,
    /// Start the local stack, draw one image end to end, print its link and file, stop.
    Demo(demo::Args),
}

/// Runs a command; `Ok` carries the process exit code.
pub async fn run(command: Command, settings: Settings) -> Result<u8, Error> {
    match command {
        Command::Submit(args) => return submit::run(args, &settings.connect_queue().await?).await,
        Command::Status(args) => status::run(args, &settings.connect_queue().await?).await?,
        Command::Cancel(args) => cancel::run(args, &settings.connect_queue().await?).await?,
        Command::Config => config::run(&settings)?,
        Command::Models { command } => {
            models::run(command.unwrap_or(models::Command::List), &settings).await?
        }
        Command::Worker => worker::run(&settings).await?,
        Command::Api { command: None } => api::serve(&settings).await?,
        Command::Api {
            command: Some(command),
        } => api::run(command, &settings).await?,
        Command::Bots { command } => bots::run(command, &settings).await?,
        Command::Runner => return Ok(runner::run(&settings).await),
        Command::Dev => dev::run(settings).await?,
        Command::Demo(args) => return demo::run(args, settings).await,
    }
    Ok(0)
}
