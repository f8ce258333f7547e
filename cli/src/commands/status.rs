//! `ducks status <id>`: what the queue knows of a job.

use ducks_contract::{EventKind, JobId};
use ducks_queue::Queue;

#[derive(clap::Args)]
pub struct Args {
    id: JobId,
    /// Print the full status as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args, queue: &Queue) -> Result<(), crate::Error> {
    let status = queue.status(&args.id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print!("{}: {}", status.id, status.state.as_str());
    if let Some(position) = status.position {
        print!(", position {position}");
    }
    if status.attempt > 0 {
        print!(", retry {}", status.attempt);
    }
    if status.cancel_requested {
        print!(", cancel requested");
    }
    println!();
    match status.last_event.map(|e| e.kind) {
        Some(EventKind::Failed { message, .. }) => println!("{message}"),
        Some(EventKind::Succeeded { images, .. }) => {
            for image in images {
                println!("{}", image.url);
            }
        }
        _ => {}
    }
    Ok(())
}
