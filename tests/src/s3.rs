//! An embedded S3-protocol server: s3s with the s3s-fs backend over a
//! temporary folder, SigV4 authentication on, served by hyper on a free
//! loopback port from a tokio task of the caller's runtime.
//!
//! Why a real S3 protocol server instead of a mock client: the runner and
//! `ducks dev` talk to storage through the real `aws-sdk-s3` client, so the
//! signing, path-style addressing, presigned URLs, checksums and error
//! mapping are all exercised exactly as in production.
//!
//! - [`S3Server::root`] is the served folder: bucket `b`, key `k/x` is the
//!   file `root/b/k/x` ([`S3Server::object_path`]), so a test can corrupt or
//!   delete an object behind the server's back. s3s-fs keeps its per-object
//!   side files (content type, user metadata, ETag, checksums) as hidden
//!   `.bucket-*.object-*.json` files directly in the root, not in the bucket
//!   folder.
//! - Every request is counted by method and object key before s3s sees it
//!   ([`S3Server::requests`]), so tests can assert how often weights were
//!   downloaded.
//! - [`S3Server::gate`] holds matching requests until the test opens the
//!   gate, so a runner can be stopped at a known point of its run (fetching
//!   a weight file, uploading its image) for exactly as long as a test needs
//!   to disrupt something around it.
//! - [`S3Server::stop`] closes the listener and every open connection: the
//!   endpoint then refuses connections ("S3 is down").

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use ducks_contract::Secret;
use ducks_models::embedded_s3;
use ducks_models::{S3Config, Storage};

use crate::support::percent_decode;
use hyper::body::Incoming;
use hyper::service::Service;
use s3s::service::S3Service;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Fixed test credentials. SigV4 is checked for real, so a client with any
/// other secret gets `SignatureDoesNotMatch`.
const ACCESS_KEY: &str = "DUCKSTESTACCESSKEY";
const SECRET_KEY: &str = "ducks-test-secret-key-0123456789abcdef";
const REGION: &str = "us-east-1";

/// How long [`S3Server::stop`] may take to close the listener and all
/// connections before it is called a hang.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Deadline of [`S3Server::create_bucket`] and of one [`http_get`].
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// Timeouts of [`S3Server::client`], so an SDK call never hangs a test.
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Requests seen so far, by (HTTP method, object key).
type Counts = Arc<Mutex<HashMap<(String, String), usize>>>;

/// The gates requests must pass, in the order they were made.
type Gates = Arc<Mutex<Vec<GateState>>>;

/// One gate: requests with `method` on keys starting with `prefix` wait until it opens.
struct GateState {
    method: String,
    prefix: String,
    open: watch::Receiver<bool>,
    /// Requests waiting at the gate now.
    held: Arc<AtomicUsize>,
    /// Requests that have arrived at the gate, ever.
    arrived: Arc<AtomicUsize>,
}

/// A closed gate on some requests of an [`S3Server`]; see [`S3Server::gate`]. Dropping it opens
/// it, so a failing test never leaves requests hanging.
pub struct Gate {
    open: watch::Sender<bool>,
    held: Arc<AtomicUsize>,
    arrived: Arc<AtomicUsize>,
    what: String,
}

impl Gate {
    /// Lets every held request, and every later one, through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Requests waiting at the gate now. One whose client went away is no longer held.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests are waiting at the gate.
    ///
    /// # Panics
    /// After `limit`, naming the gate.
    pub async fn wait_held(&self, n: usize, limit: Duration) {
        let started = tokio::time::Instant::now();
        while self.held() < n {
            assert!(
                started.elapsed() < limit,
                "{} of {n} requests at the gate for {} within {limit:?} ({} arrived in all)",
                self.held(),
                self.what,
                self.arrived.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// A running (or stopped) embedded S3 server.
///
/// Dropping it aborts the server task, which closes the listener and every
/// connection, then removes the folder.
pub struct S3Server {
    addr: SocketAddr,
    /// Canonical path of `dir` (s3s-fs canonicalizes its root too).
    root: PathBuf,
    counts: Counts,
    gates: Gates,
    /// `None` once [`S3Server::stop`] ran.
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Declared last so the folder is removed after the task was aborted.
    _dir: TempDir,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint())
            .field("root", &self.root)
            .field("running", &self.task.is_some())
            .finish_non_exhaustive()
    }
}

impl S3Server {
    /// Starts a server on `127.0.0.1:0` (a free port the OS picks) over a
    /// new empty temporary folder. No bucket exists yet.
    ///
    /// The listener is bound before this returns, so the endpoint accepts
    /// connections at once: no readiness wait is needed.
    ///
    /// Must be called inside a tokio runtime (the server runs in a task of
    /// it). Panics if the folder or the socket cannot be created.
    pub async fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("ducks-s3-")
            .tempdir()
            .expect("create the S3 server's temporary folder");
        let root = dir
            .path()
            .canonicalize()
            .expect("canonicalize the S3 server's folder");
        let counts = Counts::default();
        let gates = Gates::default();
        let service = Counting {
            inner: embedded_s3::service(&root, ACCESS_KEY, SECRET_KEY)
                .expect("open the folder as an s3s-fs root"),
            counts: Arc::clone(&counts),
            gates: Arc::clone(&gates),
        };

        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the S3 server to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the listener");
        crate::support::reserve_port(addr.port());
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(embedded_s3::serve(listener, service, async {
            // An error means the sender was dropped: stop too.
            let _ = shutdown_rx.await;
        }));

        S3Server {
            addr,
            root,
            counts,
            gates,
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port the server listens (or listened, after [`S3Server::stop`]) on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// Always `us-east-1`.
    pub fn region(&self) -> &str {
        REGION
    }

    /// The folder s3s-fs serves: one subfolder per bucket, one file per
    /// object (keys with `/` become nested folders).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object `bucket`/`key` is stored under [`S3Server::root`].
    /// The file exists only once the object was written.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Creates `name` through the S3 API (so it also checks the server
    /// answers). Panics on failure, including "already exists".
    pub async fn create_bucket(&self, name: &str) {
        let client = self.client();
        let request = client.create_bucket().bucket(name).send();
        match tokio::time::timeout(REQUEST_LIMIT, request).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => panic!(
                "create bucket {name:?} on {}: {}",
                self.endpoint(),
                aws_sdk_s3::error::DisplayErrorContext(&err)
            ),
            Err(_) => panic!(
                "create bucket {name:?} on {}: no answer within {REQUEST_LIMIT:?}",
                self.endpoint()
            ),
        }
    }

    /// The configuration [`S3Server::client`] uses, for tests that need to
    /// change something (credentials, retries, timeouts) before building.
    /// The client settings for `bucket` on this server.
    pub fn settings(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: self.endpoint(),
            region: self.region().into(),
            bucket: bucket.into(),
            access_key_id: self.access_key().into(),
            secret_access_key: Secret::new(self.secret_key()),
            force_path_style: true,
        }
    }

    pub fn client_config(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                ACCESS_KEY,
                SECRET_KEY,
                None,
                None,
                "ducks-tests",
            ))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CLIENT_CONNECT_TIMEOUT)
                    .operation_timeout(CLIENT_OPERATION_TIMEOUT)
                    .build(),
            )
    }

    /// An `aws-sdk-s3` client for this server: path-style addressing, the
    /// fixed credentials and region, the SDK's default retries, a 5 s
    /// connect and a 60 s operation timeout (so no call hangs a test; a
    /// streaming body is not covered by the latter).
    pub fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(self.client_config().build())
    }

    /// How many requests with HTTP method `method` (case-insensitive) had
    /// the path `/<bucket>/<key>` with a non-empty `key` (percent-decoded)
    /// starting with `key_prefix`, in any bucket, since start or the last
    /// [`S3Server::reset_counts`].
    ///
    /// Counted when the request arrives, before s3s authenticates or handles
    /// it, so rejected requests count too. Bucket-level requests (listing,
    /// creating a bucket) have no key and are never counted.
    pub fn requests(&self, method: &str, key_prefix: &str) -> usize {
        let method = method.to_ascii_uppercase();
        lock(&self.counts)
            .iter()
            .filter(|((m, key), _)| *m == method && key.starts_with(key_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// Forgets every count [`S3Server::requests`] reports.
    pub fn reset_counts(&self) {
        lock(&self.counts).clear();
    }

    /// Closes a gate: from now on, requests with HTTP method `method` on a key starting with
    /// `key_prefix` wait (counted, but not yet handled) until [`Gate::open`] or the gate is
    /// dropped.
    pub fn gate(&self, method: &str, key_prefix: &str) -> Gate {
        let (open, open_rx) = watch::channel(false);
        let held = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        lock(&self.gates).push(GateState {
            method: method.to_ascii_uppercase(),
            prefix: key_prefix.to_owned(),
            open: open_rx,
            held: Arc::clone(&held),
            arrived: Arc::clone(&arrived),
        });
        Gate {
            open,
            held,
            arrived,
            what: format!("{method} {key_prefix}"),
        }
    }

    /// Stops accepting, closes the listener and every open connection, and
    /// waits until all of that happened: from then on the endpoint refuses
    /// connections. Stored objects stay in [`S3Server::root`]. Calling it
    /// again does nothing.
    ///
    /// Panics if the server task does not finish within 10 s.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // An error means the task already ended (it dropped the receiver).
            let _ = shutdown.send(());
        }
        let Some(task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(STOP_LIMIT, task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("the S3 server task failed: {err}"),
            Err(_) => panic!("the S3 server did not stop within {STOP_LIMIT:?}"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the task's future drops the listener and the JoinSet
            // of connections, which aborts them.
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not turn every later count into a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The s3s service with a request counter and the gates in front of it.
#[derive(Clone)]
struct Counting {
    inner: S3Service,
    counts: Counts,
    gates: Gates,
}

type S3Response = <S3Service as Service<hyper::Request<Incoming>>>::Response;
type S3Error = <S3Service as Service<hyper::Request<Incoming>>>::Error;

impl Service<hyper::Request<Incoming>> for Counting {
    type Response = S3Response;
    type Error = S3Error;
    type Future = Pin<Box<dyn Future<Output = Result<S3Response, S3Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let mut waits = Vec::new();
        if let Some(key) = object_key(req.uri().path()) {
            let method = req.method().as_str().to_owned();
            for gate in lock(&self.gates).iter() {
                if gate.method == method && key.starts_with(&gate.prefix) {
                    gate.arrived.fetch_add(1, Ordering::SeqCst);
                    waits.push((gate.open.clone(), Arc::clone(&gate.held)));
                }
            }
            *lock(&self.counts).entry((method, key)).or_default() += 1;
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            for (mut open, held) in waits {
                // Counted while waiting only: a client that goes away drops this future.
                let _held = HeldCount::new(held);
                let _ = open.wait_for(|open| *open).await;
            }
            Service::call(&inner, req).await
        })
    }
}

/// One request waiting at a gate, for as long as it waits.
struct HeldCount(Arc<AtomicUsize>);

impl HeldCount {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for HeldCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The percent-decoded key of a path-style object path `/<bucket>/<key>`,
/// or `None` for paths without a key (`/`, `/<bucket>`, `/<bucket>/`).
fn object_key(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let (_bucket, key) = rest.split_once('/')?;
    if key.is_empty() {
        return None;
    }
    Some(percent_decode(key))
}

/// A response read by [`http_get`].
#[derive(Clone, Debug)]
pub struct PlainHttpResponse {
    pub status: u16,
    /// In arrival order; names lower-cased.
    pub headers: Vec<(String, String)>,
    /// De-chunked if the server used chunked transfer encoding.
    pub body: Vec<u8>,
}

impl PlainHttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One plain `GET` of an `http://host:port/...` URL (a presigned URL, say)
/// over a fresh HTTP/1.1 connection, as a browser or `curl` would send it:
/// no signing, no headers beyond `Host`. Errors after 30 s.
///
/// Written by hand on a `TcpStream` so the suite needs no HTTP client crate.
pub async fn http_get(url: &str) -> io::Result<PlainHttpResponse> {
    match tokio::time::timeout(REQUEST_LIMIT, http_get_inner(url)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("GET {url}: no complete answer within {REQUEST_LIMIT:?}"),
        )),
    }
}

async fn http_get_inner(url: &str) -> io::Result<PlainHttpResponse> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {url}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs are supported"))?;
    let (authority, path_and_query) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let path_and_query = if path_and_query.starts_with('/') {
        path_and_query.to_owned()
    } else {
        format!("/{path_and_query}")
    };
    if authority.is_empty() {
        return Err(invalid("no host in URL"));
    }

    let mut stream = TcpStream::connect(authority).await?;
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<PlainHttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("response without a complete header"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("non-UTF-8 header"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("malformed status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut response = PlainHttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let payload = &raw[head_end + 4..];
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(payload).ok_or_else(|| bad("malformed chunked body"))?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("malformed content-length"))?;
        payload
            .get(..len)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        payload.to_vec()
    };
    Ok(response)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_hex = size_field.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The `DUCKS_S3__*` variables that point a `ducks` process at `config`.
pub fn s3_env(config: &S3Config) -> [(&'static str, String); 6] {
    [
        ("DUCKS_S3__ENDPOINT", config.endpoint.clone()),
        ("DUCKS_S3__REGION", config.region.clone()),
        ("DUCKS_S3__BUCKET", config.bucket.clone()),
        ("DUCKS_S3__ACCESS_KEY_ID", config.access_key_id.clone()),
        (
            "DUCKS_S3__SECRET_ACCESS_KEY",
            config.secret_access_key.expose().to_owned(),
        ),
        (
            "DUCKS_S3__FORCE_PATH_STYLE",
            config.force_path_style.to_string(),
        ),
    ]
}

/// The bucket every test world and benchmark uses.
pub const BUCKET: &str = "ducks";

/// An S3 server with the bucket and tiny-sd in it, seeded the way `ducks dev` seeds it, the client
/// settings for it, and a storage client.
pub async fn tiny_bucket() -> (S3Server, S3Config, Storage) {
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let config = s3.settings(BUCKET);
    let storage = Storage::connect(&config).await;
    ducks_runner::tiny::ensure(&storage)
        .await
        .expect("tiny-sd seeds into the test bucket");
    (s3, config, storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_key_needs_bucket_and_key() {
        assert_eq!(object_key("/"), None);
        assert_eq!(object_key("/bucket"), None);
        assert_eq!(object_key("/bucket/"), None);
        assert_eq!(object_key("/b/k").as_deref(), Some("k"));
        assert_eq!(
            object_key("/b/models/tiny-sd/unet.safetensors").as_deref(),
            Some("models/tiny-sd/unet.safetensors")
        );
        assert_eq!(object_key("/b/a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(object_key("/b/100%").as_deref(), Some("100%"));
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc").unwrap();
        assert_eq!(plain.status, 200);
        assert_eq!(plain.header("x-a"), Some("b"));
        assert_eq!(plain.body, b"abc");

        let chunked = parse_response(
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.status, 403);
        assert_eq!(chunked.body, b"abcde");
    }
}
