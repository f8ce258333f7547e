//! Label and field selectors as the API server parses them from a query,
//! limited to what the launcher sends: equality-based label requirements and
//! equality field requirements on `metadata.name` / `metadata.namespace`,
//! `status.phase` (pods) and `involvedObject.*`, `reason`, `type` (events).

use serde_json::{Map, Value};

use super::store::Resource;

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default)]
pub(super) struct LabelSelector(Vec<LabelRequirement>);

#[derive(Clone, Debug)]
enum LabelRequirement {
    Equals(String, String),
    /// Also true when the label is absent, as in Kubernetes.
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    /// Parses `k=v`, `k==v`, `k!=v`, `k` and `!k`, joined by commas. Set-based
    /// requirements (`k in (a,b)`) are refused rather than misread.
    pub(super) fn parse(text: &str) -> Result<LabelSelector, String> {
        if text.contains('(') {
            return Err(format!(
                "unsupported label selector {text:?}: the simulator only knows equality-based requirements"
            ));
        }
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotEquals(key_of(key, text)?, value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("==") {
                LabelRequirement::Equals(key_of(key, text)?, value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once('=') {
                LabelRequirement::Equals(key_of(key, text)?, value.trim().to_owned())
            } else if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::NotExists(key_of(key, text)?)
            } else {
                LabelRequirement::Exists(key_of(part, text)?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub(super) fn matches(&self, object: &Value) -> bool {
        let empty = Map::new();
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(key, value) => label(key) == Some(value),
            LabelRequirement::NotEquals(key, value) => label(key) != Some(value),
            LabelRequirement::Exists(key) => labels.contains_key(key),
            LabelRequirement::NotExists(key) => !labels.contains_key(key),
        })
    }
}

fn key_of(key: &str, selector: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) || key.contains('!') {
        return Err(format!("invalid label selector {selector:?}"));
    }
    Ok(key.to_owned())
}

/// A parsed `fieldSelector`: every requirement must hold.
#[derive(Clone, Debug, Default)]
pub(super) struct FieldSelector(Vec<FieldRequirement>);

#[derive(Clone, Debug)]
struct FieldRequirement {
    /// A JSON pointer into the object: `/metadata/name` or `/metadata/namespace`.
    pointer: &'static str,
    value: String,
    equal: bool,
}

impl FieldSelector {
    /// Parses `metadata.name=x`, `metadata.name!=x` (and `==`), likewise
    /// the other fields `resource` supports, joined by commas. Other fields
    /// answer an error, as the API server does for field labels a resource
    /// does not support.
    pub(super) fn parse(text: &str, resource: Resource) -> Result<FieldSelector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, equal) = if let Some((field, value)) = part.split_once("!=") {
                (field, value, false)
            } else if let Some((field, value)) = part.split_once("==") {
                (field, value, true)
            } else if let Some((field, value)) = part.split_once('=') {
                (field, value, true)
            } else {
                return Err(format!("invalid field selector {text:?}"));
            };
            let pointer = match (resource, field.trim()) {
                (_, "metadata.name") => "/metadata/name",
                (_, "metadata.namespace") => "/metadata/namespace",
                (Resource::Pods, "status.phase") => "/status/phase",
                (Resource::Events, "involvedObject.kind") => "/involvedObject/kind",
                (Resource::Events, "involvedObject.name") => "/involvedObject/name",
                (Resource::Events, "involvedObject.namespace") => "/involvedObject/namespace",
                (Resource::Events, "involvedObject.uid") => "/involvedObject/uid",
                (Resource::Events, "reason") => "/reason",
                (Resource::Events, "type") => "/type",
                (_, other) => {
                    return Err(format!(
                        "field label not supported by the simulator: {other}"
                    ));
                }
            };
            requirements.push(FieldRequirement {
                pointer,
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(FieldSelector(requirements))
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|requirement| {
            let actual = object
                .pointer(requirement.pointer)
                .and_then(Value::as_str)
                .unwrap_or_default();
            (actual == requirement.value) == requirement.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_requirements_follow_kubernetes() {
        let object = labelled(json!({"app": "ducks", "tier": "gpu"}));
        let check = |selector: &str| LabelSelector::parse(selector).unwrap().matches(&object);
        assert!(check(""));
        assert!(check("app=ducks"));
        assert!(check("app==ducks,tier"));
        assert!(check("app = ducks , tier!=cpu"));
        assert!(check("missing!=x"));
        assert!(check("!missing"));
        assert!(!check("app=other"));
        assert!(!check("app=ducks,tier=cpu"));
        assert!(!check("missing"));
        assert!(!check("!app"));
        assert!(!check("tier!=gpu"));
        assert!(
            !LabelSelector::parse("app=ducks")
                .unwrap()
                .matches(&json!({"metadata": {"name": "unlabelled"}}))
        );
    }

    #[test]
    fn unsupported_label_selectors_are_refused() {
        assert!(LabelSelector::parse("app in (a,b)").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors_know_name_and_namespace() {
        let object = labelled(json!({}));
        let check = |selector: &str| {
            FieldSelector::parse(selector, Resource::Jobs)
                .unwrap()
                .matches(&object)
        };
        assert!(check("metadata.name=a"));
        assert!(check("metadata.name==a,metadata.namespace=ns"));
        assert!(check("metadata.name!=b"));
        assert!(!check("metadata.name=b"));
        assert!(!check("metadata.namespace!=ns"));
        assert!(FieldSelector::parse("status.phase=Running", Resource::Jobs).is_err());
        assert!(FieldSelector::parse("metadata.name", Resource::Jobs).is_err());
    }

    #[test]
    fn field_selectors_know_pod_phases_and_event_fields() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}});
        let pods = |selector: &str| {
            FieldSelector::parse(selector, Resource::Pods)
                .unwrap()
                .matches(&pod)
        };
        assert!(pods("status.phase=Running"));
        assert!(!pods("status.phase!=Running"));
        let event = json!({
            "metadata": {"name": "e"},
            "involvedObject": {"kind": "Job", "name": "j", "namespace": "ns", "uid": "u"},
            "reason": "FailedCreate",
            "type": "Warning",
        });
        let events = |selector: &str| {
            FieldSelector::parse(selector, Resource::Events)
                .unwrap()
                .matches(&event)
        };
        assert!(events("involvedObject.kind=Job,reason=FailedCreate"));
        assert!(events(
            "involvedObject.name==j,involvedObject.namespace=ns,involvedObject.uid=u,type=Warning"
        ));
        assert!(!events("involvedObject.kind=Job,reason!=FailedCreate"));
        assert!(FieldSelector::parse("reason=x", Resource::Pods).is_err());
    }
}
