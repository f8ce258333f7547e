//! `ducks bots discord` and `ducks bots twitch`: run a chat bot until SIGTERM or SIGINT;
//! `ducks bots discord register` sends the Discord bot's commands to Discord.

use tracing::info;

use crate::settings::Settings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The Discord bot (docs/discord.md); `register` sends its slash commands to Discord.
    Discord {
        #[command(subcommand)]
        command: Option<DiscordCommand>,
    },
    /// The Twitch bot (docs/twitch.md): `!imagine` in the channels of `twitch.channels`.
    Twitch,
}

#[derive(clap::Subcommand)]
pub enum DiscordCommand {
    /// Register (bulk-overwrite) /imagine, /models and /jobs: globally, or in one guild, where
    /// they appear at once (global commands can take a while).
    Register {
        /// The guild (server) id to register in.
        #[arg(long)]
        guild: Option<u64>,
    },
}

pub async fn run(command: Command, settings: &Settings) -> Result<(), crate::Error> {
    let command = match command {
        Command::Discord { command } => command,
        Command::Twitch => {
            let queue = settings.connect_queue().await?;
            ducks_bots::twitch::run(
                queue,
                settings.twitch.clone(),
                settings.links.clone(),
                async {
                    crate::signals::terminated().await;
                    info!(message = "Shutting down: SIGTERM or SIGINT received.");
                },
            )
            .await?;
            return Ok(());
        }
    };
    match command {
        None => {
            let queue = settings.connect_queue().await?;
            ducks_bots::discord::run(queue, settings.discord.clone(), async {
                crate::signals::terminated().await;
                info!(message = "Shutting down: SIGTERM or SIGINT received.");
            })
            .await?;
        }
        Some(DiscordCommand::Register { guild }) => {
            let count = ducks_bots::discord::register(&settings.discord, guild).await?;
            match guild {
                Some(guild) => println!("Registered {count} commands in guild {guild}."),
                None => println!(
                    "Registered {count} global commands (Discord may take up to an hour to show changes)."
                ),
            }
        }
    }
    Ok(())
}
