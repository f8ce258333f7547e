//! One file per command; [`Command`] gathers them and [`run`] dispatches.

mod cancel;
mod config;
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
}

pub async fn run(command: Command, settings: Settings) -> Result<(), Error> {
    match command {
        Command::Submit(args) => submit::run(args, &connect(&settings).await?).await,
        Command::Status(args) => status::run(args, &connect(&settings).await?).await,
        Command::Cancel(args) => cancel::run(args, &connect(&settings).await?).await,
        Command::Config => config::run(&settings),
    }
}

async fn connect(settings: &Settings) -> Result<Queue, Error> {
    Ok(Queue::connect(settings.redis.target(), settings.queue.clone()).await?)
}
