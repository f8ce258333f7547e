//! Following one job to its end from the command line: progress on stderr, then the links, and
//! the images saved to files (`ducks submit --wait`, `ducks demo`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ducks_contract::{EventKind, ImageRef, JobId, JobRequest};
use ducks_queue::{EventTail, JobWatch, Queue, Submitted};

use crate::Error;

/// How long one image download may take.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(120);

/// What a followed job ended with.
pub struct Followed {
    pub succeeded: bool,
    /// The link and the saved file of each image.
    pub images: Vec<(String, PathBuf)>,
}

/// Submits `request` (checked against the model catalogue) with a watch on its events started
/// first, so none is missed; a duplicate submit watches the first job instead.
pub async fn submit_and_watch(
    queue: &Queue,
    mut request: JobRequest,
) -> Result<(Submitted, EventTail, JobWatch), Error> {
    let id = request.id.get_or_insert_with(JobId::generate).clone();
    let tail = EventTail::start(queue, request.origin.kind()).await?;
    let watch = tail.watch(&id).await?;
    let submitted = queue.submit_checked(request).await?;
    let watch = match &submitted {
        Submitted::Queued { .. } => watch,
        Submitted::Duplicate { id } => tail.watch(id).await?,
    };
    Ok((submitted, tail, watch))
}

/// Prints the job's progress until its terminal event (or `limit`), then saves its images under
/// `out_dir`.
pub async fn follow(
    mut watch: JobWatch,
    out_dir: &Path,
    limit: Duration,
) -> Result<Followed, Error> {
    let id = watch.job_id().clone();
    let id = &id;
    let started = Instant::now();
    let mut progress_shown = false;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        let event = match tokio::time::timeout(left, watch.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => return Err("the job queue stopped answering".into()),
            Err(_) => {
                return Err(format!(
                    "No result after {} s; the job goes on: `ducks status {id}` shows where it is.",
                    limit.as_secs()
                )
                .into());
            }
        };
        if progress_shown && !matches!(event.kind, EventKind::Progress { .. }) {
            eprintln!();
            progress_shown = false;
        }
        match event.kind {
            EventKind::Queued { position } => eprintln!("Queued (position {position})."),
            EventKind::Starting { message, .. } => eprintln!("{message}"),
            EventKind::Progress { step, total } => {
                let bar = progress_bar(step, total, 30);
                let tail = if step == total { " uploading…" } else { "" };
                eprint!("\r[{bar}] step {step} of {total}{tail}   ");
                let _ = std::io::stderr().flush();
                progress_shown = true;
            }
            EventKind::Retrying {
                attempt,
                retry_in_ms,
                message,
            } => eprintln!(
                "{message} Retrying (attempt {}) in {:.1} s.",
                attempt + 1,
                retry_in_ms as f64 / 1000.0
            ),
            EventKind::Succeeded { images, timings } => {
                eprintln!(
                    "Done in {:.1} s (queued {:.1} s, start-up {:.1} s, generation {:.1} s, upload {:.1} s).",
                    timings.total_ms as f64 / 1000.0,
                    timings.queue_ms as f64 / 1000.0,
                    timings.startup_ms as f64 / 1000.0,
                    timings.generate_ms as f64 / 1000.0,
                    timings.upload_ms as f64 / 1000.0,
                );
                let images = save_all(&images, id, out_dir).await?;
                return Ok(Followed {
                    succeeded: true,
                    images,
                });
            }
            EventKind::Failed { code, message, .. } => {
                eprintln!("Failed ({}): {message}", code.as_str());
                return Ok(Followed {
                    succeeded: false,
                    images: Vec::new(),
                });
            }
            EventKind::Cancelled => {
                eprintln!("Cancelled.");
                return Ok(Followed {
                    succeeded: false,
                    images: Vec::new(),
                });
            }
        }
    }
}

fn progress_bar(step: u32, total: u32, width: usize) -> String {
    let done = (step as usize * width)
        .checked_div(total as usize)
        .unwrap_or(0)
        .min(width);
    format!("{}{}", "#".repeat(done), "-".repeat(width - done))
}

async fn save_all(
    images: &[ImageRef],
    id: &JobId,
    out_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, Error> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let client = reqwest::Client::builder().timeout(DOWNLOAD_LIMIT).build()?;
    let mut saved = Vec::new();
    for (n, image) in images.iter().enumerate() {
        let path = out_dir.join(format!("{id}-{n}.png"));
        let response = client.get(&image.url).send().await?;
        if !response.status().is_success() {
            return Err(format!("downloading {} answered {}", image.url, response.status()).into());
        }
        let bytes = response.bytes().await?;
        std::fs::write(&path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        saved.push((image.url.clone(), path));
    }
    Ok(saved)
}

/// Prints each image's link and file on stdout, one pair per image.
pub fn print_images(images: &[(String, PathBuf)]) {
    for (url, path) in images {
        println!("{url}");
        println!("Saved {}", path.display());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(super::progress_bar(0, 4, 8), "--------");
        assert_eq!(super::progress_bar(1, 4, 8), "##------");
        assert_eq!(super::progress_bar(4, 4, 8), "########");
        assert_eq!(super::progress_bar(1, 0, 8), "--------");
    }
}
