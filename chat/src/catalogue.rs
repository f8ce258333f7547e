//! What a front end offers while a person types: models from the catalogue snapshot (never S3),
//! filtered by what is typed, and the sizes of the chosen model.

use ducks_contract::{GpuNeed, ModelCatalogue};

/// Discord shows at most 25 autocomplete choices; the other front ends use the same cap.
pub const MAX_CHOICES: usize = 25;

/// Discord caps a choice's name at 100 characters.
const MAX_CHOICE_NAME: usize = 100;

/// One autocomplete choice: what is shown, and the value that is sent back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub name: String,
    pub value: String,
}

/// Models whose id or name contains what is typed (case-insensitive), those that start with it
/// first, at most [`MAX_CHOICES`]. Each shows the model's name, id and default size.
pub fn model_choices(catalogue: &ModelCatalogue, typed: &str) -> Vec<Choice> {
    let typed = typed.trim().to_lowercase();
    let mut matches: Vec<(bool, &ducks_contract::ModelInfo)> = catalogue
        .models
        .iter()
        .filter_map(|model| {
            let id = model.id.to_lowercase();
            let name = model.name.to_lowercase();
            let starts = id.starts_with(&typed) || name.starts_with(&typed);
            (starts || id.contains(&typed) || name.contains(&typed)).then_some((starts, model))
        })
        .collect();
    // Prefix matches first; the catalogue's order (the worker sorts by id) within each group.
    matches.sort_by_key(|(starts, _)| !starts);
    matches
        .into_iter()
        .take(MAX_CHOICES)
        .map(|(_, model)| Choice {
            name: crate::shorten(
                &format!(
                    "{} ({}) · {}x{} · {}",
                    model.name,
                    model.id,
                    model.default_width,
                    model.default_height,
                    describe_gpu(&model.gpu)
                ),
                MAX_CHOICE_NAME,
            )
            .into_owned(),
            value: model.id.clone(),
        })
        .collect()
}

/// The sizes `model` (or the default model) offers, those containing what is typed, default
/// first. An unknown model offers nothing: the command's own check explains that.
pub fn size_choices(catalogue: &ModelCatalogue, model: Option<&str>, typed: &str) -> Vec<Choice> {
    let Ok(model) = catalogue.choose(model) else {
        return Vec::new();
    };
    let typed = typed.trim().to_lowercase();
    model
        .sizes
        .iter()
        .map(ToString::to_string)
        .filter(|size| size.contains(&typed))
        .take(MAX_CHOICES)
        .map(|size| Choice {
            name: size.clone(),
            value: size,
        })
        .collect()
}

/// "1 GPU with 16 GiB", "2 GPUs with 80 GiB each", "CPU".
pub fn describe_gpu(gpu: &GpuNeed) -> String {
    match (gpu.count, gpu.min_memory_gib) {
        (0, _) => "CPU".into(),
        (1, 0) => "1 GPU".into(),
        (1, gib) => format!("1 GPU with {gib} GiB"),
        (n, 0) => format!("{n} GPUs"),
        (n, gib) => format!("{n} GPUs with {gib} GiB each"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_contract::{ModelInfo, Size};

    fn model(id: &str, name: &str) -> ModelInfo {
        ModelInfo {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            family: "sd15".into(),
            default_width: 512,
            default_height: 512,
            default_steps: 20,
            default_guidance: 7.5,
            max_width: 768,
            max_height: 768,
            max_steps: 50,
            max_images: 4,
            sizes: vec![Size::new(512, 512), Size::new(768, 512)],
            gpu: GpuNeed {
                count: 1,
                min_memory_gib: 8,
                products: vec![],
            },
            added_at_secs: None,
            tags: vec![],
        }
    }

    fn catalogue(models: Vec<ModelInfo>) -> ModelCatalogue {
        ModelCatalogue {
            default_model: Some(models[0].id.clone()),
            models,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn models_filter_by_what_is_typed_prefix_first() {
        let catalogue = catalogue(vec![
            model("dreamshaper", "DreamShaper 8"),
            model("sd15", "Stable Diffusion 1.5"),
            model("sdxl", "Stable Diffusion XL"),
        ]);
        let values = |typed| -> Vec<String> {
            model_choices(&catalogue, typed)
                .into_iter()
                .map(|c| c.value)
                .collect()
        };
        assert_eq!(values(""), ["dreamshaper", "sd15", "sdxl"]);
        assert_eq!(values("SD"), ["sd15", "sdxl"]);
        // "diffusion" is in two names; "xl" only in one; "sha" in the middle of one.
        assert_eq!(values("xl"), ["sdxl"]);
        assert_eq!(values("sha"), ["dreamshaper"]);
        assert!(values("midjourney").is_empty());
        assert_eq!(
            model_choices(&catalogue, "sd1")[0].name,
            "Stable Diffusion 1.5 (sd15) · 512x512 · 1 GPU with 8 GiB"
        );
    }

    #[test]
    fn at_most_25_choices() {
        let models = (0..40)
            .map(|i| model(&format!("model-{i:02}"), "Model"))
            .collect();
        assert_eq!(model_choices(&catalogue(models), "mod").len(), MAX_CHOICES);
    }

    #[test]
    fn sizes_of_the_chosen_or_default_model() {
        let mut small = model("tiny-sd", "Tiny");
        small.sizes = vec![Size::new(64, 64)];
        let catalogue = catalogue(vec![model("sd15", "SD"), small]);
        let values = |model, typed| -> Vec<String> {
            size_choices(&catalogue, model, typed)
                .into_iter()
                .map(|c| c.value)
                .collect()
        };
        assert_eq!(values(None, ""), ["512x512", "768x512"]);
        assert_eq!(values(Some("tiny-sd"), ""), ["64x64"]);
        assert_eq!(values(None, "768"), ["768x512"]);
        assert!(values(Some("nope"), "").is_empty());
    }

    #[test]
    fn gpu_in_words() {
        let gpu = |count, min_memory_gib| GpuNeed {
            count,
            min_memory_gib,
            products: vec![],
        };
        assert_eq!(describe_gpu(&gpu(0, 0)), "CPU");
        assert_eq!(describe_gpu(&gpu(1, 0)), "1 GPU");
        assert_eq!(describe_gpu(&gpu(1, 16)), "1 GPU with 16 GiB");
        assert_eq!(describe_gpu(&gpu(2, 80)), "2 GPUs with 80 GiB each");
    }
}
