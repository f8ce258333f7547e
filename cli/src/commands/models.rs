//! `ducks models`: the catalogue in S3: list, import a model, create the tiny test model.

use std::path::PathBuf;

use ducks_models::hub::{self, Hub};
use ducks_models::import::{ImportSpec, import_folder};
use ducks_models::{Family, ManifestIndex, ModelManifest, Storage, bucket};
use ducks_queue::{Queue, now_ms};
use ducks_runner::tiny;

use crate::settings::Settings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the models in the bucket as a table.
    List,
    /// Upload a model's files from a folder (diffusers or flat layout) and write its manifest.
    Import {
        /// The folder holding the model, or `hf:<owner>/<name>` to download it from the Hugging Face
        /// hub (`HF_ENDPOINT` names a mirror, `HF_TOKEN` a token for gated or private models).
        source: String,
        #[arg(long)]
        id: String,
        /// sd15, sd21, sd-turbo, sdxl, sdxl-turbo or tiny-sd.
        #[arg(long)]
        family: Family,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// With `hf:<repo>`: the branch, tag or commit to import (default: main).
        #[arg(long)]
        revision: Option<String>,
    },
    /// Create tiny-sd (random weights: it draws noise) and import it, for tests and the demo.
    CreateTiny {
        #[arg(long, default_value = tiny::TINY_MODEL_ID)]
        id: String,
    },
}

pub async fn run(command: Command, settings: &Settings) -> Result<(), crate::Error> {
    let storage = Storage::connect(&settings.s3).await;
    match command {
        Command::List => {
            let (models, broken) = bucket::list(&storage).await?;
            print!("{}", table(&models));
            for problem in broken {
                eprintln!("warning: {problem}");
            }
        }
        Command::Import {
            source,
            id,
            family,
            name,
            description,
            tags,
            revision,
        } => {
            let spec = ImportSpec {
                id,
                family,
                name,
                description,
                tags,
            };
            let manifest = match source.strip_prefix("hf:") {
                Some(repo) => {
                    let hf = Hub::from_env()?;
                    hub::import(&storage, &hf, repo, revision.as_deref(), spec).await?
                }
                None if revision.is_some() => {
                    return Err("--revision applies to `hf:<repo>` sources only".into());
                }
                None => import_folder(&storage, &PathBuf::from(source), spec).await?,
            };
            println!("Imported {} ({} files).", manifest.id, manifest.files.len());
            publish(settings, &storage).await;
        }
        Command::CreateTiny { id } => {
            let manifest = tiny::seed(&storage, &id).await?;
            println!("Created {} ({} files).", manifest.id, manifest.files.len());
            publish(settings, &storage).await;
        }
    }
    Ok(())
}

/// Publishes the catalogue to Redis at once, so the new model can be asked for even while no
/// worker runs (workers scaled to zero). Without Redis the model is imported all the same: the
/// API or a worker publishes it within its refresh interval.
pub(crate) async fn publish(settings: &Settings, storage: &Storage) {
    let published = async {
        let queue = settings.connect_queue().await.map_err(|e| e.to_string())?;
        publish_catalogue(&queue, storage, &settings.worker.default_model).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), published).await {
        Ok(Ok(models)) => println!(
            "Published the catalogue: {models} model{}.",
            if models == 1 { "" } else { "s" }
        ),
        Ok(Err(error)) => eprintln!(
            "note: the catalogue was not published now ({error}); the API or a worker publishes it within a minute."
        ),
        Err(_) => eprintln!(
            "note: Redis did not answer within 10 s, so the catalogue was not published now; the API or a worker publishes it within a minute."
        ),
    }
}

/// Reads every manifest in the bucket and publishes the catalogue through `queue`; returns how
/// many models it lists.
pub(crate) async fn publish_catalogue(
    queue: &Queue,
    storage: &Storage,
    default_model: &str,
) -> Result<usize, String> {
    let catalogue = ManifestIndex::default()
        .changed_snapshot(storage, default_model, now_ms())
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    queue
        .publish_models(&catalogue)
        .await
        .map_err(|e| e.to_string())?;
    Ok(catalogue.models.len())
}

/// The catalogue as an aligned text table.
pub fn table(models: &[ModelManifest]) -> String {
    let mut rows = vec![
        [
            "ID",
            "FAMILY",
            "SIZE",
            "STEPS",
            "MAX",
            "GPUS",
            "DESCRIPTION",
        ]
        .map(String::from),
    ];
    for m in models {
        rows.push([
            m.id.clone(),
            m.family.clone(),
            format!("{}x{}", m.defaults.width, m.defaults.height),
            m.defaults.steps.to_string(),
            format!("{}x{}", m.limits.max_width, m.limits.max_height),
            m.resources.gpus.to_string(),
            m.description.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if models.is_empty() {
        out.push_str(
            "(no models: import one with `ducks models import` or `ducks models create-tiny`)\n",
        );
    }
    out
}
