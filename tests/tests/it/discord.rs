//! The Discord bot end to end: the real `ducks bots discord` binary, pointed at the local Discord
//! simulator (REST and gateway), real Redis, the embedded S3 server and a worker running the real
//! runner with tiny-sd. Assertions read what a Discord user would see: the simulator's messages.

use std::net::TcpListener;
use std::time::Duration;

use ducks_contract::links::LinkConfig;
use ducks_contract::{JobState, Secret};
use ducks_models::S3Config;
use ducks_queue::Queue;
use ducks_tests::discord::{
    APPLICATION_ID, Actor, DiscordSim, InteractionPayload, MANAGE_MESSAGES, MEMBER_PERMISSIONS,
    autocomplete, button, ping, slash_command,
};
use ducks_tests::{RedisServer, S3Server, ducks_binary};
use ducks_worker::RunningWorker;
use serde_json::{Value, json};

use crate::support::{
    GATE_LIMIT, JOB_LIMIT, WEIGHT_KEY, eventually, front_end_worker, png_size, queue_on,
    tiny_bucket, worker_queue_config,
};

/// How long a bot may take to start and answer a first interaction.
const BOT_LIMIT: Duration = Duration::from_secs(30);
const GUILD: u64 = 1_100_000_000_000_000_001;
const CHANNEL: u64 = 1_100_000_000_000_000_002;

fn ada() -> Actor {
    Actor::in_guild(1_000_000_000_000_000_001, "ada", GUILD, CHANNEL)
}

fn bob() -> Actor {
    Actor::in_guild(1_000_000_000_000_000_002, "bob", GUILD, CHANNEL)
}

struct World {
    redis: RedisServer,
    s3: S3Server,
    s3_config: S3Config,
    queue: Queue,
    sim: DiscordSim,
    scratch: tempfile::TempDir,
    worker: Option<RunningWorker>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Gateway,
    Http,
}

/// One `ducks bots discord` process.
struct BotProcess {
    child: tokio::process::Child,
    address: String,
}

impl World {
    async fn new() -> World {
        let redis = RedisServer::start().await;
        let (s3, s3_config, _storage) = tiny_bucket().await;
        let queue = queue_on(&redis, worker_queue_config()).await;
        World {
            redis,
            s3,
            s3_config,
            queue,
            sim: DiscordSim::start().await,
            scratch: tempfile::tempdir().unwrap(),
            worker: None,
        }
    }

    async fn start_worker(&mut self) {
        let links = LinkConfig {
            signing_key: Secret::new("test-link-signing-key"),
            ..LinkConfig::default()
        };
        let worker =
            front_end_worker(&self.redis, &self.s3_config, self.scratch.path(), &links).await;
        self.worker = Some(worker);
    }

    /// Starts `ducks bots discord` as replica `consumer`, and waits until it serves (and, over
    /// the gateway, until its session is ready).
    async fn bot(&self, mode: Mode, consumer: &str) -> BotProcess {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let ready_before = self.sim.gateway_counts().0;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join(format!("bot-{consumer}.log")))
            .unwrap();
        let child = tokio::process::Command::new(ducks_binary())
            .args(["bots", "discord"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.scratch.path())
            .env("DUCKS_REDIS__URL", self.redis.url())
            .env("DUCKS_DISCORD__TOKEN", self.sim.bot_token())
            .env("DUCKS_DISCORD__APPLICATION_ID", APPLICATION_ID.to_string())
            .env("DUCKS_DISCORD__PUBLIC_KEY", self.sim.public_key_hex())
            .env(
                "DUCKS_DISCORD__MODE",
                if mode == Mode::Gateway {
                    "gateway"
                } else {
                    "http"
                },
            )
            .env("DUCKS_DISCORD__LISTEN", &address)
            .env("DUCKS_DISCORD__API_BASE", self.sim.api_base())
            .env("DUCKS_DISCORD__PROGRESS_INTERVAL_MS", "50")
            .env("DUCKS_DISCORD__POSITION_REFRESH_SECS", "1")
            .env("DUCKS_DISCORD__CONSUMER", consumer)
            .env("DUCKS_QUEUE__EVENT_CLAIM_AFTER_MS", "2000")
            .env(
                "RUST_LOG",
                "debug,serenity=info,hyper=info,reqwest=info,h2=info,rustls=info,tungstenite=info",
            )
            .current_dir(self.scratch.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("ducks bots discord starts");
        let health = format!("http://{address}/healthz");
        eventually(BOT_LIMIT, "the bot serves /healthz", || async {
            reqwest::get(&health).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        if mode == Mode::Gateway {
            eventually(BOT_LIMIT, "the bot's gateway session is ready", || async {
                self.sim.gateway_counts().0 > ready_before
            })
            .await;
        }
        BotProcess { child, address }
    }

    /// Sends an interaction the way `mode` receives it and returns the interaction response
    /// (`{"type": .., "data": ..}`) as the simulator recorded it.
    async fn send(&self, mode: Mode, bot: &BotProcess, payload: &InteractionPayload) -> Value {
        match mode {
            Mode::Gateway => {
                self.sim.register_interaction(&payload.json);
                assert_eq!(self.sim.dispatch_interaction(&payload.json), 1);
            }
            Mode::Http => {
                let (status, body) = self
                    .sim
                    .post_interaction(&bot.interactions_url(), &payload.json)
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        }
        self.sim.wait_for_response(&payload.token, BOT_LIMIT).await
    }

    async fn imagine(
        &self,
        mode: Mode,
        bot: &BotProcess,
        actor: &Actor,
        prompt: &str,
    ) -> InteractionPayload {
        let payload = imagine_payload(actor, prompt);
        let response = self.send(mode, bot, &payload).await;
        assert_eq!(response["type"], 4, "{response}");
        assert_eq!(
            response["data"]["embeds"][0]["description"]
                .as_str()
                .map(|d| d.starts_with("Queued")),
            Some(true),
            "{response}"
        );
        payload
    }

    /// The original message once it shows images; its first image's bytes are a PNG of 64x64.
    /// The worker here makes presigned links, which expire: the bot uploads the PNG instead, so
    /// the image lives as long as the message.
    async fn result_of(&self, payload: &InteractionPayload) -> Value {
        let message = self
            .sim
            .wait_for_original(&payload.token, has_image, JOB_LIMIT)
            .await;
        assert_eq!(
            message["attachments"][0]["filename"], "duck-1.png",
            "{message}"
        );
        assert_eq!(
            message["embeds"][0]["image"]["url"], message["attachments"][0]["url"],
            "{message}"
        );
        assert_png(&message).await;
        message
    }
}

/// `/imagine` of a small, fast tiny-sd image.
fn imagine_payload(actor: &Actor, prompt: &str) -> InteractionPayload {
    slash_command(
        "imagine",
        &[
            ("prompt", json!(prompt)),
            ("model", json!("tiny-sd")),
            ("size", json!("64x64")),
            ("steps", json!(3)),
        ],
        actor,
    )
}

impl World {
    /// No bot log line holds the bot token or an interaction token (the bots log at debug).
    fn assert_no_secrets_in_logs(&self, tokens: &[&InteractionPayload]) {
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
        assert!(
            logs.contains("The Discord bot is listening"),
            "the logs were captured"
        );
        assert!(
            !logs.contains(self.sim.bot_token()),
            "the bot token is in a log line"
        );
        for payload in tokens {
            assert!(
                !logs.contains(&payload.token),
                "an interaction token is in a log line"
            );
        }
    }
}

impl World {
    /// A world with a worker and an HTTP-mode bot (replica `consumer`) whose first job, asked for
    /// by ada, is running and held at the weights: its runner waits at the returned S3 gate.
    async fn held_job(
        consumer: &str,
        prompt: &str,
    ) -> (World, ducks_tests::Gate, BotProcess, InteractionPayload) {
        let mut world = World::new().await;
        let gate = world.s3.gate("GET", WEIGHT_KEY);
        world.start_worker().await;
        let bot = world.bot(Mode::Http, consumer).await;
        let payload = world.imagine(Mode::Http, &bot, &ada(), prompt).await;
        gate.wait_held(1, GATE_LIMIT).await;
        (world, gate, bot, payload)
    }
}

impl BotProcess {
    fn interactions_url(&self) -> String {
        format!("http://{}/interactions", self.address)
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn has_image(message: &Value) -> bool {
    message["embeds"][0]["image"]["url"].is_string()
}

fn description(message: &Value) -> String {
    message["embeds"][0]["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn assert_png(message: &Value) {
    let url = message["embeds"][0]["image"]["url"].as_str().unwrap();
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(png_size(&bytes), (64, 64));
}

fn button_id(message: &Value, label: &str) -> String {
    message["components"][0]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["label"] == label)
        .and_then(|b| b["custom_id"].as_str())
        .unwrap_or_else(|| panic!("no {label} button on {message}"))
        .to_owned()
}

/// Every message body the bot sent suppresses mentions.
fn assert_no_pings(world: &World) {
    let mut bodies = 0;
    for request in world.sim.requests() {
        let Some(body) = &request.json else { continue };
        let data = body
            .get("data")
            .filter(|_| body.get("type").is_some())
            .unwrap_or(body);
        if data.get("embeds").is_some() || data.get("content").is_some() {
            bodies += 1;
            assert_eq!(
                data["allowed_mentions"],
                json!({"parse": [], "users": [], "roles": []}),
                "{} {}: {body}",
                request.method,
                request.path
            );
        }
    }
    assert!(bodies > 0, "the bot sent no messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagine_over_the_gateway_shows_progress_in_place_then_the_png() {
    let mut world = World::new().await;
    world.start_worker().await;
    world.sim.enforce_ack_deadline(Some(Duration::from_secs(3)));
    // `register` puts the three commands in the guild, as the simulator answers them.
    let register = tokio::process::Command::new(ducks_binary())
        .args(["bots", "discord", "register", "--guild", &GUILD.to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DUCKS_DISCORD__TOKEN", world.sim.bot_token())
        .env("DUCKS_DISCORD__APPLICATION_ID", APPLICATION_ID.to_string())
        .env("DUCKS_DISCORD__API_BASE", world.sim.api_base())
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&register.stdout);
    assert!(
        register.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&register.stderr)
    );
    assert!(said.contains("Registered 3 commands in guild"), "{said}");
    let names: Vec<Value> = world
        .sim
        .commands(Some(GUILD))
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("imagine"), json!("models"), json!("jobs")]);

    let bot = world.bot(Mode::Gateway, "gateway-1").await;

    let payload = world
        .imagine(Mode::Gateway, &bot, &ada(), "a duck in space @everyone")
        .await;
    let message = world.result_of(&payload).await;
    let text = description(&message);
    assert!(text.contains("tiny-sd · 64x64 · 3 steps · seed"), "{text}");
    assert!(text.contains("GPU-s"), "{text}");
    assert_eq!(
        button_id(&message, "Reroll"),
        format!(
            "reroll:{}",
            button_id(&message, "Details").trim_start_matches("details:")
        )
    );

    // The edits on the way showed a phase and a progress bar.
    let edits: Vec<String> = world
        .sim
        .requests()
        .iter()
        .filter(|r| r.is("PATCH", "/webhooks/") && r.path.contains(&payload.token))
        .filter_map(|r| r.json.as_ref().map(description))
        .collect();
    assert!(edits.iter().any(|d| d.contains("step")), "{edits:?}");
    assert!(world.sim.rejected_responses().is_empty());
    assert_no_pings(&world);

    // The catalogue's models, and a prefix-filtered autocomplete.
    let models = world
        .send(Mode::Gateway, &bot, &slash_command("models", &[], &ada()))
        .await;
    assert!(
        models["data"]["embeds"][0]["fields"][0]["name"]
            .as_str()
            .unwrap()
            .contains("tiny-sd"),
        "{models}"
    );
    let typing = autocomplete(
        "imagine",
        &[("prompt", json!("a duck")), ("model", json!("tin"))],
        "model",
        &ada(),
    );
    let choices = world.send(Mode::Gateway, &bot, &typing).await;
    assert_eq!(choices["type"], 8);
    assert_eq!(
        choices["data"]["choices"][0]["value"], "tiny-sd",
        "{choices}"
    );
    let nothing = autocomplete(
        "imagine",
        &[("prompt", json!("a duck")), ("model", json!("sdxl"))],
        "model",
        &ada(),
    );
    let choices = world.send(Mode::Gateway, &bot, &nothing).await;
    assert_eq!(choices["data"]["choices"], json!([]), "{choices}");

    // A request the model cannot serve is refused privately, and nothing is queued.
    let too_big = slash_command(
        "imagine",
        &[
            ("prompt", json!("a duck")),
            ("model", json!("tiny-sd")),
            ("size", json!("1024x1024")),
        ],
        &ada(),
    );
    let refusal = world.send(Mode::Gateway, &bot, &too_big).await;
    assert_eq!(refusal["data"]["flags"], 64, "{refusal}");
    let text = refusal["data"]["content"].as_str().unwrap();
    assert!(
        text.contains("1024x1024 is larger than tiny-sd allows"),
        "{text}"
    );

    // An interaction serenity cannot parse (a field Discord always sends is missing) is still
    // answered, logged and counted; serenity alone would drop it silently.
    let mut unreadable = slash_command("models", &[], &ada());
    unreadable
        .json
        .as_object_mut()
        .unwrap()
        .remove("attachment_size_limit");
    let answer = world.send(Mode::Gateway, &bot, &unreadable).await;
    assert!(
        answer["data"]["content"]
            .as_str()
            .unwrap()
            .contains("could not read"),
        "{answer}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", bot.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ducks_discord_interactions_total{kind=\"unreadable\"} 1"),
        "{metrics}"
    );

    // Over the gateway too, a stalled Redis gets a deferral (a callback of type 5) in time, and
    // the answer is edited in once Redis is back.
    // (The deferral comes at 1.5 s: Discord's 3 s are not enforced here, so a loaded machine's
    // pause cannot fail the test; the HTTP test checks the time.)
    world.sim.enforce_ack_deadline(None);
    let redis = nix::unistd::Pid::from_raw(world.redis.pid().unwrap() as i32);
    nix::sys::signal::kill(redis, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let slow = imagine_payload(&bob(), "a duck over a slow gateway");
    let deferred = world.send(Mode::Gateway, &bot, &slow).await;
    nix::sys::signal::kill(redis, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(deferred["type"], 5, "{deferred}");
    world
        .sim
        .wait_for_original(
            &slow.token,
            |m| description(m).starts_with("Queued"),
            BOT_LIMIT,
        )
        .await;

    // After RECONNECT the client comes back and still answers.
    world.sim.reconnect_all();
    world.sim.wait_gateway_ready(BOT_LIMIT).await;
    let again = world
        .send(Mode::Gateway, &bot, &slash_command("models", &[], &bob()))
        .await;
    assert_eq!(again["type"], 4);
    bot.kill().await;
    world.assert_no_secrets_in_logs(&[&payload, &typing, &too_big, &unreadable, &slow]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoint_checks_signatures_and_serves_imagine() {
    let mut world = World::new().await;
    world.start_worker().await;
    let bot = world.bot(Mode::Http, "http-1").await;
    let url = bot.interactions_url();
    let client = reqwest::Client::new();
    let post = |body: String, headers: Vec<(&'static str, String)>| {
        let mut request = client.post(&url).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // PING → PONG.
    let (status, body) = world.sim.post_interaction(&url, &ping().json).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"type": 1}))
    );

    // Unsigned, tampered, re-timed, wrongly keyed, stale: 401. Oversized: 413.
    let signed = world.sim.signed_request(&ping().json);
    assert_eq!(
        post(
            signed.body.clone(),
            vec![("Content-Type", "application/json".into())]
        )
        .await,
        401
    );
    let tampered = signed.body.replacen("1", "2", 1);
    assert_eq!(post(tampered, signed.headers()).await, 401);
    let mut retimed = signed.headers();
    retimed[2].1 = (signed.timestamp.parse::<u64>().unwrap() + 1).to_string();
    assert_eq!(post(signed.body.clone(), retimed).await, 401);
    let mut wrong_key = signed.headers();
    wrong_key[1].1 = "ab".repeat(64);
    assert_eq!(post(signed.body.clone(), wrong_key).await, 401);
    let stale_time = (signed.timestamp.parse::<u64>().unwrap() - 3_600).to_string();
    let stale = ducks_tests::discord::SignedRequest {
        signature: world.sim.sign(&stale_time, &signed.body),
        timestamp: stale_time,
        body: signed.body.clone(),
    };
    assert_eq!(post(stale.body.clone(), stale.headers()).await, 401);
    let huge = format!("{{\"type\":1,\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    let huge_time = signed.timestamp.clone();
    let huge_signature = world.sim.sign(&huge_time, &huge);
    assert_eq!(
        post(
            huge.clone(),
            vec![
                ("Content-Type", "application/json".into()),
                ("X-Signature-Ed25519", huge_signature),
                ("X-Signature-Timestamp", huge_time)
            ]
        )
        .await,
        413
    );

    // A signed /imagine is answered in the HTTP response, then edited to the PNG.
    let payload = world
        .imagine(Mode::Http, &bot, &ada(), "a duck on a bike")
        .await;
    world.result_of(&payload).await;
    assert_no_pings(&world);

    // With Redis stalled the bot defers within Discord's 3 s, then edits its answer in.
    let redis = nix::unistd::Pid::from_raw(world.redis.pid().unwrap() as i32);
    nix::sys::signal::kill(redis, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let slow = imagine_payload(&bob(), "a patient duck");
    let started = std::time::Instant::now();
    let (status, body) = world.sim.post_interaction(&url, &slow.json).await;
    let answered_in = started.elapsed();
    nix::sys::signal::kill(redis, nix::sys::signal::Signal::SIGCONT).unwrap();
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &answer["type"]), (200, &json!(5)), "{body}");
    assert!(answered_in < Duration::from_secs(3), "{answered_in:?}");
    world
        .sim
        .wait_for_original(
            &slow.token,
            |m| description(m).starts_with("Queued"),
            BOT_LIMIT,
        )
        .await;
    world.result_of(&slow).await;
    bot.kill().await;

    // A fresh replica must read the catalogue first: with Redis stalled it defers publicly, and
    // when the request turns out refused the refusal still reaches only the person who asked.
    let fresh = world.bot(Mode::Http, "http-2").await;
    nix::sys::signal::kill(redis, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let refused = slash_command(
        "imagine",
        &[
            ("prompt", json!("a huge duck")),
            ("model", json!("tiny-sd")),
            ("size", json!("1024x1024")),
        ],
        &bob(),
    );
    let (status, body) = world
        .sim
        .post_interaction(&fresh.interactions_url(), &refused.json)
        .await;
    nix::sys::signal::kill(redis, nix::sys::signal::Signal::SIGCONT).unwrap();
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &answer["type"]), (200, &json!(5)), "{body}");
    let token = refused.token.clone();
    world
        .sim
        .wait_for_request(
            move |r| r.method == "POST" && r.path.contains(&token) && r.status == 200,
            BOT_LIMIT,
        )
        .await;
    let followups = world.sim.followups(&refused.token);
    assert_eq!(followups.len(), 1, "{followups:?}");
    assert_eq!(followups[0]["flags"], 64, "{followups:?}");
    assert!(
        followups[0]["content"]
            .as_str()
            .unwrap()
            .contains("larger than tiny-sd allows"),
        "{followups:?}"
    );
    assert!(
        world.sim.original(&refused.token).is_none(),
        "the public deferral is gone"
    );
    fresh.kill().await;
    world.assert_no_secrets_in_logs(&[&payload, &slow, &refused]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_reroll_cancel_and_outlive_a_restart() {
    // The first runner is held at the weights, so the job is running when Cancel is pressed.
    let (world, gate, bot, held) = World::held_job("buttons-1", "a held duck").await;
    let card = world
        .sim
        .wait_for_original(&held.token, |m| m["components"].is_array(), BOT_LIMIT)
        .await;
    let cancel = button_id(&card, "Cancel");
    let job: ducks_contract::JobId = cancel.trim_start_matches("cancel:").parse().unwrap();

    // Someone else's Cancel is refused privately and the job goes on.
    let refused = world
        .send(Mode::Http, &bot, &button(&cancel, &card, &bob()))
        .await;
    assert_eq!(refused["data"]["flags"], 64, "{refused}");
    assert!(
        refused["data"]["content"]
            .as_str()
            .unwrap()
            .contains("Only the person who asked"),
        "{refused}"
    );
    assert_eq!(
        world.queue.status(&job).await.unwrap().state,
        JobState::Running
    );

    // The requester's Cancel stops the runner; the card says so.
    let stopped = world
        .send(Mode::Http, &bot, &button(&cancel, &card, &ada()))
        .await;
    assert_eq!(stopped["data"]["flags"], 64, "{stopped}");
    gate.open();
    world
        .sim
        .wait_for_original(
            &held.token,
            |m| description(m).starts_with("Cancelled"),
            JOB_LIMIT,
        )
        .await;
    assert_eq!(
        world.queue.status(&job).await.unwrap().state,
        JobState::Cancelled
    );

    // A moderator may cancel anyone's job.
    let queued = world
        .imagine(Mode::Http, &bot, &ada(), "a duck to stop")
        .await;
    let card = world
        .sim
        .wait_for_original(&queued.token, |m| m["id"].is_string(), BOT_LIMIT)
        .await;
    let moderator = bob().with_permissions(MEMBER_PERMISSIONS | MANAGE_MESSAGES);
    let answer = world
        .send(
            Mode::Http,
            &bot,
            &button(&button_id(&card, "Cancel"), &card, &moderator),
        )
        .await;
    let text = answer["data"]["content"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("Cancelled")
            || text.starts_with("Stopping")
            || text.starts_with("It has already ended"),
        "{text}"
    );

    // A finished image, then the bot restarts: Reroll on the old message draws a new seed.
    let first = world
        .imagine(Mode::Http, &bot, &ada(), "a duck to reroll")
        .await;
    let result = world.result_of(&first).await;
    bot.kill().await;
    let bot = world.bot(Mode::Http, "buttons-2").await;
    let reroll = button(&button_id(&result, "Reroll"), &result, &bob());
    let answer = world.send(Mode::Http, &bot, &reroll).await;
    assert_eq!(answer["type"], 4, "{answer}");
    let rerolled = world.result_of(&reroll).await;
    let seed = |m: &Value| {
        description(m)
            .split("seed ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned)
    };
    assert_ne!(seed(&rerolled), seed(&result), "{rerolled}");
    assert!(description(&rerolled).contains("for bob"), "{rerolled}");

    // Details shows every parameter, privately.
    let details = world
        .send(
            Mode::Http,
            &bot,
            &button(&button_id(&result, "Details"), &result, &bob()),
        )
        .await;
    assert_eq!(details["data"]["flags"], 64, "{details}");
    let text = details["data"]["embeds"][0]["description"]
        .as_str()
        .unwrap();
    assert!(
        text.contains("a duck to reroll") && text.contains("Seeds:"),
        "{text}"
    );
    bot.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_killed_mid_job_edits_the_right_message_once_after_it_comes_back() {
    let (world, gate, bot, payload) =
        World::held_job("restart-1", "a duck through a restart").await;
    bot.kill().await;
    // The job ends while no bot runs.
    gate.open();
    let job = loop {
        let jobs = world
            .queue
            .jobs_of("discord", &ada().user_id.to_string())
            .await
            .unwrap();
        match jobs.first() {
            Some(id) => break id.clone(),
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    eventually(JOB_LIMIT, "the job ends", || async {
        world.queue.status(&job).await.unwrap().state.is_terminal()
    })
    .await;
    assert!(!has_image(&world.sim.original(&payload.token).unwrap()));

    let bot = world.bot(Mode::Http, "restart-1").await;
    world.result_of(&payload).await;
    let with_image = || {
        world
            .sim
            .requests()
            .iter()
            .filter(|r| r.is("PATCH", "/webhooks/") && r.path.contains(&payload.token))
            .filter(|r| r.json.as_ref().is_some_and(has_image))
            .count()
    };
    // A second, later event would show as a second edit: give it the progress interval and more.
    let another = world
        .imagine(Mode::Http, &bot, &bob(), "a later duck")
        .await;
    world.result_of(&another).await;
    assert_eq!(with_image(), 1);
    bot.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_http_replicas_post_each_result_once() {
    let mut world = World::new().await;
    world.start_worker().await;
    let one = world.bot(Mode::Http, "replica-1").await;
    let two = world.bot(Mode::Http, "replica-2").await;
    let mut payloads = Vec::new();
    for n in 0..6 {
        let bot = if n % 2 == 0 { &one } else { &two };
        let actor = if n < 3 { ada() } else { bob() };
        payloads.push(
            world
                .imagine(Mode::Http, bot, &actor, &format!("duck number {n}"))
                .await,
        );
    }
    for payload in &payloads {
        world.result_of(payload).await;
    }
    for payload in &payloads {
        let results = world
            .sim
            .requests()
            .iter()
            .filter(|r| r.path.contains(&payload.token))
            .filter(|r| r.json.as_ref().is_some_and(has_image))
            .count();
        assert_eq!(results, 1, "one result edit for {}", payload.token);
        // Nothing after the result: the final state stays.
        assert!(has_image(&world.sim.original(&payload.token).unwrap()));
    }
    assert!(
        world
            .sim
            .channel_messages(CHANNEL)
            .iter()
            .all(|m| m["message_reference"].is_null())
    );
    one.kill().await;
    two.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_gets_the_result_as_a_channel_reply_and_429s_are_waited_out() {
    let (world, gate, bot, payload) = World::held_job("expiry-1", "a slow duck").await;
    // The bot has learnt the first answer's message id (it replies to it later), then 15 minutes
    // pass.
    let token = payload.token.clone();
    world
        .sim
        .wait_for_request(
            move |r| r.method == "GET" && r.path.contains(&token) && r.status == 200,
            BOT_LIMIT,
        )
        .await;
    let card = world.sim.original(&payload.token).unwrap();
    world.sim.expire_token(&payload.token);
    // Discord is also busy: the next requests are rate limited.
    world.sim.rate_limit_next(2, Duration::from_millis(400));
    gate.open();
    let posted = world
        .sim
        .wait_for_channel_message(
            CHANNEL,
            |m| has_image(m) && m["message_reference"].is_object(),
            JOB_LIMIT,
        )
        .await;
    assert_eq!(
        posted["message_reference"]["message_id"], card["id"],
        "{posted}"
    );
    assert_png(&posted).await;
    assert!(world.sim.rate_limited() >= 1);
    let trail: Vec<String> = world
        .sim
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{:?} {} {} {} early={}",
                r.at,
                r.method,
                r.path.rsplit('/').next().unwrap_or(""),
                r.status,
                r.early_retry
            )
        })
        .collect();
    assert_eq!(
        world.sim.early_retries(),
        0,
        "a retry came before Discord's retry_after: {trail:#?}"
    );
    assert_no_pings(&world);

    // Where the bot may not post, the result stays readable through /jobs.
    world.sim.forbid_channel(CHANNEL);
    let lost = world
        .imagine(Mode::Http, &bot, &bob(), "an unpostable duck")
        .await;
    world
        .sim
        .wait_for_original(&lost.token, |m| m["id"].is_string(), BOT_LIMIT)
        .await;
    world.sim.expire_token(&lost.token);
    let bob_id = bob().user_id.to_string();
    eventually(JOB_LIMIT, "the result is kept as undelivered", || async {
        !world
            .queue
            .undelivered("discord", &bob_id)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let answer = world
        .send(Mode::Http, &bot, &slash_command("jobs", &[], &bob()))
        .await;
    let text = answer["data"]["content"].as_str().unwrap_or_default();
    assert!(
        text.contains("an unpostable duck") && text.contains("could not be posted"),
        "{answer}"
    );
    assert_eq!(answer["data"]["flags"], 64);
    bot.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_jobs_place_in_line_is_refreshed() {
    // No worker: the jobs wait, and the first one leaves the line when it is cancelled.
    let world = World::new().await;
    let bot = world.bot(Mode::Http, "line-1").await;
    let first = world
        .imagine(Mode::Http, &bot, &ada(), "the first duck")
        .await;
    let second = world
        .imagine(Mode::Http, &bot, &bob(), "the second duck")
        .await;
    let answer = world.sim.response(&second.token).unwrap();
    assert_eq!(
        answer["data"]["embeds"][0]["description"], "Queued: #2 in line.",
        "{answer}"
    );
    let card = world
        .sim
        .wait_for_original(&first.token, |m| m["id"].is_string(), BOT_LIMIT)
        .await;
    let cancelled = world
        .send(
            Mode::Http,
            &bot,
            &button(&button_id(&card, "Cancel"), &card, &ada()),
        )
        .await;
    assert!(
        cancelled["data"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Cancelled"),
        "{cancelled}"
    );
    world
        .sim
        .wait_for_original(
            &second.token,
            |m| description(m) == "Queued: next in line.",
            BOT_LIMIT,
        )
        .await;
    world
        .sim
        .wait_for_original(&first.token, |m| description(m) == "Cancelled.", BOT_LIMIT)
        .await;
    bot.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_discord_refused_is_delivered_by_another_replica_after_a_crash() {
    let (world, gate, bot, payload) = World::held_job("crash-1", "a duck Discord refused").await;
    // Discord stops taking anything for a minute; the result is tried, refused, and the bot dies.
    world.sim.rate_limit_next(100_000, Duration::from_secs(60));
    gate.open();
    let log = world.scratch.path().join("bot-crash-1.log");
    eventually(
        JOB_LIMIT,
        "the bot tried the result and Discord refused it",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Discord did not take a result; it will be tried again.")
        },
    )
    .await;
    bot.kill().await;
    world.sim.rate_limit_next(0, Duration::ZERO);
    assert!(!has_image(&world.sim.original(&payload.token).unwrap()));

    // Another replica takes the unacknowledged result over and edits the right message, once.
    let other = world.bot(Mode::Http, "crash-2").await;
    world.result_of(&payload).await;
    let delivered = world
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 200 && r.path.contains(&payload.token))
        .filter(|r| r.json.as_ref().is_some_and(has_image))
        .count();
    assert_eq!(delivered, 1);
    other.kill().await;
}
