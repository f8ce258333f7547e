//! [`Secret`]: the one type for credentials (interaction tokens, S3 keys, Redis URLs with a
//! password, signing keys), so none of them can reach a log line by accident.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A string that serializes as itself (it has to travel: an interaction token goes back to its
/// bot) but never shows in `Debug` or `Display` output. Reading it takes a call to
/// [`Secret::expose`], which is easy to find in a review.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

thread_local! {
    /// Set while [`redacted`] runs its closure on this thread.
    static REDACTING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `serialize` with every [`Secret`] serializing as [`Secret::REDACTED`] (set or empty)
/// instead of itself, on this thread: settings printed for a person (`ducks config`) show where
/// the secrets are and never what they are. Comparing with a plain serialization finds them.
pub fn redacted<R>(serialize: impl FnOnce() -> R) -> R {
    /// Puts the previous mode back, even if `serialize` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REDACTING.set(self.0);
        }
    }
    let _restore = Restore(REDACTING.replace(true));
    serialize()
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REDACTING.get() {
            serializer.serialize_str(Self::REDACTED)
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

impl Secret {
    /// What every secret serializes as inside [`redacted`].
    pub const REDACTED: &str = "<redacted>";

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

    #[test]
    fn redacted_serializes_every_secret_as_the_marker_and_only_inside() {
        let secrets = [Secret::new("hunter2"), Secret::default()];
        let inside = redacted(|| serde_json::to_string(&secrets).unwrap());
        assert_eq!(inside, r#"["<redacted>","<redacted>"]"#);
        assert_eq!(
            serde_json::to_string(&secrets).unwrap(),
            r#"["hunter2",""]"#
        );
        // A nested call leaves the outer one redacting.
        let after_nested = redacted(|| {
            redacted(|| ());
            serde_json::to_string(&secrets[0]).unwrap()
        });
        assert_eq!(after_nested, r#""<redacted>""#);
        assert_eq!(serde_json::to_string(&secrets[0]).unwrap(), "\"hunter2\"");
    }
}
