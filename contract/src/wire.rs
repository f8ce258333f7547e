//! The serialized form of every message: JSON with a version field `v`.
//! This module is the only place that knows it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::error::Category;

use crate::{ContractError, JobId, Origin, Requester};

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
/// than as malformed. Errors say what is wrong in words a person can act on, naming the field.
pub fn decode<T: DeserializeOwned>(what: &'static str, json: &str) -> Result<T, ContractError> {
    let malformed = |detail: String| ContractError::Malformed { what, detail };
    let mut value: Value = serde_json::from_str(json).map_err(|e| malformed(syntax(&e, json)))?;
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
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let detail = without_position(&e.inner().to_string());
        // serde names an unknown field itself; other errors get the field's path in front.
        let named = path
            .rsplit('.')
            .next()
            .is_some_and(|field| detail.contains(&format!("`{field}`")));
        malformed(if path == "." || path.is_empty() || named {
            detail
        } else {
            format!("`{path}`: {detail}")
        })
    })
}

/// Who to tell about a message that cannot be read as a whole: its job id, origin and requester,
/// where those parts can be read on their own. A raw job with a typo still gets an answer on
/// its origin's stream instead of silence.
pub fn sender_of(json: &str) -> Option<(JobId, Origin, Requester)> {
    let Value::Object(mut fields) = serde_json::from_str(json).ok()? else {
        return None;
    };
    let id: JobId = serde_json::from_value(fields.remove("id")?).ok()?;
    let origin = match fields.remove("origin") {
        Some(origin) => serde_json::from_value(origin).ok()?,
        None => Origin::default(),
    };
    let requester = fields
        .remove("requester")
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_default();
    Some((id, origin, requester))
}

/// A parse error of the JSON text itself, where a person can find it.
fn syntax(error: &serde_json::Error, json: &str) -> String {
    match error.classify() {
        Category::Eof => format!(
            "the JSON ends before it is complete (it has {} characters: is it cut off, or missing a closing quote or brace?)",
            json.chars().count()
        ),
        Category::Syntax if error.line() == 1 => format!(
            "it is not valid JSON at character {}: {}",
            error.column(),
            without_position(&error.to_string())
        ),
        Category::Syntax => format!(
            "it is not valid JSON at line {}, character {}: {}",
            error.line(),
            error.column(),
            without_position(&error.to_string())
        ),
        Category::Data | Category::Io => without_position(&error.to_string()),
    }
}

/// serde_json's message without its trailing "at line L column C".
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobRequest;

    #[test]
    fn decoding_errors_name_the_problem_and_the_field() {
        let long = r#"{"v":1,"prompt":"a duck in a pond with reeds and a small wooden"#;
        let table: [(&str, &str); 8] = [
            (
                r#"{"prompt":"a"}"#,
                "The job message is malformed: missing field `v` (the message version, 1).",
            ),
            (
                r#"{"v":2,"prompt":"a","new":true}"#,
                "The job message is version 2, newer than this DUCKS understands (1). Upgrade DUCKS.",
            ),
            (
                r#"{"v":1,"promt":"a"}"#,
                "The job message is malformed: unknown field `promt`, expected one of",
            ),
            (
                r#"{"v":1,"prompt":"a","id":"Bad Id"}"#,
                "The job message is malformed: `id`: `Bad Id` is not a job id",
            ),
            (
                r#"{"v":1,"prompt":"a","width":"512"}"#,
                "The job message is malformed: `width`: invalid type: string \"512\", expected u32.",
            ),
            (
                "not json",
                "The job message is malformed: it is not valid JSON at character 2: expected ident.",
            ),
            (
                long,
                &format!(
                    "The job message is malformed: the JSON ends before it is complete (it has {} characters",
                    long.chars().count()
                ),
            ),
            (
                "[1]",
                "The job message is malformed: expected a JSON object.",
            ),
        ];
        for (json, expect) in table {
            let err = decode::<JobRequest>("job", json).unwrap_err().to_string();
            assert!(err.starts_with(expect), "{json}: got {err}");
            assert!(!err.contains("column"), "{err}");
        }
    }

    #[test]
    fn the_sender_of_a_broken_job_is_read_where_it_can_be() {
        let (id, origin, requester) =
            sender_of(r#"{"v":1,"id":"job-9","promt":"a","requester":{"id":"ann"}}"#).unwrap();
        assert_eq!(
            (id.as_str(), origin, requester.id.as_str()),
            ("job-9", Origin::Redis, "ann")
        );
        let (_, origin, _) =
            sender_of(r#"{"v":1,"id":"job-9","origin":{"kind":"cli"},"width":"x"}"#).unwrap();
        assert_eq!(origin, Origin::Cli);
        for hopeless in [
            r#"{"v":1,"prompt":"no id"}"#,
            r#"{"v":1,"id":"Bad Id"}"#,
            r#"{"v":1,"id":"ok","origin":{"kind":"fax"}}"#,
            "not json",
        ] {
            assert_eq!(sender_of(hopeless), None, "{hopeless}");
        }
    }
}
