//! The HTTP API end to end: real Redis, the embedded S3 server, a worker running the real runner
//! with tiny-sd, the API on a free port, and real clients: reqwest for the routes and server-sent
//! events, the `openai` Python package (installed by `make test` into target/py), and Chromium for
//! the web page and a Twitch channel's stream overlay.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ducks_api::auth::{KeyOptions, create_key};
use ducks_api::{ApiConfig, RunningApi};
use ducks_contract::links::LinkConfig;
use ducks_contract::{ApiClient, Secret};
use ducks_models::{S3Config, Storage};
use ducks_queue::{OverlayImage, Queue};
use ducks_tests::{RedisOptions, RedisServer, S3Server, ducks_binary};
use ducks_worker::RunningWorker;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{
    GATE_LIMIT, JOB_LIMIT, WEIGHT_KEY, eventually, front_end_worker, png_size, queue_on,
    tiny_bucket, worker_queue_config,
};

const PEPPER: &str = "test-pepper";
const SIGNING_KEY: &str = "test-link-signing-key";

struct World {
    redis: RedisServer,
    s3: S3Server,
    s3_config: S3Config,
    storage: Storage,
    queue: Queue,
    scratch: tempfile::TempDir,
    api: Option<RunningApi>,
    address: SocketAddr,
    config: ApiConfig,
    links: LinkConfig,
    worker: Option<RunningWorker>,
}

fn api_config() -> ApiConfig {
    ApiConfig {
        listen: "127.0.0.1:0".into(),
        pepper: Secret::new(PEPPER),
        key_cache_secs: 0,
        generation_wait_secs: JOB_LIMIT.as_secs(),
        ..ApiConfig::default()
    }
}

impl World {
    async fn new(config: ApiConfig) -> Self {
        Self::with(config, LinkConfig::default(), RedisOptions::default()).await
    }

    /// The API first (its address makes the links), then a worker whose images link to it.
    async fn with(config: ApiConfig, links: LinkConfig, redis: RedisOptions) -> Self {
        let redis = RedisServer::start_with(redis).await;
        let (s3, s3_config, storage) = tiny_bucket().await;
        let queue = queue_on(&redis, worker_queue_config()).await;
        let mut links = LinkConfig {
            signing_key: Secret::new(SIGNING_KEY),
            ..links
        };
        let api = RunningApi::start(
            queue.clone(),
            storage.clone(),
            config.clone(),
            links.clone(),
        )
        .await
        .expect("the API starts");
        let address = api.address;
        links.base_url = format!("http://{address}");
        Self {
            redis,
            s3,
            s3_config,
            storage,
            queue,
            scratch: tempfile::tempdir().unwrap(),
            api: Some(api),
            address,
            config: ApiConfig {
                listen: address.to_string(),
                ..config
            },
            links,
            worker: None,
        }
    }

    async fn start_worker(&mut self) {
        let worker = front_end_worker(
            &self.redis,
            &self.s3_config,
            self.scratch.path(),
            &self.links,
        )
        .await;
        self.worker = Some(worker);
    }

    async fn key(&self, name: &str, admin: bool) -> (String, ApiClient) {
        let options = KeyOptions {
            name: name.into(),
            admin,
            ..KeyOptions::default()
        };
        let new = create_key(&self.queue, &Secret::new(PEPPER), options)
            .await
            .expect("a key");
        (new.key.expose().to_owned(), new.client)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn stop_api(&mut self) {
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
    }

    async fn restart_api(&mut self) {
        self.stop_api().await;
        let api = RunningApi::start(
            self.queue.clone(),
            self.storage.clone(),
            self.config.clone(),
            self.links.clone(),
        )
        .await
        .expect("the API starts again on its address");
        self.api = Some(api);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(JOB_LIMIT)
        .build()
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn post_job(world: &World, key: &str, body: Value) -> (u16, Value) {
    json_of(
        http()
            .post(world.url("/v1/jobs"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The real `openai` package: list, generate (URLs and base64), a bad size, a wrong key.
#[tokio::test]
async fn the_openai_python_client_works_by_changing_its_base_url() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `make test` installs the Python clients (tests/python/requirements.txt)",
        python.display()
    );
    let mut world = World::new(api_config()).await;
    world.start_worker().await;
    let (key, client) = world.key("openai", false).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/openai_client.py");
    let run = tokio::process::Command::new(&python)
        .arg(script)
        .env("DUCKS_API_BASE", world.url("/v1"))
        .env("DUCKS_API_KEY", &key)
        .env("DUCKS_MODEL", ducks_runner::tiny::TINY_MODEL_ID)
        .output();
    let output = tokio::time::timeout(JOB_LIMIT * 2, run)
        .await
        .expect("the client ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("all openai client checks passed"),
        "{stdout}"
    );

    // The key's receipt: two jobs (the bad size queued none), three images, counted once each.
    eventually(JOB_LIMIT, "the images are counted", || async {
        world.queue.api_usage(&client.id).await.unwrap().images == 3
    })
    .await;
    let usage = world.queue.api_usage(&client.id).await.unwrap();
    assert_eq!(usage.jobs, 2, "{usage:?}");
    let list = tokio::process::Command::new(ducks_binary())
        .args(["api", "keys", "list"])
        .env_clear()
        .env("DUCKS_REDIS__URL", world.redis.url())
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{table}");
    let row = table
        .lines()
        .find(|line| line.starts_with(&client.id))
        .unwrap_or_else(|| panic!("no row for the key: {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[1..6],
        ["openai", "no", "active", "2", "3"],
        "{table}"
    );
    assert!(!table.contains(&key), "keys never print again: {table}");
}

/// Server-sent events: queued, starting, progress, succeeded; a dropped stream resumed with
/// `Last-Event-ID` starts from the job's current state and still ends with its result.
#[tokio::test]
async fn job_events_stream_and_resume_without_missing_the_end() {
    let mut world = World::new(api_config()).await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    world.start_worker().await;
    let (key, _) = world.key("sse", false).await;
    let (status, job) = post_job(
        &world,
        &key,
        json!({"prompt": "a duck", "size": "64x64", "steps": 2, "seed": 3}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let events_url = job["urls"]["events"].as_str().unwrap().to_owned();

    // The first stream: read until the runner is held at the gate, loading weights.
    let mut first = http()
        .get(&events_url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut seen = Vec::new();
    let mut buffer = String::new();
    let mut last_id = None;
    tokio::time::timeout(GATE_LIMIT, async {
        while !seen
            .iter()
            .any(|(_, data): &(String, Value)| data["phase"] == "loading_weights")
        {
            let chunk = first.chunk().await.unwrap().expect("the stream stays open");
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            for (id, name, data) in take_events(&mut buffer) {
                last_id = id.or(last_id.take());
                seen.push((name, data));
            }
        }
    })
    .await
    .expect("the job reaches loading_weights");
    gate.wait_held(1, GATE_LIMIT).await;
    drop(first);
    // It opened on the job's state at that moment (the worker may have taken it already).
    assert!(
        ["queued", "starting"].contains(&seen[0].0.as_str()),
        "{seen:?}"
    );

    // While nobody listens, the job goes on and ends.
    gate.open();
    let job_id = job["id"].as_str().unwrap().to_owned();
    eventually(JOB_LIMIT, "the job ends", || async {
        let status = world.queue.status(&job_id.parse().unwrap()).await.unwrap();
        status.state.is_terminal()
    })
    .await;

    // Resumed: the current state (the result) first; the stream then ends.
    let resumed = http()
        .get(&events_url)
        .bearer_auth(&key)
        .header("Last-Event-ID", last_id.clone().expect("events carry ids"))
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(JOB_LIMIT, resumed.text())
        .await
        .expect("the stream ends after the terminal event")
        .unwrap();
    let mut text = text;
    let events = take_events(&mut text);
    let names: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, ["succeeded"], "{events:?}");
    let data = &events[0].2;
    assert_eq!(data["images"][0]["width"], 64);
    let resumed_id = events[0].0.clone().expect("an id");
    assert!(
        ducks_queue::tail::entry_after(&resumed_id, last_id.as_deref().unwrap()),
        "{resumed_id} after {last_id:?}"
    );

    // The receipt: state, images, seed, timings and GPU-seconds.
    let (status, view) = json_of(
        http()
            .get(world.url(&format!("/v1/jobs/{job_id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "succeeded");
    assert_eq!(view["images"][0]["seed"], 3);
    assert!(view["timings"]["total_ms"].as_u64().unwrap() > 0, "{view}");
    assert!(view["timings"]["gpu_seconds"].is_number(), "{view}");
}

/// Splits complete server-sent events off the front of `buffer`: (id, event, data).
fn take_events(buffer: &mut String) -> Vec<(Option<String>, String, Value)> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let (mut id, mut name, mut data) = (None, String::new(), String::new());
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id:") {
                id = Some(value.trim().to_owned());
            } else if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim());
            }
        }
        if !data.is_empty() {
            events.push((id, name, serde_json::from_str(&data).unwrap()));
        }
    }
    events
}

/// Who may see and cancel a job: its key and admin keys; another key gets 404 to look and 403 to
/// cancel. No worker runs, so jobs stay queued.
#[tokio::test]
async fn only_the_submitting_key_or_an_admin_key_sees_and_cancels_a_job() {
    let world = World::new(api_config()).await;
    let (owner, _) = world.key("owner", false).await;
    let (other, _) = world.key("other", false).await;
    let (admin, _) = world.key("admin", true).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, job) = post_job(&world, &owner, json!({"prompt": "a duck"})).await;
        assert_eq!(status, 202, "{job}");
        assert_eq!(job["state"], "queued");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let get = |key: &str, id: &str| {
        http()
            .get(world.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(key)
            .send()
    };
    let delete = |key: &str, id: &str| {
        http()
            .delete(world.url(&format!("/v1/jobs/{id}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(get(&other, &ids[0]).await.unwrap().status(), 404);
    assert_eq!(get(&admin, &ids[0]).await.unwrap().status(), 200);
    let (status, refused) = json_of(delete(&other, &ids[0]).await.unwrap()).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["type"], "permission_error");
    let (status, cancelled) = json_of(delete(&owner, &ids[0]).await.unwrap()).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );
    let (status, cancelled) = json_of(delete(&admin, &ids[1]).await.unwrap()).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );

    // The owner's list has both; the other key's has none.
    let list = |key: &str| http().get(world.url("/v1/jobs")).bearer_auth(key).send();
    let (_, mine) = json_of(list(&owner).await.unwrap()).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 2, "{mine}");
    let (_, theirs) = json_of(list(&other).await.unwrap()).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0, "{theirs}");
}

/// Keys and bad input: no key, a wrong key and a revoked key get 401; a key over its own limit
/// gets 429 with Retry-After; a body that names the origin or an unknown field gets 400 naming
/// it; every error is in OpenAI's shape.
#[tokio::test]
async fn keys_limits_and_bad_input_get_openai_shaped_errors() {
    let world = World::new(api_config()).await;
    let (status, body) = json_of(http().get(world.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, _) = json_of(
        http()
            .get(world.url("/v1/models"))
            .bearer_auth("ducks_wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    let limited = create_key(
        &world.queue,
        &Secret::new(PEPPER),
        KeyOptions {
            name: "limited".into(),
            in_flight: Some(1),
            ..KeyOptions::default()
        },
    )
    .await
    .unwrap();
    let limited_key = limited.key.expose();
    let (status, _) = post_job(&world, limited_key, json!({"prompt": "one"})).await;
    assert_eq!(status, 202);
    let over = http()
        .post(world.url("/v1/jobs"))
        .bearer_auth(limited_key)
        .json(&json!({"prompt": "two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));
    let (_, body) = json_of(over).await;
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");

    for (body, param) in [
        (
            json!({"prompt": "p", "origin": {"kind": "discord"}}),
            "origin",
        ),
        (
            json!({"prompt": "p", "requester": {"id": "someone"}}),
            "requester",
        ),
        (json!({"prompt": "p", "sizes": "64x64"}), "sizes"),
        (json!({"prompt": "p", "steps": "many"}), "steps"),
        (json!({"prompt": "p", "size": "huge"}), "size"),
    ] {
        let (status, error) = post_job(&world, limited_key, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }

    world
        .queue
        .revoke_api_client(&limited.client.id, 1)
        .await
        .unwrap();
    let (status, body) = post_job(&world, limited_key, json!({"prompt": "p"})).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
}

/// An API without keys refuses to start unless it is explicitly open; an open API serves
/// without a key.
#[tokio::test]
async fn an_api_without_keys_must_be_opened_explicitly() {
    let redis = RedisServer::start().await;
    let (_s3, _config, storage) = tiny_bucket().await;
    let queue = queue_on(&redis, worker_queue_config()).await;
    let closed = ApiConfig {
        pepper: Secret::default(),
        ..api_config()
    };
    let refused = RunningApi::start(
        queue.clone(),
        storage.clone(),
        closed,
        LinkConfig::default(),
    )
    .await
    .err()
    .expect("no keys and not open: refused");
    assert!(refused.to_string().contains("api.open"), "{refused}");
    let open = ApiConfig {
        open: true,
        pepper: Secret::default(),
        ..api_config()
    };
    let api = RunningApi::start(queue, storage, open, LinkConfig::default())
        .await
        .unwrap();
    let response = http()
        .get(format!("http://{}/v1/models", api.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    api.stop().await;
}

/// A permanent link keeps redirecting to the image after the presign lifetime has passed; an
/// altered one is refused.
#[tokio::test]
async fn short_links_outlive_the_presign_lifetime() {
    let links = LinkConfig {
        presign_ttl_secs: 1,
        ..LinkConfig::default()
    };
    let mut world = World::with(api_config(), links, RedisOptions::default()).await;
    world.start_worker().await;
    let (key, _) = world.key("links", false).await;
    let (status, job) = json_of(
        http()
            .post(world.url("/v1/jobs"))
            .bearer_auth(&key)
            .header("Prefer", "wait=60")
            .json(&json!({"prompt": "a duck", "size": "64x64", "steps": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("succeeded")),
        "{job}"
    );
    let link = job["images"][0]["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&world.url("/i/")), "{link}");
    assert!(link.len() < 200, "short: {link}");

    let redirect = http().get(&link).send().await.unwrap();
    assert_eq!(redirect.status(), 302);
    let first_target = redirect.headers()["location"].to_str().unwrap().to_owned();
    // The presigned target expires after its second; the link itself does not.
    eventually(
        Duration::from_secs(30),
        "the first presigned target expires",
        || async { http().get(&first_target).send().await.unwrap().status() == 403 },
    )
    .await;
    let again = http().get(&link).send().await.unwrap();
    assert_eq!(again.status(), 302);
    let target = again.headers()["location"].to_str().unwrap().to_owned();
    let image = http().get(&target).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(png_size(&image.bytes().await.unwrap()), (64, 64));

    let mut altered = link.clone();
    altered.pop();
    altered.push(if link.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(http().get(&altered).send().await.unwrap().status(), 404);
}

/// What a webhook receiver got: each request's headers and body.
type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// A receiver on `address` that records every request and answers 204.
async fn receiver(address: SocketAddr, received: Received) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let received = received.clone();
            async move {
                received.lock().unwrap().push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

/// The Standard Webhooks check, written from the specification: HMAC-SHA256 under the base64
/// secret after `whsec_`, over `id.timestamp.body`, in a `v1,` entry of the signature header.
fn signature_is_valid(secret: &str, headers: &axum::http::HeaderMap, body: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .any(|entry| entry == expected)
}

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A receiver that is down when the job ends, an API restarted while the delivery is due, then
/// the receiver up: the terminal event arrives once, correctly signed.
#[tokio::test]
async fn webhooks_survive_a_down_receiver_and_an_api_restart() {
    let config = ApiConfig {
        webhook_allow_private: true,
        ..api_config()
    };
    let mut world = World::new(config).await;
    world.start_worker().await;
    let (key, client) = world.key("hooks", false).await;
    let hook = free_address();
    let (status, job) = post_job(
        &world,
        &key,
        json!({"prompt": "a duck", "size": "64x64", "steps": 1, "webhook": {"url": format!("http://{hook}/hook")}}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    // The first attempt fails (nobody listens) and the delivery waits for its retry.
    let metrics = world.url("/metrics");
    eventually(JOB_LIMIT, "a failed delivery attempt", || async {
        let text = http()
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains("ducks_api_webhook_deliveries_total{outcome=\"failed\"}")
    })
    .await;
    assert_eq!(world.queue.pending_webhooks().await.unwrap(), 1);

    world.restart_api().await;
    let received = Received::default();
    let _receiver = receiver(hook, received.clone()).await;
    eventually(Duration::from_secs(60), "the delivery arrives", || async {
        world.queue.pending_webhooks().await.unwrap() == 0
    })
    .await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered once: {got:?}");
    let (headers, body) = &got[0];
    assert!(
        signature_is_valid(client.webhook_secret.expose(), headers, body),
        "{headers:?}"
    );
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["type"], "job.succeeded", "{payload}");
    // Its event read again (after a crash before its acknowledgement) sends nothing twice.
    let webhook_id = headers["webhook-id"].to_str().unwrap();
    assert!(!world.queue.add_webhook(webhook_id, body).await.unwrap());
    assert_eq!(payload["data"]["job_id"], job["id"]);
    assert_eq!(payload["data"]["images"][0]["width"], 64);
}

/// In the default configuration a loopback webhook is refused when the job is submitted.
#[tokio::test]
async fn loopback_webhooks_are_refused_by_default() {
    let world = World::new(api_config()).await;
    let (key, _) = world.key("hooks", false).await;
    let (status, error) = post_job(
        &world,
        &key,
        json!({"prompt": "a duck", "webhook": {"url": "http://127.0.0.1:9/hook"}}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "webhook.url");
}

/// Redis down: requests answer 503 within seconds; Redis back: the API serves again by itself.
#[tokio::test]
async fn redis_down_answers_503_and_the_api_recovers() {
    // With persistence, as a queue should run: the key outlives the restart.
    let redis = RedisOptions { aof: true };
    let mut world = World::with(api_config(), LinkConfig::default(), redis).await;
    let (key, _) = world.key("outage", false).await;
    world.redis.kill().await;
    let started = std::time::Instant::now();
    let (status, body) = post_job(&world, &key, json!({"prompt": "a duck"})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        http()
            .get(world.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    world.redis.restart().await;
    eventually(Duration::from_secs(30), "the API serves again", || async {
        post_job(&world, &key, json!({"prompt": "a duck"})).await.0 == 202
    })
    .await;
}

/// The OpenAPI document is generated from the code and names every route; the page is served.
#[tokio::test]
async fn the_openapi_document_and_the_page_are_served() {
    let world = World::new(api_config()).await;
    let (status, document) =
        json_of(http().get(world.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{document}"
    );
    for path in [
        "/v1/models",
        "/v1/models/{id}",
        "/v1/images/generations",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/i/{slug}",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} missing");
    }
    let page = http().get(world.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("<label for=\"prompt\">"), "labelled prompt");
}

/// The page in a real headless Chromium, as a person uses it: models load, a prompt is typed
/// and sent, the cold start's phase shows while the runner is held loading weights, and the
/// image appears at the requested width. The screenshot is saved under target/.
#[tokio::test]
async fn the_page_draws_an_image_in_a_real_browser() {
    let open = ApiConfig {
        open: true,
        pepper: Secret::default(),
        ..api_config()
    };
    let mut world = World::new(open).await;
    let gate = world.s3.gate("GET", WEIGHT_KEY);
    world.start_worker().await;
    let browser = ducks_tests::Browser::start().await;
    browser.open(&world.url("/")).await;
    browser
        .wait_for(
            "return document.querySelectorAll('#model option').length > 0 && document.querySelectorAll('#size option').length > 0",
            Duration::from_secs(30),
            "the model picker fills from /v1/models",
        )
        .await;
    browser
        .type_into("#prompt", "a duck drawn from a browser")
        .await;
    browser.click("#submit").await;
    browser
        .wait_for(
            "return document.querySelector('#status').textContent.includes('Loading the model')",
            GATE_LIMIT,
            "the page shows the cold start's phase",
        )
        .await;
    // The runner is held at its weights while the page says so.
    gate.wait_held(1, GATE_LIMIT).await;
    let status = browser
        .script("return document.querySelector('#status').textContent")
        .await;
    assert_eq!(status, "Loading the model…");
    gate.open();
    browser
        .wait_for(
            "const image = document.querySelector('#result-image');
             const width = Number(document.querySelector('#size').value.split('x')[0]);
             return !!image && image.complete && image.naturalWidth === width;",
            JOB_LIMIT,
            "the image loads at the requested width",
        )
        .await;
    let receipt = browser
        .script("return document.querySelector('#result dl').textContent")
        .await;
    assert!(
        receipt
            .as_str()
            .unwrap()
            .contains("a duck drawn from a browser"),
        "{receipt}"
    );
    browser
        .wait_for(
            "return document.querySelectorAll('#gallery img').length === 1",
            Duration::from_secs(30),
            "the gallery shows the new image",
        )
        .await;
    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/page.png");
    browser.screenshot(&shot).await;
    assert_eq!(png_size(&std::fs::read(&shot).unwrap()).0, 900);
}

/// schemathesis (pinned, from target/py) fuzzes every route of /openapi.json but the waiting and
/// streaming ones, bounded in examples and time: no 5xx, and every response matches the
/// document.
#[tokio::test]
async fn a_schema_driven_fuzz_finds_no_server_error_and_no_undocumented_response() {
    let schemathesis =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: `make test` installs it (tests/python/requirements.txt)",
        schemathesis.display()
    );
    let config = ApiConfig {
        max_prefer_wait_secs: 1,
        ..api_config()
    };
    let mut world = World::new(config).await;
    // The catalogue is published, then the worker leaves: jobs stay queued.
    world.start_worker().await;
    world.worker.take().unwrap().stop().await.unwrap();
    let (key, _) = world.key("fuzz", false).await;
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("st.toml"), "[cache]\nenabled = false\n").unwrap();
    let run = tokio::process::Command::new(&schemathesis)
        .current_dir(out.path())
        .env(
            "HYPOTHESIS_STORAGE_DIRECTORY",
            out.path().join("hypothesis"),
        )
        .env("NO_PROXY", "127.0.0.1")
        .args(["--config-file", "st.toml", "run"])
        .arg(world.url("/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--exclude-path", "/v1/images/generations"])
        .args(["--exclude-path", "/v1/jobs/{id}/events"])
        .args(["--max-examples", "25", "--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--generation-with-security-parameters", "false"])
        // Two checks ask what this API rightly does not: to accept every schema-valid request
        // (a size larger than the chosen model draws, or a deadline already past, is refused
        // with its reason), and to forget a cancelled job (DELETE cancels; the job stays
        // readable, with its state, as the receipt).
        .args([
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
        ])
        .arg("--no-color")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the fuzz ends within its bound")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PNG of `width` × `height` pixels, a gradient a screenshot shows.
fn gradient_png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let pixels: Vec<u8> = (0..height)
        .flat_map(|y| (0..width).flat_map(move |x| [(x * 4) as u8, (y * 4) as u8, 200]))
        .collect();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&pixels).unwrap();
    writer.finish().unwrap();
    bytes
}

fn overlay_image(job: &str, url: &str, requester: &str, prompt: &str) -> OverlayImage {
    OverlayImage {
        job: job.into(),
        url: url.into(),
        width: 64,
        height: 64,
        requester: requester.into(),
        prompt: prompt.into(),
        model: "tiny-sd".into(),
        at_ms: ducks_queue::now_ms(),
    }
}

/// The overlay's routes answer without a key on an API that has keys; only Twitch channels have
/// one, and a name that is no channel's, a cursor that is no cursor or a limit out of range is
/// refused with its reason. The JSON route is in the OpenAPI document, without a key.
#[tokio::test]
async fn the_overlay_is_public_and_refuses_what_is_no_twitch_channel() {
    let world = World::new(api_config()).await;
    let get = |path: &str| http().get(world.url(path)).send();
    assert_eq!(get("/v1/jobs").await.unwrap().status(), 401, "keys are on");
    let (status, body) = json_of(get("/v1/overlay/twitch/ducks_tv").await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"images": [], "cursor": "0-0"}));
    world
        .queue
        .add_to_overlay(
            "twitch",
            "ducks_tv",
            &overlay_image("job-1", "https://ducks.example/i/1", "Ann", "a duck"),
        )
        .await
        .unwrap();
    let answer = get("/v1/overlay/twitch/Ducks_TV?limit=5").await.unwrap();
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let (status, body) = json_of(answer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["images"][0]["requester"], "Ann", "logins ignore case");
    assert_eq!(body["images"][0]["prompt"], "a duck");
    let cursor = body["cursor"].as_str().unwrap().to_owned();
    let (_, body) = json_of(
        get(&format!("/v1/overlay/twitch/ducks_tv?after={cursor}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body, json!({"images": [], "cursor": cursor}));

    let page = get("/overlay/twitch/DucksTV?count=2").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("../../v1/overlay/"));

    for (path, status, param) in [
        ("/overlay/discord/ducks", 404, None),
        ("/v1/overlay/discord/ducks", 404, None),
        ("/overlay/twitch/no%20such", 400, Some("channel")),
        ("/v1/overlay/twitch/no%20such", 400, Some("channel")),
        (
            "/v1/overlay/twitch/a_name_longer_than_25_chars",
            400,
            Some("channel"),
        ),
        ("/v1/overlay/twitch/ducks?after=%24", 400, Some("after")),
        (
            "/v1/overlay/twitch/ducks?after=99999999999999999999-0",
            400,
            Some("after"),
        ),
        ("/v1/overlay/twitch/ducks?limit=0", 400, Some("limit")),
        ("/v1/overlay/twitch/ducks?limit=51", 400, Some("limit")),
        ("/v1/overlay/twitch/ducks?limit=many", 400, None),
    ] {
        let (got, body) = json_of(get(path).await.unwrap()).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{path}: {body}"
        );
        if let Some(param) = param {
            assert_eq!(body["error"]["param"], param, "{path}: {body}");
        }
    }

    let (_, document) = json_of(get("/openapi.json").await.unwrap()).await;
    let route = &document["paths"]["/v1/overlay/{origin_kind}/{channel}"]["get"];
    assert!(route.is_object(), "{document}");
    assert!(route.get("security").is_none(), "{route}");
    assert!(route["responses"].get("401").is_none(), "{route}");
}

/// A streamer's overlay in a real headless Chromium, as OBS shows it: it opens with the newest
/// image, then images the bot adds appear at the top without a reload (a marker set in the
/// window survives), with who asked and the prompt shortened and shown as text, never as
/// markup; `?count=2` keeps two. The screenshot is saved under target/.
#[tokio::test]
async fn the_overlay_shows_new_images_live_in_a_real_browser() {
    let world = World::new(api_config()).await;
    let object = "overlay/duck.png";
    world
        .storage
        .put(
            object,
            gradient_png(64, 64),
            "image/png",
            Default::default(),
        )
        .await
        .unwrap();
    let link = ducks_contract::links::permanent_link(
        &world.links.base_url,
        object,
        &world.links.signing_key,
    );
    let add = |image: OverlayImage| {
        let queue = world.queue.clone();
        async move {
            queue
                .add_to_overlay("twitch", "duckstv", &image)
                .await
                .unwrap()
        }
    };
    add(overlay_image(
        "job-early",
        &link,
        "EarlyBird",
        "an early duck",
    ))
    .await;

    let browser = ducks_tests::Browser::start().await;
    browser
        .open(&world.url("/overlay/twitch/DucksTV?count=2&size=160"))
        .await;
    browser
        .wait_for(
            "return !!document.documentElement.dataset.cursor
                && document.querySelectorAll('#images figure').length === 1
                && document.querySelector('#images .requester').textContent === 'EarlyBird';",
            Duration::from_secs(30),
            "the overlay opens with the newest image",
        )
        .await;
    browser
        .script("window.notReloaded = 'marker'; return true;")
        .await;

    let prompt = format!(
        "<script>window.injected = true</script><b>bold</b> a rubber duck {}",
        "on a very long prompt ".repeat(10)
    );
    let new = overlay_image("job-new", &link, "Mallard_99", &prompt);
    add(new.clone()).await;
    add(new).await;
    browser
        .wait_for(
            "const first = document.querySelector('#images figure');
             const img = first && first.querySelector('img');
             return !!first && first.dataset.job === 'job-new'
                 && first.querySelector('.requester').textContent === 'Mallard_99'
                 && img.complete && img.naturalWidth === 64;",
            Duration::from_secs(30),
            "the new image appears on top, loaded through its permanent link",
        )
        .await;
    let seen = browser
        .script(
            "const prompt = document.querySelector('#images figure .prompt').textContent;
             return {
                 marker: window.notReloaded || null,
                 injected: window.injected || null,
                 markup: document.querySelectorAll('#images script, #images b').length,
                 prompt: prompt,
                 chars: Array.from(prompt).length,
                 jobs: Array.from(document.querySelectorAll('#images figure')).map((f) => f.dataset.job),
                 background: getComputedStyle(document.body).backgroundColor,
             };",
        )
        .await;
    assert_eq!(seen["marker"], "marker", "no reload: {seen}");
    assert_eq!(seen["injected"], Value::Null, "{seen}");
    assert_eq!(seen["markup"], 0, "{seen}");
    let shown = seen["prompt"].as_str().unwrap();
    assert!(
        shown.starts_with("<script>window.injected = true</script><b>bold</b> a rubber duck"),
        "the prompt shows as text: {seen}"
    );
    assert!(shown.ends_with('…'), "shortened visibly: {seen}");
    assert!(seen["chars"].as_u64().unwrap() <= 90, "{seen}");
    assert_eq!(seen["jobs"], json!(["job-new", "job-early"]), "once each");
    assert_eq!(
        seen["background"], "rgba(0, 0, 0, 0)",
        "transparent for OBS"
    );

    add(overlay_image("job-third", &link, "Teal", "a third duck")).await;
    browser
        .wait_for(
            "const jobs = Array.from(document.querySelectorAll('#images figure')).map((f) => f.dataset.job);
             const images = Array.from(document.querySelectorAll('#images img'));
             return jobs.join() === 'job-third,job-new'
                 && images.every((img) => img.complete && img.naturalWidth === 64)
                 && document.getAnimations().every((a) => a.playState === 'finished');",
            Duration::from_secs(30),
            "?count=2 keeps the newest two (and the screenshot waits for them to settle)",
        )
        .await;
    assert_eq!(
        browser.script("return window.notReloaded || null;").await,
        "marker"
    );
    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/overlay.png");
    browser.screenshot(&shot).await;
}
