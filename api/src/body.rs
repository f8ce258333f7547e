//! Request bodies: JSON read by hand rather than by axum's extractor, so every mistake comes back
//! in OpenAI's error shape with the field at fault in `param`.

use serde::de::DeserializeOwned;

use crate::error::{ApiError, Result};

/// Fields a client may not set, with the reason it is told.
pub type Refused = &'static [(&'static str, &'static str)];

/// Decodes a JSON object of type `T`, refusing the `refused` fields and any field not in `known`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], known: &[&str], refused: Refused) -> Result<T> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "The request body is not valid JSON ({e}). Send a JSON object with Content-Type: application/json."
        ))
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("The request body must be a JSON object."))?;
    for field in object.keys() {
        if let Some((_, why)) = refused.iter().find(|(name, _)| name == field) {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` cannot be set: {why}"),
            ));
        }
        if !known.contains(&field.as_str()) {
            return Err(ApiError::invalid(
                field,
                format!(
                    "Unknown field `{}`. Known fields: {}.",
                    field.chars().take(64).collect::<String>(),
                    known.join(", ")
                ),
            ));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let param = e.path().to_string();
        let inner = e.into_inner().to_string();
        ApiError::invalid(&param, format!("`{param}`: {inner}."))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        prompt: String,
        #[serde(default)]
        n: Option<u32>,
    }

    fn check(body: &str) -> std::result::Result<(), (Option<String>, String)> {
        parse::<Body>(
            body.as_bytes(),
            &["prompt", "n"],
            &[("origin", "the API sets it.")],
        )
        .map(drop)
        .map_err(|e| (e.param, e.message))
    }

    #[test]
    fn mistakes_name_their_field() {
        let table: [(&str, Option<&str>, &str); 6] = [
            (r#"{"prompt":"a"}"#, None, ""),
            (
                r#"{"prompt":"a","n":"two"}"#,
                Some("n"),
                "`n`: invalid type: string \"two\", expected u32",
            ),
            (
                r#"{"prompt":"a","origin":{}}"#,
                Some("origin"),
                "`origin` cannot be set: the API sets it.",
            ),
            (
                r#"{"prompt":"a","colour":1}"#,
                Some("colour"),
                "Unknown field `colour`. Known fields: prompt, n.",
            ),
            (r#"{"n":1}"#, Some("."), "missing field `prompt`"),
            (r#"[1]"#, None, "The request body must be a JSON object."),
        ];
        for (body, param, message) in table {
            match check(body) {
                Ok(()) => assert!(param.is_none() && message.is_empty(), "{body} passed"),
                Err((got_param, got_message)) => {
                    assert_eq!(got_param.as_deref(), param, "{body}");
                    assert!(got_message.contains(message), "{body}: {got_message}");
                }
            }
        }
    }
}
