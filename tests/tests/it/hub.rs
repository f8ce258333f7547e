//! `ducks models import hf:<repo>`: the real binary against no hub at all, and against a
//! hand-written one on a local port that speaks the two requests hf-hub makes (the revision
//! listing and ranged reads of files) and serves tiny-sd laid out as a diffusers repository,
//! repositories without tokenizer.json, and the CLIP repositories their tokenizers come from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ducks_models::digest::sha256_of;
use ducks_runner::diffusion::{self, FileRole};
use ducks_tests::{RedisServer, S3Server, ducks_binary, s3_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deadline for every run of the binary: each of these ends in well under a second when right.
const WAIT: Duration = Duration::from_secs(60);

const BUCKET: &str = "ducks";

/// The commit every file of the fake hub's `test/…` repositories comes from.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Where candle's stable-diffusion example takes the tokenizers of repositories that ship none.
const CLIP_B32: &str = "openai/clip-vit-base-patch32";
const CLIP_L14: &str = "openai/clip-vit-large-patch14";
const CLIP_BIGG: &str = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k";

/// The fake hub's tiny-sd, imported as `tiny-hub`.
const IMPORT_TINY: &[&str] = &[
    "models",
    "import",
    "hf:test/tiny",
    "--id",
    "tiny-hub",
    "--family",
    "tiny-sd",
];

/// An S3 server with the bucket, and a folder for the binary's working directory and TMPDIR.
struct World {
    s3: S3Server,
    /// Where an import publishes the catalogue (never the machine's shared Redis).
    redis: RedisServer,
    scratch: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let s3 = S3Server::start().await;
        s3.create_bucket(BUCKET).await;
        let scratch = tempfile::tempdir().unwrap();
        std::fs::create_dir(scratch.path().join("tmp")).unwrap();
        let redis = RedisServer::start().await;
        Self { s3, redis, scratch }
    }

    /// Runs `ducks args…` with only the S3 settings and `HF_ENDPOINT` in its environment.
    async fn ducks(&self, endpoint: &str, args: &[&str]) -> Output {
        let mut cmd = self.command(endpoint, args);
        tokio::time::timeout(WAIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("ducks {args:?} did not end within {WAIT:?}"))
            .expect("start ducks")
    }

    /// `ducks args…` with only the S3 settings and `HF_ENDPOINT` in its environment.
    fn command(&self, endpoint: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(ducks_binary());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HF_ENDPOINT", endpoint)
            .env("TMPDIR", self.temp())
            .envs(s3_env(&self.s3.settings(BUCKET)))
            .env("DUCKS_REDIS__URL", self.redis.url())
            .current_dir(self.scratch.path())
            .kill_on_drop(true);
        cmd
    }

    /// The binary's TMPDIR: an import must leave it empty.
    fn temp(&self) -> PathBuf {
        self.scratch.path().join("tmp")
    }

    /// The bytes of the object at `key` in the bucket.
    fn object(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.s3.object_path(BUCKET, key))
            .unwrap_or_else(|e| panic!("object {key}: {e}"))
    }

    /// Every object key under `models/` in the bucket.
    fn model_objects(&self) -> Vec<String> {
        let root = self.s3.object_path(BUCKET, "models");
        let mut keys = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let relative = path.strip_prefix(&root).unwrap();
                    keys.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        keys.sort();
        keys
    }
}

/// An import that failed as a user should see it: exit code 1 and one error line on stderr,
/// the last, that contains every one of `expected` (what the import had said it would download
/// may come before it).
fn assert_one_clear_line(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line, not: {stderr}");
    assert!(errors[0].starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    for part in expected {
        assert!(
            errors[0].contains(part),
            "{part:?} is missing from: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hub_ends_with_one_line_saying_what_to_do() {
    let world = World::new().await;
    // A port that was just free and is closed: connections to it are refused at once.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let output = world
        .ducks(
            &endpoint,
            &[
                "models",
                "import",
                "hf:stabilityai/sd-turbo",
                "--id",
                "sd-turbo",
                "--family",
                "sd-turbo",
            ],
        )
        .await;
    assert_one_clear_line(
        &output,
        &[
            &format!("Cannot reach the Hugging Face hub at {endpoint}"),
            "looks offline",
            "ducks models import <folder> --id sd-turbo --family sd-turbo",
        ],
    );
    assert!(world.model_objects().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_repos_revisions_and_gated_models_each_say_so() {
    let world = World::new().await;
    let hub = FakeHub::start().await;
    let import = |source: &'static str, extra: &'static [&'static str]| {
        let mut args = vec![
            "models", "import", source, "--id", "m", "--family", "tiny-sd",
        ];
        args.extend_from_slice(extra);
        args
    };

    let output = world
        .ducks(&hub.endpoint(), &import("hf:test/missing", &[]))
        .await;
    assert_one_clear_line(
        &output,
        &["has no model `test/missing`", "private", "set HF_TOKEN"],
    );

    let output = world
        .ducks(
            &hub.endpoint(),
            &import("hf:test/tiny", &["--revision", "v9"]),
        )
        .await;
    assert_one_clear_line(&output, &["`test/tiny`", "no revision `v9`"]);

    let output = world
        .ducks(&hub.endpoint(), &import("hf:test/gated", &[]))
        .await;
    assert_one_clear_line(
        &output,
        &[
            "`test/gated`",
            "gated",
            &format!("{}/test/gated", hub.endpoint()),
            "HF_TOKEN",
        ],
    );

    let output = world.ducks(&hub.endpoint(), &import("hf:../x", &[])).await;
    assert_one_clear_line(&output, &["not a Hugging Face model id"]);

    assert!(world.model_objects().is_empty(), "nothing was imported");
    assert!(
        std::fs::read_dir(world.temp()).unwrap().next().is_none(),
        "failed imports leave no temporary files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_imports_through_the_hub_protocol_and_is_listed() {
    let world = World::new().await;
    let hub = FakeHub::start().await;

    let output = world.ducks(&hub.endpoint(), IMPORT_TINY).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // What it downloads, and how much, before it starts; then each file.
    let total: u64 = hub
        .weights
        .iter()
        .map(|(local, _)| std::fs::metadata(local).unwrap().len())
        .sum();
    assert!(
        stderr.contains(&format!(
            "Importing hf:test/tiny at main (commit {COMMIT}): 5 files, {} to download",
            ducks_models::hub::human_size(total)
        )),
        "{stderr}"
    );
    for (_, path) in &hub.weights {
        assert!(
            stderr.contains(&format!("Downloading {path} (")),
            "{path} is missing from: {stderr}"
        );
    }
    assert!(stdout.contains("Imported tiny-hub (5 files)."), "{stdout}");
    // No worker runs: the import itself published the catalogue, so the model can be asked for
    // while workers are scaled to zero.
    assert!(
        stdout.contains("Published the catalogue: 1 model."),
        "{stdout}"
    );
    let queue = crate::support::queue_on(&world.redis, crate::support::config()).await;
    let catalogue = queue.models().await.unwrap();
    assert_eq!(
        catalogue
            .models
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["tiny-hub"]
    );

    // Only the files tiny-sd needs were read: no fp16 copy, no look-alike folder, no extras.
    let fetched = hub.files_fetched();
    for path in ["fp16", "vae_1_0", "README", "vocab.json", "model_index"] {
        assert!(
            fetched.iter().all(|f| !f.contains(path)),
            "{path} was fetched: {fetched:?}"
        );
    }
    // The layout of the repository is kept, byte for byte, and the manifest matches it.
    let manifest =
        std::fs::read_to_string(world.s3.object_path(BUCKET, "models/tiny-hub/model.toml"))
            .unwrap();
    for (local, path) in &hub.weights {
        let uploaded = world
            .s3
            .object_path(BUCKET, &format!("models/tiny-hub/{path}"));
        assert_eq!(
            std::fs::read(&uploaded).unwrap(),
            std::fs::read(local).unwrap(),
            "{path}"
        );
        assert!(
            manifest.contains(&format!("path = \"{path}\"")),
            "{manifest}"
        );
        assert!(
            manifest.contains(&sha256_of(local).unwrap()),
            "{path}: {manifest}"
        );
    }
    assert!(manifest.contains("hf:test/tiny"), "{manifest}");
    assert!(
        std::fs::read_dir(world.temp()).unwrap().next().is_none(),
        "the downloads are removed after the import"
    );

    let output = world.ducks(&hub.endpoint(), &["models", "list"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("tiny-hub ") && l.contains("tiny-sd")),
        "{stdout}"
    );
}

/// The download's progress bar is drawn on a terminal, and only there: the import above, through
/// pipes, showed none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_each_download_draws_a_progress_bar() {
    let world = World::new().await;
    let hub = FakeHub::start().await;
    let piped = world.ducks(&hub.endpoint(), IMPORT_TINY).await;
    let piped = String::from_utf8_lossy(&piped.stderr).into_owned();
    assert!(piped.contains("Downloading "), "{piped}");
    assert!(!piped.contains('\r') && !piped.contains("[#"), "{piped:?}");

    let mut command = world.command(&hub.endpoint(), IMPORT_TINY);
    command.env("TERM", "xterm");
    let shown = ducks_tests::stderr_on_terminal(command, WAIT).await;
    assert!(shown.status.success(), "{}", shown.terminal);
    let unet = &hub.file("test/tiny", "unet/diffusion_pytorch_model.safetensors");
    let size = ducks_models::hub::human_size(unet.len() as u64);
    assert!(
        shown.terminal.contains(&format!(
            "Downloading unet/diffusion_pytorch_model.safetensors ({size})"
        )),
        "{:?}",
        shown.terminal
    );
    // indicatif's bar, in whatever state it was drawn: `[###>------…] 1.2 KiB/12.3 KiB`.
    let bars = shown.terminal.split('[').filter(|rest| {
        rest.get(..31).is_some_and(|bar| {
            bar.ends_with(']') && bar[..30].chars().all(|c| matches!(c, '#' | '>' | '-'))
        })
    });
    assert!(bars.count() > 0, "{:?}", shown.terminal);
    assert!(
        shown.stdout.contains("Imported tiny-hub (5 files)."),
        "{}",
        shown.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_without_tokenizer_json_takes_the_clip_tokenizer_candle_uses() {
    let world = World::new().await;
    let hub = FakeHub::start().await;

    // runwayml/stable-diffusion-v1-5's layout: vocab.json and merges.txt, no tokenizer.json.
    let output = world
        .ducks(
            &hub.endpoint(),
            &[
                "models",
                "import",
                "hf:test/sd15",
                "--id",
                "sd15-hub",
                "--family",
                "sd15",
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.lines().any(|l| l
            == "The repo has no tokenizer.json; using the CLIP tokenizer from openai/clip-vit-base-patch32."),
        "{stderr}"
    );
    assert!(stdout.contains("Imported sd15-hub (4 files)."), "{stdout}");
    assert_eq!(
        world.object("models/sd15-hub/tokenizer/tokenizer.json"),
        hub.file(CLIP_B32, "tokenizer.json"),
        "the tokenizer is the CLIP repository's, byte for byte"
    );
    let manifest = String::from_utf8(world.object("models/sd15-hub/model.toml")).unwrap();
    assert!(
        manifest.contains("path = \"tokenizer/tokenizer.json\""),
        "{manifest}"
    );
    assert!(
        manifest.contains(&format!(
            "sd15 model imported from hf:test/sd15 at commit {COMMIT}, tokenizer from hf:{CLIP_B32} at commit {}",
            commit_of(CLIP_B32)
        )),
        "{manifest}"
    );
    // Of the CLIP repositories, only the one tokenizer.json; of the model's tokenizer folder,
    // nothing. (hf-hub reads each file twice: its first byte for the size, then the rest.)
    let fetched = hub.files_fetched();
    let clip: BTreeSet<&String> = fetched
        .iter()
        .filter(|f| f.starts_with("openai/") || f.starts_with("laion/"))
        .collect();
    assert_eq!(
        clip,
        BTreeSet::from([&format!("{CLIP_B32}/tokenizer.json")]),
        "{fetched:?}"
    );
    assert!(
        fetched
            .iter()
            .all(|f| !f.contains("vocab.json") && !f.contains("merges.txt")),
        "{fetched:?}"
    );

    // stabilityai/stable-diffusion-xl-base-1.0's layout: neither tokenizer has a tokenizer.json.
    let output = world
        .ducks(
            &hub.endpoint(),
            &[
                "models",
                "import",
                "hf:test/sdxl",
                "--id",
                "sdxl-hub",
                "--family",
                "sdxl",
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    for line in [
        format!("The repo has no tokenizer.json; using the CLIP tokenizer from {CLIP_L14}."),
        format!(
            "The repo has no tokenizer_2/tokenizer.json; using the second CLIP tokenizer from {CLIP_BIGG}."
        ),
    ] {
        assert!(
            stderr.lines().any(|l| l == line),
            "{line:?} is missing from: {stderr}"
        );
    }
    assert!(stdout.contains("Imported sdxl-hub (6 files)."), "{stdout}");
    assert_eq!(
        world.object("models/sdxl-hub/tokenizer/tokenizer.json"),
        hub.file(CLIP_L14, "tokenizer.json")
    );
    assert_eq!(
        world.object("models/sdxl-hub/tokenizer_2/tokenizer.json"),
        hub.file(CLIP_BIGG, "tokenizer.json")
    );
    let manifest = String::from_utf8(world.object("models/sdxl-hub/model.toml")).unwrap();
    for (role, repo) in [("tokenizer", CLIP_L14), ("tokenizer_2", CLIP_BIGG)] {
        assert!(
            manifest.contains(&format!(
                "{role} from hf:{repo} at commit {}",
                commit_of(repo)
            )),
            "{manifest}"
        );
    }
    assert!(
        std::fs::read_dir(world.temp()).unwrap().next().is_none(),
        "the downloads are removed after the import"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_clip_repository_ends_with_one_line_before_any_download() {
    let world = World::new().await;
    let hub = FakeHub::start_without(CLIP_B32).await;

    let output = world
        .ducks(
            &hub.endpoint(),
            &[
                "models",
                "import",
                "hf:test/sd15",
                "--id",
                "sd15-hub",
                "--family",
                "sd15",
            ],
        )
        .await;
    assert_one_clear_line(
        &output,
        &[
            "`test/sd15` has no tokenizer/tokenizer.json",
            &format!(
                "the Hugging Face hub at {} has no model `{CLIP_B32}`",
                hub.endpoint()
            ),
            "ducks models import <folder> --id sd15-hub --family sd15",
        ],
    );
    assert_eq!(
        hub.files_fetched(),
        Vec::<String>::new(),
        "nothing was downloaded"
    );
    assert!(world.model_objects().is_empty(), "nothing was imported");
    assert!(
        std::fs::read_dir(world.temp()).unwrap().next().is_none(),
        "failed imports leave no temporary files"
    );
}

/// How long one `ducks demo` may take: it starts a stack, draws a 64x64 image and stops.
const DEMO_WAIT: Duration = Duration::from_secs(300);

/// Runs `ducks demo args…` in `dir` as a newcomer would, with `HF_ENDPOINT` the only setting.
async fn demo(dir: &std::path::Path, endpoint: &str, args: &[&str]) -> (Output, Duration) {
    let temp = dir.join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let mut cmd = tokio::process::Command::new(ducks_binary());
    cmd.arg("demo")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HF_ENDPOINT", endpoint)
        .env("TMPDIR", &temp)
        .current_dir(dir)
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(DEMO_WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ducks demo {args:?} did not end within {DEMO_WAIT:?}"))
        .expect("start ducks");
    (output, started.elapsed())
}

/// Every file under `dir` with its modification time.
fn files_with_times(dir: &std::path::Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                found.insert(entry.path(), meta.modified().unwrap());
            }
        }
    }
    found
}

/// The PNG a demo saved, from its `Saved …` line.
fn saved_png(dir: &std::path::Path, stdout: &str) -> (u32, u32) {
    let saved = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Saved "))
        .unwrap_or_else(|| panic!("no saved file in: {stdout}"));
    crate::support::png_size(&std::fs::read(dir.join(saved)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_imports_a_hub_model_once_then_draws_with_it() {
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "a duck",
        "--model",
        "hf:test/tiny",
        "--family",
        "tiny-sd",
        "--timeout",
        "120",
    ];

    let (output, _) = demo(dir.path(), &hub.endpoint(), &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // It says what it fetches, how much, and the room it needs, before the download.
    let said = |part: &str| {
        stderr
            .find(part)
            .unwrap_or_else(|| panic!("{part:?}: {stderr}"))
    };
    let intro = said(
        "tiny is not in this stack yet: importing hf:test/tiny from the Hugging Face hub, once.",
    );
    let size = said(&format!(
        "Importing hf:test/tiny at main (commit {COMMIT}): 5 files"
    ));
    let room = said("Then it needs ");
    let first_download = said("Downloading ");
    assert!(
        intro < size && size < room && room < first_download,
        "{stderr}"
    );
    assert!(stderr.contains("Imported tiny (5 files)."), "{stderr}");
    assert!(
        stderr.contains("Submitted ") && stderr.contains(" with tiny: "),
        "{stderr}"
    );
    assert_eq!(saved_png(dir.path(), &stdout), (64, 64));
    let fetched: BTreeSet<String> = hub.files_fetched().into_iter().collect();
    assert_eq!(fetched.len(), 5, "{fetched:?}");
    // A real model draws no noise: no advice to draw a real one.
    assert!(!stderr.contains("noise"), "{stderr}");
    let cache = dir.path().join(".ducks/cache");
    let cached = files_with_times(&cache);
    assert!(
        !cached.is_empty(),
        "the runner cached the weights in {cache:?}"
    );

    // The second run neither asks the hub nor downloads the weights again.
    let asked = hub.requests();
    let (output, _) = demo(dir.path(), &hub.endpoint(), &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(hub.requests(), asked, "the hub was asked again: {stderr}");
    assert!(!stderr.contains("importing"), "{stderr}");
    assert_eq!(saved_png(dir.path(), &stdout), (64, 64));
    assert_eq!(
        files_with_times(&cache),
        cached,
        "the weight cache was used as it was"
    );
    assert!(
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the download folder is left empty"
    );
}

/// What the offline advice says to do: a model folder downloaded elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_imports_a_downloaded_folder_then_draws_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("My-Tiny");
    diffusion::create_tiny(&folder).unwrap();
    let (output, _) = demo(
        dir.path(),
        "http://127.0.0.1:9",
        &["a duck", "--model", "My-Tiny", "--family", "tiny-sd"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Importing my-tiny from My-Tiny."),
        "{stderr}"
    );
    assert!(stderr.contains("Imported my-tiny (5 files)."), "{stderr}");
    assert!(stderr.contains(" with my-tiny: "), "{stderr}");
    assert_eq!(saved_png(dir.path(), &stdout), (64, 64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_offline_says_the_hub_is_unreachable_and_how_to_import_a_folder() {
    // A port that was just free and is closed: what an offline machine's lookup fails like, fast.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let dir = tempfile::tempdir().unwrap();
    let (output, took) = demo(dir.path(), &endpoint, &["--model", "sd-turbo"]).await;
    assert_one_clear_line(
        &output,
        &[
            &format!("Cannot reach the Hugging Face hub at {endpoint}"),
            "stabilityai/sd-turbo elsewhere",
            "`ducks demo --model <folder> --family sd-turbo` imports it from there",
        ],
    );
    // Nothing was drawn, and it did not wait for anything: the stack starts and stops in
    // seconds; the generous bound keeps a loaded machine green.
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("Saved "),
        "{output:?}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// A hub on a local port: `test/tiny` holds tiny-sd in a diffusers layout beside files an
/// import must not take; `test/gated` lists the same files but refuses them without a token;
/// `test/sd15` and `test/sdxl` are laid out as the official Stable Diffusion repositories, with
/// vocab.json and merges.txt but no tokenizer.json; the three CLIP repositories hold a
/// tokenizer.json each (distinct bytes) beside files an import must not take. Any other
/// repository does not exist.
struct FakeHub {
    addr: std::net::SocketAddr,
    /// The files tiny-sd needs: where `create_tiny` wrote each, and its path in the repository.
    weights: Vec<(PathBuf, String)>,
    repos: Arc<BTreeMap<String, Files>>,
    /// `repo/path` of every file read through `/resolve/`.
    fetched: Arc<Mutex<Vec<String>>>,
    /// Every request, listings included.
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A repository's files by path.
type Files = BTreeMap<String, Vec<u8>>;

impl FakeHub {
    async fn start() -> Self {
        Self::start_without("").await
    }

    /// A hub that lacks the repository `absent`.
    async fn start_without(absent: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let created = diffusion::create_tiny(dir.path()).unwrap();
        let mut files = BTreeMap::new();
        let mut weights = Vec::new();
        for (role, local) in created {
            let path = match role {
                FileRole::Unet => "unet/diffusion_pytorch_model.safetensors",
                FileRole::Vae => "vae/diffusion_pytorch_model.safetensors",
                FileRole::TextEncoder => "text_encoder/model.safetensors",
                FileRole::Tokenizer => "tokenizer/tokenizer.json",
                FileRole::Config => "config.json",
                other => panic!("tiny-sd has no {other} file"),
            };
            files.insert(path.to_string(), std::fs::read(&local).unwrap());
            weights.push((local, path.to_string()));
        }
        // What a real repository holds beside the weights, none of which tiny-sd may take.
        for (path, body) in [
            ("unet/diffusion_pytorch_model.fp16.safetensors", "half"),
            ("vae_1_0/diffusion_pytorch_model.safetensors", "older vae"),
            ("unet/config.json", "{}"),
            ("tokenizer/vocab.json", "{}"),
            ("model_index.json", "{}"),
            ("README.md", "# tiny"),
        ] {
            files.insert(path.to_string(), body.as_bytes().to_vec());
        }
        let mut repos = BTreeMap::new();
        repos.insert("test/tiny".to_string(), files.clone());
        repos.insert("test/gated".to_string(), files);

        // The import only files these by role; their bytes are never loaded here.
        let sd15 = [
            "model_index.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/vocab.json",
            "tokenizer/tokenizer_config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ];
        let sdxl_extra = [
            "text_encoder_2/model.fp16.safetensors",
            "text_encoder_2/model.safetensors",
            "tokenizer_2/merges.txt",
            "tokenizer_2/vocab.json",
        ];
        let contents = |paths: &[&str]| -> Files {
            paths
                .iter()
                .map(|p| (p.to_string(), format!("contents of {p}").into_bytes()))
                .collect()
        };
        repos.insert("test/sd15".into(), contents(&sd15));
        repos.insert(
            "test/sdxl".into(),
            contents(&[&sd15[..], &sdxl_extra[..]].concat()),
        );
        for clip in [CLIP_B32, CLIP_L14, CLIP_BIGG] {
            let mut files = contents(&[
                "config.json",
                "merges.txt",
                "vocab.json",
                "pytorch_model.bin",
            ]);
            files.insert(
                "tokenizer.json".into(),
                format!("{{\"tokenizer of\":\"{clip}\"}}").into_bytes(),
            );
            repos.insert(clip.into(), files);
        }
        repos.remove(absent);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let repos = Arc::new(repos);
        let fetched = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = {
            let repos = Arc::clone(&repos);
            let fetched = Arc::clone(&fetched);
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let repos = Arc::clone(&repos);
                    let fetched = Arc::clone(&fetched);
                    requests.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        // A client that hangs up early is its own business.
                        let _ = serve(stream, &repos, &fetched).await;
                    });
                }
            })
        };
        Self {
            addr,
            weights,
            repos,
            fetched,
            requests,
            task,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn files_fetched(&self) -> Vec<String> {
        self.fetched.lock().unwrap().clone()
    }

    /// What the hub serves as `path` of `repo`.
    fn file(&self, repo: &str, path: &str) -> Vec<u8> {
        self.repos[repo][path].clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The commit a repository's `main` points at: [`COMMIT`] for the `test/…` ones, and one of its
/// own for each CLIP repository, so that the manifest shows which it came from.
fn commit_of(repo: &str) -> String {
    if repo.starts_with("test/") {
        COMMIT.into()
    } else {
        format!("{:0<40}", etag_of(repo))[..40].into()
    }
}

/// One request per connection, answered with `connection: close`, so no state is kept.
async fn serve(
    mut stream: TcpStream,
    repos: &BTreeMap<String, Files>,
    fetched: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let blobs = query.split('&').any(|p| p == "blobs=true");
    let range = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("range")
            .then(|| value.trim().to_string())
    });
    let answer = answer(path, blobs, range.as_deref(), repos, fetched);
    let mut response = format!(
        "HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(&answer.body).await?;
    stream.shutdown().await
}

struct Answer {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn error(status: &'static str, code: &str) -> Self {
        Answer {
            status,
            headers: vec![("x-error-code", code.to_string())],
            body: format!("{{\"error\":\"{code}\"}}").into_bytes(),
        }
    }
}

/// The hub's answers, as hf-hub 0.4 reads them: `GET /api/models/{repo}/revision/{rev}` lists
/// the files and the commit (`main` or the commit itself; `test/gated` lists any revision), with
/// each file's size when asked with `blobs=true`;
/// `GET /{repo}/resolve/{rev}/{file}` with a `Range` header serves part of a file, with the
/// commit, an etag and the full size (in `content-range`).
fn answer(
    path: &str,
    blobs: bool,
    range: Option<&str>,
    repos: &BTreeMap<String, Files>,
    fetched: &Mutex<Vec<String>>,
) -> Answer {
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, revision)) = rest.split_once("/revision/") else {
            return Answer::error("404 Not Found", "RepoNotFound");
        };
        let Some(files) = repos.get(repo) else {
            return Answer::error("404 Not Found", "RepoNotFound");
        };
        let commit = commit_of(repo);
        if revision != "main" && revision != commit && repo != "test/gated" {
            return Answer::error("404 Not Found", "RevisionNotFound");
        }
        let siblings: Vec<_> = files
            .iter()
            .map(|(f, bytes)| match blobs {
                true => serde_json::json!({ "rfilename": f, "size": bytes.len() }),
                false => serde_json::json!({ "rfilename": f }),
            })
            .collect();
        return Answer {
            status: "200 OK",
            headers: vec![("content-type", "application/json".into())],
            body: serde_json::json!({ "sha": commit, "siblings": siblings })
                .to_string()
                .into_bytes(),
        };
    }
    if path.starts_with("/test/gated/resolve/") {
        return Answer::error("401 Unauthorized", "GatedRepo");
    }
    // `/{owner}/{name}/resolve/{revision}/{file…}`
    let mut parts = path.trim_start_matches('/').splitn(5, '/');
    let (Some(owner), Some(name), Some("resolve"), Some(revision), Some(file)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Answer::error("404 Not Found", "RepoNotFound");
    };
    let repo = format!("{owner}/{name}");
    let Some(files) = repos.get(&repo) else {
        return Answer::error("404 Not Found", "RepoNotFound");
    };
    let commit = commit_of(&repo);
    let Some(bytes) = files.get(file).filter(|_| revision == commit) else {
        return Answer::error("404 Not Found", "EntryNotFound");
    };
    fetched.lock().unwrap().push(format!("{repo}/{file}"));
    let len = bytes.len();
    // hf-hub asks for `bytes=0-0` first, then chunks whose end may pass the last byte.
    let (start, end) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .unwrap_or((0, len.saturating_sub(1)));
    if start >= len {
        return Answer::error("416 Range Not Satisfiable", "RangeNotSatisfiable");
    }
    let end = end.min(len - 1);
    Answer {
        status: if range.is_some() {
            "206 Partial Content"
        } else {
            "200 OK"
        },
        headers: vec![
            ("x-repo-commit", commit),
            (
                "etag",
                format!("\"{}-{len}\"", etag_of(&format!("{repo}/{file}"))),
            ),
            ("content-range", format!("bytes {start}-{end}/{len}")),
            ("content-type", "application/octet-stream".into()),
        ],
        body: bytes[start..=end].to_vec(),
    }
}

/// A distinct etag per file (or commit per repository): hf-hub names its cached blobs by it.
fn etag_of(file: &str) -> String {
    file.bytes().map(|b| format!("{b:02x}")).collect::<String>()
}
