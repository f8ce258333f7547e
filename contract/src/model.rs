//! What front ends need to list models and check requests against them, with no S3 at hand: the
//! catalogue snapshot the worker keeps in Redis, and the checks every front end and the worker
//! share ([`ModelCatalogue::check`], [`ModelInfo::check`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{FailureCode, GenerateParams, JobRequest, ValidationError};

/// One model of the catalogue, as the worker publishes it into Redis from the manifests in S3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Pipeline family, e.g. `sd15`, `sdxl`, `sd-turbo`.
    pub family: String,
    pub default_width: u32,
    pub default_height: u32,
    pub default_steps: u32,
    pub default_guidance: f32,
    pub max_width: u32,
    pub max_height: u32,
    pub max_steps: u32,
    pub max_images: u32,
    /// The sizes front ends offer (a short list, the default first). Any other size within the
    /// maximum is accepted too, except where a front end says otherwise.
    pub sizes: Vec<Size>,
    /// What one job of this model needs.
    pub gpu: GpuNeed,
    /// Unix time in seconds when the model was added to the bucket, when its manifest says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at_secs: Option<u64>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The GPU a model needs, for front ends to show ("runs on one GPU with 16 GiB").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuNeed {
    /// GPUs per job; 0 runs on the CPU.
    pub count: u32,
    /// The least GPU memory that works, in GiB.
    pub min_memory_gib: u32,
    /// Acceptable GPU products; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
}

/// An image size, written `WIDTHxHEIGHT` (`512x768`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub const fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Size {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = || {
            let (w, h) = text.trim().split_once(['x', 'X'])?;
            Some(Size::new(w.trim().parse().ok()?, h.trim().parse().ok()?))
        };
        parse().ok_or_else(|| {
            ValidationError(format!(
                "`{}` is not a size: write WIDTHxHEIGHT, e.g. 512x512.",
                text.chars().take(32).collect::<String>()
            ))
        })
    }
}

impl TryFrom<String> for Size {
    type Error = ValidationError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Size> for String {
    fn from(size: Size) -> Self {
        size.to_string()
    }
}

impl ModelInfo {
    /// Whether `request` fits this model, with the model's defaults for what it leaves out. The
    /// error is written for the person who asked.
    pub fn check(&self, request: &JobRequest) -> Result<(), ValidationError> {
        self.check_values(
            Size::new(
                request.width.unwrap_or(self.default_width),
                request.height.unwrap_or(self.default_height),
            ),
            request.steps.unwrap_or(self.default_steps),
            request.count,
        )
    }

    /// [`ModelInfo::check`] for parameters already settled (what the runner is given).
    pub fn check_params(&self, params: &GenerateParams) -> Result<(), ValidationError> {
        self.check_values(
            Size::new(params.width, params.height),
            params.steps,
            params.count,
        )
    }

    fn check_values(&self, size: Size, steps: u32, count: u32) -> Result<(), ValidationError> {
        if size.width > self.max_width || size.height > self.max_height {
            return Err(ValidationError(format!(
                "{size} is larger than {} allows ({}x{} at most). Try {}.",
                self.id,
                self.max_width,
                self.max_height,
                self.size_choices()
            )));
        }
        if steps > self.max_steps {
            return Err(ValidationError(format!(
                "{} runs at most {} steps, not {steps}.",
                self.id, self.max_steps
            )));
        }
        if count > self.max_images {
            return Err(ValidationError(format!(
                "{} draws at most {} images per request, not {count}.",
                self.id, self.max_images
            )));
        }
        Ok(())
    }

    /// `512x512, 768x512 or 512x768`.
    pub fn size_choices(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(Size::to_string).collect();
        match sizes.as_slice() {
            [] => format!("{}x{}", self.default_width, self.default_height),
            [one] => one.clone(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// The catalogue snapshot kept in Redis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCatalogue {
    /// The model used when a request names none.
    pub default_model: Option<String>,
    pub models: Vec<ModelInfo>,
    /// Unix time in milliseconds when the worker last refreshed it.
    pub updated_at_ms: u64,
}

/// Why a request cannot run on the catalogue's models; the text is for the person who asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    UnknownModel(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl CheckError {
    pub fn code(&self) -> FailureCode {
        match self {
            CheckError::UnknownModel(_) => FailureCode::UnknownModel,
            CheckError::Invalid(_) => FailureCode::InvalidRequest,
        }
    }
}

impl ModelCatalogue {
    pub fn get(&self, id: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|model| model.id == id)
    }

    /// The model a request names, or the default one.
    pub fn choose(&self, requested: Option<&str>) -> Result<&ModelInfo, CheckError> {
        let id = match requested {
            Some(id) => Some(id),
            None => self
                .default_model
                .as_deref()
                .or(match self.models.as_slice() {
                    [only] => Some(only.id.as_str()),
                    _ => None,
                }),
        };
        id.and_then(|id| self.get(id))
            .ok_or_else(|| CheckError::UnknownModel(unknown_model_message(requested, &self.ids())))
    }

    /// Whether `request` can run: its model exists and its size, steps and count fit that model.
    /// What a front end checks before queueing, and what the worker checks again.
    pub fn check(&self, request: &JobRequest) -> Result<&ModelInfo, CheckError> {
        let model = self.choose(request.model.as_deref())?;
        model.check(request)?;
        Ok(model)
    }

    pub fn ids(&self) -> Vec<String> {
        self.models.iter().map(|m| m.id.clone()).collect()
    }
}

/// The message for a model that is not in the catalogue, listing the ones that are.
pub fn unknown_model_message(requested: Option<&str>, available: &[String]) -> String {
    let list = if available.is_empty() {
        "none yet: an operator must import one".to_owned()
    } else {
        available.join(", ")
    };
    match requested {
        Some(model) => format!("There is no model `{model}`. Available models: {list}."),
        None => format!("Choose a model: no default is set. Available models: {list}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Origin;

    fn tiny() -> ModelInfo {
        ModelInfo {
            id: "tiny-sd".into(),
            name: "Tiny SD".into(),
            description: String::new(),
            family: "tiny-sd".into(),
            default_width: 64,
            default_height: 64,
            default_steps: 2,
            default_guidance: 7.5,
            max_width: 256,
            max_height: 256,
            max_steps: 50,
            max_images: 4,
            sizes: vec![Size::new(64, 64), Size::new(96, 64), Size::new(64, 96)],
            gpu: GpuNeed::default(),
            added_at_secs: None,
            tags: Vec::new(),
        }
    }

    fn catalogue(models: Vec<ModelInfo>, default: Option<&str>) -> ModelCatalogue {
        ModelCatalogue {
            default_model: default.map(str::to_owned),
            models,
            updated_at_ms: 0,
        }
    }

    /// Each case edits a request and expects `check` to pass or to answer exactly this text.
    #[test]
    fn check_table() {
        type Case = (&'static str, fn(&mut JobRequest), Result<(), &'static str>);
        let cases: &[Case] = &[
            ("defaults", |_| {}, Ok(())),
            (
                "the largest size",
                |r| (r.width, r.height) = (Some(256), Some(256)),
                Ok(()),
            ),
            (
                "too wide",
                |r| r.width = Some(512),
                Err(
                    "512x64 is larger than tiny-sd allows (256x256 at most). Try 64x64, 96x64 or 64x96.",
                ),
            ),
            (
                "too tall",
                |r| r.height = Some(264),
                Err(
                    "64x264 is larger than tiny-sd allows (256x256 at most). Try 64x64, 96x64 or 64x96.",
                ),
            ),
            (
                "too many steps",
                |r| r.steps = Some(51),
                Err("tiny-sd runs at most 50 steps, not 51."),
            ),
            ("steps at the limit", |r| r.steps = Some(50), Ok(())),
            ("four images", |r| r.count = 4, Ok(())),
            (
                "unknown model",
                |r| r.model = Some("sdxl".into()),
                Err("There is no model `sdxl`. Available models: tiny-sd."),
            ),
        ];
        let catalogue = catalogue(vec![tiny()], None);
        for (name, change, expect) in cases {
            let mut request = JobRequest::new("a duck", Origin::Cli);
            change(&mut request);
            let got = catalogue
                .check(&request)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(got, expect.map_err(str::to_owned), "case {name}");
        }
    }

    #[test]
    fn the_default_model_is_the_configured_one_or_the_only_one() {
        let mut other = tiny();
        other.id = "other".into();
        let request = JobRequest::new("a duck", Origin::Cli);
        assert_eq!(
            catalogue(vec![tiny()], None).check(&request).unwrap().id,
            "tiny-sd"
        );
        let two = catalogue(vec![tiny(), other.clone()], None);
        let refused = two.check(&request).unwrap_err();
        assert_eq!(refused.code(), FailureCode::UnknownModel);
        assert_eq!(
            refused.to_string(),
            "Choose a model: no default is set. Available models: tiny-sd, other."
        );
        let chosen = catalogue(vec![tiny(), other], Some("other"));
        assert_eq!(chosen.check(&request).unwrap().id, "other");
        assert_eq!(
            catalogue(vec![], None)
                .check(&request)
                .unwrap_err()
                .to_string(),
            "Choose a model: no default is set. Available models: none yet: an operator must import one."
        );
    }

    #[test]
    fn sizes_read_and_write_as_width_x_height() {
        assert_eq!("512x768".parse::<Size>().unwrap(), Size::new(512, 768));
        assert_eq!(" 64 X 64 ".parse::<Size>().unwrap(), Size::new(64, 64));
        assert_eq!(
            "big".parse::<Size>().unwrap_err().to_string(),
            "`big` is not a size: write WIDTHxHEIGHT, e.g. 512x512."
        );
        assert_eq!(
            serde_json::to_string(&Size::new(96, 64)).unwrap(),
            "\"96x64\""
        );
    }
}
