//! The permissions the worker needs in its namespace, and a check at startup that it has them,
//! so a missing rule is one clear line instead of jobs failing one by one. The chart's Role is
//! made of [`required_rules`]; the test suite runs the worker under exactly these rules.

use ::kube::Client;
use ::kube::api::{Api, PostParams};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::PolicyRule;

/// Jobs to run runners, pods and their logs to follow them, events to hear why a pod could not
/// be created. Nothing else: no Secrets, no updates.
pub fn required_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| (*v).into()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule(
            "batch",
            "jobs",
            &["create", "get", "list", "watch", "delete"],
        ),
        rule("", "pods", &["list", "watch"]),
        rule("", "pods/log", &["get"]),
        rule("", "events", &["list", "watch"]),
    ]
}

/// Asks the API server (SelfSubjectAccessReview) whether this worker may do everything in
/// [`required_rules`] in `namespace`; the error names each missing permission.
pub async fn check(client: &Client, namespace: &str) -> Result<(), String> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for rule in required_rules() {
        let group = rule.api_groups.as_ref().and_then(|g| g.first()).cloned();
        for resource in rule.resources.iter().flatten() {
            let (resource, subresource) = match resource.split_once('/') {
                Some((resource, sub)) => (resource.to_owned(), Some(sub.to_owned())),
                None => (resource.clone(), None),
            };
            for verb in &rule.verbs {
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            namespace: Some(namespace.to_owned()),
                            verb: Some(verb.clone()),
                            group: group.clone(),
                            resource: Some(resource.clone()),
                            subresource: subresource.clone(),
                            ..ResourceAttributes::default()
                        }),
                        ..SelfSubjectAccessReviewSpec::default()
                    },
                    ..SelfSubjectAccessReview::default()
                };
                let answer = reviews
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|e| {
                        format!("cannot reach the Kubernetes API to check permissions: {e}")
                    })?;
                if !answer.status.is_some_and(|s| s.allowed) {
                    let what = match &subresource {
                        Some(sub) => format!("{resource}/{sub}"),
                        None => resource.clone(),
                    };
                    missing.push(format!("{verb} {what}"));
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the worker may not {} in namespace {namespace}; grant it the Role in docs/kubernetes.md",
        missing.join(", ")
    ))
}
