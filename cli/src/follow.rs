//! Following one job to its end from the command line: progress on stderr, then the links, and
//! the images saved to files (`ducks submit --wait`, `ducks demo`).

use std::io::{IsTerminal, Write};
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

/// Prints the job's progress on stderr until its terminal event (or `limit`), then saves its
/// images under `out_dir`. The submit's own line says the job is queued, so the Queued event adds
/// nothing.
pub async fn follow(
    mut watch: JobWatch,
    out_dir: &Path,
    limit: Duration,
) -> Result<Followed, Error> {
    let id = watch.job_id().clone();
    let id = &id;
    let started = Instant::now();
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let show = |text: String| {
        if !text.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(text.as_bytes());
            let _ = stderr.flush();
        }
    };
    loop {
        let left = limit.saturating_sub(started.elapsed());
        let event = match tokio::time::timeout(left, watch.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                show(progress.end_line());
                return Err("the job queue stopped answering".into());
            }
            Err(_) => {
                show(progress.end_line());
                return Err(format!(
                    "No result after {} s; the job goes on: `ducks status {id}` shows where it is.",
                    limit.as_secs()
                )
                .into());
            }
        };
        show(progress.render(&event.kind));
        match event.kind {
            EventKind::Succeeded { images, .. } => {
                let images = save_all(&images, id, out_dir).await?;
                return Ok(Followed {
                    succeeded: true,
                    images,
                });
            }
            EventKind::Failed { .. } | EventKind::Cancelled => {
                return Ok(Followed {
                    succeeded: false,
                    images: Vec::new(),
                });
            }
            _ => {}
        }
    }
}

/// What stderr shows of a followed job, event by event: pure, so tests read the text. On a
/// terminal the progress bar is redrawn in place with `\r`; anywhere else (a file, a pipe, a CI
/// log) every line ends, and progress is shown once per tenth of the run (every step of a short
/// one) rather than at every event.
pub struct Progress {
    /// Whether stderr is a terminal, where a line can be drawn again.
    terminal: bool,
    /// A bar is drawn on the terminal and its line not ended yet.
    bar_open: bool,
    /// The tenth of the run (0 to 10) a plain progress line last showed.
    shown_tenth: Option<u64>,
}

/// Cells of the terminal's progress bar.
const BAR_WIDTH: usize = 30;

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Self {
            terminal,
            bar_open: false,
            shown_tenth: None,
        }
    }

    /// The text to write for `event`; empty when it shows nothing.
    pub fn render(&mut self, event: &EventKind) -> String {
        let mut text = String::new();
        if !matches!(event, EventKind::Progress { .. }) {
            text.push_str(&self.end_line());
            // What follows (a retry's attempt, say) counts its progress from the start again.
            self.shown_tenth = None;
        }
        match event {
            EventKind::Queued { .. } => {}
            EventKind::Starting { message, .. } => text.push_str(&format!("{message}\n")),
            &EventKind::Progress { step, total } => {
                let uploading = if step == total { ", uploading…" } else { "" };
                if self.terminal {
                    let bar = progress_bar(step, total, BAR_WIDTH);
                    text.push_str(&format!("\r[{bar}] step {step} of {total}{uploading}   "));
                    self.bar_open = true;
                } else {
                    let tenth = (u64::from(step) * 10)
                        .checked_div(u64::from(total))
                        .unwrap_or(0)
                        .min(10);
                    if self.shown_tenth.is_none_or(|shown| tenth > shown) {
                        self.shown_tenth = Some(tenth);
                        text.push_str(&format!("step {step} of {total}{uploading}\n"));
                    }
                }
            }
            EventKind::Retrying {
                attempt,
                retry_in_ms,
                message,
            } => text.push_str(&format!(
                "{message} Retrying (attempt {}) in {:.1} s.\n",
                attempt + 1,
                *retry_in_ms as f64 / 1000.0
            )),
            EventKind::Succeeded { timings, .. } => text.push_str(&format!(
                "Done in {:.1} s (queued {:.1} s, start-up {:.1} s, generation {:.1} s, upload {:.1} s).\n",
                timings.total_ms as f64 / 1000.0,
                timings.queue_ms as f64 / 1000.0,
                timings.startup_ms as f64 / 1000.0,
                timings.generate_ms as f64 / 1000.0,
                timings.upload_ms as f64 / 1000.0,
            )),
            EventKind::Failed { code, message, .. } => {
                text.push_str(&format!("Failed ({}): {message}\n", code.as_str()))
            }
            EventKind::Cancelled => text.push_str("Cancelled.\n"),
        }
        text
    }

    /// Ends the bar's line, if one is open, so what follows starts on a line of its own.
    pub fn end_line(&mut self) -> String {
        if std::mem::take(&mut self.bar_open) {
            "\n".into()
        } else {
            String::new()
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
    use ducks_contract::{EventKind, FailureCode, JobPhase, Timings};

    use super::Progress;

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(super::progress_bar(0, 4, 8), "--------");
        assert_eq!(super::progress_bar(1, 4, 8), "##------");
        assert_eq!(super::progress_bar(4, 4, 8), "########");
        assert_eq!(super::progress_bar(1, 0, 8), "--------");
    }

    fn progress(step: u32, total: u32) -> EventKind {
        EventKind::Progress { step, total }
    }

    fn starting(message: &str) -> EventKind {
        EventKind::Starting {
            phase: JobPhase::Generating,
            message: message.into(),
        }
    }

    fn done() -> EventKind {
        EventKind::Succeeded {
            images: Vec::new(),
            timings: Timings {
                queue_ms: 100,
                startup_ms: 1_200,
                generate_ms: 3_000,
                upload_ms: 100,
                total_ms: 4_400,
                gpu_seconds: 0.0,
            },
        }
    }

    /// Everything written for `events`, in order.
    fn rendered(terminal: bool, events: &[EventKind]) -> String {
        let mut progress = Progress::new(terminal);
        events.iter().map(|e| progress.render(e)).collect()
    }

    #[test]
    fn each_event_renders_on_a_terminal_and_elsewhere() {
        let failed = EventKind::Failed {
            code: FailureCode::RunnerCrashed,
            message: "The image generator crashed.".into(),
            retryable: true,
        };
        let retrying = EventKind::Retrying {
            attempt: 1,
            retry_in_ms: 2_500,
            message: "The image generator crashed.".into(),
        };
        let done_line =
            "Done in 4.4 s (queued 0.1 s, start-up 1.2 s, generation 3.0 s, upload 0.1 s).\n";
        // (events, on a terminal, elsewhere)
        let cases: Vec<(Vec<EventKind>, String, String)> = vec![
            (
                vec![EventKind::Queued { position: 3 }],
                "".into(),
                "".into(),
            ),
            (
                vec![starting("Generating…")],
                "Generating…\n".into(),
                "Generating…\n".into(),
            ),
            (
                vec![progress(1, 4)],
                format!("\r[#######{}] step 1 of 4   ", "-".repeat(23)),
                "step 1 of 4\n".into(),
            ),
            (
                vec![progress(2, 2), done()],
                format!(
                    "\r[{}] step 2 of 2, uploading…   \n{done_line}",
                    "#".repeat(30)
                ),
                format!("step 2 of 2, uploading…\n{done_line}"),
            ),
            (
                vec![progress(1, 2), failed],
                format!(
                    "\r[{}{}] step 1 of 2   \nFailed (runner_crashed): The image generator crashed.\n",
                    "#".repeat(15),
                    "-".repeat(15)
                ),
                "step 1 of 2\nFailed (runner_crashed): The image generator crashed.\n".into(),
            ),
            (
                vec![retrying],
                "The image generator crashed. Retrying (attempt 2) in 2.5 s.\n".into(),
                "The image generator crashed. Retrying (attempt 2) in 2.5 s.\n".into(),
            ),
            (
                vec![EventKind::Cancelled],
                "Cancelled.\n".into(),
                "Cancelled.\n".into(),
            ),
        ];
        for (events, terminal, plain) in cases {
            assert_eq!(
                rendered(true, &events),
                terminal,
                "{events:?} on a terminal"
            );
            assert_eq!(rendered(false, &events), plain, "{events:?} elsewhere");
        }
    }

    #[test]
    fn plain_progress_shows_each_tenth_once() {
        let events: Vec<EventKind> = (1..=100).map(|step| progress(step, 100)).collect();
        let text = rendered(false, &events);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert_eq!(lines[0], "step 1 of 100");
        assert_eq!(lines[1], "step 10 of 100");
        assert_eq!(lines[10], "step 100 of 100, uploading…");
        assert!(!text.contains('\r'));

        // A short run shows every step; events the worker skipped leave no gap of lines.
        let text = rendered(false, &[progress(1, 3), progress(3, 3)]);
        assert_eq!(text, "step 1 of 3\nstep 3 of 3, uploading…\n");
        // A retry's attempt shows its progress from the start again.
        let retrying = EventKind::Retrying {
            attempt: 0,
            retry_in_ms: 1_000,
            message: "Lost.".into(),
        };
        let text = rendered(false, &[progress(2, 2), retrying, progress(1, 2)]);
        assert_eq!(
            text,
            "step 2 of 2, uploading…\nLost. Retrying (attempt 1) in 1.0 s.\nstep 1 of 2\n"
        );
        // The same step twice, or another in the same tenth, is one line.
        let text = rendered(false, &[progress(4, 40), progress(4, 40), progress(5, 40)]);
        assert_eq!(text, "step 4 of 40\n");
        let text = rendered(false, &[progress(4, 40), progress(8, 40)]);
        assert_eq!(text, "step 4 of 40\nstep 8 of 40\n");
    }

    #[test]
    fn a_terminal_bar_is_redrawn_in_place_and_ended_once() {
        let mut shown = Progress::new(true);
        let first = shown.render(&progress(1, 2));
        let second = shown.render(&progress(2, 2));
        assert!(
            first.starts_with('\r') && !first.contains('\n'),
            "{first:?}"
        );
        assert!(
            second.starts_with('\r') && !second.contains('\n'),
            "{second:?}"
        );
        assert_eq!(shown.end_line(), "\n");
        assert_eq!(shown.end_line(), "", "ended once");
        assert_eq!(shown.render(&starting("Uploading…")), "Uploading…\n");
    }
}
