//! A request turned into [`GenerateParams`] for one model: its defaults filled in, its limits
//! checked, the seed chosen. Pure, except for the random seed a request without one gets.

use ducks_contract::{GenerateParams, JobRequest, ValidationError};

use crate::manifest::ModelManifest;

/// The request's parameters on `manifest`'s model. The error is written for the person who asked.
pub fn resolve(
    request: &JobRequest,
    manifest: &ModelManifest,
) -> Result<GenerateParams, ValidationError> {
    let info = manifest.info();
    info.check(request)?;
    Ok(GenerateParams {
        prompt: request.prompt.clone(),
        negative_prompt: request.negative_prompt.clone(),
        width: request.width.unwrap_or(info.default_width),
        height: request.height.unwrap_or(info.default_height),
        steps: request.steps.unwrap_or(info.default_steps),
        guidance: request.guidance.unwrap_or(info.default_guidance),
        // No seed asked for: pick one and report it, so the image can be made again.
        seed: request
            .seed
            .unwrap_or_else(|| fastrand::u64(..=ducks_contract::limits::MAX_SEED)),
        count: request.count,
    })
}
