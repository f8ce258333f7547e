//! The `ducks` command line as a person meets it: `ducks dev` with `ducks submit --wait` in
//! another terminal (through pipes, and on a pseudo-terminal), Ctrl-C on `ducks dev` with a job
//! running, and client commands while Redis is down.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ducks_contract::{EventKind, JobId, JobPhase};
use ducks_tests::{OnTerminal, RedisServer, ducks_binary, stderr_on_terminal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

use crate::support::{
    GATE_LIMIT, JOB_LIMIT, config, events_of, events_until_end, queue_on, quick, submit, terminal,
};

/// How long `ducks dev` may take to stop after SIGINT: its grace period, then stopping runners.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// `ducks dev` running in a folder, with what it printed after it was ready.
struct Dev {
    child: tokio::process::Child,
    /// The `export KEY=value` lines it prints for other terminals.
    exports: Vec<(String, String)>,
    /// Its stdout after the exports, and all of its stderr.
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Dev {
    /// Starts `ducks dev` in `dir` with `env` added, and waits until it prints how to use it.
    async fn start(dir: &Path, env: &[(&str, &str)]) -> Dev {
        let mut child = tokio::process::Command::new(ducks_binary())
            .arg("dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = collect(child.stderr.take().unwrap(), output.clone());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut exports = Vec::new();
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((key, value)) =
                    line.strip_prefix("export ").and_then(|l| l.split_once('='))
                {
                    exports.push((key.to_owned(), value.to_owned()));
                }
                if line.starts_with("ducks submit") {
                    return true;
                }
            }
            false
        };
        let ready = tokio::time::timeout(JOB_LIMIT, ready).await;
        assert!(
            matches!(ready, Ok(true)),
            "ducks dev did not start: {}",
            output.lock().unwrap()
        );
        let stdout = collect(lines.into_inner(), output.clone());
        Dev {
            child,
            exports,
            output,
            readers: vec![stderr, stdout],
        }
    }

    /// `ducks` in another terminal, set up with the exports this stack printed.
    fn client(&self, dir: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(ducks_binary());
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.exports.clone())
            .current_dir(dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Ctrl-C: its exit status and everything it printed after it was ready.
    async fn interrupt(mut self) -> (ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = tokio::time::timeout(STOP_LIMIT, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "ducks dev did not stop within {STOP_LIMIT:?} of SIGINT: {}",
                    self.output.lock().unwrap()
                )
            })
            .unwrap();
        for reader in self.readers {
            tokio::time::timeout(STOP_LIMIT, reader)
                .await
                .expect("ducks dev's output ends with it")
                .unwrap();
        }
        let output = self.output.lock().unwrap().clone();
        (status, output)
    }
}

/// Appends every line `from` prints to `into`, until it closes.
fn collect(
    from: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = into.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    })
}

/// Runs `command` to its end within `limit`: status, stdout, stderr.
async fn output_of(
    mut command: tokio::process::Command,
    limit: Duration,
) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(limit, command.output())
        .await
        .expect("the command ends in time")
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn submit_wait_through_pipes_prints_each_line_once_and_plain_progress() {
    let dir = tempfile::tempdir().unwrap();
    // Every step becomes an event, so the command itself must keep its progress short.
    let dev = Dev::start(dir.path(), &[("DUCKS_WORKER__PROGRESS_INTERVAL_MS", "0")]).await;
    let out = dir.path().join("out");
    let mut submit = dev.client(dir.path());
    submit
        .args([
            "submit",
            "a duck in a log file",
            "--wait",
            "--steps",
            "40",
            "--out",
        ])
        .arg(&out);
    let (status, stdout, stderr) = output_of(submit, JOB_LIMIT).await;
    let both = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(status.success(), "{both}");

    // The queued line once, on stderr with the rest of what a person reads along.
    assert_eq!(
        both.matches("Queued ").count(),
        1,
        "the queued line appears once: {both}"
    );
    assert!(stderr.lines().any(|l| l.starts_with("Queued ")), "{both}");
    // Only what a script wants on stdout: the link and the saved file.
    let stdout_lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(stdout_lines.len(), 2, "{both}");
    assert!(stdout_lines[0].starts_with("http://127.0.0.1:"), "{both}");
    let saved = stdout_lines[1]
        .strip_prefix("Saved ")
        .expect("the saved file");
    assert!(Path::new(saved).exists(), "{both}");

    // No carriage returns into a pipe, and a handful of whole progress lines, not one per step.
    assert!(!stderr.contains('\r'), "{stderr:?}");
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with("step ")).collect();
    assert!(
        (2..=11).contains(&progress.len()),
        "between 2 and 11 progress lines: {both}"
    );
    assert_eq!(
        progress.last().copied(),
        Some("step 40 of 40, uploading…"),
        "{both}"
    );
    assert!(stderr.lines().any(|l| l.starts_with("Done in ")), "{both}");

    let (status, output) = dev.interrupt().await;
    assert!(status.success(), "{status:?}: {output}");
}

#[tokio::test]
async fn submit_wait_on_a_terminal_redraws_its_progress_bar() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), &[]).await;
    let mut command = dev.client(dir.path());
    command
        .args(["submit", "a duck on a terminal", "--wait", "--out"])
        .arg(dir.path().join("out"));
    let OnTerminal {
        status,
        stdout,
        terminal,
    } = stderr_on_terminal(command, JOB_LIMIT).await;
    assert!(status.success(), "stdout: {stdout}\nterminal: {terminal:?}");
    assert_eq!(terminal.matches("Queued ").count(), 1, "{terminal:?}");
    assert!(!stdout.contains("Queued"), "{stdout}");
    // The bar is drawn again in place: a carriage return, then the bar.
    assert!(
        terminal.contains(&format!("\r[{}] step 2 of 2", "#".repeat(30))),
        "{terminal:?}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("Saved ")), "{stdout}");

    let (status, output) = dev.interrupt().await;
    assert!(status.success(), "{status:?}: {output}");
}

/// The sha256 of each of tiny-sd's files, from its manifest in the stack's S3 folder.
fn tiny_weight_digests(s3_root: &Path) -> Vec<String> {
    fn find(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                find(&path, found);
            } else if path.ends_with("tiny-sd/model.toml") {
                found.push(path);
            }
        }
    }
    let mut manifests = Vec::new();
    find(s3_root, &mut manifests);
    assert_eq!(manifests.len(), 1, "tiny-sd's manifest: {manifests:?}");
    let text = std::fs::read_to_string(&manifests[0]).unwrap();
    let digests: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("sha256 = \""))
        .map(|d| d.trim_end_matches('"').to_owned())
        .collect();
    assert!(!digests.is_empty(), "{text}");
    digests
}

/// Processes whose working folder is inside `dir` (the runners of a stack run in its runs
/// folder).
fn processes_inside(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name} in {}: {}",
                cwd.display(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// Whether the process `pid`, started at `start_time` (clock ticks after boot, from the runner's
/// pid file), still exists and is not a zombie.
fn still_runs(pid: &str, start_time: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    !matches!(fields[0], "Z" | "X") && fields[19] == start_time
}

#[tokio::test]
async fn ctrl_c_on_ducks_dev_stops_its_runners_and_hands_their_jobs_back() {
    // Redis outlives the stacks, so the test can read what the first one left in it.
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().canonicalize().unwrap().join(".ducks");
    let url = redis.url();
    let env = [
        ("DUCKS_REDIS__URL", url.as_str()),
        ("DUCKS_WORKER__SHUTDOWN_GRACE_SECS", "1"),
    ];
    let dev = Dev::start(dir.path(), &env).await;

    // The runner is held in the middle of its run: it waits for the weight cache's lock on each
    // of tiny-sd's files, which this test holds.
    let locks_dir = data.join("cache/locks");
    std::fs::create_dir_all(&locks_dir).unwrap();
    let locks: Vec<std::fs::File> = tiny_weight_digests(&data.join("s3"))
        .iter()
        .map(|digest| {
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(locks_dir.join(format!("{digest}.lock")))
                .unwrap();
            lock.lock().unwrap();
            lock
        })
        .collect();
    let id: JobId = submit(&queue, quick("a duck interrupted")).await;
    let pid_file = data.join("runs").join(id.as_str()).join("pid");
    let started = Instant::now();
    let (pid, start_time) = loop {
        let loading = events_of(&queue, &id).await.iter().any(|e| {
            matches!(
                e,
                EventKind::Starting {
                    phase: JobPhase::LoadingWeights,
                    ..
                }
            )
        });
        let identity = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if let (true, Some((pid, start))) = (loading, identity.trim().split_once(' ')) {
            break (pid.to_owned(), start.to_owned());
        }
        assert!(
            started.elapsed() < GATE_LIMIT,
            "the runner did not start loading weights: {:?}",
            events_of(&queue, &id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        still_runs(&pid, &start_time),
        "the runner runs until Ctrl-C"
    );

    let (status, output) = dev.interrupt().await;
    assert!(status.success(), "{status:?}: {output}");
    assert!(
        output.contains(&format!(
            "Job {id}: stopped and handed back to the queue; the next `ducks dev` runs it."
        )),
        "what became of the running job: {output}"
    );
    assert!(
        !output.to_lowercase().contains("upload"),
        "no upload was tried or failed: {output}"
    );
    // Stopped and waited for before the stack ended: no runner outlives it.
    assert!(!still_runs(&pid, &start_time), "runner {pid} survived");
    assert_eq!(processes_inside(&data), Vec::<String>::new());
    assert!(
        !pid_file.exists(),
        "its folder is gone, so nobody adopts it"
    );
    // Handed back: unfinished, its entry pending for the next worker to take at once.
    let status = queue.status(&id).await.unwrap();
    assert!(!status.state.is_terminal(), "{status:?}");
    let pending: (u64, Option<String>, Option<String>, Option<redis::Value>) =
        redis::cmd("XPENDING")
            .arg(queue.keys().jobs())
            .arg("workers")
            .query_async(&mut queue.connection())
            .await
            .unwrap();
    assert_eq!(pending.0, 1, "the job waits for a worker: {pending:?}");
    drop(locks);

    // The next `ducks dev` in the same folder runs it.
    let dev = Dev::start(dir.path(), &[("DUCKS_REDIS__URL", url.as_str())]).await;
    let events = events_until_end(&queue, &id).await;
    assert!(
        matches!(terminal(&events), EventKind::Succeeded { .. }),
        "{events:?}"
    );
    let (status, output) = dev.interrupt().await;
    assert!(status.success(), "{status:?}: {output}");
    assert!(!output.to_lowercase().contains("upload"), "{output}");
}

#[tokio::test]
async fn client_commands_give_up_soon_with_one_line_when_redis_is_down() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://ducks:s3cret-pw@127.0.0.1:{port}/");
    for args in [
        vec!["submit", "a duck nobody queues"],
        vec!["status", "some-job"],
        vec!["cancel", "some-job"],
    ] {
        let mut command = tokio::process::Command::new(ducks_binary());
        command
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DUCKS_REDIS__URL", &url)
            .env("DUCKS_REDIS__CLI_WAIT_SECS", "2")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let started = Instant::now();
        let (status, stdout, stderr) = output_of(command, Duration::from_secs(60)).await;
        let elapsed = started.elapsed();
        let what = format!("ducks {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(!status.success(), "{what}");
        assert!(elapsed < Duration::from_secs(15), "{elapsed:?}: {what}");
        assert_eq!(stdout, "", "{what}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines,
            [format!(
                "error: Redis at redis://127.0.0.1:{port}/ did not answer within 2 s: is it \
                 running? (`ducks dev` starts one; DUCKS_REDIS__URL points elsewhere)"
            )],
            "{what}"
        );
        assert!(!stderr.contains("s3cret"), "{what}");
    }
}
