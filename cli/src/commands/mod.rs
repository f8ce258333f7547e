//! One file per command; [`Command`] gathers them and [`run`] dispatches.

mod cancel;
mod config;
mod models;
mod runner;
mod status;
mod submit;

use ducks_queue::Queue;

use crate::settings::Settings;

/// What a command can fail with: its message is printed as is.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Queue an image job.
    Submit(submit::Args),
    /// Show what the queue knows of a job.
    Status(status::Args),
    /// Cancel a job: a queued one never starts, a running one is stopped.
    Cancel(cancel::Args),
    /// Print the effective configuration (secrets redacted).
    Config,
    /// The model catalogue in S3.
    #[command(subcommand)]
    Models(models::Command),
    /// Run one job as a GPU pod does: everything from the environment (docs/runner-contract.md).
    Runner,
}

/// Runs a command; `Ok` carries the process exit code.
pub async fn run(command: Command, settings: Settings) -> Result<u8, Error> {
    match command {
        Command::Submit(args) => submit::run(args, &connect(&settings).await?).await?,
        Command::Status(args) => status::run(args, &connect(&settings).await?).await?,
        Command::Cancel(args) => cancel::run(args, &connect(&settings).await?).await?,
        Command::Config => config::run(&settings)?,
        Command::Models(command) => models::run(command, &settings).await?,
        Command::Runner => return Ok(runner::run(&settings).await),
    }
    Ok(0)
}

async fn connect(settings: &Settings) -> Result<Queue, Error> {
    Ok(Queue::connect(settings.redis.target(), settings.queue.clone()).await?)
}
