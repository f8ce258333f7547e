//! One file per command; [`Command`] gathers them and [`run`] dispatches.

mod api;
mod bots;
mod cancel;
mod config;
mod demo;
pub(crate) mod dev;
pub(crate) mod models;
mod runner;
mod status;
mod submit;
mod worker;

use std::time::Duration;

use ducks_queue::{Patience, Queue};

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
        Command::Submit(args) => return submit::run(args, &client_queue(&settings).await?).await,
        Command::Status(args) => status::run(args, &client_queue(&settings).await?).await?,
        Command::Cancel(args) => cancel::run(args, &client_queue(&settings).await?).await?,
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

/// The queue for a command a person waits on (`submit`, `status`, `cancel`): Redis gets
/// `redis.cli_wait_secs` to answer, quietly, and then the command ends with one line saying
/// where it looked. Services keep the queue's patient retrying.
async fn client_queue(settings: &Settings) -> Result<Queue, Error> {
    let wait = Duration::from_secs(settings.redis.cli_wait_secs.max(1));
    Queue::connect_with(
        settings.redis.target(),
        settings.queue.clone(),
        Patience::Command(wait),
    )
    .await
    .map_err(|e| {
        if e.is_unreachable() {
            unreachable_message(settings.redis.url.expose(), wait).into()
        } else {
            e.into()
        }
    })
}

/// What a command says when Redis does not answer; the URL without its credentials.
fn unreachable_message(url: &str, wait: Duration) -> String {
    format!(
        "Redis at {} did not answer within {} s: is it running? (`ducks dev` starts one; \
         DUCKS_REDIS__URL points elsewhere)",
        without_credentials(url),
        wait.as_secs()
    )
}

/// `url` (or comma-separated URLs) with any `user:password@` and query taken out: redis-rs also
/// reads `?user=…&pass=…`.
fn without_credentials(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            // A Redis URL's path is a database number: anything before the last `@` is
            // credentials, even a password with an unescaped `/` or `@` in it.
            let after_credentials = one.rsplit('@').next().unwrap_or_default();
            let shown = match one.split_once("://") {
                Some((scheme, _)) if one.contains('@') => format!("{scheme}://{after_credentials}"),
                _ => after_credentials.to_owned(),
            };
            match shown.split_once('?') {
                Some((before, _)) => before.to_owned(),
                None => shown,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn credentials_never_appear_in_the_unreachable_message() {
        let cases = [
            ("redis://127.0.0.1:6390/", "redis://127.0.0.1:6390/"),
            (
                "redis://:s3cret@redis.local:6379/0",
                "redis://redis.local:6379/0",
            ),
            (
                "rediss://app:s3cret@redis.local:6380",
                "rediss://redis.local:6380",
            ),
            (
                "redis://u:p@a:7000/,redis://u:p@b:7001/",
                "redis://a:7000/,redis://b:7001/",
            ),
            ("redis://u:p@ss@host:1/", "redis://host:1/"),
            ("redis://u:p/w@host:1/2", "redis://host:1/2"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            (
                "unix:///run/redis.sock?pass=s3cret",
                "unix:///run/redis.sock",
            ),
            ("redis://host:1/0?user=u&pass=s3cret", "redis://host:1/0"),
            ("redis://u:p?w@host:1/", "redis://host:1/"),
        ];
        for (url, shown) in cases {
            assert_eq!(super::without_credentials(url), shown, "{url}");
        }
        assert_eq!(
            super::unreachable_message("redis://:pw@127.0.0.1:6390/", Duration::from_secs(3)),
            "Redis at redis://127.0.0.1:6390/ did not answer within 3 s: is it running? \
             (`ducks dev` starts one; DUCKS_REDIS__URL points elsewhere)"
        );
    }
}
