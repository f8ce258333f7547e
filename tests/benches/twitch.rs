//! The Twitch bot benchmark (`make bench-twitch`): the release `ducks bots twitch` as a process of
//! its own, against the local Twitch chat simulator and, for each part, a `redis-server` of its
//! own. Jobs end through a launcher that finishes at once: a stand-in worker in the benchmark
//! process, a queue consumer that completes every job it takes with an image record (no runner,
//! no S3), so every figure is the bot's and chat's.
//!
//! 1. The acknowledgement when the budget allows: 60 viewers, one a second, with the bot a
//!    moderator (100 lines per 30 s, of which acknowledgements may use 75; each request costs
//!    two lines, its acknowledgement and its result). The time from a viewer's PRIVMSG to the
//!    bot's acknowledgement reaching the simulator, p50 and p99, and to the result.
//! 2. A raid: 1,000 `!imagine` from 1,000 viewers in 10 s, with Twitch's window and limits (30 s;
//!    20 lines as a plain chatter, 100 as a moderator: one run each) and the channel limits built
//!    in (10 jobs at once, 30 a minute), which accept only some of them. The bot's CPU per chat
//!    message, the requests accepted and refused, results delivered (each once), the most lines
//!    in any 30 s beside the limit, Twitch's NOTICE refusals and the bot's RSS. Each run is
//!    watched until every accepted job's result is out and `twitch.ack_max_age_secs` (20 s) has
//!    passed since the last request: anything the bot still holds then is dropped unsaid.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ducks_queue::{Queue, QueueConfig, RedisTarget};
use ducks_tests::measure::{cpu_secs, percentile, rss_mib};
use ducks_tests::twitch::{
    DEFAULT_MODERATOR_LIMIT, DEFAULT_NORMAL_LIMIT, DEFAULT_RATE_WINDOW, REFUSED_DUPLICATE,
    REFUSED_RATELIMIT,
};
use ducks_tests::{RedisServer, TwitchSim, Viewer, ducks_binary, instant_worker};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

const BOT: &str = "duckbot";
/// How long the bot may take to join, and to take a burst of commands.
const LIMIT: Duration = Duration::from_secs(60);
/// How long every accepted job's result may take to come out, 20 lines per 30 s.
const RESULTS_LIMIT: Duration = Duration::from_secs(240);
const LATENCY_VIEWERS: usize = 60;
/// Two lines a second (an acknowledgement and a result), 62 in the bot's 31-s window (Twitch's
/// 30 s and a second for the way there): under the 75 that acknowledgements may use.
const LATENCY_SPACING: Duration = Duration::from_secs(1);
const RAID: usize = 1_000;
const RAID_SPAN: Duration = Duration::from_secs(10);
/// `twitch.ack_max_age_secs`, the built-in value, set here so the watch below fits it: an
/// acknowledgement or refusal still unsent after this long is dropped.
const ACK_MAX_AGE: Duration = Duration::from_secs(20);
/// How long the bot's idle CPU is read before the first part (`/proc` counts in 10-ms ticks).
const IDLE: Duration = Duration::from_secs(10);

/// One part of the benchmark: its own `redis-server`, the stand-in worker and the bot, which
/// joins one channel of the shared simulator.
struct Stage {
    _redis: RedisServer,
    _home: tempfile::TempDir,
    bot: Child,
    address: String,
    /// Jobs the stand-in worker finished: the requests the bot accepted.
    finished: Arc<AtomicUsize>,
    worker: JoinHandle<()>,
}

impl Stage {
    /// Starts Redis, the worker and `ducks bots twitch` in `channel` with `settings` on top of
    /// the built-in ones, and waits until the bot has joined and read its own badges.
    async fn start(sim: &TwitchSim, channel: &str, settings: &[(&str, &str)]) -> Stage {
        let redis = RedisServer::start().await;
        let queue = Queue::connect(RedisTarget::Single(redis.url()), QueueConfig::default())
            .await
            .unwrap();
        let finished = Arc::new(AtomicUsize::new(0));
        let worker = {
            let finished = finished.clone();
            instant_worker(queue, move |_| {
                finished.fetch_add(1, Ordering::Relaxed);
            })
        };
        let home = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut command = Command::new(ducks_binary());
        command
            .args(["bots", "twitch"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .current_dir(home.path())
            .env("RUST_LOG", "warn")
            .env("DUCKS_REDIS__URL", redis.url())
            .env("DUCKS_TWITCH__LOGIN", BOT)
            .env("DUCKS_TWITCH__TOKEN", "oauth:bench-token")
            .env("DUCKS_TWITCH__SERVER", format!("tcp://{}", sim.addr()))
            .env("DUCKS_TWITCH__CHANNELS", channel)
            .env("DUCKS_TWITCH__LISTEN", &address)
            .env("DUCKS_TWITCH__CONSUMER", channel)
            .env("DUCKS_LINKS__BASE_URL", "https://ducks.example.com")
            .env("DUCKS_LINKS__SIGNING_KEY", "bench-link-signing-key")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in settings {
            command.env(key, value);
        }
        let bot = command
            .spawn()
            .expect("the release ducks binary starts (make bench-twitch builds it)");
        // Ready: joined, with its own USERSTATE (and so its budget) read.
        let ready = format!("http://{address}/readyz");
        let started = Instant::now();
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            assert!(started.elapsed() < LIMIT, "the bot did not join #{channel}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Stage {
            _redis: redis,
            _home: home,
            bot,
            address,
            finished,
            worker,
        }
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.bot.id())
    }

    /// The bot's CPU seconds per second while nobody talks: its event reads (one blocking read
    /// every 200 ms), pings, the token's timer.
    async fn idle_cpu(&self) -> f64 {
        let before = self.cpu_secs();
        tokio::time::sleep(IDLE).await;
        (self.cpu_secs() - before) / IDLE.as_secs_f64()
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.bot.id().expect("running"))
    }

    /// The sum of one series of the bot's `/metrics` over its labels.
    async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.address))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| {
                line.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn stop(mut self) {
        self.worker.abort();
        let _ = self.bot.kill().await;
    }
}

/// A viewer's `!imagine`, and when it was said.
struct Request {
    id: String,
    login: String,
    at: Instant,
}

/// Viewer `n` (a login and user id of their own) asks for an image in `channel`.
fn imagine(sim: &TwitchSim, channel: &str, n: usize) -> Request {
    let login = format!("{channel}{n:04}");
    let user_id = format!("{}", 7_000_000 + n);
    let viewer = Viewer {
        user_id: &user_id,
        login: &login,
        ..Viewer::default()
    };
    let at = Instant::now();
    let id = sim.say(
        channel,
        viewer,
        &format!("!imagine a rubber duck number {n}"),
    );
    Request { id, login, at }
}

/// What the bot said in one channel, sorted out per request.
#[derive(Default)]
struct Heard {
    /// When each request's acknowledgement reached Twitch, in its own line or a merged one.
    acks: HashMap<String, Instant>,
    own_acks: usize,
    merged_lines: usize,
    /// When each request's result reached Twitch (more than one: posted twice).
    results: HashMap<String, Vec<Instant>>,
    /// Replies that are neither (refusals), by request, and how many say why in each way.
    refusals: HashMap<String, Instant>,
    too_fast: usize,
    too_many: usize,
    /// PRIVMSGs sent, those Twitch took, and those it refused with a NOTICE.
    attempted: usize,
    delivered: usize,
    notices: usize,
    /// The last line Twitch took.
    last: Option<Instant>,
}

fn sort_out(sim: &TwitchSim, channel: &str, requests: &[Request]) -> Heard {
    let by_login: HashMap<&str, &str> = requests
        .iter()
        .map(|r| (r.login.as_str(), r.id.as_str()))
        .collect();
    let mut heard = Heard::default();
    for sent in sim
        .sent()
        .iter()
        .filter(|s| s.channel == channel && s.login == BOT)
    {
        heard.attempted += 1;
        if matches!(
            sent.refused.as_deref(),
            Some(REFUSED_RATELIMIT | REFUSED_DUPLICATE)
        ) {
            heard.notices += 1;
        }
        if !sent.delivered() {
            continue;
        }
        heard.delivered += 1;
        heard.last = Some(sent.at);
        if let Some(merged) = sent.text.strip_prefix("Queued: ") {
            heard.merged_lines += 1;
            for each in merged.split(", ") {
                let login = each.trim_start_matches('@').split(' ').next();
                if let Some(id) = login.and_then(|login| by_login.get(login)) {
                    heard.acks.entry((*id).to_owned()).or_insert(sent.at);
                }
            }
        } else if let Some(parent) = sent.reply_parent() {
            if sent.text.contains(" here it is: ") {
                heard
                    .results
                    .entry(parent.to_owned())
                    .or_default()
                    .push(sent.at);
            } else if sent.text.contains(" queued: ") {
                heard.own_acks += 1;
                heard.acks.entry(parent.to_owned()).or_insert(sent.at);
            } else {
                heard.refusals.entry(parent.to_owned()).or_insert(sent.at);
                if sent.text.contains("asking too fast") {
                    heard.too_fast += 1;
                } else if sent.text.contains("in progress") {
                    heard.too_many += 1;
                }
            }
        }
    }
    heard
}

/// Milliseconds from each request to its line in `lines`, sorted.
fn latencies(requests: &[Request], lines: &HashMap<String, Instant>) -> Vec<f64> {
    let mut ms: Vec<f64> = requests
        .iter()
        .filter_map(|r| lines.get(&r.id).map(|at| millis(at.duration_since(r.at))))
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// The quantiles `at` of sorted milliseconds, in seconds: `0.01 s / 0.05 s`, or `none`.
fn spread(ms: &[f64], at: &[f64]) -> String {
    if ms.is_empty() {
        return "none".to_owned();
    }
    at.iter()
        .map(|p| format!("{:.2} s", percentile(ms, *p) / 1000.0))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn millis(span: Duration) -> f64 {
    span.as_secs_f64() * 1000.0
}

fn first_results(heard: &Heard) -> HashMap<String, Instant> {
    heard
        .results
        .iter()
        .map(|(id, at)| (id.clone(), at[0]))
        .collect()
}

/// Waits until `n` results have reached Twitch in `channel`.
async fn wait_for_results(sim: &TwitchSim, channel: &str, n: usize, limit: Duration) {
    sim.wait_for_sent_count(
        n,
        |s| s.channel == channel && s.delivered() && s.text.contains(" here it is: "),
        limit,
    )
    .await;
}

/// Part 1, in `#latency`.
async fn acknowledgements(sim: &TwitchSim) {
    const CHANNEL: &str = "latency";
    sim.make_moderator(CHANNEL, BOT);
    // The channel's job limits lifted: this part is about the budget, not the raid guard.
    let stage = Stage::start(
        sim,
        CHANNEL,
        &[
            ("DUCKS_QUEUE__SCOPES__TWITCH__RATE", "0"),
            ("DUCKS_QUEUE__SCOPES__TWITCH__IN_FLIGHT", "0"),
        ],
    )
    .await;
    let idle = stage.idle_cpu().await;
    let cpu_before = stage.cpu_secs();
    let start = tokio::time::Instant::now();
    let mut requests = Vec::new();
    for n in 0..LATENCY_VIEWERS {
        tokio::time::sleep_until(start + LATENCY_SPACING * n as u32).await;
        requests.push(imagine(sim, CHANNEL, n));
    }
    wait_for_results(sim, CHANNEL, LATENCY_VIEWERS, LIMIT).await;
    let cpu = stage.cpu_secs() - cpu_before;
    let span = start.elapsed();
    let busy = cpu - idle * span.as_secs_f64();
    let heard = sort_out(sim, CHANNEL, &requests);
    let acks = latencies(&requests, &heard.acks);
    let results = latencies(&requests, &first_results(&heard));
    println!(
        "# 1. The acknowledgement when the budget allows: {LATENCY_VIEWERS} viewers, one every \
         {} ms, the bot a moderator ({DEFAULT_MODERATOR_LIMIT} lines per {} s)",
        LATENCY_SPACING.as_millis(),
        DEFAULT_RATE_WINDOW.as_secs()
    );
    println!("| from a viewer's PRIVMSG to | requests | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (what, ms) in [
        (
            format!(
                "its acknowledgement ({} own lines, {} merged)",
                heard.own_acks, heard.merged_lines
            ),
            &acks,
        ),
        ("its result".to_owned(), &results),
    ] {
        println!(
            "| {what} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms.len(),
            percentile(ms, 0.5),
            percentile(ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "\nBot CPU: {:.2} ms per request ({cpu:.2} s for {} requests and {} lines over {:.0} s, \
         less its idle use: {:.0} ms in the {} s before); most lines in any {} s: {}; NOTICE \
         refusals: {}.",
        busy * 1000.0 / LATENCY_VIEWERS as f64,
        LATENCY_VIEWERS,
        heard.delivered,
        span.as_secs_f64(),
        idle * IDLE.as_secs_f64() * 1000.0,
        IDLE.as_secs(),
        DEFAULT_RATE_WINDOW.as_secs(),
        sim.max_in_window(CHANNEL, DEFAULT_RATE_WINDOW),
        heard.notices
    );
    stage.stop().await;
}

/// What one raid came to, as rows of the table.
struct Raid {
    limit: usize,
    rows: Vec<(&'static str, String)>,
}

/// Part 2 in `channel`, where the bot moderates or is a plain chatter.
async fn raid(sim: &TwitchSim, channel: &str, moderator: bool) -> Raid {
    if moderator {
        sim.make_moderator(channel, BOT);
    }
    let limit = if moderator {
        DEFAULT_MODERATOR_LIMIT
    } else {
        DEFAULT_NORMAL_LIMIT
    };
    // Everything as built in; the age limit named, since the watch below relies on it.
    let ack_max_age = ACK_MAX_AGE.as_secs().to_string();
    let stage = Stage::start(
        sim,
        channel,
        &[("DUCKS_TWITCH__ACK_MAX_AGE_SECS", &ack_max_age)],
    )
    .await;
    let cpu_before = stage.cpu_secs();
    let start = tokio::time::Instant::now();
    let mut requests = Vec::new();
    for n in 0..RAID {
        tokio::time::sleep_until(start + RAID_SPAN * n as u32 / RAID as u32).await;
        requests.push(imagine(sim, channel, n));
    }
    let said = start.elapsed();
    let taken_by = Instant::now() + LIMIT;
    let mut taken = 0.0;
    while taken < RAID as f64 {
        assert!(Instant::now() < taken_by, "the bot took {taken} of {RAID}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        taken = stage.metric("ducks_twitch_commands_total").await;
    }
    let taken_in = start.elapsed();
    // The stand-in worker finishes what was accepted within milliseconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = stage.finished.load(Ordering::Relaxed);
    let burst_cpu = stage.cpu_secs() - cpu_before;
    let burst = start.elapsed();
    wait_for_results(sim, channel, accepted, RESULTS_LIMIT).await;
    // By then whatever the bot still holds is past its age and will never be said.
    let last_request = requests.last().map_or_else(Instant::now, |r| r.at);
    tokio::time::sleep_until((last_request + ACK_MAX_AGE + Duration::from_secs(3)).into()).await;
    let cpu = stage.cpu_secs() - cpu_before;
    let rss = stage.rss_mib();
    let budget_waits = stage.metric("ducks_twitch_budget_waits_total").await;
    let accepted = stage.finished.load(Ordering::Relaxed);
    let watched = start.elapsed();
    let heard = sort_out(sim, channel, &requests);
    let most = sim.max_in_window(channel, DEFAULT_RATE_WINDOW);
    stage.stop().await;

    let results = latencies(&requests, &first_results(&heard));
    let refusals = latencies(&requests, &heard.refusals);
    let twice = heard.results.values().filter(|at| at.len() > 1).count();
    let acked = heard.acks.len();
    let unanswered = requests
        .iter()
        .filter(|r| {
            !heard.acks.contains_key(&r.id)
                && !heard.results.contains_key(&r.id)
                && !heard.refusals.contains_key(&r.id)
        })
        .count();
    let since_start = |at: Instant| at.duration_since(start.into_std()).as_secs_f64();
    let rows = vec![
        (
            "`!imagine` said / taken by the bot",
            format!(
                "{RAID} in {:.1} s / {taken:.0} by {:.1} s",
                said.as_secs_f64(),
                taken_in.as_secs_f64()
            ),
        ),
        ("accepted (queued)", accepted.to_string()),
        (
            "refused by the channel's limits",
            (taken as usize).saturating_sub(accepted).to_string(),
        ),
        (
            "results delivered",
            format!(
                "{} of {accepted}, {}",
                heard.results.len(),
                if twice == 0 {
                    "each once".to_owned()
                } else {
                    format!("{twice} more than once")
                }
            ),
        ),
        (
            "PRIVMSG → result, min / p50 / max",
            spread(&results, &[0.0, 0.5, 1.0]),
        ),
        (
            "last result out after the first request",
            format!(
                "{:.1} s",
                heard
                    .results
                    .values()
                    .flatten()
                    .max()
                    .map_or(f64::NAN, |at| since_start(*at))
            ),
        ),
        (
            "acknowledgements sent",
            format!(
                "{acked} ({} own lines, {} merged lines)",
                heard.own_acks, heard.merged_lines
            ),
        ),
        (
            "refusals told",
            format!(
                "{} ({} too fast, {} too many at once)",
                heard.refusals.len(),
                heard.too_fast,
                heard.too_many
            ),
        ),
        (
            "PRIVMSG → refusal, p50 / max",
            spread(&refusals, &[0.5, 1.0]),
        ),
        (
            "requests that got no line (dropped unsaid)",
            unanswered.to_string(),
        ),
        (
            "lines Twitch took / PRIVMSGs sent",
            format!("{} / {}", heard.delivered, heard.attempted),
        ),
        (
            "most PRIVMSGs in any 30 s",
            format!("{most} (limit {limit})"),
        ),
        ("NOTICE refusals", heard.notices.to_string()),
        ("waits for the budget", format!("{budget_waits:.0}")),
        (
            "bot CPU per chat message, in the burst",
            format!(
                "{:.2} ms ({burst_cpu:.2} s in its first {:.0} s)",
                burst_cpu * 1000.0 / RAID as f64,
                burst.as_secs_f64()
            ),
        ),
        (
            "bot CPU per chat message, all it did",
            format!(
                "{:.2} ms ({cpu:.2} s in {:.0} s)",
                cpu * 1000.0 / RAID as f64,
                watched.as_secs_f64()
            ),
        ),
        ("bot RSS at the end", format!("{rss:.1} MiB")),
        (
            "watched for",
            format!(
                "{:.0} s (last line at {:.0} s)",
                watched.as_secs_f64(),
                heard.last.map_or(f64::NAN, since_start)
            ),
        ),
    ];
    Raid { limit, rows }
}

#[tokio::main]
async fn main() {
    let sim = TwitchSim::start().await;
    acknowledgements(&sim).await;

    let chatter = raid(&sim, "raid", false).await;
    let moderator = raid(&sim, "modraid", true).await;
    println!(
        "\n# 2. {RAID} `!imagine` from {RAID} viewers in {} s, channel limits as built in",
        RAID_SPAN.as_secs()
    );
    println!(
        "| | plain chatter ({} per {} s) | moderator ({} per {} s) |",
        chatter.limit,
        DEFAULT_RATE_WINDOW.as_secs(),
        moderator.limit,
        DEFAULT_RATE_WINDOW.as_secs()
    );
    println!("|---|---|---|");
    for ((what, a), (_, b)) in chatter.rows.iter().zip(&moderator.rows) {
        println!("| {what} | {a} | {b} |");
    }
}
