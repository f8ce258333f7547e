//! `GET pods/{name}/log`: a container's log file as the kubelet wrote it,
//! whole or followed until the container ends or the pod goes away.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Response;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc;

use super::controller::str_at;
use super::http::{ApiBody, Query};
use super::kubelet::log_path;
use super::lock;
use super::store::{ApiError, Resource, Result, Store};

/// How often a followed log is checked for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

pub(super) fn answer(
    store: Arc<Mutex<Store>>,
    namespace: &str,
    name: &str,
    query: &Query,
) -> Result<Response<ApiBody>> {
    let (pod, dir) = {
        let store = lock(&store);
        let pod = store.get(Resource::Pods, namespace, name)?;
        let dir = store.sim.pod_dir(str_at(&pod, "/metadata/uid"));
        (pod, dir)
    };
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| str_at(c, "/name"))
        .collect();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(container) => container.to_owned(),
        None => match containers.as_slice() {
            [only] => (*only).to_owned(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: {containers:?}"
                )));
            }
        },
    };
    if !containers.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let state = container_state(&pod, &container);
    if state.get("running").is_none() && state.get("terminated").is_none() {
        let reason = state
            .pointer("/waiting/reason")
            .and_then(Value::as_str)
            .unwrap_or("ContainerCreating");
        return Err(ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is waiting to start: {reason}"
        )));
    }
    let path = log_path(&dir, &container);
    let content = std::fs::read(&path).unwrap_or_default();
    let start = match query.number("tailLines")? {
        Some(lines) => tail_start(&content, usize::try_from(lines).unwrap_or(usize::MAX)),
        None => 0,
    };
    let limit = query
        .number("limitBytes")?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let body = if matches!(query.get("follow"), Some("true" | "1")) {
        let (chunks, receiver) = mpsc::unbounded_channel();
        let follower = Follower {
            store,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: str_at(&pod, "/metadata/uid").to_owned(),
            container,
            path,
            offset: start as u64,
            left: limit.unwrap_or(usize::MAX),
            chunks,
        };
        tokio::spawn(follower.run());
        ApiBody::Stream(receiver)
    } else {
        let mut text = content[start..].to_vec();
        text.truncate(limit.unwrap_or(usize::MAX));
        ApiBody::Full(Some(Bytes::from(text)))
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// Sends a log's new bytes as they come.
struct Follower {
    store: Arc<Mutex<Store>>,
    namespace: String,
    name: String,
    uid: String,
    container: String,
    path: PathBuf,
    offset: u64,
    /// Bytes still allowed by `limitBytes`.
    left: usize,
    chunks: mpsc::UnboundedSender<Bytes>,
}

impl Follower {
    async fn run(mut self) {
        loop {
            // The state before the read: a container that had ended wrote
            // all of its log before.
            let ended = {
                let store = lock(&self.store);
                match store.get(Resource::Pods, &self.namespace, &self.name) {
                    Ok(pod) if str_at(&pod, "/metadata/uid") == self.uid => {
                        container_state(&pod, &self.container)
                            .get("terminated")
                            .is_some()
                    }
                    _ => true,
                }
            };
            let mut fresh = self.read_new();
            fresh.truncate(self.left);
            if !fresh.is_empty() {
                self.offset += fresh.len() as u64;
                self.left -= fresh.len();
                if self.chunks.send(Bytes::from(fresh)).is_err() {
                    return;
                }
            }
            if ended || self.left == 0 || self.chunks.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    fn read_new(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.path)
            && file.seek(SeekFrom::Start(self.offset)).is_ok()
        {
            // A short read is retried on the next poll.
            let _ = file.read_to_end(&mut bytes);
        }
        bytes
    }
}

/// The state of a container (`{}` if it has no status).
fn container_state(pod: &Value, container: &str) -> Value {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|statuses| statuses.iter().find(|s| str_at(s, "/name") == container))
        .and_then(|status| status.get("state").cloned())
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// Where the last `lines` lines of `content` start.
fn tail_start(content: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return content.len();
    }
    let text = content.strip_suffix(b"\n").unwrap_or(content);
    text.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_count_from_the_end() {
        let log = b"a\nb\nc\n";
        assert_eq!(&log[tail_start(log, 2)..], b"b\nc\n");
        assert_eq!(&log[tail_start(log, 5)..], log);
        assert_eq!(&log[tail_start(log, 0)..], b"");
        assert_eq!(&b"a\nb"[tail_start(b"a\nb", 1)..], b"b");
    }
}
