//! The real models `ducks demo --model <id>` can fetch by a short id: where each lives on the
//! Hugging Face hub and which family it is. Pure data; the hub import does the fetching.

use crate::family::Family;

/// A public model on the Hugging Face hub that needs no token to download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownModel {
    /// The id it gets in the bucket, and the short name users type.
    pub id: &'static str,
    /// `owner/name` on the hub.
    pub repo: &'static str,
    pub family: Family,
}

/// The first is the one to suggest: sd-turbo draws a recognisable 512x512 image in one step,
/// which is what a CPU can afford.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        id: "sd-turbo",
        repo: "stabilityai/sd-turbo",
        family: Family::SdTurbo,
    },
    KnownModel {
        id: "sdxl-turbo",
        repo: "stabilityai/sdxl-turbo",
        family: Family::SdxlTurbo,
    },
    KnownModel {
        id: "sd15",
        repo: "stable-diffusion-v1-5/stable-diffusion-v1-5",
        family: Family::Sd15,
    },
    KnownModel {
        id: "sd21",
        repo: "stabilityai/stable-diffusion-2-1",
        family: Family::Sd21,
    },
];

/// The known model called `id`, if any.
pub fn known_model(id: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.id == id)
}

/// The known ids, for a sentence: "sd-turbo, sdxl-turbo, sd15 or sd21".
pub fn known_ids() -> String {
    let ids: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.id).collect();
    match ids.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_are_found_by_their_unique_ids() {
        for model in KNOWN_MODELS {
            assert_eq!(known_model(model.id), Some(model));
            assert!(model.repo.split('/').count() == 2, "{model:?}");
        }
        let mut ids: Vec<_> = KNOWN_MODELS.iter().map(|m| m.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), KNOWN_MODELS.len());
        assert_eq!(known_model("sd-turbo").unwrap().family, Family::SdTurbo);
        assert_eq!(known_model("tiny-sd"), None);
    }

    #[test]
    fn ids_read_as_a_list() {
        assert_eq!(known_ids(), "sd-turbo, sdxl-turbo, sd15 or sd21");
    }
}
