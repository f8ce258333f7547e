//! The serialized form of every message: JSON with a version field `v`.
//! This module is the only place that knows it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ContractError;

/// The message version this build writes and reads.
pub const WIRE_VERSION: u64 = 1;

/// Serializes `message` as a JSON object that starts with `"v": WIRE_VERSION`.
///
/// # Panics
/// If `message` does not serialize to a JSON object; every contract type does.
pub fn encode<T: Serialize>(message: &T) -> String {
    let body = serde_json::to_string(message).expect("contract types always serialize");
    // Splicing the version in front avoids building a `Value` tree on the hot path.
    match body.strip_prefix('{') {
        Some("}") => format!("{{\"v\":{WIRE_VERSION}}}"),
        Some(fields) => format!("{{\"v\":{WIRE_VERSION},{fields}"),
        None => panic!("contract messages are JSON objects, got {body}"),
    }
}

/// Reads a message written by [`encode`] (or by hand, following docs/job-contract.md).
/// The version is checked before anything else, so a newer message is reported as newer rather
/// than as malformed.
pub fn decode<T: DeserializeOwned>(what: &'static str, json: &str) -> Result<T, ContractError> {
    let malformed = |detail: String| ContractError::Malformed { what, detail };
    let mut value: Value = serde_json::from_str(json).map_err(|e| malformed(e.to_string()))?;
    let Value::Object(fields) = &mut value else {
        return Err(malformed("expected a JSON object".into()));
    };
    match fields.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(WIRE_VERSION) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > WIRE_VERSION) => {
            return Err(ContractError::NewerVersion {
                what,
                found: n.as_u64().unwrap_or_default(),
            });
        }
        Some(other) => {
            return Err(malformed(format!(
                "field `v` must be {WIRE_VERSION}, found {other}"
            )));
        }
        None => {
            return Err(malformed(format!(
                "missing field `v` (the message version, {WIRE_VERSION})"
            )));
        }
    }
    serde_json::from_value(value).map_err(|e| malformed(e.to_string()))
}
