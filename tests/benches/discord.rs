//! The Discord bot benchmark (`make bench-discord`): the release `ducks bots discord` as a process
//! of its own, against the local Discord simulator and a `redis-server` of the benchmark's own.
//!
//! 1. One 20-step tiny-sd job through a worker and the real runner: the REST requests it costs
//!    the bot (its progress edits are coalesced to one per `progress_interval_ms`, 1.5 s).
//! 2. 500 `/imagine` interactions at once through the HTTP endpoint, then 500 through the gateway:
//!    the time from an interaction's arrival to its first answer reaching Discord (the
//!    simulator), p50 and p99 (target: p99 under 50 ms; Discord allows 3 s). Every request is
//!    checked and queued in Redis before it is answered.
//! 3. Each bot's RSS with those jobs in flight (no worker runs, so all 1,000 wait in the queue).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ducks_queue::{Queue, QueueConfig, RedisTarget};
use ducks_tests::discord::{APPLICATION_ID, Actor, DiscordSim, slash_command};
use ducks_tests::measure::{cpu_secs, percentile, rss_mib};
use ducks_tests::{RedisServer, ducks_binary, tiny_bucket};
use ducks_worker::config::LocalConfig;
use ducks_worker::{RunningWorker, WorkerConfig};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

const BURST: usize = 500;
const LIMIT: Duration = Duration::from_secs(120);

struct BotProcess {
    child: Child,
    address: String,
}

impl BotProcess {
    async fn start(redis: &RedisServer, sim: &DiscordSim, mode: &str) -> BotProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(ducks_binary())
            .args(["bots", "discord"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("DUCKS_REDIS__URL", redis.url())
            .env("DUCKS_QUEUE__MAX_BACKLOG", "10000000")
            .env("DUCKS_QUEUE__PER_REQUESTER_IN_FLIGHT", "0")
            .env("DUCKS_QUEUE__PER_REQUESTER_RATE", "0")
            .env("DUCKS_QUEUE__SCOPES__DISCORD__IN_FLIGHT", "0")
            .env("DUCKS_QUEUE__SCOPES__DISCORD__RATE", "0")
            .env("DUCKS_DISCORD__TOKEN", sim.bot_token())
            .env("DUCKS_DISCORD__APPLICATION_ID", APPLICATION_ID.to_string())
            .env("DUCKS_DISCORD__PUBLIC_KEY", sim.public_key_hex())
            .env("DUCKS_DISCORD__MODE", mode)
            .env("DUCKS_DISCORD__LISTEN", &address)
            .env("DUCKS_DISCORD__API_BASE", sim.api_base())
            .env("DUCKS_DISCORD__CONSUMER", mode)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the release ducks binary starts (make bench-discord builds it)");
        let health = format!("http://{address}/healthz");
        let started = Instant::now();
        while !reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) {
            assert!(started.elapsed() < LIMIT, "the bot did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        BotProcess { child, address }
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.id())
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id().expect("running"))
    }
}

/// Member `n` of one of 50 servers: every request is someone else's, as in a busy hour.
fn actor(n: usize) -> Actor {
    Actor::in_guild(
        1_000_000_000_000_000_000 + n as u64,
        &format!("user{n}"),
        1_100_000_000_000_000_000 + (n % 50) as u64,
        1_200_000_000_000_000_000 + (n % 50) as u64,
    )
}

fn imagine(n: usize, steps: u64) -> ducks_tests::discord::InteractionPayload {
    slash_command(
        "imagine",
        &[
            ("prompt", json!(format!("rubber duck number {n}"))),
            ("model", json!("tiny-sd")),
            ("size", json!("64x64")),
            ("steps", json!(steps)),
        ],
        &actor(n),
    )
}

/// One row: the latencies, the whole burst's span, and the bot's CPU per interaction.
fn report(name: &str, mut ms: Vec<f64>, span: Duration, cpu_secs: f64) {
    ms.sort_by(f64::total_cmp);
    println!(
        "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} ms | {:.2} ms | < 50 ms |",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        span.as_secs_f64() * 1000.0,
        cpu_secs * 1000.0 / ms.len() as f64
    );
}

#[tokio::main]
async fn main() {
    let redis = RedisServer::start().await;
    let (_s3, s3_config, _storage) = tiny_bucket().await;
    let sim = Arc::new(DiscordSim::start().await);
    let queue_config = QueueConfig {
        max_backlog: 10_000_000,
        per_requester_in_flight: 0,
        per_requester_rate: 0,
        ..QueueConfig::default()
    };
    let queue = Queue::connect(RedisTarget::Single(redis.url()), queue_config.clone())
        .await
        .unwrap();

    println!("# 1. One 20-step tiny-sd job: what it costs in Discord REST requests");
    let scratch = tempfile::tempdir().unwrap();
    let worker = RunningWorker::start(
        Queue::connect(RedisTarget::Single(redis.url()), queue_config)
            .await
            .unwrap(),
        &s3_config,
        WorkerConfig {
            concurrency: 2,
            listen: String::new(),
            progress_interval_ms: 0,
            local: LocalConfig {
                runner_program: ducks_binary(),
                runs_dir: scratch.path().join("runs"),
                cache_dir: scratch.path().join("cache"),
            },
            ..WorkerConfig::default()
        },
        &Default::default(),
        "images",
    )
    .await
    .unwrap();
    let started = Instant::now();
    while queue.models().await.unwrap().models.is_empty() {
        assert!(started.elapsed() < LIMIT, "the catalogue is published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http_bot = BotProcess::start(&redis, &sim, "http").await;
    let url = format!("http://{}/interactions", http_bot.address);
    let mut costs = Vec::new();
    for n in 0..3 {
        let payload = imagine(1_000_000 + n, 20);
        let started = Instant::now();
        let (status, _) = sim.post_interaction(&url, &payload.json).await;
        assert_eq!(status, 200);
        sim.wait_for_original(
            &payload.token,
            |m| m["embeds"][0]["image"]["url"].is_string(),
            LIMIT,
        )
        .await;
        let took = started.elapsed();
        let requests: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.path.contains(&payload.token))
            .collect();
        let progress = requests
            .iter()
            .filter(|r| {
                r.json
                    .as_ref()
                    .is_some_and(|b| b["embeds"][0]["image"].is_null())
            })
            .count();
        costs.push((took, requests.len(), progress));
    }
    println!("| job | wall time | REST requests | of them progress edits |");
    println!("|---|---|---|---|");
    for (n, (took, requests, progress)) in costs.iter().enumerate() {
        println!(
            "| {} | {:.2} s | {requests} (+ the first answer, in the HTTP response) | {progress} |",
            n + 1,
            took.as_secs_f64()
        );
    }
    worker.stop().await.unwrap();

    println!("\n# 2. {BURST} /imagine at once: arrival to first answer at Discord");
    println!(
        "| path | interactions | p50 | p99 | max | whole burst | bot CPU per interaction | target p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let cpu_before = http_bot.cpu_secs();
    let burst = Instant::now();
    let mut set = JoinSet::new();
    for n in 0..BURST {
        let sim = sim.clone();
        let url = url.clone();
        set.spawn(async move {
            let payload = imagine(n, 4);
            let started = Instant::now();
            let (status, body) = sim.post_interaction(&url, &payload.json).await;
            let took = started.elapsed().as_secs_f64() * 1000.0;
            let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            assert_eq!(status, 200, "{body}");
            assert_eq!(answer["type"], 4, "{body}");
            took
        });
    }
    let http_ms: Vec<f64> = set.join_all().await;
    report(
        "HTTP endpoint",
        http_ms,
        burst.elapsed(),
        http_bot.cpu_secs() - cpu_before,
    );
    let http_rss = http_bot.rss_mib();

    let gateway_bot = BotProcess::start(&redis, &sim, "gateway").await;
    sim.wait_gateway_ready(LIMIT).await;
    let payloads: Vec<_> = (BURST..2 * BURST).map(|n| imagine(n, 4)).collect();
    let mut sent = Vec::new();
    for payload in &payloads {
        sim.register_interaction(&payload.json);
    }
    let cpu_before = gateway_bot.cpu_secs();
    let burst = Instant::now();
    for payload in &payloads {
        sent.push(Instant::now());
        assert_eq!(sim.dispatch_interaction(&payload.json), 1);
    }
    let mut gateway_ms = Vec::new();
    let mut last_answer = burst;
    for (payload, sent) in payloads.iter().zip(sent) {
        let token = payload.token.clone();
        let callback = sim
            .wait_for_request(
                move |r| {
                    r.method == "POST" && r.path.contains(&token) && r.path.ends_with("/callback")
                },
                LIMIT,
            )
            .await;
        gateway_ms.push(callback.at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        last_answer = last_answer.max(callback.at);
    }
    report(
        "gateway",
        gateway_ms,
        last_answer.duration_since(burst),
        gateway_bot.cpu_secs() - cpu_before,
    );

    println!("\n# 3. Memory with the jobs in flight (all waiting: no worker runs)");
    println!("| bot | jobs it answered in flight | RSS |");
    println!("|---|---|---|");
    println!("| HTTP endpoint | {BURST} | {http_rss:.1} MiB |");
    println!("| gateway | {BURST} | {:.1} MiB |", gateway_bot.rss_mib());
}
