//! The Twitch bot end to end: the real `ducks bots twitch` binary, dialling the local Twitch chat
//! simulator (`twitch.server = tcp://…`), real Redis, and either the real worker with tiny-sd
//! behind the API's short links, or (where a test is about chat, not images) the test itself
//! finishing jobs through the queue's consumer API. Assertions read what viewers would see: the
//! lines the simulator recorded.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ducks_api::{ApiConfig, RunningApi};
use ducks_contract::links::LinkConfig;
use ducks_contract::{EventKind, ImageRef, Secret, Timings};
use ducks_queue::{Consumer, Queue};
use ducks_tests::twitch::{Sent, TwitchSim, Viewer};
use ducks_tests::{RedisServer, S3Server, ducks_binary, instant_worker};
use ducks_worker::RunningWorker;

use crate::support::{
    eventually, front_end_worker, png_size, queue_on, tiny_bucket, worker_queue_config,
};

/// How long a bot may take to start, log in and join.
const BOT_LIMIT: Duration = Duration::from_secs(30);
/// How long a chat answer may take on a loaded machine.
const CHAT_LIMIT: Duration = Duration::from_secs(20);
const BOT: &str = "duckbot";
const CHANNEL: &str = "pond";
const SIGNING_KEY: &str = "test-link-signing-key";

fn viewer<'a>(login: &'a str, id: &'a str, badges: &'a [&'a str]) -> Viewer<'a> {
    Viewer {
        user_id: id,
        login,
        badges,
        ..Viewer::default()
    }
}

struct World {
    redis: RedisServer,
    queue: Queue,
    sim: TwitchSim,
    scratch: tempfile::TempDir,
    links: LinkConfig,
    /// The API serving the short links, and the S3 server behind it.
    _api: Option<(RunningApi, S3Server)>,
    worker: Option<RunningWorker>,
}

/// One `ducks bots twitch` process.
struct BotProcess {
    child: tokio::process::Child,
    address: String,
}

impl World {
    /// Redis and the chat simulator; links to an API that is not started (tests that finish
    /// jobs themselves never open them).
    async fn chat_only() -> World {
        let redis = RedisServer::start().await;
        let queue = queue_on(&redis, worker_queue_config()).await;
        World {
            redis,
            queue,
            sim: TwitchSim::start().await,
            scratch: tempfile::tempdir().unwrap(),
            links: LinkConfig {
                signing_key: Secret::new(SIGNING_KEY),
                base_url: "http://ducks.invalid".into(),
                ..LinkConfig::default()
            },
            _api: None,
            worker: None,
        }
    }

    /// Everything: the API (whose address makes the short links) and a worker drawing with
    /// tiny-sd.
    async fn with_images() -> World {
        let mut world = World::chat_only().await;
        let (s3, s3_config, storage) = tiny_bucket().await;
        let api = RunningApi::start(
            world.queue.clone(),
            storage,
            ApiConfig {
                listen: "127.0.0.1:0".into(),
                open: true,
                ..ApiConfig::default()
            },
            LinkConfig {
                base_url: String::new(),
                ..world.links.clone()
            },
        )
        .await
        .expect("the API starts");
        world.links.base_url = format!("http://{}", api.address);
        world.worker = Some(
            front_end_worker(&world.redis, &s3_config, world.scratch.path(), &world.links).await,
        );
        world._api = Some((api, s3));
        world
    }

    /// Starts `ducks bots twitch` as replica `consumer` with extra settings, and waits until it
    /// serves its probes and has joined `#pond`.
    async fn bot(&self, consumer: &str, extra: &[(&str, &str)]) -> BotProcess {
        let joined_before = self.sim.connections().iter().filter(|c| c.live()).count();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join(format!("bot-{consumer}.log")))
            .unwrap();
        let mut command = tokio::process::Command::new(ducks_binary());
        command
            .args(["bots", "twitch"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.scratch.path())
            .env("DUCKS_REDIS__URL", self.redis.url())
            .env("DUCKS_TWITCH__LOGIN", BOT)
            .env("DUCKS_TWITCH__TOKEN", "oauth:bot-token-secret")
            .env("DUCKS_TWITCH__SERVER", format!("tcp://{}", self.sim.addr()))
            .env("DUCKS_TWITCH__CHANNELS", CHANNEL)
            .env("DUCKS_TWITCH__LISTEN", &address)
            .env("DUCKS_TWITCH__CONSUMER", consumer)
            .env("DUCKS_TWITCH__CONFIRM_WITHIN_MS", "1000")
            .env("DUCKS_TWITCH__DEFAULTS__USER_COOLDOWN_SECS", "0")
            .env("DUCKS_LINKS__BASE_URL", &self.links.base_url)
            .env("DUCKS_LINKS__SIGNING_KEY", SIGNING_KEY)
            .env("DUCKS_QUEUE__EVENT_CLAIM_AFTER_MS", "2000")
            .env("RUST_LOG", "debug,hyper=info,reqwest=info,rustls=info")
            .current_dir(self.scratch.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("ducks bots twitch starts");
        let health = format!("http://{address}/healthz");
        eventually(BOT_LIMIT, "the bot serves /healthz", || async {
            reqwest::get(&health).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        self.sim
            .wait_joined(CHANNEL, joined_before + 1, BOT_LIMIT)
            .await;
        BotProcess { child, address }
    }

    fn logs(&self) -> String {
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.scratch.path()).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("bot-")
            {
                logs.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
        logs
    }

    /// The bot's lines that reply to message `id`.
    async fn reply_to(&self, id: &str, containing: &str) -> Sent {
        self.sim
            .wait_for_sent(
                |sent| {
                    sent.delivered()
                        && sent.reply_parent() == Some(id)
                        && sent.text.contains(containing)
                },
                CHAT_LIMIT,
            )
            .await
    }
}

/// Every line the bot sent fits a Twitch message and cannot run a chat command.
fn assert_lines_are_safe(sim: &TwitchSim) {
    for sent in sim.sent() {
        assert!(sent.text.chars().count() <= 500, "too long: {}", sent.text);
        assert!(
            !sent.text.starts_with(['/', '.']),
            "a command: {}",
            sent.text
        );
    }
}

fn link_in(text: &str) -> &str {
    text.split_whitespace()
        .find(|word| word.contains("/i/"))
        .unwrap_or_else(|| panic!("no short link in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imagine_is_acknowledged_then_answered_with_a_short_link_to_the_png() {
    let world = World::with_images().await;
    let bot = world.bot("solo", &[]).await;
    let ada = viewer("ada", "1001", &[]);
    let request = world.sim.say(
        CHANNEL,
        ada,
        "!imagine a duck in space --model tiny-sd --size 64x64 --steps 3",
    );
    let ack = world.reply_to(&request, "queued").await;
    assert!(ack.text.starts_with("@ada "), "{}", ack.text);
    let result = world.reply_to(&request, "/i/").await;
    assert!(
        result.text.starts_with("@ada here it is: "),
        "{}",
        result.text
    );
    assert!(result.text.contains("seed"), "{}", result.text);
    assert!(result.text.contains("tiny-sd"), "{}", result.text);
    let link = link_in(&result.text);
    assert!(link.len() < 120, "the link is short: {link}");
    let image = reqwest::get(link).await.unwrap();
    assert_eq!(image.status(), 200, "{link}");
    assert_eq!(png_size(&image.bytes().await.unwrap()), (64, 64));
    // The channel's stream overlay shows it, with who asked and the prompt (added once Twitch
    // took the line).
    eventually(CHAT_LIMIT, "the overlay shows ada's image", || async {
        let (shown, _) = world
            .queue
            .overlay("twitch", CHANNEL, None, 10)
            .await
            .unwrap();
        shown
            .iter()
            .any(|i| i.requester == "ada" && i.prompt == "a duck in space" && i.url == link)
    })
    .await;

    // A prompt of emoji and non-Latin text filling a whole 500-character message: the reply
    // still fits, cut at a character boundary with a visible mark.
    let options = " --model tiny-sd --size 64x64 --steps 2";
    let room = 500 - "!imagine ".len() - options.len();
    let long: String = "🦆 狐狸 ".repeat(200).chars().take(room).collect();
    let message = format!("!imagine {}{options}", long.trim_end());
    assert!(message.chars().count() <= 500);
    let bob = viewer("bob", "1002", &[]);
    let request = world.sim.say(CHANNEL, bob, &message);
    let result = world.reply_to(&request, "/i/").await;
    assert!(result.text.chars().count() <= 500, "{}", result.text);
    assert!(result.text.ends_with("…\""), "{}", result.text);
    assert!(result.delivered());

    // A mistake gets a reply that says how to write it.
    let typo = world.sim.say(CHANNEL, ada, "!imagine a duck --steps many");
    let mistake = world.reply_to(&typo, "Write it as").await;
    assert!(mistake.text.contains("--steps"), "{}", mistake.text);

    assert_lines_are_safe(&world.sim);
    // The probes and the metrics an operator reads.
    let ready = reqwest::get(format!("http://{}/readyz", bot.address))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(format!("http://{}/metrics", bot.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ducks_twitch_commands_total{kind="imagine"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ducks_twitch_results_total{outcome="posted"} 2"#),
        "{metrics}"
    );
    let logs = world.logs();
    assert!(
        logs.contains("The Twitch bot is starting"),
        "the logs were captured"
    );
    assert!(
        !logs.contains("bot-token-secret"),
        "the token is in a log line"
    );
    assert!(
        !logs.contains(SIGNING_KEY),
        "the signing key is in a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channel_rules_decide_who_may_ask_and_moderators_pause() {
    let world = World::chat_only().await;
    let _bot = world
        .bot(
            "rules",
            &[
                ("DUCKS_TWITCH__CHANNEL__POND__ALLOWED", "subscribers"),
                ("DUCKS_TWITCH__CHANNEL__POND__USER_COOLDOWN_SECS", "600"),
                (
                    "DUCKS_TWITCH__CHANNEL__POND__BLOCKED_WORDS",
                    "gore, very bad",
                ),
            ],
        )
        .await;
    let visitor = viewer("visitor", "2001", &[]);
    let sub = viewer("subby", "2002", &["subscriber/12"]);
    let sub2 = viewer("subtoo", "2003", &["subscriber/1"]);
    let moderator = viewer("modder", "2004", &["moderator/1"]);

    let refused = world.sim.say(CHANNEL, visitor, "!imagine a duck");
    world.reply_to(&refused, "subscribers").await;
    let served = world.sim.say(CHANNEL, sub, "!imagine a duck");
    world.reply_to(&served, "queued").await;

    let blocked = world.sim.say(CHANNEL, sub2, "!imagine a VERY BAD duck");
    let answer = world.reply_to(&blocked, "does not allow").await;
    assert!(
        !answer.text.to_lowercase().contains("very bad"),
        "{}",
        answer.text
    );

    let not_allowed = world.sim.say(CHANNEL, visitor, "!ducks pause");
    world
        .reply_to(&not_allowed, "only the channel's moderators")
        .await;
    let pause = world.sim.say(CHANNEL, moderator, "!ducks pause");
    world.reply_to(&pause, "paused").await;
    let while_paused = world.sim.say(CHANNEL, sub2, "!imagine a duck");
    world.reply_to(&while_paused, "paused").await;
    let resume = world.sim.say(CHANNEL, moderator, "!ducks resume");
    world.reply_to(&resume, "again").await;

    // The subscriber's cooldown still runs; another subscriber is served.
    let again = world.sim.say(CHANNEL, sub, "!imagine another duck");
    world.reply_to(&again, "wait").await;
    let other = world.sim.say(CHANNEL, sub2, "!imagine a duck");
    world.reply_to(&other, "queued").await;

    // A moderator cancels a viewer's job by login; the job's own line says so.
    let cancel = world.sim.say(CHANNEL, moderator, "!ducks cancel @SubToo");
    world.reply_to(&cancel, "stopping 1 of subtoo's").await;
    world.reply_to(&other, "ancelled").await;
    let ids = world.queue.jobs_of("twitch", "2003").await.unwrap();
    assert!(ids.is_empty(), "subtoo has no unfinished job: {ids:?}");

    // The viewer's own !cancel.
    let own = world.sim.say(CHANNEL, sub, "!cancel");
    world.reply_to(&own, "stopping your last").await;
    world.reply_to(&served, "ancelled").await;
    assert_lines_are_safe(&world.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_viewers_never_push_two_replicas_over_the_budget() {
    const VIEWERS: usize = 300;
    const WINDOW: Duration = Duration::from_secs(1);
    let world = World::chat_only().await;
    world.sim.set_rate_limit(WINDOW, 20, 100);
    let settings = [
        ("DUCKS_TWITCH__BUDGET_WINDOW_MS", "1000"),
        ("DUCKS_TWITCH__BUDGET_LIMIT", "20"),
        ("DUCKS_TWITCH__CHANNEL__POND__MAX_JOBS", "1000"),
        // The raid is welcome here: every request is accepted, so every one needs a result.
        ("DUCKS_QUEUE__SCOPES__TWITCH__RATE", "1000"),
        ("DUCKS_TWITCH__ACK_MAX_AGE_SECS", "5"),
    ];
    let _a = world.bot("replica-a", &settings).await;
    let _b = world.bot("replica-b", &settings).await;
    let finished = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let finished = finished.clone();
        instant_worker(world.queue.clone(), move |id| {
            finished.lock().unwrap().push(id.to_string())
        })
    };

    let logins: Vec<String> = (0..VIEWERS).map(|n| format!("viewer{n:03}")).collect();
    let ids: Vec<String> = (0..VIEWERS).map(|n| format!("{}", 30_000 + n)).collect();
    for n in 0..VIEWERS {
        world
            .sim
            .say(CHANNEL, viewer(&logins[n], &ids[n], &[]), "!imagine a duck");
    }
    let results = world
        .sim
        .wait_for_sent_count(
            VIEWERS,
            |sent| sent.delivered() && sent.text.contains("here it is"),
            Duration::from_secs(120),
        )
        .await;
    let mut per_viewer: HashMap<String, usize> = HashMap::new();
    for result in &results {
        let login = result
            .text
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches('@');
        *per_viewer.entry(login.to_owned()).or_default() += 1;
    }
    assert_eq!(per_viewer.len(), VIEWERS, "every viewer got a result");
    assert!(per_viewer.values().all(|n| *n == 1), "each result once");
    assert_eq!(
        finished.lock().unwrap().len(),
        VIEWERS,
        "each request taken once"
    );
    let most = world.sim.max_in_window(CHANNEL, WINDOW);
    assert!(most <= 20, "{most} messages in one window");
    assert_eq!(
        world.sim.over_limit(),
        0,
        "Twitch refused none for the rate"
    );
    let both: std::collections::BTreeSet<usize> =
        world.sim.sent().iter().map(|s| s.connection).collect();
    assert!(both.len() >= 2, "both replicas sent: {both:?}");
    assert_lines_are_safe(&world.sim);
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_survive_a_reconnect_and_a_killed_bot_and_are_posted_once() {
    let world = World::chat_only().await;
    let mut bot = world.bot("survivor", &[]).await;
    let ada = viewer("ada", "4001", &[]);
    let mut consumer = Consumer::new(world.queue.clone(), "held").await.unwrap();
    let finish = |delivery: ducks_queue::Delivery| async move {
        let id = delivery.id.to_string();
        delivery
            .complete(EventKind::Succeeded {
                images: vec![ImageRef {
                    key: format!("images/{id}/0.png"),
                    url: String::new(),
                    width: 64,
                    height: 64,
                    seed: 1,
                }],
                timings: Timings::default(),
            })
            .await
            .unwrap();
    };
    let take_one = async |consumer: &mut Consumer| loop {
        let mut batch = consumer.next_batch(1).await.unwrap();
        if let Some(delivery) = batch.pop() {
            return delivery;
        }
    };

    // The connection drops mid-job; the result comes while the bot reconnects.
    let first = world.sim.say(CHANNEL, ada, "!imagine a duck");
    world.reply_to(&first, "queued").await;
    let delivery = tokio::time::timeout(CHAT_LIMIT, take_one(&mut consumer))
        .await
        .unwrap();
    let live_before = world.sim.connections().len();
    assert!(world.sim.drop_all() >= 1);
    finish(delivery).await;
    world.reply_to(&first, "here it is").await;
    assert!(
        world.sim.connections().len() > live_before,
        "the bot reconnected"
    );

    // RECONNECT mid-job.
    let second = world.sim.say(CHANNEL, ada, "!imagine a second duck");
    world.reply_to(&second, "queued").await;
    let delivery = tokio::time::timeout(CHAT_LIMIT, take_one(&mut consumer))
        .await
        .unwrap();
    assert!(world.sim.reconnect_all() >= 1);
    world.sim.wait_joined(CHANNEL, 1, BOT_LIMIT).await;
    finish(delivery).await;
    world.reply_to(&second, "here it is").await;

    // Killed mid-job; the result is written while no bot runs; the restarted bot posts it.
    let third = world.sim.say(CHANNEL, ada, "!imagine a third duck");
    world.reply_to(&third, "queued").await;
    let delivery = tokio::time::timeout(CHAT_LIMIT, take_one(&mut consumer))
        .await
        .unwrap();
    bot.child.kill().await.unwrap();
    finish(delivery).await;
    let _bot = world.bot("survivor", &[]).await;
    world.reply_to(&third, "here it is").await;

    // Once each: every result's event is acknowledged, so none can come again.
    eventually(
        CHAT_LIMIT,
        "the bot's events are all acknowledged",
        || async { pending_events(&world.queue).await == 0 },
    )
    .await;
    for request in [&first, &second, &third] {
        let results: Vec<Sent> = world
            .sim
            .replies_to(request)
            .into_iter()
            .filter(|s| s.delivered() && s.text.contains("here it is"))
            .collect();
        assert_eq!(results.len(), 1, "one result for {request}: {results:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_messages_are_sent_again_and_no_text_twice_in_a_row() {
    let world = World::chat_only().await;
    // Twitch here allows fewer messages than the bot's budget: it answers with NOTICEs.
    world.sim.set_rate_limit(Duration::from_secs(2), 3, 3);
    let _bot = world
        .bot(
            "refused",
            &[
                ("DUCKS_TWITCH__BUDGET_WINDOW_MS", "2000"),
                ("DUCKS_TWITCH__BUDGET_LIMIT", "20"),
            ],
        )
        .await;
    let finished = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let finished = finished.clone();
        instant_worker(world.queue.clone(), move |id| {
            finished.lock().unwrap().push(id.to_string())
        })
    };
    let logins: Vec<String> = (0..6).map(|n| format!("asker{n}")).collect();
    let ids: Vec<String> = (0..6).map(|n| format!("{}", 5_000 + n)).collect();
    let requests: Vec<String> = (0..6)
        .map(|n| {
            world
                .sim
                .say(CHANNEL, viewer(&logins[n], &ids[n], &[]), "!imagine a duck")
        })
        .collect();
    for request in &requests {
        world.reply_to(request, "here it is").await;
    }
    assert!(world.sim.over_limit() > 0, "Twitch refused some messages");
    eventually(
        CHAT_LIMIT,
        "the bot's events are all acknowledged",
        || async { pending_events(&world.queue).await == 0 },
    )
    .await;
    for request in &requests {
        let results = world
            .sim
            .replies_to(request)
            .into_iter()
            .filter(|s| s.delivered() && s.text.contains("here it is"))
            .count();
        assert_eq!(results, 1, "one result for {request}");
    }
    worker.abort();

    // The same answer twice in a row is changed, so Twitch does not refuse it as a duplicate.
    let ada = viewer("ada", "5100", &[]);
    let first = world.sim.say(CHANNEL, ada, "!models");
    let first = world.reply_to(&first, "").await;
    let second = world.sim.say(CHANNEL, ada, "!models");
    let second = world.reply_to(&second, "").await;
    assert_ne!(first.text, second.text);
    assert!(second.text.starts_with(first.text.trim_end_matches(" ·")));
}

/// Entries of the `twitch` event stream read by the bot but not acknowledged.
async fn pending_events(queue: &Queue) -> u64 {
    let mut conn = queue.connection();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(queue.keys().events("twitch"))
        .arg("twitch")
        .query_async(&mut conn)
        .await
        .unwrap();
    match pending {
        redis::Value::Array(fields) => match fields.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_is_refreshed_and_shared_through_redis() {
    use axum::routing::post;
    let world = World::chat_only().await;
    world.sim.require_token(BOT, "fresh-access-token");
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let router = {
        let asked = asked.clone();
        axum::Router::new().route(
            "/oauth2/token",
            post(move |body: String| {
                let asked = asked.clone();
                async move {
                    asked.lock().unwrap().push(body);
                    axum::Json(serde_json::json!({
                        "access_token": "fresh-access-token",
                        "refresh_token": "next-refresh-token",
                        "expires_in": 14_400,
                        "scope": ["chat:read", "chat:edit"],
                        "token_type": "bearer",
                    }))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let _bot = world
        .bot(
            "refresher",
            &[
                ("DUCKS_TWITCH__REFRESH_TOKEN", "first-refresh-token"),
                ("DUCKS_TWITCH__CLIENT_ID", "client-id"),
                ("DUCKS_TWITCH__CLIENT_SECRET", "client-secret-value"),
                ("DUCKS_TWITCH__TOKEN_URL", &token_url),
            ],
        )
        .await;
    let bodies = asked.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(
        bodies[0].contains("grant_type=refresh_token"),
        "{}",
        bodies[0]
    );
    assert!(
        bodies[0].contains("refresh_token=first-refresh-token"),
        "{}",
        bodies[0]
    );
    let stored = world
        .queue
        .stored_token("twitch", BOT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.refresh.expose(), "next-refresh-token");
    let logs = world.logs();
    for secret in [
        "fresh-access-token",
        "first-refresh-token",
        "next-refresh-token",
        "client-secret-value",
    ] {
        assert!(!logs.contains(secret), "{secret} is in a log line");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_refuses_to_start_without_short_links() {
    let world = World::chat_only().await;
    let output = tokio::process::Command::new(ducks_binary())
        .args(["bots", "twitch"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", world.scratch.path())
        .env("DUCKS_REDIS__URL", world.redis.url())
        .env("DUCKS_TWITCH__LOGIN", BOT)
        .env("DUCKS_TWITCH__TOKEN", "oauth:x")
        .env("DUCKS_TWITCH__CHANNELS", CHANNEL)
        .current_dir(world.scratch.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("links.base_url"), "{stderr}");
    assert!(stderr.contains("longer than a Twitch message"), "{stderr}");
}
