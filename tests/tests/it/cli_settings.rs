//! What the real `ducks` binary tells a person about its settings and its logs:
//!
//! - Log lines are coloured on a terminal only: none into a pipe, ANSI under a pseudo-terminal,
//!   none under a pseudo-terminal with `NO_COLOR` set.
//! - `ducks config` prints the effective settings as ducks.toml, each key with where its value
//!   came from (default, ducks.toml, a variable, `.env`, another key), secrets redacted, and what
//!   it prints loads back to the same settings.
//! - A second `ducks worker` on one machine serves its probes on a free port when `worker.listen`
//!   is left to its default, and a taken address someone chose is refused with a sentence that
//!   says how to choose another.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ducks_tests::{BUCKET, RedisServer, S3Server, ducks_binary, s3_env};
use tokio::sync::mpsc;

/// How long a `ducks` process may take to log a line or exit, on a busy 2-core machine.
const LOG_LIMIT: Duration = Duration::from_secs(60);

/// What a worker needs: Redis, S3 with the bucket, and a folder to run in.
struct Machine {
    redis: RedisServer,
    s3: S3Server,
    dir: tempfile::TempDir,
}

impl Machine {
    async fn start() -> Machine {
        let s3 = S3Server::start().await;
        s3.create_bucket(BUCKET).await;
        Machine {
            redis: RedisServer::start().await,
            s3,
            dir: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    /// `ducks worker` with only this machine's addresses set, and `extra` beside them.
    fn worker(&self, extra: &[(&str, &str)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(ducks_binary());
        command
            .arg("worker")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DUCKS_REDIS__URL", self.redis.url())
            .envs(s3_env(&self.s3.settings(BUCKET)))
            .envs(extra.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

/// The lines a process writes, read on a thread of their own as they come.
struct Lines {
    receiver: mpsc::UnboundedReceiver<String>,
    /// Every line so far, for what a failing test prints.
    seen: Vec<String>,
}

impl Lines {
    fn read(from: impl Read + Send + 'static) -> Lines {
        let (sender, receiver) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = Vec::new();
            // A pseudo-terminal's reads end in an error (EIO) once the process is gone.
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line);
                if sender
                    .send(text.trim_end_matches(['\r', '\n']).to_owned())
                    .is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        Lines {
            receiver,
            seen: Vec::new(),
        }
    }

    /// The first line from now on that `wanted` accepts, within [`LOG_LIMIT`].
    async fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + LOG_LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!("the output ended before {what}:\n{}", self.seen.join("\n")),
                Err(_) => panic!(
                    "not within {LOG_LIMIT:?}: {what}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

const SERVING: &str = "Serving /healthz, /readyz and /metrics.";

/// Runs a worker whose stderr is `stderr` until it logs that it serves its probes, and returns
/// everything it wrote until then.
async fn first_lines(
    machine: &Machine,
    extra: &[(&str, &str)],
    stderr: Stdio,
    output: impl Read + Send + 'static,
) -> String {
    let mut command = machine.worker(extra);
    command.stderr(stderr);
    let mut worker = command.spawn().expect("ducks worker starts");
    // The pseudo-terminal's output ends only when no process holds its other end.
    drop(command);
    let mut lines = Lines::read(output);
    lines
        .until("the worker serves its probes", |l| l.contains(SERVING))
        .await;
    worker.kill().await.expect("the worker stops");
    lines.seen.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_coloured_on_a_terminal_only_and_never_with_no_color() {
    let machine = Machine::start().await;
    let quiet = [("DUCKS_WORKER__LISTEN", "127.0.0.1:0")];

    let (reader, writer) = std::io::pipe().expect("a pipe");
    let piped = first_lines(&machine, &quiet, writer.into(), reader).await;
    assert!(
        !piped.contains('\x1b'),
        "colour codes into a pipe:\n{piped}"
    );

    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let terminal = first_lines(
        &machine,
        &quiet,
        pty.slave.into(),
        std::fs::File::from(pty.master),
    )
    .await;
    assert!(
        terminal.contains("\x1b["),
        "no colour on a terminal:\n{terminal}"
    );

    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let no_color = [("DUCKS_WORKER__LISTEN", "127.0.0.1:0"), ("NO_COLOR", "1")];
    let terminal = first_lines(
        &machine,
        &no_color,
        pty.slave.into(),
        std::fs::File::from(pty.master),
    )
    .await;
    assert!(
        !terminal.contains('\x1b'),
        "colour despite NO_COLOR:\n{terminal}"
    );
}

/// `ducks config` in `dir`, with only `env` (and PATH) in its environment.
fn ducks_config(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(ducks_binary())
        .args(args)
        .arg("config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("ducks config runs");
    assert!(
        output.status.success(),
        "ducks config failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("ducks config prints UTF-8")
}

/// Each key's value and its comment, by dotted path (`queue.lease_ms`).
fn keys(printed: &str) -> BTreeMap<String, (String, String)> {
    let mut section = String::new();
    let mut keys = BTreeMap::new();
    for line in printed.lines() {
        if let Some(header) = line.strip_prefix('[') {
            section = header.trim_end_matches(']').to_owned();
        } else if let Some((key, rest)) = line.split_once(" = ") {
            let (value, comment) = rest.rsplit_once(" # ").expect("every key says its origin");
            keys.insert(
                format!("{section}.{key}"),
                (value.to_owned(), comment.to_owned()),
            );
        }
    }
    keys
}

#[test]
fn ducks_config_prints_the_settings_as_toml_with_each_keys_origin_and_no_secret() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(
        dir.path().join("ducks.toml"),
        "[queue]\nmax_backlog = 7\nlease_ms = 9000\n\n[worker]\nconcurrency = 2\n\n\
         [worker.kubernetes]\nnode_selector = { \"karpenter.sh/nodepool\" = \"gpu\" }\n",
    )
    .expect("ducks.toml written");
    std::fs::write(
        dir.path().join(".env"),
        "DUCKS_WORKER__DEFAULT_MODEL=tiny-sd\n",
    )
    .expect(".env written");
    let secret = "hunter2";
    let redis_url = format!("redis://:{secret}@db:6379/");
    let env = [
        ("DUCKS_QUEUE__LEASE_MS", "1234"),
        ("DUCKS_API__PUBLIC_URL", "https://ducks.example.com"),
        ("DUCKS_REDIS__URL", redis_url.as_str()),
        ("DUCKS_S3__SECRET_ACCESS_KEY", secret),
        ("DUCKS_DISCORD__TOKEN", secret),
        ("DUCKS_TWITCH__TOKEN", secret),
        ("DUCKS_TWITCH__REFRESH_TOKEN", secret),
        ("DUCKS_TWITCH__CLIENT_SECRET", secret),
        ("DUCKS_API__PEPPER", secret),
        ("DUCKS_LINKS__SIGNING_KEY", secret),
    ];
    let printed = ducks_config(dir.path(), &[], &env);
    assert!(!printed.contains(secret), "a secret printed:\n{printed}");

    let printed_keys = keys(&printed);
    let origin = |key: &str| -> (&str, &str) {
        let (value, comment) = printed_keys
            .get(key)
            .unwrap_or_else(|| panic!("{key} is missing:\n{printed}"));
        (value, comment)
    };
    for (key, value, comment) in [
        ("queue.max_backlog", "7", "from ducks.toml"),
        ("queue.lease_ms", "1234", "from DUCKS_QUEUE__LEASE_MS"),
        ("queue.max_retries", "3", "default"),
        ("worker.concurrency", "2", "from ducks.toml"),
        (
            "worker.default_model",
            "\"tiny-sd\"",
            "from DUCKS_WORKER__DEFAULT_MODEL in .env",
        ),
        (
            "worker.kubernetes.node_selector.\"karpenter.sh/nodepool\"",
            "\"gpu\"",
            "from ducks.toml",
        ),
        ("worker.listen", "\"127.0.0.1:9464\"", "default"),
        (
            "links.base_url",
            "\"https://ducks.example.com\"",
            "from api.public_url",
        ),
        (
            "redis.url",
            "\"<redacted>\"",
            "from DUCKS_REDIS__URL (secret, redacted)",
        ),
        (
            "s3.secret_access_key",
            "\"<redacted>\"",
            "from DUCKS_S3__SECRET_ACCESS_KEY (secret, redacted)",
        ),
        (
            "discord.token",
            "\"<redacted>\"",
            "from DUCKS_DISCORD__TOKEN (secret, redacted)",
        ),
        (
            "twitch.client_secret",
            "\"<redacted>\"",
            "from DUCKS_TWITCH__CLIENT_SECRET (secret, redacted)",
        ),
        (
            "api.pepper",
            "\"<redacted>\"",
            "from DUCKS_API__PEPPER (secret, redacted)",
        ),
        (
            "links.signing_key",
            "\"<redacted>\"",
            "from DUCKS_LINKS__SIGNING_KEY (secret, redacted)",
        ),
        ("log.format", "\"text\"", "default"),
    ] {
        assert_eq!(origin(key), (value, comment), "{key}:\n{printed}");
    }
    // Every section of the settings, every leaf with its origin (`keys` insists on one).
    let table: toml::Table = printed.parse().expect("ducks config prints TOML");
    let sections: BTreeSet<&str> = table.keys().map(String::as_str).collect();
    assert_eq!(
        sections,
        BTreeSet::from([
            "redis", "queue", "s3", "runner", "worker", "links", "api", "discord", "twitch", "dev",
            "log"
        ]),
        "{printed}"
    );

    // Unedited, what it printed is refused: its secrets are placeholders, and no process may run
    // with "<redacted>" as a password.
    let printed_file = dir.path().join("printed.toml");
    std::fs::write(&printed_file, &printed).expect("written");
    let elsewhere = tempfile::tempdir().expect("a temporary folder");
    let refused = Command::new(ducks_binary())
        .arg("--config")
        .arg(&printed_file)
        .arg("config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(elsewhere.path())
        .output()
        .expect("ducks config runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"<redacted>\", which `ducks config` prints in place of a secret"),
        "{stderr}"
    );
    // With the secrets back in the environment, where a deployment keeps them, it loads back to
    // the same settings, every other key from the file.
    let printed_path = printed_file.display().to_string();
    let again = ducks_config(elsewhere.path(), &["--config", &printed_path], &env);
    let reloaded: toml::Table = again.parse().expect("TOML again");
    assert_eq!(reloaded, table, "{printed}\n\nloaded back as\n\n{again}");
    for (key, (_, comment)) in keys(&again) {
        let from_env = env.iter().any(|(var, _)| {
            comment == format!("from {var}") || comment.starts_with(&format!("from {var} "))
        });
        assert!(
            from_env || comment.starts_with("from ") && comment.contains("printed.toml"),
            "{key}: {comment}:\n{again}"
        );
    }
}

/// The probes' address a worker's JSON log line names, once it serves them.
async fn serving(lines: &mut Lines) -> String {
    let line = lines
        .until("the worker serves its probes", |l| l.contains(SERVING))
        .await;
    let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    line["fields"]["address"]
        .as_str()
        .expect("the line names the address")
        .to_owned()
}

async fn healthz(address: &str) {
    let answer = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap_or_else(|e| panic!("/healthz on {address}: {e}"));
    assert_eq!(answer.status(), 200, "/healthz on {address}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_one_machine_serves_its_probes_on_a_free_port() {
    let machine = Machine::start().await;
    // The default port is taken whatever else runs on this machine: by this test if nothing holds
    // it yet.
    let _default_port = std::net::TcpListener::bind("127.0.0.1:9464").ok();
    let json = [("DUCKS_LOG__FORMAT", "json")];

    let mut workers = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..2 {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        let mut command = machine.worker(&json);
        let worker = command.stderr(writer).spawn().expect("ducks worker starts");
        // The output ends only when no process holds the pipe's other end.
        drop(command);
        let mut lines = Lines::read(reader);
        let moved = lines
            .until("the worker says its probes moved", |l| {
                l.contains("default address is taken")
            })
            .await;
        let moved: serde_json::Value = serde_json::from_str(&moved).expect("a JSON log line");
        assert_eq!(moved["level"], "INFO", "{moved}");
        assert_eq!(moved["fields"]["taken"], "127.0.0.1:9464", "{moved}");
        let address = serving(&mut lines).await;
        assert_eq!(moved["fields"]["address"], address.as_str(), "{moved}");
        assert_ne!(address, "127.0.0.1:9464");
        healthz(&address).await;
        addresses.push(address);
        workers.push(worker);
    }
    assert_ne!(addresses[0], addresses[1]);
    // Both still run and answer.
    for address in &addresses {
        healthz(address).await;
    }

    // An address someone chose is kept or refused, the default's own included.
    for chosen in [addresses[0].as_str(), "127.0.0.1:9464"] {
        let mut refused = machine.worker(&[("DUCKS_WORKER__LISTEN", chosen)]);
        let refused = refused
            .stderr(Stdio::piped())
            .spawn()
            .expect("ducks worker starts");
        let output = tokio::time::timeout(LOG_LIMIT, refused.wait_with_output())
            .await
            .expect("the worker gives up within the limit")
            .expect("its output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{chosen}: {stderr}");
        let sentence =
            format!("cannot serve the probes on {chosen}: another process is listening there");
        assert!(stderr.contains(&sentence), "{chosen}: {stderr}");
        for how in ["worker.listen", "DUCKS_WORKER__LISTEN", "empty"] {
            assert!(stderr.contains(how), "{chosen}: {stderr}");
        }
    }
    for mut worker in workers {
        worker.kill().await.expect("the worker stops");
    }
}
