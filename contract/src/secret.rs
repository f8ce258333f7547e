//! [`Secret`]: the one type for credentials (interaction tokens, S3 keys, Redis URLs with a
//! password, signing keys), so none of them can reach a log line by accident.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string that serializes as itself (it has to travel: an interaction token goes back to its
/// bot) but never shows in `Debug` or `Display` output. Reading it takes a call to
/// [`Secret::expose`], which is easy to find in a review.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "[empty]"
        } else {
            "[redacted]"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_but_serializes() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"hunter2\"");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(format!("{:?}", Secret::default()), "[empty]");
    }
}
