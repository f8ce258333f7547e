//! What can go wrong, split the way the runner reports it: the model's files, memory, the
//! request, or anything else.

use std::path::PathBuf;

use super::FileRole;

#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A file the family needs was not given, or is not on disk.
    #[error("missing model file for role {role}{}", path_suffix(.path))]
    MissingWeights {
        role: FileRole,
        path: Option<PathBuf>,
    },
    /// A file is there but cannot be used: unreadable, not safetensors, wrong tensors or shapes,
    /// a tokenizer or config that does not parse.
    #[error("corrupt model file for role {role} ({}): {detail}", .path.display())]
    CorruptWeights {
        role: FileRole,
        path: PathBuf,
        detail: String,
    },
    /// The device ran out of memory (CUDA allocation failures; CPU allocation failures abort the
    /// process before they can be reported).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The request asks for something this model cannot do.
    #[error("bad parameters: {0}")]
    BadParams(String),
    /// Anything else: a bug, a driver failure, an I/O error outside the model's files.
    #[error("diffusion failed: {0}")]
    Other(String),
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" (not found: {})", path.display()),
        None => " (no file given)".to_owned(),
    }
}

impl DiffusionError {
    /// Classifies a candle error raised while running the model.
    pub(crate) fn from_candle(error: candle_core::Error) -> Self {
        let text = error.to_string();
        if is_out_of_memory(&text) {
            Self::OutOfMemory(text)
        } else {
            Self::Other(text)
        }
    }

    /// Classifies a candle error raised while building a module from one model file: anything
    /// but memory exhaustion means the file does not fit the architecture.
    pub(crate) fn while_loading(role: FileRole, path: PathBuf, error: candle_core::Error) -> Self {
        let text = error.to_string();
        if is_out_of_memory(&text) {
            Self::OutOfMemory(text)
        } else {
            Self::CorruptWeights {
                role,
                path,
                detail: text,
            }
        }
    }
}

impl From<candle_core::Error> for DiffusionError {
    fn from(error: candle_core::Error) -> Self {
        Self::from_candle(error)
    }
}

/// candle surfaces CUDA failures as text (cudarc's driver, cuBLAS and cuRAND errors boxed into
/// `Error::Cuda`), so the text is all there is to recognise them by.
fn is_out_of_memory(text: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    ["OUT_OF_MEMORY", "OUT OF MEMORY", "ALLOC_FAILED"]
        .iter()
        .any(|needle| upper.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_cuda_out_of_memory() {
        let e = candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        assert!(matches!(
            DiffusionError::from_candle(e),
            DiffusionError::OutOfMemory(_)
        ));
        let e = candle_core::Error::Msg("cublas: CUBLAS_STATUS_ALLOC_FAILED".into());
        assert!(matches!(
            DiffusionError::while_loading(FileRole::Unet, "u".into(), e),
            DiffusionError::OutOfMemory(_)
        ));
        let e = candle_core::Error::Msg("shape mismatch for conv_in.weight".into());
        assert!(matches!(
            DiffusionError::while_loading(FileRole::Unet, "u".into(), e),
            DiffusionError::CorruptWeights {
                role: FileRole::Unet,
                ..
            }
        ));
    }
}
