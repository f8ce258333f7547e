//! `ducks submit "prompt"`: queue a job from the command line.

use std::path::PathBuf;
use std::time::Duration;

use ducks_contract::{JobRequest, Origin};
use ducks_queue::{Patience, Queue, Submitted};

use crate::follow;

#[derive(clap::Args)]
pub struct Args {
    /// What to draw.
    prompt: String,
    /// Model id from the catalogue (default: the catalogue's default model).
    #[arg(long)]
    model: Option<String>,
    /// What to keep out of the image.
    #[arg(long, default_value = "")]
    negative: String,
    /// Image size as WIDTHxHEIGHT, e.g. 512x512.
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    #[arg(long)]
    steps: Option<u32>,
    #[arg(long)]
    guidance: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Number of images.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Submitting again with the same key returns the first job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Show progress until the job ends, then print the link and save the image.
    #[arg(long)]
    wait: bool,
    /// Where `--wait` saves images.
    #[arg(long, default_value = "ducks-images")]
    out: PathBuf,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parse = || {
        let (w, h) = text.split_once(['x', 'X'])?;
        Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
    };
    parse().ok_or_else(|| format!("`{text}` is not a size: write WIDTHxHEIGHT, e.g. 512x512"))
}

/// Returns the exit code: 0 unless `--wait` saw the job fail or be cancelled.
///
/// Without `--wait`, stdout gets the line naming the queued job. With it, everything a person
/// reads along (that line, progress, the outcome) goes to stderr, and stdout gets only what a
/// script wants: each image's link and the file it was saved to.
pub async fn run(args: Args, queue: &Queue) -> Result<u8, crate::Error> {
    let mut request = JobRequest::new(args.prompt, Origin::Cli);
    request.model = args.model;
    request.negative_prompt = args.negative;
    request.width = args.size.map(|(w, _)| w);
    request.height = args.size.map(|(_, h)| h);
    request.steps = args.steps;
    request.guidance = args.guidance;
    request.seed = args.seed;
    request.count = args.count;
    request.idempotency_key = args.idempotency_key;
    request.requester.id = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    if !args.wait {
        let submitted = queue.submit_checked(request).await?;
        println!("{}", submitted_line(&submitted));
        return Ok(0);
    }
    // Redis answered within the command's short wait; following the job may take many minutes,
    // through which a Redis failover is waited out as the services wait it out.
    let queue = &queue.clone().with_patience(Patience::Service);
    let (submitted, _tail, watch) = follow::submit_and_watch(queue, request).await?;
    eprintln!("{}", submitted_line(&submitted));
    let followed = follow::follow(watch, &args.out, Duration::from_secs(args.timeout)).await?;
    follow::print_images(&followed.images);
    Ok(if followed.succeeded { 0 } else { 1 })
}

fn submitted_line(submitted: &Submitted) -> String {
    match submitted {
        Submitted::Queued { id, position } => format!("Queued {id} (position {position})."),
        Submitted::Duplicate { id } => format!("Already submitted as {id}."),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_or_explain() {
        assert_eq!(super::parse_size("512x768"), Ok((512, 768)));
        assert_eq!(super::parse_size("64X64"), Ok((64, 64)));
        assert_eq!(
            super::parse_size("big").unwrap_err(),
            "`big` is not a size: write WIDTHxHEIGHT, e.g. 512x512"
        );
    }
}
