//! `ducks cancel <id>`.

use ducks_contract::{Caller, JobId};
use ducks_queue::{Cancelled, Queue};

#[derive(clap::Args)]
pub struct Args {
    id: JobId,
}

pub async fn run(args: Args, queue: &Queue) -> Result<(), crate::Error> {
    // Whoever can run this holds the queue itself: an operator.
    match queue.cancel(&args.id, &Caller::Operator).await? {
        Cancelled::Cancelled => println!("Cancelled {}.", args.id),
        Cancelled::Requested => println!("{} is running; its worker will stop it.", args.id),
        Cancelled::AlreadyEnded(state) => {
            println!("{} had already ended: {}.", args.id, state.as_str())
        }
    }
    Ok(())
}
