//! The fan-out benchmark: many watchers of one job each, as the HTTP API's server-sent-event
//! clients are, through DUCKS' `EventTail` (one reader per process, handing each job's events to
//! its watchers) and, in the same run, through the naive design it replaced, defined only here:
//! one blocking connection per watcher that reads the whole origin stream with `XREAD` and keeps
//! its own job's events.
//!
//! Each round runs the watchers in a child process of this benchmark (the "API process"), so its
//! memory and file descriptors are the watchers' alone and no round inherits another's heap. This
//! process is the writer: it submits the jobs with `Queue::submit` once every watcher has started,
//! and drives each one to its end with a real `Consumer` (Starting, two Progress events,
//! Succeeded), all on one `redis-server` of the benchmark's own.
//!
//! Per design: Redis commands the watchers ran (from `INFO commandstats`, see [`watchers_side`]),
//! per event written; the time until every watcher saw its terminal event; the watcher process's
//! CPU, RSS increase (with all watchers started, and its peak) and open file descriptors. Every
//! watcher must see all of its job's events, in order. Run with `make bench-fanout`; figures go
//! to BENCHMARKS.md.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ducks_contract::{EventKind, JobEvent, JobId, JobPhase, JobRequest, Origin, wire};
use ducks_queue::connection::is_transient;
use ducks_queue::{
    Completion, Connection, Consumer, Delivery, EventTail, Queue, QueueConfig, RedisTarget,
    Submitted, now_ms,
};
use ducks_tests::RedisServer;
use futures_util::StreamExt;
use redis::streams::StreamReadReply;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinSet;

/// The watchers (and jobs) the issue asks for.
const FULL: usize = 5_000;
/// The size at which the naive design always runs: it gives the like-for-like row and the
/// measured time from which a naive round at [`FULL`] is estimated.
const SMALL: usize = 500;
/// A naive round at [`FULL`] runs only if it is estimated to take at most this long.
const NAIVE_FULL_BUDGET: Duration = Duration::from_secs(180);
/// Queued, Starting, Progress 1/2, Progress 2/2, Succeeded.
const EVENTS_PER_JOB: usize = 5;
/// Entries one naive `XREAD` takes at most, as the old watcher did.
const NAIVE_READ_COUNT: usize = 100;
/// Jobs the writer asks for per `next_batch`, and submits in flight at once.
const WRITER_BATCH: usize = 100;
const SUBMITS_IN_FLIGHT: usize = 50;
/// Naive connections opened at once while the watchers start (a burst of thousands would
/// overflow the listen backlog and time out).
const CONNECTS_IN_FLIGHT: usize = 64;
/// The most a round's watchers may take to start, and then to see every terminal event.
const SETUP_LIMIT: Duration = Duration::from_secs(120);
const ROUND_LIMIT: Duration = Duration::from_secs(600);
/// File descriptors and Redis clients kept free beyond one per naive watcher: the runtime, the
/// writer's connections, redis-server's own files.
const FD_MARGIN: usize = 200;

/// Environment of a watcher child process: which design, how many watchers, which queue, where.
const CHILD_DESIGN: &str = "DUCKS_FANOUT_DESIGN";
const CHILD_WATCHERS: &str = "DUCKS_FANOUT_WATCHERS";
const CHILD_QUEUE: &str = "DUCKS_FANOUT_QUEUE";
const CHILD_REDIS: &str = "DUCKS_FANOUT_REDIS";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Design {
    /// One `EventTail`, one `JobWatch` per watcher.
    Tail,
    /// One connection and one `XREAD` loop over the whole stream per watcher.
    Naive,
}

impl Design {
    fn slug(self) -> &'static str {
        match self {
            Design::Tail => "tail",
            Design::Naive => "naive",
        }
    }

    fn from_slug(slug: &str) -> Option<Design> {
        [Design::Tail, Design::Naive]
            .into_iter()
            .find(|d| d.slug() == slug)
    }

    fn label(self) -> &'static str {
        match self {
            Design::Tail => "EventTail",
            Design::Naive => "naive",
        }
    }
}

/// What one watcher child measured, sent to the writer as one JSON line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Report {
    watchers: f64,
    /// Entries on the origin's event stream at the end: every event of the round.
    events: f64,
    /// `XREAD` calls while the watchers started and while they watched. Only watchers send
    /// `XREAD` (workers read with `XREADGROUP`).
    xread_setup: f64,
    xread_run: f64,
    /// Every command Redis counted while the watchers started (the writer is idle then).
    setup_commands: f64,
    /// Those commands by name, for the breakdown under the table.
    setup_breakdown: BTreeMap<String, f64>,
    /// The naive watchers' own count of their `XREAD`s, to check Redis' count against.
    self_counted_xreads: Option<f64>,
    /// Reads that failed and were tried again (the naive watchers only).
    read_errors: f64,
    /// Redis clients the watchers added.
    connections: f64,
    setup_secs: f64,
    /// From the writer's first submit to the last watcher's terminal event.
    until_ended_secs: f64,
    /// The watcher process's CPU (user and system) over the same span.
    cpu_secs: f64,
    rss_ready_mib: f64,
    rss_peak_mib: f64,
    fds_ready: f64,
}

impl Report {
    /// Watcher-side commands: all of the start-up window, and the `XREAD`s after it.
    fn watcher_commands(&self) -> f64 {
        self.setup_commands + self.xread_run
    }

    /// The mean of several rounds of one design and size.
    fn mean(rounds: &[Report]) -> Report {
        let n = rounds.len() as f64;
        let mean = |f: fn(&Report) -> f64| rounds.iter().map(f).sum::<f64>() / n;
        let mut setup_breakdown = BTreeMap::new();
        for round in rounds {
            for (name, calls) in &round.setup_breakdown {
                *setup_breakdown.entry(name.clone()).or_default() += calls / n;
            }
        }
        let self_counted = rounds
            .iter()
            .map(|r| r.self_counted_xreads)
            .sum::<Option<f64>>()
            .map(|sum| sum / n);
        Report {
            watchers: mean(|r| r.watchers),
            events: mean(|r| r.events),
            xread_setup: mean(|r| r.xread_setup),
            xread_run: mean(|r| r.xread_run),
            setup_commands: mean(|r| r.setup_commands),
            setup_breakdown,
            self_counted_xreads: self_counted,
            read_errors: mean(|r| r.read_errors),
            connections: mean(|r| r.connections),
            setup_secs: mean(|r| r.setup_secs),
            until_ended_secs: mean(|r| r.until_ended_secs),
            cpu_secs: mean(|r| r.cpu_secs),
            rss_ready_mib: mean(|r| r.rss_ready_mib),
            rss_peak_mib: mean(|r| r.rss_peak_mib),
            fds_ready: mean(|r| r.fds_ready),
        }
    }
}

fn queue_config(name: &str) -> QueueConfig {
    QueueConfig {
        name: name.into(),
        max_backlog: 1_000_000,
        per_requester_in_flight: 0,
        per_requester_rate: 0,
        ..QueueConfig::default()
    }
}

/// The job ids of a round, set before anything is submitted so watchers can start first.
fn job_ids(jobs: usize) -> Vec<JobId> {
    (0..jobs)
        .map(|i| format!("job-{i}").parse().expect("a valid job id"))
        .collect()
}

/// The calls of every command Redis has run, by name (`INFO commandstats`; commands run inside
/// scripts are counted too).
async fn command_calls(conn: &mut Connection) -> BTreeMap<String, f64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, fields) = line.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.trim().parse().ok()?))
        })
        .collect()
}

/// Calls per command between two snapshots, without the benchmark's own `INFO`s.
fn calls_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, calls)| {
            (
                name.clone(),
                calls - before.get(name).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, calls)| *calls > 0.0)
        .collect()
}

async fn info_field(conn: &mut Connection, section: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in INFO {section}"))
}

/// A field of /proc/self/status in MiB (`VmRSS`, `VmHWM`).
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Sets the process's peak RSS (VmHWM) back to its current RSS, so the peak is this round's.
fn reset_peak_rss() {
    // Linux's clear_refs: writing 5 resets the peak; where it is refused the peak is since the
    // process started, which here is moments before.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn open_fds() -> f64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64
}

/// CPU seconds (user and system) of this process.
fn cpu_secs() -> f64 {
    // USER_HZ, the unit of /proc's CPU times, is 100 on every Linux architecture we run on.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    (field(11) + field(12)) / 100.0
}

/// The soft limit on open files of this process (and of its children).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(1024)
}

/// What one watcher saw: its job's events in order, when it ended, and what it cost.
struct Watched {
    kinds: Vec<EventKind>,
    ended: Instant,
    xreads: u64,
    read_errors: u64,
}

/// The old per-watcher design: its own blocking connection, and `XREAD` over the whole origin
/// stream from just before its job was submitted, decoding every entry and keeping its own.
async fn naive_watch(
    mut conn: Connection,
    stream: String,
    job_id: JobId,
    mut after: String,
    block: Duration,
) -> Result<Watched, String> {
    let (mut kinds, mut xreads, mut read_errors) = (Vec::new(), 0, 0);
    loop {
        let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(NAIVE_READ_COUNT)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&after)
            .query_async(&mut conn)
            .await;
        xreads += 1;
        let reply = match read {
            Ok(reply) => reply,
            Err(e) if is_transient(&e) => {
                read_errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(format!("XREAD for {job_id}: {e}")),
        };
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let json: Option<String> = entry.get("event");
            after = entry.id;
            let Some(Ok(event)) = json.map(|j| wire::decode::<JobEvent>("event", &j)) else {
                continue;
            };
            if event.job_id == job_id {
                let terminal = event.kind.is_terminal();
                kinds.push(event.kind);
                if terminal {
                    return Ok(Watched {
                        kinds,
                        ended: Instant::now(),
                        xreads,
                        read_errors,
                    });
                }
            }
        }
    }
}

/// Whether a watcher saw exactly its job's events: Queued, Starting, Progress ×2, Succeeded.
fn saw_everything(kinds: &[EventKind]) -> bool {
    matches!(
        kinds,
        [
            EventKind::Queued { .. },
            EventKind::Starting { .. },
            EventKind::Progress { step: 1, .. },
            EventKind::Progress { step: 2, .. },
            EventKind::Succeeded { .. },
        ]
    )
}

/// A watcher child: starts one watcher per job, says `ready`, waits for the writer's `go`, and
/// reports once every watcher has seen its terminal event.
async fn watcher_process(design: Design, watchers: usize, queue_name: String, url: String) {
    let target = RedisTarget::Single(url);
    let config = queue_config(&queue_name);
    let block = Duration::from_millis(config.block_ms);
    let queue = Queue::connect(target.clone(), config)
        .await
        .expect("connect the watchers' queue");
    let mut stats = queue.connection();
    let stream = queue.keys().events("cli");
    let ids = job_ids(watchers);

    let clients_before = info_field(&mut stats, "clients", "connected_clients").await;
    reset_peak_rss();
    let (rss_before, fds_before) = (memory_mib("VmRSS"), open_fds());
    let calls_before = command_calls(&mut stats).await;
    let started = Instant::now();
    let mut tasks: JoinSet<Result<Watched, String>> = JoinSet::new();
    // The tail lives as long as its watches are read.
    let _tail = match design {
        Design::Tail => {
            let tail = EventTail::start(&queue, "cli")
                .await
                .expect("start the tail");
            for id in &ids {
                let mut watch = tail.watch(id).await.expect("watch a job");
                tasks.spawn(async move {
                    let mut kinds = Vec::new();
                    while let Some(event) = watch.next().await {
                        kinds.push(event.kind);
                    }
                    Ok(Watched {
                        kinds,
                        ended: Instant::now(),
                        xreads: 0,
                        read_errors: 0,
                    })
                });
            }
            Some(tail)
        }
        Design::Naive => {
            // Every job is submitted after this, so its watcher reads from before its submit.
            let after = format!("{}-0", now_ms().saturating_sub(1));
            let mut connecting = futures_util::stream::iter(ids.iter().cloned())
                .map(|id| {
                    let target = target.clone();
                    async move { (id, target.connect_blocking(block).await) }
                })
                .buffer_unordered(CONNECTS_IN_FLIGHT);
            while let Some((id, conn)) = connecting.next().await {
                let conn = conn.expect("connect a naive watcher");
                tasks.spawn(naive_watch(conn, stream.clone(), id, after.clone(), block));
            }
            None
        }
    };
    let setup_secs = started.elapsed().as_secs_f64();
    let calls_ready = command_calls(&mut stats).await;
    let clients_ready = info_field(&mut stats, "clients", "connected_clients").await;
    let (rss_ready, fds_ready) = (memory_mib("VmRSS"), open_fds());

    println!("ready");
    std::io::stdout().flush().expect("write to the writer");
    // Blocking: tokio's stdin is a feature this workspace leaves off.
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
        .await
        .expect("the stdin task")
        .expect("read the writer's go");
    let (go_at, cpu_at_go) = (Instant::now(), cpu_secs());

    let deadline = tokio::time::Instant::now() + ROUND_LIMIT;
    let (mut last_end, mut ended, mut incomplete) = (go_at, 0, 0);
    let (mut xreads, mut read_errors) = (0, 0);
    while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} design: only {ended} of {watchers} watchers saw their terminal event within {ROUND_LIMIT:?}",
                design.label()
            )
        })
    {
        let watched = joined.expect("a watcher task").expect("a watcher");
        ended += 1;
        last_end = last_end.max(watched.ended);
        xreads += watched.xreads;
        read_errors += watched.read_errors;
        if !saw_everything(&watched.kinds) {
            incomplete += 1;
        }
    }
    let cpu = cpu_secs() - cpu_at_go;
    let rss_peak = memory_mib("VmHWM");
    assert_eq!(
        incomplete,
        0,
        "{} design: {incomplete} watchers missed events of their job",
        design.label()
    );
    let calls_after = command_calls(&mut stats).await;
    let events: f64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut stats)
        .await
        .expect("XLEN of the events");
    let setup = calls_between(&calls_before, &calls_ready);
    let run = calls_between(&calls_ready, &calls_after);
    let report = Report {
        watchers: watchers as f64,
        events,
        xread_setup: setup.get("xread").copied().unwrap_or(0.0),
        xread_run: run.get("xread").copied().unwrap_or(0.0),
        setup_commands: setup.values().sum(),
        setup_breakdown: setup,
        self_counted_xreads: (design == Design::Naive).then_some(xreads as f64),
        read_errors: read_errors as f64,
        connections: clients_ready - clients_before,
        setup_secs,
        until_ended_secs: (last_end - go_at).as_secs_f64(),
        cpu_secs: cpu,
        rss_ready_mib: rss_ready - rss_before,
        rss_peak_mib: rss_peak - rss_before,
        fds_ready: fds_ready - fds_before,
    };
    println!(
        "report {}",
        serde_json::to_string(&report).expect("a report")
    );
}

/// One job's life as a worker writes it, through the real scripts.
async fn run_job(delivery: Delivery) {
    delivery
        .publish(EventKind::Starting {
            phase: JobPhase::Launching,
            message: "Starting the runner.".into(),
        })
        .await
        .expect("publish Starting");
    for step in 1..=2 {
        delivery
            .publish(EventKind::Progress { step, total: 2 })
            .await
            .expect("publish Progress");
    }
    let done = delivery
        .complete(EventKind::Succeeded {
            images: vec![],
            timings: Default::default(),
        })
        .await
        .expect("complete");
    assert_eq!(done, Completion::Done);
}

/// Submits every job, with [`SUBMITS_IN_FLIGHT`] calls pipelined on the queue's connection.
async fn submit_all(queue: Queue, ids: Vec<JobId>) {
    futures_util::stream::iter(ids)
        .map(|id| {
            let queue = queue.clone();
            async move {
                let mut job = JobRequest::new(format!("a duck for {id}"), Origin::Cli);
                job.id = Some(id);
                job.model = Some("tiny-sd".into());
                match queue.submit(job).await.expect("submit") {
                    Submitted::Queued { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        })
        .buffer_unordered(SUBMITS_IN_FLIGHT)
        .collect::<()>()
        .await;
}

/// Takes every job of the round and runs each in a task of its own, as a worker does.
async fn drive(consumer: &mut Consumer, jobs: usize) {
    let deadline = Instant::now() + ROUND_LIMIT;
    let mut running = JoinSet::new();
    let mut taken = 0;
    while taken < jobs {
        assert!(
            Instant::now() < deadline,
            "the writer took {taken} of {jobs} jobs"
        );
        for delivery in consumer.next_batch(WRITER_BATCH).await.expect("next_batch") {
            taken += 1;
            running.spawn(run_job(delivery));
        }
        while let Some(done) = running.try_join_next() {
            done.expect("a job task");
        }
    }
    while let Some(done) = running.join_next().await {
        done.expect("a job task");
    }
}

/// One round: a fresh queue, a watcher child, and this process writing every job's events.
async fn round(design: Design, watchers: usize, number: usize, redis: &RedisServer) -> Report {
    let queue_name = format!("fanout-{}-{watchers}-{number}", design.slug());
    let queue = Queue::connect(RedisTarget::Single(redis.url()), queue_config(&queue_name))
        .await
        .expect("connect the writer's queue");
    let mut child = Command::new(std::env::current_exe().expect("this benchmark's path"))
        .env(CHILD_DESIGN, design.slug())
        .env(CHILD_WATCHERS, watchers.to_string())
        .env(CHILD_QUEUE, &queue_name)
        .env(CHILD_REDIS, redis.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the watcher process");
    let mut to_child = child.stdin.take().expect("the child's stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("the child's stdout")).lines();
    let mut expect_line = async |prefix: &str, limit: Duration| -> String {
        let line = tokio::time::timeout(limit, from_child.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{prefix}` from the watchers within {limit:?}"))
            .expect("read the watchers' output")
            .unwrap_or_else(|| panic!("the watcher process ended before `{prefix}`"));
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected `{prefix}`, read {line:?}"))
            .trim()
            .to_owned()
    };
    expect_line("ready", SETUP_LIMIT).await;

    // Created only now: nothing of the writer runs while the watchers start and are counted.
    let mut consumer = Consumer::new(queue.clone(), "bench")
        .await
        .expect("the writer's consumer");
    to_child
        .write_all(b"go\n")
        .await
        .expect("tell the watchers");
    to_child.flush().await.expect("tell the watchers");
    drop(to_child);
    let submitting = tokio::spawn(submit_all(queue.clone(), job_ids(watchers)));
    drive(&mut consumer, watchers).await;
    submitting.await.expect("the submitter");
    consumer.stop_prefetching().await;
    drop(consumer);

    let json = expect_line("report", ROUND_LIMIT).await;
    let status = child.wait().await.expect("the watcher process");
    assert!(status.success(), "the watcher process failed: {status}");
    let report: Report = serde_json::from_str(&json).expect("the watchers' report");
    eprintln!(
        "round {number}: {}, {watchers} watchers: all ended {:.2} s after the first submit",
        design.label(),
        report.until_ended_secs
    );
    report
}

/// Rounds A B B A of one size, so warm-up and drift fall on both designs; `None` for a design
/// that is not run at this size.
async fn abba(
    watchers: usize,
    naive: bool,
    redis: &RedisServer,
    number: &mut usize,
) -> (Report, Option<Report>) {
    let order: &[Design] = if naive {
        &[Design::Tail, Design::Naive, Design::Naive, Design::Tail]
    } else {
        &[Design::Tail, Design::Tail]
    };
    let (mut tails, mut naives) = (Vec::new(), Vec::new());
    for &design in order {
        *number += 1;
        let report = round(design, watchers, *number, redis).await;
        match design {
            Design::Tail => tails.push(report),
            Design::Naive => naives.push(report),
        }
    }
    let naive = (!naives.is_empty()).then(|| Report::mean(&naives));
    (Report::mean(&tails), naive)
}

/// Redis' `maxclients`: the most clients it accepts at once.
async fn maxclients(redis: &RedisServer) -> usize {
    let reply: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query_async(&mut redis.client().await)
        .await
        .expect("CONFIG GET maxclients");
    reply
        .get(1)
        .and_then(|v| v.parse().ok())
        .expect("maxclients")
}

/// The watcher side's commands, from `INFO commandstats`, told in words under the table.
fn watchers_side() -> &'static str {
    "Watcher-side Redis commands: the writer is idle while the watchers start, so every command \
     Redis counted in that window is theirs (`INFO commandstats`, which also counts the commands \
     run inside scripts; the benchmark's own INFO calls left out); after it, only watchers send \
     XREAD (workers read with XREADGROUP), so the XREAD calls are added. Per event: that sum \
     over the events written."
}

/// A count that may be a mean of rounds: whole when it is, else with one decimal.
fn count(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

fn print_table(columns: &[(String, &Report)]) {
    let header: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    println!("| measure | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(columns.len()));
    let row = |name: &str, cell: &dyn Fn(&Report) -> String| {
        let cells: Vec<String> = columns.iter().map(|(_, r)| cell(r)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("watchers", &|r| format!("{:.0}", r.watchers));
    row("jobs", &|r| format!("{:.0}", r.watchers));
    row("events written", &|r| format!("{:.0}", r.events));
    row("XREAD calls", &|r| {
        format!("{:.0}", r.xread_setup + r.xread_run)
    });
    row("XREAD calls per event", &|r| {
        format!("{:.3}", (r.xread_setup + r.xread_run) / r.events)
    });
    row("watcher-side Redis commands while starting", &|r| {
        format!("{:.0}", r.setup_commands)
    });
    row("watcher-side Redis commands per event", &|r| {
        format!("{:.3}", r.watcher_commands() / r.events)
    });
    row("Redis connections held by the watchers", &|r| {
        format!("{:.0}", r.connections)
    });
    row("time to start the watchers", &|r| {
        format!("{:.2} s", r.setup_secs)
    });
    row("first submit → all watchers ended", &|r| {
        format!("{:.2} s", r.until_ended_secs)
    });
    row("watcher process CPU per event", &|r| {
        format!("{:.1} µs", r.cpu_secs * 1e6 / r.events)
    });
    row("RSS increase, all watchers started", &|r| {
        format!("{:.1} MiB", r.rss_ready_mib)
    });
    row("RSS increase, peak (VmHWM)", &|r| {
        format!("{:.1} MiB", r.rss_peak_mib)
    });
    row("open fds added, all watchers started", &|r| {
        format!("{:.0}", r.fds_ready)
    });
}

fn main() {
    if let Ok(design) = std::env::var(CHILD_DESIGN) {
        let design = Design::from_slug(&design).expect("a known design");
        let watchers = std::env::var(CHILD_WATCHERS)
            .ok()
            .and_then(|n| n.parse().ok())
            .expect("the number of watchers");
        let queue = std::env::var(CHILD_QUEUE).expect("the queue name");
        let url = std::env::var(CHILD_REDIS).expect("the Redis URL");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the watchers' runtime");
        runtime.block_on(watcher_process(design, watchers, queue, url));
        // Nothing is left to wait for: the watchers ended and their report is written.
        runtime.shutdown_background();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the writer's runtime");
    runtime.block_on(writer());
}

async fn writer() {
    let redis = RedisServer::start().await;
    let (fd_limit, max_clients) = (open_files_limit(), maxclients(&redis).await);
    let mut number = 0;

    let (tail_small, naive_small) = abba(SMALL, true, &redis, &mut number).await;
    let naive_small = naive_small.expect("the naive design runs at the small size");
    // Each of 10× the watchers reads 10× the events: the work grows with the square.
    let scale = (FULL as f64 / SMALL as f64).powi(2);
    let estimate = Duration::from_secs_f64(naive_small.until_ended_secs * scale);
    let fds_allow = fd_limit >= FULL + FD_MARGIN;
    let clients_allow = max_clients >= FULL + FD_MARGIN;
    let naive_full = fds_allow && clients_allow && estimate <= NAIVE_FULL_BUDGET;
    let (tail_full, naive_at_full) = abba(FULL, naive_full, &redis, &mut number).await;

    println!(
        "Fan-out: one watcher per job, {EVENTS_PER_JOB} events per job (Queued, Starting, \
         Progress ×2, Succeeded) written as fast as one consumer can; watchers in a child process; \
         each design twice (A B B A), means shown"
    );
    println!();
    let mut columns = vec![
        (format!("EventTail, {SMALL}"), &tail_small),
        (format!("naive, {SMALL}"), &naive_small),
        (format!("EventTail, {FULL}"), &tail_full),
    ];
    if let Some(naive) = &naive_at_full {
        columns.push((format!("naive, {FULL}"), naive));
    }
    print_table(&columns);
    println!();
    println!("{}", watchers_side());
    println!();
    println!(
        "Limits for {FULL} naive watchers: open files (soft) {fd_limit}, redis maxclients \
         {max_clients} ({} with {FD_MARGIN} to spare); estimated time {:.0} s ({:.2} s at \
         {SMALL} × {scale:.0}, since each of 10× the watchers reads 10× the events), budget \
         {:.0} s. {}",
        if fds_allow && clients_allow {
            "both allow it"
        } else {
            "not enough"
        },
        estimate.as_secs_f64(),
        naive_small.until_ended_secs,
        NAIVE_FULL_BUDGET.as_secs_f64(),
        if naive_full {
            format!("The naive design ran at {FULL}.")
        } else if !(fds_allow && clients_allow) {
            format!("The naive design ran at {SMALL} only: file descriptors or Redis clients.")
        } else {
            format!("The naive design ran at {SMALL} only: the estimated time.")
        }
    );
    for (name, report) in &columns {
        let breakdown: Vec<String> = report
            .setup_breakdown
            .iter()
            .map(|(command, calls)| format!("{command} {}", count(*calls)))
            .collect();
        println!(
            "{name}: commands while starting: {}; XREAD after: {:.0}",
            breakdown.join(", "),
            report.xread_run
        );
        if let Some(own) = report.self_counted_xreads {
            println!(
                "{name}: XREADs the watchers counted themselves {own:.0}, Redis counted {:.0}; \
                 reads tried again after an error {:.0}",
                report.xread_setup + report.xread_run,
                report.read_errors
            );
        }
    }
}
