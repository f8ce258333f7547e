//! A job's state as one chat line (Twitch): at most 500 characters, whatever the prompt or name,
//! and never starting with `/` or `.`, which chat would read as a command.

use ducks_contract::{EventKind, ModelCatalogue};

use crate::{Summary, shorten, status_line};

/// Twitch refuses longer messages.
pub const MAX_LINE_CHARS: usize = 500;

/// `text` made safe to send: shortened visibly to [`MAX_LINE_CHARS`], on one line, and not
/// starting with a character chat reads as a command.
pub fn chat_line(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    let safe = if trimmed.starts_with(['/', '.']) {
        format!("» {trimmed}")
    } else {
        trimmed.to_owned()
    };
    shorten(&safe, MAX_LINE_CHARS).into_owned()
}

/// `@ada queued, #3 in line.`
pub fn queued_line(user: &str, position: u64) -> String {
    chat_line(&format!(
        "@{user} {}",
        status_line(&EventKind::Queued { position }).to_lowercase()
    ))
}

/// Several acknowledgements in one line, for when the sending budget is short:
/// `Queued: @ada #3, @bob #4.`
pub fn merged_queued_line(queued: &[(&str, u64)]) -> String {
    let each: Vec<String> = queued
        .iter()
        .map(|(user, position)| format!("@{user} #{position}"))
        .collect();
    chat_line(&format!("Queued: {}.", each.join(", ")))
}

/// `@ada here it is: https://ducks.example.com/i/… (tiny-sd · 64x64 · 4 steps · seed 7) "a duck…"`:
/// the link and parameters always fit; the prompt takes what room is left.
pub fn result_line(user: &str, summary: &Summary, links: &[&str]) -> String {
    let head = format!(
        "@{user} here it is: {} ({})",
        links.join(" "),
        summary.parameters()
    );
    let room = MAX_LINE_CHARS.saturating_sub(head.chars().count() + 3);
    if room < 10 {
        return chat_line(&head);
    }
    chat_line(&format!("{head} \"{}\"", shorten(&summary.prompt, room)))
}

/// A failure or a cancel, with what to do next: `@ada The GPU ran out of memory. Try a smaller …`.
pub fn ended_line(user: &str, event: &EventKind) -> String {
    chat_line(&format!("@{user} {}", status_line(event)))
}

/// `!models`: the model ids, the default first, as many as fit.
pub fn models_line(catalogue: &ModelCatalogue) -> String {
    if catalogue.models.is_empty() {
        return "No models yet: an operator must import one.".into();
    }
    let mut ids: Vec<&str> = catalogue.models.iter().map(|m| m.id.as_str()).collect();
    if let Some(default) = catalogue.default_model.as_deref()
        && let Some(at) = ids.iter().position(|id| *id == default)
    {
        ids.remove(at);
        ids.insert(0, default);
    }
    let mut line = String::from("Models:");
    for (n, id) in ids.iter().enumerate() {
        let more = format!(" …and {} more.", ids.len() - n);
        let next = format!(" {id}{}", if n + 1 < ids.len() { "," } else { "." });
        if line.chars().count() + next.chars().count() + more.chars().count() > MAX_LINE_CHARS {
            line.push_str(&more);
            break;
        }
        line.push_str(&next);
    }
    chat_line(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_contract::{FailureCode, JobRequest, Origin};

    #[test]
    fn lines_never_pass_500_characters_nor_read_as_commands() {
        let prompt: String = "🦆 狐狸 ".repeat(200);
        let mut request = JobRequest::new(&prompt, Origin::Cli);
        request.model = Some("tiny-sd".into());
        let summary = Summary::of(&request, None, &[]);
        let link = "https://ducks.example.com/i/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEf";
        let name = "a".repeat(25);
        for line in [
            result_line(&name, &summary, &[link]),
            ended_line(
                &name,
                &EventKind::Failed {
                    code: FailureCode::InvalidRequest,
                    message: prompt.clone(),
                    retryable: false,
                },
            ),
            chat_line(&prompt),
            chat_line("/ban everyone"),
            chat_line(".timeout someone"),
        ] {
            assert!(line.chars().count() <= MAX_LINE_CHARS, "{line}");
            assert!(!line.starts_with(['/', '.']), "{line}");
        }
        let result = result_line(&name, &summary, &[link]);
        assert!(result.contains(link), "the link always fits: {result}");
        assert!(result.ends_with("…\""), "{result}");
        assert_eq!(chat_line("/ban everyone"), "» /ban everyone");
        assert_eq!(chat_line("two\nlines"), "two lines");
    }

    #[test]
    fn lines_as_viewers_read_them() {
        let mut request = JobRequest::new("a duck in space", Origin::Cli);
        request.model = Some("tiny-sd".into());
        request.steps = Some(4);
        let image = ducks_contract::ImageRef {
            key: "k".into(),
            url: "u".into(),
            width: 64,
            height: 64,
            seed: 7,
        };
        let summary = Summary::of(&request, None, &[image]);
        let catalogue = ModelCatalogue {
            default_model: Some("sd15".into()),
            models: vec![],
            updated_at_ms: 0,
        };
        let lines = [
            queued_line("ada", 3),
            queued_line("ada", 1),
            merged_queued_line(&[("ada", 3), ("bob", 4)]),
            result_line("ada", &summary, &["https://ducks.example.com/i/abc"]),
            ended_line("ada", &EventKind::Cancelled),
            models_line(&catalogue),
        ];
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn models_fit_with_the_default_first() {
        let info = |id: &str| ducks_contract::ModelInfo {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            family: "sd15".into(),
            default_width: 512,
            default_height: 512,
            default_steps: 20,
            default_guidance: 7.5,
            max_width: 512,
            max_height: 512,
            max_steps: 50,
            max_images: 1,
            sizes: vec![],
            gpu: Default::default(),
            added_at_secs: None,
            tags: vec![],
        };
        let catalogue = ModelCatalogue {
            default_model: Some("sd15".into()),
            models: vec![info("anything"), info("sd15"), info("tiny-sd")],
            updated_at_ms: 0,
        };
        assert_eq!(models_line(&catalogue), "Models: sd15, anything, tiny-sd.");
        let many = ModelCatalogue {
            default_model: None,
            models: (0..100)
                .map(|n| info(&format!("a-rather-long-model-id-{n:03}")))
                .collect(),
            updated_at_ms: 0,
        };
        let line = models_line(&many);
        assert!(line.chars().count() <= MAX_LINE_CHARS, "{line}");
        assert!(line.ends_with("more."), "{line}");
    }
}
