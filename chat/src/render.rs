//! A job's state in sentences a person reads. Platforms arrange these pieces (an embed, a chat
//! line, a web card); the words are the same everywhere.

use std::borrow::Cow;

use ducks_contract::{
    EventKind, FailureCode, ImageRef, JobPhase, JobRequest, ModelCatalogue, Timings,
};

/// `text` in at most `max_chars` characters: cut at a character boundary and ending in "…" when
/// it had to be shortened, so a reader sees that something is missing.
pub fn shorten(text: &str, max_chars: usize) -> Cow<'_, str> {
    if text.chars().count() <= max_chars {
        return Cow::Borrowed(text);
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    Cow::Owned(format!("{}…", kept.trim_end()))
}

/// `▰▰▰▱▱▱▱▱▱▱`: `step` of `total` in ten cells.
pub fn progress_bar(step: u32, total: u32) -> String {
    const CELLS: u32 = 10;
    let filled = (step.min(total) * CELLS).checked_div(total).unwrap_or(0) as usize;
    format!(
        "{}{}",
        "▰".repeat(filled),
        "▱".repeat(CELLS as usize - filled)
    )
}

/// What a started job is doing, from the worker's phase code.
pub fn phase_sentence(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Launching => "Starting a GPU machine…",
        JobPhase::WaitingForGpu => "Waiting for a GPU to be free…",
        JobPhase::PullingImage => "Preparing the GPU machine (first start can take a few minutes)…",
        JobPhase::QueuedInCluster => "Waiting for the cluster's GPU quota…",
        JobPhase::Restarting => "The GPU machine was interrupted; starting another…",
        JobPhase::LoadingWeights => "Loading the model…",
        JobPhase::Generating => "Drawing…",
        JobPhase::Uploading => "Saving the image…",
        JobPhase::Unknown => "Working on it…",
    }
}

/// One line for where a job stands after `event`.
pub fn status_line(event: &EventKind) -> String {
    match event {
        EventKind::Queued { position: 0 | 1 } => "Queued: next in line.".into(),
        EventKind::Queued { position } => format!("Queued: #{position} in line."),
        EventKind::Starting { phase, .. } => phase_sentence(*phase).into(),
        EventKind::Progress { step, total } => {
            format!(
                "Drawing {} step {step} of {total}",
                progress_bar(*step, *total)
            )
        }
        EventKind::Retrying {
            attempt,
            retry_in_ms,
            message,
        } => format!(
            "{} Trying again in {} (attempt {}).",
            sentence(message),
            duration(*retry_in_ms),
            attempt + 1
        ),
        EventKind::Succeeded { images, .. } if images.len() == 1 => "Done.".into(),
        EventKind::Succeeded { images, .. } => format!("Done: {} images.", images.len()),
        EventKind::Failed {
            code,
            message,
            retryable,
        } => failure_sentence(*code, message, *retryable),
        EventKind::Cancelled => "Cancelled.".into(),
    }
}

/// A failure as the worker worded it, followed by what the person can do next.
pub fn failure_sentence(code: FailureCode, message: &str, retryable: bool) -> String {
    let next = match code {
        FailureCode::InvalidRequest => "Change the request and try again.",
        FailureCode::UnknownModel => "Pick one of the available models.",
        FailureCode::OutOfMemory => "Try a smaller size or fewer images.",
        FailureCode::NoGpuCapacity | FailureCode::Refused => {
            "No GPU is free for it right now. Try again later, or pick a smaller model."
        }
        FailureCode::DeadlineExceeded => "It waited too long. Try again when the queue is shorter.",
        FailureCode::WeightsCorrupt | FailureCode::ImagePullFailed => {
            "This model is broken right now; an operator has been told. Pick another model."
        }
        _ if retryable => "Try again in a minute.",
        _ => "Try again; if it keeps failing, tell an operator.",
    };
    format!("{} {next}", sentence(message))
}

/// A message as one sentence, ending in a full stop.
fn sentence(message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        "Something went wrong.".into()
    } else if message.ends_with(['.', '!', '?']) {
        message.into()
    } else {
        format!("{message}.")
    }
}

/// `850 ms`, `4.2 s`, `2 min 5 s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// Where the time went: `queued 1.2 s · cold start 3.4 s · drawing 5.6 s · 0.8 GPU-s`.
pub fn receipt(timings: &Timings) -> String {
    format!(
        "queued {} · cold start {} · drawing {} · {:.1} GPU-s",
        duration(timings.queue_ms),
        duration(timings.startup_ms),
        duration(timings.generate_ms),
        timings.gpu_seconds
    )
}

/// The parameters of a job, as far as they are known: what the person asked, with the
/// catalogue's defaults for what they left out and the seed the images report.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub prompt: String,
    pub negative: String,
    pub model: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub seed: Option<u64>,
    pub count: u32,
}

impl Summary {
    pub fn of(
        request: &JobRequest,
        catalogue: Option<&ModelCatalogue>,
        images: &[ImageRef],
    ) -> Summary {
        let model = catalogue.and_then(|c| c.choose(request.model.as_deref()).ok());
        let first = images.first();
        Summary {
            prompt: request.prompt.clone(),
            negative: request.negative_prompt.clone(),
            model: model
                .map(|m| m.id.clone())
                .or_else(|| request.model.clone())
                .unwrap_or_else(|| "default".into()),
            width: first
                .map(|i| i.width)
                .or(request.width)
                .or(model.map(|m| m.default_width)),
            height: first
                .map(|i| i.height)
                .or(request.height)
                .or(model.map(|m| m.default_height)),
            steps: request.steps.or(model.map(|m| m.default_steps)),
            seed: first.map(|i| i.seed).or(request.seed),
            count: request.count,
        }
    }

    /// `tiny-sd · 64x64 · 4 steps · seed 7`, leaving out what is not known yet.
    pub fn parameters(&self) -> String {
        let mut parts = vec![self.model.clone()];
        if let (Some(w), Some(h)) = (self.width, self.height) {
            parts.push(format!("{w}x{h}"));
        }
        if let Some(steps) = self.steps {
            parts.push(format!("{steps} steps"));
        }
        if let Some(seed) = self.seed {
            parts.push(format!("seed {seed}"));
        }
        if self.count > 1 {
            parts.push(format!("{} images", self.count));
        }
        parts.join(" · ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_contract::Origin;

    #[test]
    fn shorten_is_visible_and_never_splits_a_character() {
        assert_eq!(shorten("a duck", 6), "a duck");
        assert_eq!(shorten("a duck in space", 7), "a duck…");
        // Multi-byte characters are counted and cut whole.
        assert_eq!(shorten("🦆🦆🦆🦆", 3), "🦆🦆…");
        assert_eq!(shorten("ééééé", 4).chars().count(), 4);
    }

    #[test]
    fn progress_bars() {
        assert_eq!(progress_bar(0, 20), "▱▱▱▱▱▱▱▱▱▱");
        assert_eq!(progress_bar(5, 20), "▰▰▱▱▱▱▱▱▱▱");
        assert_eq!(progress_bar(20, 20), "▰▰▰▰▰▰▰▰▰▰");
        assert_eq!(progress_bar(3, 0), "▱▱▱▱▱▱▱▱▱▱");
    }

    #[test]
    fn status_lines() {
        let lines: Vec<String> = [
            EventKind::Queued { position: 1 },
            EventKind::Queued { position: 7 },
            EventKind::Starting {
                phase: JobPhase::WaitingForGpu,
                message: String::new(),
            },
            EventKind::Starting {
                phase: JobPhase::PullingImage,
                message: String::new(),
            },
            EventKind::Starting {
                phase: JobPhase::LoadingWeights,
                message: String::new(),
            },
            EventKind::Progress { step: 7, total: 20 },
            EventKind::Retrying {
                attempt: 1,
                retry_in_ms: 5_000,
                message: "The image store is unreachable".into(),
            },
            EventKind::Failed {
                code: FailureCode::OutOfMemory,
                message: "The GPU ran out of memory.".into(),
                retryable: false,
            },
            EventKind::Failed {
                code: FailureCode::StorageUnavailable,
                message: "The image store is unreachable (gave up after 3 attempts).".into(),
                retryable: true,
            },
            EventKind::Failed {
                code: FailureCode::UnknownModel,
                message: "There is no model `sd9`. Available models: tiny-sd.".into(),
                retryable: false,
            },
            EventKind::Cancelled,
        ]
        .iter()
        .map(status_line)
        .collect();
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn durations_and_receipt() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(4_249), "4.2 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        let timings = Timings {
            queue_ms: 1_200,
            startup_ms: 3_400,
            generate_ms: 5_600,
            upload_ms: 100,
            total_ms: 10_300,
            gpu_seconds: 0.84,
        };
        assert_eq!(
            receipt(&timings),
            "queued 1.2 s · cold start 3.4 s · drawing 5.6 s · 0.8 GPU-s"
        );
    }

    #[test]
    fn summary_fills_defaults_and_takes_the_seed_from_the_image() {
        let mut request = JobRequest::new("a duck", Origin::Cli);
        request.steps = Some(4);
        let image = ImageRef {
            key: "k".into(),
            url: "u".into(),
            width: 64,
            height: 64,
            seed: 7,
        };
        let summary = Summary::of(&request, None, &[image]);
        assert_eq!(summary.parameters(), "default · 64x64 · 4 steps · seed 7");
        request.count = 2;
        request.model = Some("tiny-sd".into());
        assert_eq!(
            Summary::of(&request, None, &[]).parameters(),
            "tiny-sd · 4 steps · 2 images"
        );
    }
}
