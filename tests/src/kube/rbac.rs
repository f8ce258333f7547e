//! RBAC as the API server's authorizer evaluates PolicyRules for one
//! subject, and the Forbidden answer it gives.

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::store::ApiError;

/// The user every request is made as, in messages.
pub(super) const USER: &str = "system:serviceaccount:ducks:ducks-worker";

/// What a request asks to do, as the authorizer sees it.
#[derive(Clone, Debug, Default)]
pub(super) struct Attributes {
    pub(super) verb: String,
    pub(super) group: String,
    pub(super) resource: String,
    pub(super) subresource: String,
    /// Empty: all namespaces (cluster scope).
    pub(super) namespace: String,
    /// Empty: no name (list, watch, create).
    pub(super) name: String,
}

/// Whether any rule allows the request.
pub(super) fn allows(rules: &[PolicyRule], request: &Attributes) -> bool {
    rules.iter().any(|rule| rule_allows(rule, request))
}

fn rule_allows(rule: &PolicyRule, request: &Attributes) -> bool {
    let matches = |values: &Option<Vec<String>>, wanted: &str| {
        values
            .iter()
            .flatten()
            .any(|value| value == "*" || value == wanted)
    };
    let combined = if request.subresource.is_empty() {
        request.resource.clone()
    } else {
        format!("{}/{}", request.resource, request.subresource)
    };
    let resource_ok = rule.resources.iter().flatten().any(|resource| {
        resource == "*"
            || *resource == combined
            || (!request.subresource.is_empty()
                && resource.strip_prefix("*/") == Some(request.subresource.as_str()))
    });
    let names_ok = match &rule.resource_names {
        Some(names) if !names.is_empty() => names.contains(&request.name),
        _ => true,
    };
    rule.verbs.iter().any(|v| v == "*" || *v == request.verb)
        && matches(&rule.api_groups, &request.group)
        && resource_ok
        && names_ok
}

/// 403 Forbidden with the API server's message.
pub(super) fn forbidden(request: &Attributes) -> ApiError {
    let qualified = if request.group.is_empty() {
        request.resource.clone()
    } else {
        format!("{}.{}", request.resource, request.group)
    };
    let object = if request.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", request.name)
    };
    let resource = if request.subresource.is_empty() {
        request.resource.clone()
    } else {
        format!("{}/{}", request.resource, request.subresource)
    };
    let scope = if request.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace {:?}", request.namespace)
    };
    let mut error = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{object} is forbidden: User {USER:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            request.verb, request.group
        ),
    );
    error.details = Some(Box::new((
        request.name.clone(),
        request.group.clone(),
        request.resource.clone(),
    )));
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        PolicyRule {
            api_groups: strings(groups),
            resources: strings(resources),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..PolicyRule::default()
        }
    }

    fn request(verb: &str, group: &str, resource: &str, subresource: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: "ducks".into(),
            name: String::new(),
        }
    }

    #[test]
    fn rules_match_like_rbac() {
        let rules = [
            rule(&["batch"], &["jobs"], &["create", "get"]),
            rule(&[""], &["pods", "pods/log"], &["get", "list", "watch"]),
            rule(&["*"], &["*/status"], &["get"]),
        ];
        assert!(allows(&rules, &request("create", "batch", "jobs", "")));
        assert!(!allows(&rules, &request("delete", "batch", "jobs", "")));
        assert!(!allows(&rules, &request("create", "", "jobs", "")));
        assert!(allows(&rules, &request("get", "", "pods", "log")));
        assert!(allows(&rules, &request("get", "batch", "jobs", "status")));
        assert!(!allows(&rules, &request("list", "", "events", "")));
        assert!(allows(
            &[rule(&["*"], &["*"], &["*"])],
            &request("delete", "batch", "jobs", "")
        ));
        let message = forbidden(&request("create", "batch", "jobs", "")).message;
        assert_eq!(
            message,
            "jobs.batch is forbidden: User \"system:serviceaccount:ducks:ducks-worker\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"ducks\""
        );
    }
}
