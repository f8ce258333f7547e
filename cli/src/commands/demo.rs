//! `ducks demo "prompt"`: start the local stack, run one job end to end, print the link and the
//! file, stop everything.

use std::time::Duration;

use ducks_contract::{JobRequest, Origin};

use crate::dev::Stack;
use crate::follow;
use crate::settings::Settings;

#[derive(clap::Args)]
pub struct Args {
    /// What to draw.
    #[arg(default_value = "a rubber duck flying over the clouds")]
    prompt: String,
    /// The model (default: tiny-sd, which draws noise).
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// How long the job may take, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

pub async fn run(args: Args, settings: Settings) -> Result<u8, crate::Error> {
    eprintln!("Starting Redis, S3 and a worker on this machine…");
    let stack = Stack::start(settings).await?;
    let outcome = run_one(&args, &stack).await;
    let stopped = stack.stop().await;
    let code = outcome?;
    stopped?;
    Ok(code)
}

async fn run_one(args: &Args, stack: &Stack) -> Result<u8, crate::Error> {
    let mut request = JobRequest::new(args.prompt.clone(), Origin::Cli);
    request.model = args.model.clone();
    request.seed = args.seed;
    request.requester.id = "demo".into();
    let (submitted, _tail, watch) = follow::submit_and_watch(&stack.queue, request).await?;
    eprintln!("Submitted {}: {:?}", submitted.id(), args.prompt);
    let followed = follow::follow(
        watch,
        &stack.images_dir(),
        Duration::from_secs(args.timeout),
    )
    .await?;
    follow::print_images(&followed.images);
    Ok(if followed.succeeded { 0 } else { 1 })
}
