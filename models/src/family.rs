//! Model families and the roles their files play.

use std::fmt;
use std::str::FromStr;

use ducks_contract::Size;

/// A pipeline family: which architecture, text encoders and scheduler a model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Stable Diffusion 1.5: one CLIP ViT-L text encoder, DDIM, epsilon prediction.
    Sd15,
    /// Stable Diffusion 2.1 (768): OpenCLIP ViT-H, DDIM, v-prediction.
    Sd21,
    /// SD-Turbo: the 2.1 architecture distilled for one step without guidance.
    SdTurbo,
    /// SDXL base 1.0: two text encoders, DDIM.
    Sdxl,
    /// SDXL-Turbo: the XL architecture distilled for one step without guidance.
    SdxlTurbo,
    /// A tiny, randomly initialised SD for tests and demos; its architecture comes from its
    /// `config` file (ducks-runner's `create_tiny` writes it).
    Tiny,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Sd15,
        Family::Sd21,
        Family::SdTurbo,
        Family::Sdxl,
        Family::SdxlTurbo,
        Family::Tiny,
    ];

    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sd15 => "sd15",
            Family::Sd21 => "sd21",
            Family::SdTurbo => "sd-turbo",
            Family::Sdxl => "sdxl",
            Family::SdxlTurbo => "sdxl-turbo",
            Family::Tiny => "tiny-sd",
        }
    }

    /// Steps the family is meant to run with (candle's example uses 30 for the full models).
    pub fn default_steps(self) -> u32 {
        match self {
            Family::Sd15 | Family::Sd21 | Family::Sdxl => 30,
            Family::SdTurbo | Family::SdxlTurbo => 1,
            Family::Tiny => 2,
        }
    }

    /// Classifier-free guidance scale; at or below 1.0 guidance is off (the turbo models are
    /// distilled to work without it).
    pub fn default_guidance(self) -> f32 {
        match self {
            Family::Sd15 | Family::Sd21 | Family::Sdxl | Family::Tiny => 7.5,
            Family::SdTurbo | Family::SdxlTurbo => 0.0,
        }
    }

    /// The square size, in pixels, the family was trained at.
    pub fn default_size(self) -> u32 {
        match self {
            Family::Sd15 | Family::SdTurbo | Family::SdxlTurbo => 512,
            Family::Sd21 => 768,
            Family::Sdxl => 1024,
            Family::Tiny => 64,
        }
    }

    /// The sizes a model of this family offers unless its manifest lists its own: the square it
    /// was trained at, then landscape and portrait at half as wide again.
    pub fn default_sizes(self) -> Vec<Size> {
        let side = self.default_size();
        let long = side + side / 2;
        vec![
            Size::new(side, side),
            Size::new(long, side),
            Size::new(side, long),
        ]
    }

    /// The scheduler that runs, by its manifest name.
    pub fn scheduler_name(self) -> &'static str {
        match self {
            Family::Sd15 | Family::Sd21 | Family::Sdxl | Family::Tiny => "ddim",
            Family::SdTurbo | Family::SdxlTurbo => "euler_ancestral",
        }
    }

    /// Whether the family has a second text encoder (the XL models).
    pub fn is_xl(self) -> bool {
        matches!(self, Family::Sdxl | Family::SdxlTurbo)
    }

    /// The file roles the runner's pipeline needs for this family.
    pub fn required_roles(self) -> &'static [FileRole] {
        use FileRole::*;
        match self {
            Family::Sd15 | Family::Sd21 | Family::SdTurbo => &[Unet, Vae, TextEncoder, Tokenizer],
            Family::Sdxl | Family::SdxlTurbo => {
                &[Unet, Vae, TextEncoder, TextEncoder2, Tokenizer, Tokenizer2]
            }
            Family::Tiny => &[Unet, Vae, TextEncoder, Tokenizer, Config],
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of: {expected}")]
pub struct UnknownName {
    kind: &'static str,
    value: String,
    expected: String,
}

impl FromStr for Family {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .into_iter()
            .find(|family| family.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "model family",
                value: s.to_owned(),
                expected: Family::ALL.map(Family::as_str).join(", "),
            })
    }
}

/// What a model file is used for. The manifest's `role` strings map onto these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileRole {
    Unet,
    Vae,
    TextEncoder,
    TextEncoder2,
    Tokenizer,
    Tokenizer2,
    /// The architecture description of a model whose shape is not a known preset (tiny-sd).
    Config,
}

impl FileRole {
    pub const ALL: [FileRole; 7] = [
        FileRole::Unet,
        FileRole::Vae,
        FileRole::TextEncoder,
        FileRole::TextEncoder2,
        FileRole::Tokenizer,
        FileRole::Tokenizer2,
        FileRole::Config,
    ];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FileRole::Unet => "unet",
            FileRole::Vae => "vae",
            FileRole::TextEncoder => "text_encoder",
            FileRole::TextEncoder2 => "text_encoder_2",
            FileRole::Tokenizer => "tokenizer",
            FileRole::Tokenizer2 => "tokenizer_2",
            FileRole::Config => "config",
        }
    }
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FileRole {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileRole::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "file role",
                value: s.to_owned(),
                expected: FileRole::ALL.map(FileRole::as_str).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for family in Family::ALL {
            assert_eq!(family.to_string().parse::<Family>(), Ok(family));
        }
        for role in FileRole::ALL {
            assert_eq!(role.to_string().parse::<FileRole>(), Ok(role));
        }
        let error = "sd3".parse::<Family>().unwrap_err().to_string();
        assert!(
            error.contains("sd3") && error.contains("tiny-sd"),
            "{error}"
        );
    }

    #[test]
    fn xl_families_need_two_text_encoders() {
        for family in Family::ALL {
            let roles = family.required_roles();
            assert_eq!(
                roles.contains(&FileRole::TextEncoder2),
                family.is_xl(),
                "{family}"
            );
            assert_eq!(roles.contains(&FileRole::Tokenizer2), family.is_xl());
            assert_eq!(roles.contains(&FileRole::Config), family == Family::Tiny);
        }
    }
}
