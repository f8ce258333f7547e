//! Job identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ContractError;

/// The longest job id accepted. `ducks-<id>` must stay a valid Kubernetes name (63 characters).
pub const MAX_JOB_ID_LEN: usize = 40;

/// Identifies one job for its whole life: in the queue, in events, in object keys and in Kubernetes names.
///
/// Generated ids are UUIDv7 strings, so they sort by creation time. Ids given by a raw Redis client
/// may be any lowercase string of letters, digits and `-` that starts with a letter or digit, because
/// they end up in DNS-1123 names and S3 keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A new time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id of a job that a raw client added without one, derived from its stream entry id
    /// (`<ms>-<seq>`), so every delivery of that entry yields the same id. It is a UUIDv7 whose
    /// time is the entry's and whose random bits hold the sequence number.
    pub fn from_entry_id(entry_id: &str) -> Option<Self> {
        let (ms, seq) = entry_id.split_once('-')?;
        let ms: u64 = ms.parse().ok()?;
        let seq: u64 = seq.parse().ok()?;
        let mut random = [0u8; 10];
        random[2..].copy_from_slice(&seq.to_be_bytes());
        let uuid = uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid();
        Some(Self(uuid.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let starts_alnum = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if s.is_empty() || s.len() > MAX_JOB_ID_LEN || !valid_chars || !starts_alnum {
            return Err(ContractError::InvalidJobId(s.chars().take(80).collect()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for JobId {
    type Error = ContractError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> Self {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_time_ordered() {
        let a = JobId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = JobId::generate();
        assert!(a < b);
        assert_eq!(a.as_str().parse::<JobId>().unwrap(), a);
    }

    #[test]
    fn ids_from_entry_ids_are_stable_and_distinct() {
        let a = JobId::from_entry_id("1700000000000-0").unwrap();
        assert_eq!(a, JobId::from_entry_id("1700000000000-0").unwrap());
        assert_ne!(a, JobId::from_entry_id("1700000000000-1").unwrap());
        assert!(a.as_str().parse::<JobId>().is_ok());
        assert_eq!(JobId::from_entry_id("garbage"), None);
    }

    #[test]
    fn rejects_ids_that_cannot_be_kubernetes_names() {
        for bad in [
            "",
            "Upper",
            "has_underscore",
            "-leading",
            "a b",
            &"x".repeat(41),
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} should be rejected");
        }
        for good in ["a", "0-x", "my-job-42"] {
            assert!(good.parse::<JobId>().is_ok(), "{good:?} should be accepted");
        }
    }
}
