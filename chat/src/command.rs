//! [`Imagine`]: one image request as a person typed it, before it becomes a job.

use ducks_contract::{JobRequest, Origin, Requester, Size, ValidationError};

/// What a person asked for. Every field but the prompt is optional: the model's defaults fill
/// the rest when the worker settles the job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imagine {
    pub prompt: String,
    pub negative: Option<String>,
    pub model: Option<String>,
    /// `WIDTHxHEIGHT`, as typed; checked when the request is made.
    pub size: Option<String>,
    pub steps: Option<u32>,
    pub seed: Option<u64>,
    pub count: Option<u32>,
}

impl Imagine {
    /// One line of chat: the prompt, then options in any order after it (`--model tiny-sd`,
    /// `--size 512x768`, `--steps 20`, `--seed 7`, `--count 2`, `--no blurry, text`). Text
    /// after `--no` runs to the next option. The error names what was wrong.
    pub fn parse_line(line: &str) -> Result<Imagine, ValidationError> {
        let mut imagine = Imagine::default();
        let mut words = line.split_whitespace().peekable();
        let mut prompt = Vec::new();
        while let Some(word) = words.next() {
            let Some(option) = word.strip_prefix("--") else {
                prompt.push(word);
                continue;
            };
            let mut value = || {
                words
                    .next()
                    .ok_or_else(|| ValidationError(format!("`--{option}` needs a value after it.")))
            };
            match option {
                "model" | "m" => imagine.model = Some(value()?.to_owned()),
                "size" | "s" => imagine.size = Some(value()?.to_owned()),
                "steps" => imagine.steps = Some(number(option, value()?)?),
                "seed" => imagine.seed = Some(number(option, value()?)?),
                "count" | "n" => imagine.count = Some(number(option, value()?)?),
                "no" => {
                    let mut negative = Vec::new();
                    while let Some(word) = words.next_if(|w| !w.starts_with("--")) {
                        negative.push(word);
                    }
                    if negative.is_empty() {
                        return Err(ValidationError(
                            "`--no` needs what to leave out after it.".into(),
                        ));
                    }
                    imagine.negative = Some(negative.join(" "));
                }
                _ => {
                    return Err(ValidationError(format!(
                        "`--{}` is not an option: use --model, --size, --steps, --seed, --count or --no.",
                        option.chars().take(32).collect::<String>()
                    )));
                }
            }
        }
        imagine.prompt = prompt.join(" ");
        Ok(imagine)
    }

    /// The job this asks for, from `origin` on behalf of `requester`, checked against the limits
    /// every model shares (the catalogue's own checks come when it is submitted).
    pub fn into_request(
        self,
        origin: Origin,
        requester: Requester,
    ) -> Result<JobRequest, ValidationError> {
        let mut request = JobRequest::new(self.prompt.trim(), origin);
        request.requester = requester;
        request.negative_prompt = self.negative.unwrap_or_default().trim().to_owned();
        request.model = self.model.map(|m| m.trim().to_owned());
        if let Some(size) = self.size {
            let size: Size = size.parse()?;
            request.width = Some(size.width);
            request.height = Some(size.height);
        }
        request.steps = self.steps;
        request.seed = self.seed;
        request.count = self.count.unwrap_or(1);
        request.validate()?;
        Ok(request)
    }
}

fn number<T: std::str::FromStr>(option: &str, text: &str) -> Result<T, ValidationError> {
    text.parse().map_err(|_| {
        ValidationError(format!(
            "`--{option}` takes a whole number, not `{}`.",
            text.chars().take(32).collect::<String>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_line_table() {
        let cases: &[(&str, Result<Imagine, &str>)] = &[
            (
                "a duck in space",
                Ok(Imagine {
                    prompt: "a duck in space".into(),
                    ..Imagine::default()
                }),
            ),
            (
                "a duck --model tiny-sd --size 64x64 --steps 4 --seed 7 --count 2",
                Ok(Imagine {
                    prompt: "a duck".into(),
                    model: Some("tiny-sd".into()),
                    size: Some("64x64".into()),
                    steps: Some(4),
                    seed: Some(7),
                    count: Some(2),
                    ..Imagine::default()
                }),
            ),
            (
                "a duck --no blurry, text --seed 1 in space",
                Ok(Imagine {
                    prompt: "a duck in space".into(),
                    negative: Some("blurry, text".into()),
                    seed: Some(1),
                    ..Imagine::default()
                }),
            ),
            (
                "a duck --steps many",
                Err("`--steps` takes a whole number, not `many`."),
            ),
            ("a duck --seed", Err("`--seed` needs a value after it.")),
            (
                "a duck --no --seed 1",
                Err("`--no` needs what to leave out after it."),
            ),
            (
                "a duck --style anime",
                Err(
                    "`--style` is not an option: use --model, --size, --steps, --seed, --count or --no.",
                ),
            ),
        ];
        for (line, expected) in cases {
            let got = Imagine::parse_line(line).map_err(|e| e.0);
            assert_eq!(got, expected.clone().map_err(str::to_owned), "{line}");
        }
    }

    #[test]
    fn into_request_settles_the_size_and_checks_limits() {
        let imagine = Imagine {
            prompt: " a duck ".into(),
            size: Some("512x768".into()),
            ..Imagine::default()
        };
        let request = imagine
            .into_request(Origin::Cli, Requester::default())
            .unwrap();
        assert_eq!(
            (request.prompt.as_str(), request.width, request.height),
            ("a duck", Some(512), Some(768))
        );
        let bad_size = Imagine {
            prompt: "a duck".into(),
            size: Some("big".into()),
            ..Imagine::default()
        };
        assert_eq!(
            bad_size
                .into_request(Origin::Cli, Requester::default())
                .unwrap_err()
                .0,
            "`big` is not a size: write WIDTHxHEIGHT, e.g. 512x512."
        );
        let empty = Imagine::default();
        assert_eq!(
            empty
                .into_request(Origin::Cli, Requester::default())
                .unwrap_err()
                .0,
            "The prompt is empty: describe the image you want."
        );
    }
}
