//! The REST and watch protocol over hyper: routing of `/api/v1/...` and
//! `/apis/batch/v1/...` paths, query parameters, `Status` error bodies, and
//! the chunked newline-delimited watch response.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, Sleep};

use super::lock;
use super::logs;
use super::rbac::{self, Attributes};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    ApiError, Propagation, Resource, Result, Store, WatchFilter, WatchFrom, WatchStart,
};
use crate::support::percent_decode;

/// The largest request body accepted (the API server's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The default `timeoutSeconds` of a watch, as kube-client sends it.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(290);

/// A request's target after routing.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    resource: Resource,
    /// `None`: across all namespaces (list and watch only).
    namespace: Option<String>,
    name: Option<String>,
    /// `log` for `pods/{name}/log`, the only subresource served.
    subresource: Option<String>,
}

/// The path of SelfSubjectAccessReviews.
const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// Maps a path to a resource, or `None` for anything the simulator does
/// not serve (other groups, other subresources).
fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", "batch", "v1", rest @ ..] => ("batch", rest),
        _ => return None,
    };
    let (namespace, plural, name, subresource) = match rest {
        [plural] => (None, *plural, None, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, "pods", name, "log"] => (Some(*ns), "pods", Some(*name), Some("log")),
        _ => return None,
    };
    let resource = Resource::from_plural(plural).filter(|r| r.group() == group)?;
    Some(Route {
        resource,
        namespace: namespace.map(percent_decode),
        name: name.map(percent_decode),
        subresource: subresource.map(str::to_owned),
    })
}

/// Answers one request. Never fails: every error is a `Status` response.
pub(super) async fn handle(
    store: Arc<Mutex<Store>>,
    request: Request<Incoming>,
) -> std::result::Result<Response<ApiBody>, Infallible> {
    Ok(match answer(store, request).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    })
}

async fn answer(store: Arc<Mutex<Store>>, request: Request<Incoming>) -> Result<Response<ApiBody>> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    if request.uri().path().trim_end_matches('/') == ACCESS_REVIEWS {
        return access_review(store, request).await;
    }
    let route = route(request.uri().path()).ok_or_else(not_found)?;
    let query = Query::parse(request.uri().query().unwrap_or_default());
    let watching = matches!(query.get("watch"), Some("true" | "1"));
    let namespaced = route.namespace.is_some();
    let named = route.name.is_some();
    let log = route.subresource.is_some();
    let verb = match (request.method().as_str(), namespaced, named) {
        ("GET", true, true) if log => "get",
        _ if log => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
        ("POST", true, false) => "create",
        ("GET", true, true) => "get",
        ("GET", _, false) if watching => "watch",
        ("GET", _, false) => "list",
        ("DELETE", true, true) => "delete",
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    if route.resource == Resource::Events && !matches!(verb, "get" | "list" | "watch") {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the simulator serves events for get, list and watch only",
        ));
    }
    let namespace = route.namespace.clone().unwrap_or_default();
    let name = route.name.clone().unwrap_or_default();
    let attributes = Attributes {
        verb: verb.to_owned(),
        group: route.resource.group().to_owned(),
        resource: route.resource.plural().to_owned(),
        subresource: route.subresource.clone().unwrap_or_default(),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let counted = if log {
        "pods/log"
    } else {
        route.resource.plural()
    };
    {
        let mut store = lock(&store);
        store.count(verb, counted);
        if let Some(rules) = &store.rbac
            && !rbac::allows(rules, &attributes)
        {
            return Err(rbac::forbidden(&attributes));
        }
        if let Some(fault) = store.take_fault(verb, counted) {
            return Err(ApiError::from_fault(fault));
        }
    }
    if log {
        return logs::answer(store, &namespace, &name, &query);
    }

    match verb {
        "create" => {
            let body = read_json(request.into_body()).await?;
            let created = lock(&store).create(route.resource, &namespace, body)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        "get" => {
            let object = lock(&store).get(route.resource, &namespace, &name)?;
            Ok(json_response(StatusCode::OK, &object))
        }
        "delete" => {
            let from_query = query.get("propagationPolicy").map(str::to_owned);
            let body = read_json(request.into_body()).await.unwrap_or(Value::Null);
            let policy = from_query.or_else(|| {
                body.get("propagationPolicy")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            let propagation = match policy.as_deref() {
                Some("Background") => Propagation::Background,
                Some("Foreground") => Propagation::Foreground,
                // batch/v1 Jobs default to orphaning their pods.
                Some("Orphan") | None => Propagation::Orphan,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "unknown propagationPolicy {other:?}"
                    )));
                }
            };
            let deleted = lock(&store).delete(route.resource, &namespace, &name, propagation)?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        "list" => {
            let filter = filter(&route, &query)?;
            let limit = query
                .number("limit")?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let continue_from = query
                .get("continue")
                .filter(|token| !token.is_empty())
                .map(|token| {
                    token.parse::<usize>().map_err(|_| {
                        ApiError::bad_request(format!("invalid continue token {token:?}"))
                    })
                })
                .transpose()?;
            let list = lock(&store).list(&filter, limit, continue_from);
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => watch(store, &route, &query),
    }
}

fn watch(store: Arc<Mutex<Store>>, route: &Route, query: &Query) -> Result<Response<ApiBody>> {
    let filter = filter(route, query)?;
    let from = if query.get("sendInitialEvents") == Some("true") {
        WatchFrom::StreamingList
    } else {
        match query.number("resourceVersion")? {
            None | Some(0) => WatchFrom::Now,
            Some(version) => WatchFrom::After(version),
        }
    };
    let timeout = query
        .number("timeoutSeconds")?
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let bookmarks = query.get("allowWatchBookmarks") == Some("true");
    let (start, bookmark_interval) = {
        let mut store = lock(&store);
        (store.watch(filter, from), store.bookmark_interval)
    };
    let body = match start {
        WatchStart::Expired(line) => {
            let (sender, lines) = mpsc::unbounded_channel();
            // The receiver is alive; dropping the sender ends the stream after this line.
            let _ = sender.send(line);
            WatchBody {
                lines,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                bookmarks: None,
                registration: None,
            }
        }
        WatchStart::Open { id, lines } => WatchBody {
            lines,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            bookmarks: bookmarks.then(|| {
                tokio::time::interval_at(Instant::now() + bookmark_interval, bookmark_interval)
            }),
            registration: Some((id, store)),
        },
    };
    let mut response = Response::new(ApiBody::Watch(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A SelfSubjectAccessReview: the body back, with `status.allowed` by the
/// rules (everything while RBAC is not enforced). Always allowed itself.
async fn access_review(
    store: Arc<Mutex<Store>>,
    request: Request<Incoming>,
) -> Result<Response<ApiBody>> {
    if request.method() != hyper::Method::POST {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let verb = "create";
    let resource = "selfsubjectaccessreviews";
    {
        let mut store = lock(&store);
        store.count(verb, resource);
        if let Some(fault) = store.take_fault(verb, resource) {
            return Err(ApiError::from_fault(fault));
        }
    }
    let mut review = read_json(request.into_body()).await?;
    if !review.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    let text = |pointer: &str| {
        review
            .pointer(&format!("/spec/resourceAttributes/{pointer}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if review.pointer("/spec/resourceAttributes").is_none() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "SelfSubjectAccessReview.authorization.k8s.io is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    }
    let attributes = Attributes {
        verb: text("verb"),
        group: text("group"),
        resource: text("resource"),
        subresource: text("subresource"),
        namespace: text("namespace"),
        name: text("name"),
    };
    let allowed = match &lock(&store).rbac {
        None => true,
        Some(rules) => rbac::allows(rules, &attributes),
    };
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    if !review.get("metadata").is_some_and(Value::is_object) {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review["status"] = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by the simulator's rules"})
    } else {
        json!({"allowed": false})
    };
    Ok(json_response(StatusCode::CREATED, &review))
}

fn filter(route: &Route, query: &Query) -> Result<WatchFilter> {
    Ok(WatchFilter {
        resource: route.resource,
        namespace: route.namespace.clone(),
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(
            query.get("fieldSelector").unwrap_or_default(),
            route.resource,
        )
        .map_err(ApiError::bad_request)?,
    })
}

async fn read_json(body: Incoming) -> Result<Value> {
    let mut body = pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame =
            frame.map_err(|err| ApiError::bad_request(format!("reading the body: {err}")))?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > MAX_BODY {
                return Err(ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    "the request is too large",
                ));
            }
        }
    }
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad_request(format!("the body is not valid JSON: {err}")))
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<ApiBody> {
    let mut response = Response::new(ApiBody::Full(Some(Bytes::from(value.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<ApiBody> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.status());
    if let Some(seconds) = error.retry_after_secs {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Query parameters, percent-decoded (`+` is a space, as form encoding has it).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Query {
        Query(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (
                        percent_decode(&key.replace('+', " ")),
                        percent_decode(&value.replace('+', " ")),
                    )
                })
                .collect(),
        )
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A non-negative number parameter; empty counts as absent.
    pub(super) fn number(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(value) => value
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid {key} {value:?}"))),
        }
    }
}

/// A response body: a whole document, a watch stream, or a followed log.
pub(super) enum ApiBody {
    /// `None` once sent.
    Full(Option<Bytes>),
    Watch(WatchBody),
    /// Chunks until the sender is dropped.
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

/// A watch response: lines from the store's channel until the channel
/// closes (the watch was dropped) or `timeoutSeconds` pass, with a BOOKMARK
/// every bookmark interval when the client allowed them.
pub(super) struct WatchBody {
    lines: mpsc::UnboundedReceiver<Bytes>,
    deadline: Pin<Box<Sleep>>,
    bookmarks: Option<Interval>,
    /// The watch's id in the store, to ask for bookmarks and to close it when
    /// the response ends or the client goes away. `None` for a 410 answer.
    registration: Option<(u64, Arc<Mutex<Store>>)>,
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Watch(watch) => watch
                .poll_line(cx)
                .map(|line| line.map(|l| Ok(Frame::data(l)))),
            ApiBody::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ApiBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ApiBody::Watch(_) | ApiBody::Stream(_) => SizeHint::default(),
        }
    }
}

impl WatchBody {
    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if let Poll::Ready(line) = self.lines.poll_recv(cx) {
                return Poll::Ready(line);
            }
            if self.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if let (Some(interval), Some((id, store))) = (&mut self.bookmarks, &self.registration)
                && interval.poll_tick(cx).is_ready()
            {
                // Sent through the channel under the store's lock, so it never
                // overtakes a change with a lower resourceVersion.
                if !lock(store).send_bookmark(*id) {
                    return Poll::Ready(None);
                }
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl Drop for WatchBody {
    fn drop(&mut self) {
        if let Some((id, store)) = &self.registration {
            lock(store).close_watch(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_served_paths() {
        let route_of = |path: &str| route(path);
        assert_eq!(
            route_of("/apis/batch/v1/namespaces/ns/jobs/ducks-1"),
            Some(Route {
                resource: Resource::Jobs,
                namespace: Some("ns".into()),
                name: Some("ducks-1".into()),
                subresource: None,
            })
        );
        assert_eq!(
            route_of("/api/v1/pods"),
            Some(Route {
                resource: Resource::Pods,
                namespace: None,
                name: None,
                subresource: None,
            })
        );
        assert_eq!(
            route_of("/api/v1/namespaces/ns/events").map(|r| r.resource),
            Some(Resource::Events)
        );
        assert_eq!(route_of("/api/v1/namespaces/ns/jobs"), None);
        assert_eq!(route_of("/apis/batch/v1/namespaces/ns/pods"), None);
        assert_eq!(
            route_of("/api/v1/namespaces/ns/pods/p/log").and_then(|r| r.subresource),
            Some("log".into())
        );
        assert_eq!(route_of("/api/v1/namespaces/ns/pods/p/exec"), None);
        assert_eq!(route_of("/apis/batch/v1/namespaces/ns/jobs/j/log"), None);
        assert_eq!(route_of("/version"), None);
    }

    #[test]
    fn query_values_are_decoded() {
        let query = Query::parse("labelSelector=app%3Dducks%2Ctier&watch=true&limit=&x+y=a+b");
        assert_eq!(query.get("labelSelector"), Some("app=ducks,tier"));
        assert_eq!(query.get("watch"), Some("true"));
        assert_eq!(query.number("limit").unwrap(), None);
        assert_eq!(query.get("x y"), Some("a b"));
        assert!(Query::parse("limit=x").number("limit").is_err());
    }
}
