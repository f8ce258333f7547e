//! `ducks api`: serve the HTTP API until SIGTERM or SIGINT; `ducks api keys …`: manage its keys.

use ducks_api::RunningApi;
use ducks_api::auth::{KeyOptions, create_key};
use ducks_models::Storage;
use ducks_queue::now_ms;
use tracing::info;

use crate::settings::Settings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Manage API keys (stored in Redis as digests under api.pepper).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it, with its webhook secret, once.
    Create {
        /// What the key is for (shown by `list`).
        #[arg(long)]
        name: String,
        /// An admin key sees and cancels every API job.
        #[arg(long)]
        admin: bool,
        /// Unfinished jobs the key may have at once (default: queue.scopes.api).
        #[arg(long)]
        in_flight: Option<u32>,
        /// Submits per minute (default: queue.scopes.api).
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Every key with its usage: jobs, images, GPU-seconds.
    List,
    /// Refuse a key from now on (within api.key_cache_secs).
    Revoke {
        /// The key's id, from `list`.
        id: String,
    },
}

pub async fn serve(settings: &Settings) -> Result<(), crate::Error> {
    let queue = settings.connect_queue().await?;
    let storage = Storage::connect(&settings.s3).await;
    let api =
        RunningApi::start(queue, storage, settings.api.clone(), settings.links.clone()).await?;
    info!(message = "The API is listening.", address = %api.address, open = settings.api.open);
    if settings.api.open {
        tracing::warn!(
            message = "The API is open: anyone who reaches it can draw images. Set api.open = false and create keys for anything but development."
        );
    }
    crate::signals::terminated().await;
    info!(message = "Shutting down: SIGTERM or SIGINT received.");
    api.stop().await;
    Ok(())
}

pub async fn run(command: Command, settings: &Settings) -> Result<(), crate::Error> {
    let Command::Keys { command } = command;
    let queue = settings.connect_queue().await?;
    match command {
        KeysCommand::Create {
            name,
            admin,
            in_flight,
            rate,
        } => {
            let options = KeyOptions {
                name,
                admin,
                in_flight,
                rate_per_minute: rate,
            };
            let new = create_key(&queue, &settings.api.pepper, options)
                .await
                .map_err(|e| e.message)?;
            println!("Key created; it is shown only now.");
            println!("id              {}", new.client.id);
            println!("key             {}", new.key.expose());
            println!("webhook secret  {}", new.client.webhook_secret.expose());
        }
        KeysCommand::List => {
            let clients = queue.api_clients().await?;
            if clients.is_empty() {
                println!("No API keys yet: `ducks api keys create --name NAME`.");
            }
            println!(
                "{:<14} {:<20} {:<6} {:<8} {:>7} {:>7} {:>12}",
                "ID", "NAME", "ADMIN", "STATE", "JOBS", "IMAGES", "GPU-SECONDS"
            );
            for (client, usage) in clients {
                println!(
                    "{:<14} {:<20} {:<6} {:<8} {:>7} {:>7} {:>12.1}",
                    client.id,
                    client.name,
                    if client.admin { "yes" } else { "no" },
                    if client.revoked_at_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    usage.jobs,
                    usage.images,
                    usage.gpu_seconds
                );
            }
        }
        KeysCommand::Revoke { id } => match queue.revoke_api_client(&id, now_ms()).await? {
            Some(client) => println!(
                "Revoked key {} ({}); it is refused within {} s.",
                client.id, client.name, settings.api.key_cache_secs
            ),
            None => {
                return Err(
                    format!("No API key with id `{id}` (see `ducks api keys list`).").into(),
                );
            }
        },
    }
    Ok(())
}
