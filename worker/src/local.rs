//! The local launcher: each job's runner is a `ducks runner` child process on this machine, with
//! exactly the environment a pod would get. It is the embedded default, so DUCKS runs without any
//! cluster.
//!
//! Each job has a folder `<runs_dir>/<job-id>/` holding the runner's stdout (`stdout.jsonl`), its
//! stderr, its termination message and its pid. The child runs in a process group of its own and
//! writes to files, not pipes, so it outlives the worker that started it: a worker that takes the
//! job over later finds the folder, adopts the live child (or reads the result it left) and never
//! starts a second runner for the job. Creating the pid file is the claim: of two launches racing
//! for one job, one starts the runner and the other adopts it.

use std::collections::HashSet;
use std::io::{ErrorKind, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ducks_contract::{JobId, Line};
use ducks_models::S3Config;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::LocalConfig;
use crate::launcher::{Launch, LaunchError, LaunchSpec, Launcher, RunnerPaths, Update, runner_env};
use crate::outcome::{Exit, Outcome, classify};

/// How often a runner's stdout file is read for new lines.
const TAIL_INTERVAL: Duration = Duration::from_millis(50);
/// How long (in tail intervals) a claimed folder may go without a pid before it counts as
/// abandoned: a launcher writes it right after spawning.
const CLAIM_WAIT_TICKS: usize = 40;
/// Lines of a failed runner's stderr copied into the worker's log.
const STDERR_TAIL_LINES: usize = 20;

const PID_FILE: &str = "pid";
const STDOUT_FILE: &str = "stdout.jsonl";
const STDERR_FILE: &str = "stderr.log";
const TERMINATION_FILE: &str = "termination-log";

#[derive(Clone)]
pub struct LocalLauncher {
    inner: Arc<Inner>,
}

struct Inner {
    program: PathBuf,
    runs_dir: PathBuf,
    cache_dir: PathBuf,
    output_prefix: String,
    s3: S3Config,
    cancel_grace: Duration,
    /// Jobs whose runner this launcher was asked to stop: their exit means Cancelled.
    cancelled: Mutex<HashSet<JobId>>,
}

impl LocalLauncher {
    /// `program` empty means this executable. The folders are created and made absolute, because
    /// each child runs inside its own job folder.
    pub fn new(
        config: &LocalConfig,
        s3: S3Config,
        output_prefix: String,
        cancel_grace: Duration,
    ) -> std::io::Result<Self> {
        let program = if config.runner_program.as_os_str().is_empty() {
            std::env::current_exe()?
        } else {
            config.runner_program.clone()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                program,
                runs_dir: absolute_dir(&config.runs_dir)?,
                cache_dir: absolute_dir(&config.cache_dir)?,
                output_prefix,
                s3,
                cancel_grace,
                cancelled: Mutex::new(HashSet::new()),
            }),
        })
    }

    fn dir_of(&self, job_id: &JobId) -> PathBuf {
        self.inner.runs_dir.join(job_id.as_str())
    }

    fn is_cancelled(&self, job_id: &JobId) -> bool {
        self.cancelled().contains(job_id)
    }

    fn cancelled(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        self.inner
            .cancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the runner in `dir`, which this launcher has claimed by creating `pid_file`.
    fn start(
        &self,
        spec: &LaunchSpec,
        dir: &Path,
        mut pid_file: std::fs::File,
    ) -> std::io::Result<Child> {
        let stdout = std::fs::File::create(dir.join(STDOUT_FILE))?;
        let stderr = std::fs::File::create(dir.join(STDERR_FILE))?;
        let termination = dir.join(TERMINATION_FILE);
        let paths = RunnerPaths {
            cache_dir: &self.inner.cache_dir.to_string_lossy(),
            output_prefix: &self.inner.output_prefix,
            termination_log: &termination.to_string_lossy(),
        };
        let mut command = Command::new(&self.inner.program);
        command
            .arg("runner")
            // A pod's environment and nothing else, except where to find programs.
            .env_clear()
            .envs(runner_env(spec, &self.inner.s3, &paths))
            .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
            // Its own folder, so no `.env` or `ducks.toml` of the worker's folder leaks in.
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: Ctrl-C in the worker's terminal does not reach it, and it
            // outlives a worker that dies, for the next worker to adopt.
            .process_group(0);
        let child = command.spawn()?;
        let pid = child.id().unwrap_or_default();
        let identity = ProcessIdentity {
            pid,
            start_time: start_time(pid),
        };
        pid_file.write_all(identity.to_string().as_bytes())?;
        Ok(child)
    }

    /// The runner another launcher started in `dir`, once it has written its pid (it claims the
    /// folder an instant before).
    async fn starter_of(&self, dir: &Path) -> Option<ProcessIdentity> {
        for _ in 0..CLAIM_WAIT_TICKS {
            if let Some(identity) = ProcessIdentity::read(&dir.join(PID_FILE)) {
                return Some(identity);
            }
            tokio::time::sleep(TAIL_INTERVAL).await;
        }
        None
    }

    fn follow(&self, job_id: JobId, dir: PathBuf, process: Process) -> mpsc::Receiver<Update> {
        let (tx, rx) = mpsc::channel(64);
        let launcher = self.clone();
        tokio::spawn(async move { launcher.follow_until_exit(job_id, dir, process, tx).await });
        rx
    }

    async fn follow_until_exit(
        self,
        job_id: JobId,
        dir: PathBuf,
        mut process: Process,
        tx: mpsc::Sender<Update>,
    ) {
        let mut stdout = LineTail::new(dir.join(STDOUT_FILE));
        let mut last_line = None;
        let mut tick = tokio::time::interval(TAIL_INTERVAL);
        loop {
            let exit = process.exit_or_tick(&mut tick).await;
            for line in stdout.read_new().await {
                let Some(line) = Line::parse(&line) else {
                    continue;
                };
                last_line = Some(line.clone());
                // The worker let go of the job (shutdown): leave the runner running for the
                // next worker to adopt.
                if tx.send(Update::Line(line)).await.is_err() {
                    return;
                }
            }
            let Some(exit) = exit else { continue };
            let final_line = read_termination(&dir.join(TERMINATION_FILE)).or(last_line);
            let outcome = if self.is_cancelled(&job_id) {
                Outcome::Cancelled
            } else {
                classify(exit, final_line.as_ref())
            };
            if let Outcome::Failed(failure) = &outcome {
                warn!(
                    message = "A runner failed.",
                    job_id = %job_id,
                    code = failure.code.as_str(),
                    exit = ?exit,
                    stderr = %stderr_tail(&dir.join(STDERR_FILE)),
                );
            }
            let _ = tx.send(Update::Finished(outcome)).await;
            return;
        }
    }
}

impl Launcher for LocalLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launch, LaunchError> {
        let dir = self.dir_of(&spec.job_id);
        let unavailable = |e: std::io::Error| {
            LaunchError::Unavailable(format!(
                "cannot start {} in {}: {e}",
                self.inner.program.display(),
                dir.display()
            ))
        };
        // Whoever creates the pid file owns the folder and starts the runner; anyone else adopts.
        // A folder whose runner died without a word is cleared once and claimed again.
        for _ in 0..2 {
            match claim(&dir) {
                Ok(pid_file) => {
                    let child = self.start(spec, &dir, pid_file).map_err(|e| {
                        let _ = std::fs::remove_dir_all(&dir);
                        unavailable(e)
                    })?;
                    let updates = self.follow(spec.job_id.clone(), dir, Process::Own(child));
                    return Ok(Launch {
                        adopted: false,
                        updates,
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable(e)),
            }
            if let Some(identity) = self.starter_of(&dir).await {
                let finished = dir.join(TERMINATION_FILE).exists();
                if identity.is_alive() || finished {
                    info!(message = "Adopted a runner an earlier worker started.", job_id = %spec.job_id, pid = identity.pid, finished);
                    let updates = self.follow(spec.job_id.clone(), dir, Process::Adopted(identity));
                    return Ok(Launch {
                        adopted: true,
                        updates,
                    });
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(LaunchError::Unavailable(format!(
            "{} is claimed by a runner that neither runs nor lets go",
            dir.display()
        )))
    }

    async fn cancel(&self, job_id: &JobId) -> Result<(), LaunchError> {
        self.cancelled().insert(job_id.clone());
        let Some(identity) = ProcessIdentity::read(&self.dir_of(job_id).join(PID_FILE)) else {
            return Ok(());
        };
        if !identity.is_alive() {
            return Ok(());
        }
        let group = Pid::from_raw(identity.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let grace = self.inner.cancel_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if identity.is_alive() {
                let _ = killpg(group, Signal::SIGKILL);
            }
        });
        Ok(())
    }

    async fn running(&self) -> Vec<JobId> {
        let Ok(entries) = std::fs::read_dir(&self.inner.runs_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|entry| {
                ProcessIdentity::read(&entry.path().join(PID_FILE)).is_some_and(|p| p.is_alive())
            })
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect()
    }

    async fn release(&self, job_id: &JobId) {
        self.cancelled().remove(job_id);
        let dir = self.dir_of(job_id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != ErrorKind::NotFound
        {
            warn!(message = "Could not remove a finished run's folder.", path = %dir.display(), error = %e);
        }
    }
}

/// The runner being followed.
enum Process {
    /// Started by this launcher: its exit status is known.
    Own(Child),
    /// Started by an earlier worker: only whether it still runs is known.
    Adopted(ProcessIdentity),
}

impl Process {
    /// The exit once the process is gone; `None` after one tick while it runs.
    async fn exit_or_tick(&mut self, tick: &mut tokio::time::Interval) -> Option<Exit> {
        match self {
            Process::Own(child) => tokio::select! {
                status = child.wait() => Some(match status {
                    Ok(status) => match (status.code(), status.signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(signal)) => Exit::Signal(signal),
                        (None, None) => Exit::Unknown,
                    },
                    Err(_) => Exit::Unknown,
                }),
                _ = tick.tick() => None,
            },
            Process::Adopted(identity) => {
                tick.tick().await;
                (!identity.is_alive()).then_some(Exit::Unknown)
            }
        }
    }
}

/// A pid and the process's start time, so a pid the system reused is not mistaken for the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcessIdentity {
    pid: u32,
    start_time: Option<u64>,
}

impl std::fmt::Display for ProcessIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.pid, self.start_time.unwrap_or_default())
    }
}

impl ProcessIdentity {
    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut parts = text.split_whitespace();
        let pid = parts.next()?.parse().ok()?;
        let start_time = parts
            .next()
            .and_then(|t| t.parse().ok())
            .filter(|&t| t != 0);
        Some(Self { pid, start_time })
    }

    fn is_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => match parse_stat(&stat) {
                // A zombie has exited; only its parent has not collected it yet.
                Some((state, start)) => {
                    !matches!(state, 'Z' | 'X') && self.start_time.is_none_or(|t| t == start)
                }
                None => false,
            },
            // Without /proc (macOS), ask the kernel whether the pid exists.
            Err(_) if !Path::new("/proc/self").exists() => {
                nix::sys::signal::kill(Pid::from_raw(self.pid as i32), None).is_ok()
            }
            Err(_) => false,
        }
    }
}

/// The state letter and start time (clock ticks since boot) from `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name is in parentheses and may itself hold spaces or parentheses.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of the whole line; the slice starts at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// Reads a growing file line by line.
struct LineTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LineTail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call.
    async fn read_new(&mut self) -> Vec<String> {
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).await.is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).await.is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_owned).collect();
        self.partial = lines.pop().unwrap_or_default();
        lines
    }
}

fn read_termination(path: &Path) -> Option<Line> {
    let text = std::fs::read_to_string(path).ok()?;
    Line::parse(text.trim())
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

/// Creates the job's folder and its pid file, failing with `AlreadyExists` when another launch
/// got there first.
fn claim(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(PID_FILE))
}

fn absolute_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    dir.canonicalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let stat = "4242 (ducks (runner) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let pid = std::process::id();
        let me = ProcessIdentity {
            pid,
            start_time: start_time(pid),
        };
        assert!(me.is_alive());
        let impostor = ProcessIdentity {
            pid,
            start_time: me.start_time.map(|t| t + 1),
        };
        assert!(!impostor.is_alive());
    }

    /// Two launches for one job at once, on two threads: one starts the runner, the other adopts
    /// it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_launches_start_one_runner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("runner.sh");
        std::fs::write(&program, "#!/bin/sh\nsleep 1\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = LocalConfig {
            runner_program: program,
            runs_dir: dir.path().join("runs"),
            cache_dir: dir.path().join("cache"),
        };
        let launcher = |_| {
            LocalLauncher::new(
                &config,
                S3Config::default(),
                "images".into(),
                Duration::from_secs(1),
            )
            .unwrap()
        };
        let (a, b) = (launcher(()), launcher(()));
        let id = JobId::generate();
        let job = ducks_contract::RunnerJob {
            job_id: id.clone(),
            model: "m".into(),
            params: ducks_contract::GenerateParams {
                prompt: "p".into(),
                negative_prompt: String::new(),
                width: 64,
                height: 64,
                steps: 1,
                guidance: 0.0,
                seed: 1,
                count: 1,
            },
        };
        let spec = LaunchSpec {
            job_id: id,
            job,
            compute: crate::sizing::Compute {
                gpus: 0,
                min_gpu_memory_gib: 0,
                gpu_products: vec![],
                cpu: "1".into(),
                memory: "1Gi".into(),
                runner_image: None,
            },
            timeout: Duration::from_secs(10),
        };
        let (spec_a, spec_b) = (spec.clone(), spec);
        let first = tokio::spawn(async move { a.launch(&spec_a).await.unwrap().adopted });
        let second = tokio::spawn(async move { b.launch(&spec_b).await.unwrap().adopted });
        let adopted = [first.await.unwrap(), second.await.unwrap()];
        assert_eq!(adopted.iter().filter(|a| **a).count(), 1, "{adopted:?}");
    }

    #[tokio::test]
    async fn a_tail_returns_only_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut tail = LineTail::new(path.clone());
        assert!(tail.read_new().await.is_empty());
        std::fs::write(&path, "one\ntw").unwrap();
        assert_eq!(tail.read_new().await, vec!["one"]);
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(tail.read_new().await, vec!["two"]);
    }
}
