//! `ducks demo "prompt"`: start the local stack, run one job end to end, print the link and the
//! file, stop everything. With `--model sd-turbo` (or another known real model) it first imports
//! that model from the Hugging Face hub into the stack's bucket, once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ducks_contract::{JobRequest, Origin};
use ducks_models::hub::{self, Hub, HubError, human_size};
use ducks_models::import::{ImportSpec, import_folder};
use ducks_models::known::{KNOWN_MODELS, known_ids, known_model};
use ducks_models::{Family, Storage};
use ducks_runner::tiny::TINY_MODEL_ID;

use crate::dev::Stack;
use crate::follow;
use crate::settings::Settings;

#[derive(clap::Args)]
pub struct Args {
    /// What to draw.
    #[arg(default_value = "a rubber duck flying over the clouds")]
    prompt: String,
    /// The model: tiny-sd (the default; a test model that draws noise), a real model fetched
    /// from the Hugging Face hub on first use (sd-turbo, sdxl-turbo, sd15, sd21), any
    /// `hf:<owner>/<name>` or downloaded model folder with --family, or a model already in the
    /// stack's bucket.
    #[arg(long)]
    model: Option<String>,
    /// The family of an `hf:<owner>/<name>` model or a model folder: sd15, sd21, sd-turbo, sdxl,
    /// sdxl-turbo or tiny-sd.
    #[arg(long)]
    family: Option<Family>,
    #[arg(long)]
    seed: Option<u64>,
    /// How long the job may take, in seconds (a real model's first image on a CPU takes minutes).
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

/// Which model the demo draws with, and where it comes from when the stack lacks it.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// One the stack has, or must have: tiny-sd, or a model imported before.
    InBucket(String),
    /// One to import from the hub unless the bucket has it already.
    FromHub {
        id: String,
        repo: String,
        family: Family,
    },
    /// One downloaded elsewhere, to import from its folder unless the bucket has it already.
    FromFolder {
        id: String,
        folder: PathBuf,
        family: Family,
    },
}

impl Wanted {
    fn parse(model: Option<&str>, family: Option<Family>) -> Result<Self, String> {
        let model = model.map(str::trim).filter(|m| !m.is_empty());
        let family_of = |source: &str, what: &str| {
            family.ok_or_else(|| {
                format!(
                    "--model {source} needs --family (sd15, sd21, sd-turbo, sdxl, sdxl-turbo or \
                     tiny-sd): {what} does not say which pipeline the model is for"
                )
            })
        };
        match (model, family) {
            (None, _) => Ok(Wanted::InBucket(TINY_MODEL_ID.into())),
            (Some(source), _) if source.starts_with("hf:") => {
                let repo = &source["hf:".len()..];
                Ok(Wanted::FromHub {
                    id: id_for_name(repo),
                    repo: repo.into(),
                    family: family_of(source, "the hub")?,
                })
            }
            // A folder named like a known model is the folder only when --family says so.
            (Some(source), _)
                if Path::new(source).is_dir()
                    && (family.is_some() || known_model(source).is_none()) =>
            {
                let folder = PathBuf::from(source);
                let name = folder
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| source.to_owned());
                Ok(Wanted::FromFolder {
                    id: id_for_name(&name),
                    family: family_of(source, "a folder")?,
                    folder,
                })
            }
            (Some(id), None) => Ok(match known_model(id) {
                Some(known) => Wanted::FromHub {
                    id: known.id.into(),
                    repo: known.repo.into(),
                    family: known.family,
                },
                None => Wanted::InBucket(id.into()),
            }),
            (Some(id), Some(_)) => Err(format!(
                "--family applies to `--model hf:<owner>/<name>` or a model folder only, not to \
                 `{id}` (no folder of that name here)"
            )),
        }
    }

    fn id(&self) -> &str {
        match self {
            Wanted::InBucket(id) | Wanted::FromHub { id, .. } | Wanted::FromFolder { id, .. } => id,
        }
    }
}

/// A bucket id from a hub repository's or a folder's name: `stabilityai/sdxl-turbo` →
/// `sdxl-turbo`.
fn id_for_name(name: &str) -> String {
    let name = name.rsplit('/').next().unwrap_or(name).to_lowercase();
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub async fn run(args: Args, settings: Settings) -> Result<u8, crate::Error> {
    let wanted = Wanted::parse(args.model.as_deref(), args.family)?;
    eprintln!("Starting Redis, S3 and a worker on this machine…");
    let stack = Stack::start(settings).await?;
    let work = async {
        ensure_model(&wanted, &stack).await?;
        run_one(&args, wanted.id(), &stack).await
    };
    // Ctrl-C drops the work (a download's folder goes with it) and stops the stack, whose stop
    // also stops a runner still drawing: nothing keeps running once the demo has ended.
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = crate::signals::terminated() => Err("Interrupted.".into()),
    };
    let stopped = stack.stop().await;
    for (id, end) in stopped.as_deref().unwrap_or_default() {
        eprintln!("{}", crate::commands::dev::job_line(id, *end));
    }
    let (code, saved) = outcome?;
    stopped?;
    for line in closing_notes(wanted.id(), &saved) {
        eprintln!("{line}");
    }
    Ok(code)
}

/// Imports the wanted model from the hub (or its folder) when it is not in the stack's bucket
/// yet, stating the download and the room it needs first.
async fn ensure_model(wanted: &Wanted, stack: &Stack) -> Result<(), crate::Error> {
    let catalogue = stack.queue.models().await?;
    if catalogue.models.iter().any(|m| m.id == wanted.id()) {
        return Ok(());
    }
    let storage = Storage::connect(&stack.settings.s3).await;
    let spec = |id: &str, family| ImportSpec {
        id: id.to_owned(),
        family,
        name: None,
        description: None,
        tags: Vec::new(),
    };
    let manifest = match wanted {
        Wanted::InBucket(id) => {
            return Err(format!(
                "There is no model `{id}` in this stack's bucket. The demo fetches {} from the \
                 Hugging Face hub by name, and imports a downloaded model folder given with \
                 --family.",
                known_ids()
            )
            .into());
        }
        Wanted::FromFolder { id, folder, family } => {
            eprintln!("Importing {id} from {}.", folder.display());
            import_folder(&storage, folder, spec(id, *family)).await?
        }
        Wanted::FromHub { id, repo, family } => {
            eprintln!(
                "{id} is not in this stack yet: importing hf:{repo} from the Hugging Face hub, once."
            );
            let offline = |detail: String, endpoint: String| {
                format!(
                    "Cannot reach the Hugging Face hub at {endpoint} ({detail}). This machine looks \
                     offline: download the model folder of {endpoint}/{repo} elsewhere, then \
                     `ducks demo --model <folder> --family {family}` imports it from there."
                )
            };
            let plan = match hub::plan(&Hub::from_env()?, repo, None, spec(id, *family)).await {
                Err(HubError::Unreachable {
                    endpoint, detail, ..
                }) => return Err(offline(detail, endpoint).into()),
                other => other?,
            };
            eprintln!("{}", plan.describe());
            check_room(
                id,
                stack.settings.dev.data_dir.as_path(),
                plan.download_size().0,
            )?;
            hub::fetch(&storage, plan).await?
        }
    };
    eprintln!("Imported {} ({} files).", manifest.id, manifest.files.len());
    let default_model = &stack.settings.worker.default_model;
    crate::commands::models::publish_catalogue(&stack.queue, &storage, default_model).await?;
    Ok(())
}

/// Says how much room a download of `bytes` takes in the data folder, and refuses when the
/// folder has not that much: the bucket keeps one copy, the runner's weight cache another.
fn check_room(id: &str, data: &Path, bytes: u64) -> Result<(), crate::Error> {
    let needed = bytes.saturating_mul(2);
    let free = hub::free_space(data);
    eprintln!(
        "Then it needs {} in {} (the bucket's copy and the weight cache){}.",
        human_size(needed),
        data.display(),
        free.map(|f| format!("; {} is free there", human_size(f)))
            .unwrap_or_default()
    );
    match free {
        Some(free) if free < needed => Err(format!(
            "Not enough room: {id} needs {} in {} and only {} is free. Free some space, or set \
             dev.data_dir (DUCKS_DEV__DATA_DIR) to a folder with room.",
            human_size(needed),
            data.display(),
            human_size(free)
        )
        .into()),
        _ => Ok(()),
    }
}

/// Draws one image; returns the exit code and the saved files.
async fn run_one(
    args: &Args,
    model: &str,
    stack: &Stack,
) -> Result<(u8, Vec<PathBuf>), crate::Error> {
    let mut request = JobRequest::new(args.prompt.clone(), Origin::Cli);
    request.model = Some(model.into());
    request.seed = args.seed;
    request.requester.id = "demo".into();
    let (submitted, _tail, watch) = follow::submit_and_watch(&stack.queue, request).await?;
    eprintln!(
        "Submitted {} with {model}: {:?}",
        submitted.id(),
        args.prompt
    );
    let followed = follow::follow(
        watch,
        &stack.images_dir(),
        Duration::from_secs(args.timeout),
    )
    .await?;
    follow::print_images(&followed.images);
    let saved = followed.images.into_iter().map(|(_, path)| path).collect();
    Ok((if followed.succeeded { 0 } else { 1 }, saved))
}

/// What a newcomer should know once the stack has stopped: where the image is, why its link no
/// longer opens, and (after tiny-sd) how to draw a real image.
fn closing_notes(model: &str, saved: &[PathBuf]) -> Vec<String> {
    let mut notes = Vec::new();
    if !saved.is_empty() {
        let files: Vec<String> = saved.iter().map(|p| shown(p)).collect();
        notes.push(format!(
            "The image is saved as {}. Its link opens only while a stack runs: start one with \
             `ducks dev` in this folder.",
            files.join(", ")
        ));
    }
    if model == TINY_MODEL_ID {
        let real = KNOWN_MODELS[0].id;
        notes.push(format!(
            "{TINY_MODEL_ID} is a test model, so the image is noise: `make demo MODEL={real}` (or \
             `ducks demo --model {real}`) draws a real one, after a one-time download."
        ));
    }
    notes
}

/// A path as the user can find it from anywhere.
fn shown(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(id: &str, repo: &str, family: Family) -> Wanted {
        Wanted::FromHub {
            id: id.into(),
            repo: repo.into(),
            family,
        }
    }

    #[test]
    fn models_are_taken_from_the_bucket_the_known_list_or_the_hub() {
        /// `--model`, `--family`, and what they mean (or a part of the refusal).
        type Case<'a> = (Option<&'a str>, Option<Family>, Result<Wanted, &'a str>);
        let table: [Case; 7] = [
            (None, None, Ok(Wanted::InBucket("tiny-sd".into()))),
            (Some(" "), None, Ok(Wanted::InBucket("tiny-sd".into()))),
            (
                Some("sd-turbo"),
                None,
                Ok(hub("sd-turbo", "stabilityai/sd-turbo", Family::SdTurbo)),
            ),
            (
                Some("my-model"),
                None,
                Ok(Wanted::InBucket("my-model".into())),
            ),
            (
                Some("hf:Someone/My_Model.v2"),
                Some(Family::Sd15),
                Ok(hub("my_model.v2", "Someone/My_Model.v2", Family::Sd15)),
            ),
            (Some("hf:a/b"), None, Err("needs --family")),
            (
                Some("sd-turbo"),
                Some(Family::Sd15),
                Err("--family applies to `--model hf:<owner>/<name>` or a model folder only"),
            ),
        ];
        for (model, family, expected) in table {
            let got = Wanted::parse(model, family);
            match expected {
                Ok(wanted) => assert_eq!(got, Ok(wanted), "{model:?}"),
                Err(part) => {
                    let err = got.unwrap_err();
                    assert!(err.contains(part), "{model:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn after_tiny_sd_the_notes_say_noise_and_how_to_draw_a_real_image() {
        let saved = [PathBuf::from("/tmp/x/01J-0.png")];
        let notes = closing_notes("tiny-sd", &saved);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("/tmp/x/01J-0.png"), "{notes:?}");
        assert!(notes[0].contains("`ducks dev`"), "{notes:?}");
        assert!(notes[1].contains("noise"), "{notes:?}");
        assert!(notes[1].contains("make demo MODEL=sd-turbo"), "{notes:?}");
        let notes = closing_notes("sd-turbo", &saved);
        assert_eq!(notes.len(), 1, "a real model draws no noise: {notes:?}");
        assert!(closing_notes("sd-turbo", &[]).is_empty());
    }
}
