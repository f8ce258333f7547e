//! `ducks models`: the catalogue in S3: list, import a model, create the tiny test model.

use std::path::PathBuf;

use ducks_runner::catalogue;
use ducks_runner::diffusion::{self, Family};
use ducks_runner::import::{ImportSpec, import_folder};
use ducks_runner::manifest::ModelManifest;
use ducks_runner::storage::Storage;

use crate::settings::Settings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the models in the bucket as a table.
    List,
    /// Upload a model's files from a folder (diffusers or flat layout) and write its manifest.
    Import {
        /// The folder holding the model (`hf:<repo>` is not available yet).
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
    },
    /// Create tiny-sd (random weights: it draws noise) and import it, for tests and the demo.
    CreateTiny {
        #[arg(long, default_value = "tiny-sd")]
        id: String,
    },
}

pub async fn run(command: Command, settings: &Settings) -> Result<(), super::Error> {
    let storage = Storage::connect(&settings.s3).await;
    match command {
        Command::List => {
            let (models, broken) = catalogue::list(&storage).await?;
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
        } => {
            if source.starts_with("hf:") {
                return Err(format!(
                    "Importing {source} needs the Hugging Face hub, which this build cannot reach yet: \
                     download the model into a folder and import that folder."
                )
                .into());
            }
            let spec = ImportSpec {
                id,
                family,
                name,
                description,
                tags,
            };
            let manifest = import_folder(&storage, &PathBuf::from(source), spec).await?;
            println!("Imported {} ({} files).", manifest.id, manifest.files.len());
        }
        Command::CreateTiny { id } => {
            let dir = tempfile_dir()?;
            diffusion::create_tiny(&dir)?;
            let spec = ImportSpec {
                id,
                family: Family::Tiny,
                name: Some("Tiny SD".into()),
                description: Some(
                    "A structurally real Stable Diffusion model with tiny random weights, for tests and the demo: it draws noise."
                        .into(),
                ),
                tags: vec!["test".into()],
            };
            let manifest = import_folder(&storage, &dir, spec).await;
            let _ = std::fs::remove_dir_all(&dir);
            let manifest = manifest?;
            println!("Created {} ({} files).", manifest.id, manifest.files.len());
        }
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf, super::Error> {
    let dir = std::env::temp_dir().join(format!("ducks-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
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
