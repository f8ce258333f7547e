//! `ducks models import hf:<repo>`: the files a family needs, from the Hugging Face hub (or the
//! mirror `HF_ENDPOINT` names, with the token in `HF_TOKEN`, as the hub's own tools read them),
//! into a temporary folder laid out as in the repository; then the same import as a local folder.
//!
//! The revision is pinned to its commit before anything is downloaded, so every file comes from
//! one commit even if the branch moves during a long download. Nothing is downloaded until the
//! listing shows every file the family needs and the bucket has answered.
//!
//! Many diffusers repositories (the official Stable Diffusion ones among them) ship their
//! tokenizers as `vocab.json` and `merges.txt`, not as the `tokenizer.json` the runner reads. For
//! those, the tokenizer comes from the CLIP repository candle's stable-diffusion example takes it
//! from ([`clip_tokenizer_repo`]), pinned and downloaded the same way.
//!
//! The selection ([`select`]) and the error wording are pure; the hub's protocol is hf-hub's.

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::family::{Family, FileRole};
use crate::import::{ImportError, ImportSpec, default_resources, import_folder, role_of};
use crate::manifest::{ModelManifest, model_prefix};
use crate::storage::{Storage, StorageError};
use hf_hub::api::tokio::{Api, ApiBuilder, ApiError, ApiRepo, Progress};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use tokio::time::Instant;

/// Where models come from when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The listing is one small JSON document: a hub that has not sent it by then is not going to.
const LISTING_TIMEOUT: Duration = Duration::from_secs(30);
/// A download fails once no byte has arrived for this long. Weights run to gigabytes, so a
/// deadline on a whole file would fail slow links; a stall is what a dead link looks like.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Ranges of one file fetched at once: enough to fill a fast link, and each is held in memory.
const PARALLEL_RANGES: usize = 4;
/// The file a CLIP repository holds its tokenizer in, in the `tokenizers` crate's format.
const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "`hf:{0}` is not a Hugging Face model id: write hf:<owner>/<name>, e.g. hf:stabilityai/sd-turbo"
    )]
    BadRepoId(String),
    #[error("`{0}` is not a revision: name a branch, tag or commit, such as main or v1.0")]
    BadRevision(String),
    #[error(
        "HF_ENDPOINT must be an http:// or https:// address such as {DEFAULT_ENDPOINT}, not `{0}`"
    )]
    BadEndpoint(String),
    #[error("HF_TOKEN cannot be sent: it holds characters an HTTP header cannot carry")]
    BadToken,
    #[error("cannot start an HTTP client for the Hugging Face hub: {0}")]
    Client(String),
    #[error(
        "Cannot reach the Hugging Face hub at {endpoint} ({detail}). This machine looks offline: \
         download the model folder elsewhere and run `ducks models import <folder> --id {id} --family {family}`."
    )]
    Unreachable {
        endpoint: String,
        detail: String,
        id: String,
        family: Family,
    },
    #[error(
        "The Hugging Face hub at {endpoint} has no model `{repo}` (or it is private: {advice})."
    )]
    NoSuchRepo {
        endpoint: String,
        repo: String,
        /// Whether a token was sent changes what the user can do about it.
        advice: &'static str,
    },
    #[error(
        "The model `{repo}` on {endpoint} has no revision `{revision}`: name a branch, tag or commit it has."
    )]
    NoSuchRevision {
        endpoint: String,
        repo: String,
        revision: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("The Hugging Face hub at {endpoint} answered {status} to {what}{advice}")]
    Status {
        endpoint: String,
        status: StatusCode,
        what: String,
        advice: &'static str,
    },
    #[error(
        "The connection to the Hugging Face hub at {endpoint} broke while fetching {what} ({detail}); try again."
    )]
    Broken {
        endpoint: String,
        what: String,
        detail: String,
    },
    #[error(
        "The download of {file} from {endpoint} stalled: no data for {} s. Check the connection and try again.",
        STALL_TIMEOUT.as_secs()
    )]
    Stalled { endpoint: String, file: String },
    #[error(
        "The Hugging Face hub at {endpoint} answered {what} in a form ducks does not understand ({detail})."
    )]
    Protocol {
        endpoint: String,
        what: String,
        detail: String,
    },
    #[error("{0}")]
    Incomplete(String),
    #[error(
        "`{repo}` has no {destination}, and {problem} to take the CLIP tokenizer from: download \
         the model folder, add {destination} and run `ducks models import <folder> --id {id} --family {family}`."
    )]
    NoTokenizerSource {
        repo: String,
        destination: String,
        /// What is wrong with the CLIP repository, as a clause.
        problem: String,
        id: String,
        family: Family,
    },
    #[error("{what} needs {needed} free in {path}, and only {free} is: {advice}.")]
    NoRoom {
        what: String,
        needed: String,
        path: String,
        free: String,
        advice: &'static str,
    },
    #[error("writing {path} failed: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

/// The hub to talk to: `HF_ENDPOINT` and `HF_TOKEN`, as the hub's own tools read them.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
}

impl Hub {
    pub fn from_env() -> Result<Self, HubError> {
        Self::new(
            std::env::var("HF_ENDPOINT").ok(),
            std::env::var("HF_TOKEN").ok(),
        )
    }

    /// An unset or empty variable means the default, as in the hub's own tools.
    fn new(endpoint: Option<String>, token: Option<String>) -> Result<Self, HubError> {
        let endpoint = endpoint
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(HubError::BadEndpoint(endpoint));
        }
        let token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Ok(Self { endpoint, token })
    }
}

/// What one import is about; every error message names some of it.
#[derive(Clone, Copy)]
struct Target<'a> {
    endpoint: &'a str,
    repo: &'a str,
    revision: &'a str,
    token_set: bool,
    id: &'a str,
    family: Family,
}

/// An import whose files are chosen and sized, with nothing downloaded yet: what [`plan`] found,
/// so that the space it needs can be stated (and checked) first. [`fetch`] carries it out.
pub struct Plan {
    endpoint: String,
    repo: String,
    revision: String,
    token_set: bool,
    spec: ImportSpec,
    /// The commit `revision` pointed at when listed: every file comes from it.
    commit: String,
    /// The repository's files to download, each with its size where the listing gave one.
    files: Vec<(String, Option<u64>)>,
    borrowed: Vec<Borrowed>,
    api: Api,
    /// Both the hub's cache and the model folder go in here, and are removed with it, on error
    /// too.
    scratch: tempfile::TempDir,
}

impl Plan {
    /// The bytes to download, and whether the hub gave every file's size (a mirror may not).
    pub fn download_size(&self) -> (u64, bool) {
        let sizes = self
            .files
            .iter()
            .map(|(_, size)| *size)
            .chain(self.borrowed.iter().map(|b| b.size));
        sizes.fold((0, true), |(total, all), size| {
            (total + size.unwrap_or(0), all && size.is_some())
        })
    }

    /// The folder the download is kept in until it is in the bucket.
    pub fn download_dir(&self) -> &Path {
        self.scratch.path()
    }

    fn target(&self) -> Target<'_> {
        Target {
            endpoint: &self.endpoint,
            repo: &self.repo,
            revision: &self.revision,
            token_set: self.token_set,
            id: &self.spec.id,
            family: self.spec.family,
        }
    }

    /// What is about to be downloaded, in a few lines.
    pub fn describe(&self) -> String {
        let (bytes, all_known) = self.download_size();
        let size = if all_known {
            human_size(bytes)
        } else {
            format!("at least {}", human_size(bytes))
        };
        let count = self.files.len() + self.borrowed.len();
        let mut text = format!(
            "Importing hf:{} at {} (commit {}): {count} files, {size} to download into {}.",
            self.repo,
            self.revision,
            self.commit,
            std::env::temp_dir().display()
        );
        for tokenizer in &self.borrowed {
            let (missing, which) = match tokenizer.role {
                FileRole::Tokenizer2 => ("tokenizer_2/tokenizer.json", "second CLIP tokenizer"),
                _ => ("tokenizer.json", "CLIP tokenizer"),
            };
            text.push_str(&format!(
                "\nThe repo has no {missing}; using the {which} from {}.",
                tokenizer.repo
            ));
        }
        text
    }
}

/// Downloads the files `family` needs from `repo` at `revision` (default `main`) and imports them
/// as [`import_folder`] does a folder, saying first what it downloads and how much.
pub async fn import(
    storage: &Storage,
    hub: &Hub,
    repo: &str,
    revision: Option<&str>,
    spec: ImportSpec,
) -> Result<ModelManifest, HubError> {
    let plan = plan(hub, repo, revision, spec).await?;
    eprintln!("{}", plan.describe());
    fetch(storage, plan).await
}

/// Lists `repo` at `revision` (default `main`), pins the commit and chooses the files `spec`'s
/// family needs, with their sizes. Nothing is downloaded.
pub async fn plan(
    hub: &Hub,
    repo: &str,
    revision: Option<&str>,
    spec: ImportSpec,
) -> Result<Plan, HubError> {
    check_repo_id(repo)?;
    let revision = revision.unwrap_or("main");
    check_revision(revision)?;
    let target = Target {
        endpoint: &hub.endpoint,
        repo,
        revision,
        token_set: hub.token.is_some(),
        id: &spec.id,
        family: spec.family,
    };
    let scratch = tempfile::Builder::new()
        .prefix("ducks-hub-")
        .tempdir()
        .map_err(|source| HubError::Local {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let api = ApiBuilder::from_cache(Cache::new(scratch.path().join("cache")))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(false)
        .with_max_files(PARALLEL_RANGES)
        .with_user_agent("ducks", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| match e {
            ApiError::InvalidHeaderValue(_) => HubError::BadToken,
            other => HubError::Client(other.to_string()),
        })?;

    let listed = listing(&api, &target).await?;
    let selection = select(
        listed.siblings.iter().map(|s| s.rfilename.as_str()),
        spec.family,
    )
    .map_err(|missing| target.incomplete(&missing))?;
    let mut borrowed = Vec::new();
    for &(role, source) in &selection.borrowed {
        borrowed.push(tokenizer_source(&api, &target, role, source).await?);
    }
    let files = selection
        .files
        .into_iter()
        .map(|file| {
            let size = listed.size_of(&file);
            (file, size)
        })
        .collect();
    Ok(Plan {
        endpoint: hub.endpoint.clone(),
        repo: repo.into(),
        revision: revision.into(),
        token_set: hub.token.is_some(),
        spec,
        commit: listed.sha,
        files,
        borrowed,
        api,
        scratch,
    })
}

/// Downloads what `plan` chose, with a progress bar on a terminal, and imports it into the
/// bucket. Refuses at once when the download folder has not the room the listing asks for.
pub async fn fetch(storage: &Storage, plan: Plan) -> Result<ModelManifest, HubError> {
    let (bytes, _) = plan.download_size();
    let temp = std::env::temp_dir();
    if let Some(free) = free_space(plan.download_dir())
        && free < bytes
    {
        return Err(HubError::NoRoom {
            what: "The download".into(),
            needed: human_size(bytes),
            path: temp.display().to_string(),
            free: human_size(free),
            advice: "free some space, or set TMPDIR to a folder with room",
        });
    }
    // Gigabytes are not worth fetching for a bucket that cannot take them.
    storage.list(&model_prefix(&plan.spec.id)).await?;

    let target = plan.target();
    let pinned = plan.api.repo(Repo::with_revision(
        plan.repo.clone(),
        RepoType::Model,
        plan.commit.clone(),
    ));
    let folder = plan.scratch.path().join("model");
    for (pick, _) in &plan.files {
        let pointer = download(&pinned, pick, pick, &target).await?;
        place(&pointer, &folder.join(pick))?;
    }
    for tokenizer in &plan.borrowed {
        let clip = Target {
            repo: tokenizer.repo,
            revision: &tokenizer.sha,
            ..target
        };
        let pinned = plan.api.repo(Repo::with_revision(
            tokenizer.repo.to_string(),
            RepoType::Model,
            tokenizer.sha.clone(),
        ));
        let label = format!("{TOKENIZER_FILE} from {}", tokenizer.repo);
        let pointer = download(&pinned, TOKENIZER_FILE, &label, &clip).await?;
        place(&pointer, &folder.join(tokenizer.destination()))?;
    }

    let mut spec = plan.spec.clone();
    if spec.description.is_none() {
        let mut description = format!(
            "{} model imported from hf:{} at commit {}",
            spec.family, plan.repo, plan.commit
        );
        for tokenizer in &plan.borrowed {
            description.push_str(&format!(
                ", {} from hf:{} at commit {}",
                tokenizer.role, tokenizer.repo, tokenizer.sha
            ));
        }
        spec.description = Some(description);
    }
    Ok(import_folder(storage, &folder, spec).await?)
}

/// The bytes free to this user on the file system holding `path`, where the system says.
pub fn free_space(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A tokenizer taken from a CLIP repository, pinned to the commit its listing showed.
struct Borrowed {
    role: FileRole,
    repo: &'static str,
    sha: String,
    /// Its tokenizer.json's size, where the listing gave one.
    size: Option<u64>,
}

impl Borrowed {
    /// Where the tokenizer goes in the model folder: where a diffusers repository keeps it.
    fn destination(&self) -> PathBuf {
        Path::new(self.role.as_str()).join(TOKENIZER_FILE)
    }
}

/// Lists `source` (at `main`) and checks that it holds a tokenizer.json, before anything is
/// downloaded. A hub (or mirror) without it is one clear error, not a generic "no such model".
async fn tokenizer_source(
    api: &Api,
    target: &Target<'_>,
    role: FileRole,
    source: &'static str,
) -> Result<Borrowed, HubError> {
    let clip = Target {
        repo: source,
        revision: "main",
        ..*target
    };
    let destination = Path::new(role.as_str())
        .join(TOKENIZER_FILE)
        .display()
        .to_string();
    let unavailable = |problem: String| HubError::NoTokenizerSource {
        repo: target.repo.into(),
        destination: destination.clone(),
        problem,
        id: target.id.into(),
        family: target.family,
    };
    let info = match listing(api, &clip).await {
        Ok(info) => info,
        Err(HubError::NoSuchRepo { endpoint, .. } | HubError::NoSuchRevision { endpoint, .. }) => {
            return Err(unavailable(format!(
                "the Hugging Face hub at {endpoint} has no model `{source}`"
            )));
        }
        Err(other) => return Err(other),
    };
    if !info.siblings.iter().any(|s| s.rfilename == TOKENIZER_FILE) {
        return Err(unavailable(format!(
            "`{source}` on {} has no {TOKENIZER_FILE}",
            target.endpoint
        )));
    }
    Ok(Borrowed {
        role,
        repo: source,
        size: info.size_of(TOKENIZER_FILE),
        sha: info.sha,
    })
}

/// Downloads `file` of `repo` into the hub's cache, printing `label` as it starts, and fails once
/// no byte has arrived for [`STALL_TIMEOUT`].
async fn download(
    repo: &ApiRepo,
    file: &str,
    label: &str,
    target: &Target<'_>,
) -> Result<PathBuf, HubError> {
    let activity = Activity::new();
    let reporter = Reporter {
        file: label.to_string(),
        activity: activity.clone(),
        bar: None,
    };
    until_stalled(
        &activity,
        STALL_TIMEOUT,
        repo.download_with_progress(file, reporter),
    )
    .await
    .ok_or_else(|| HubError::Stalled {
        endpoint: target.endpoint.into(),
        file: label.to_string(),
    })?
    .map_err(|e| target.download_error(file, e))
}

/// A repository's files at one commit, as the hub lists them with `blobs=true`.
#[derive(serde::Deserialize)]
struct Listing {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(serde::Deserialize)]
struct Sibling {
    rfilename: String,
    /// Given with `blobs=true`; a mirror may leave it out.
    #[serde(default)]
    size: Option<u64>,
}

impl Listing {
    fn size_of(&self, file: &str) -> Option<u64> {
        self.siblings
            .iter()
            .find(|s| s.rfilename == file)
            .and_then(|s| s.size)
    }
}

/// The repository's files at `revision`, with their sizes and the commit it points at.
async fn listing(api: &Api, target: &Target<'_>) -> Result<Listing, HubError> {
    let what = format!("the listing of `{}`", target.repo);
    let request = api
        .repo(Repo::with_revision(
            target.repo.to_string(),
            RepoType::Model,
            target.revision.to_string(),
        ))
        .info_request()
        .query(&[("blobs", "true")])
        .timeout(LISTING_TIMEOUT);
    let response = request
        .send()
        .await
        .map_err(|e| target.request_error(&what, &e))?;
    let status = response.status();
    if !status.is_success() {
        // The hub names what was not found; a mirror may not, and then it is the repository.
        let code = response
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if status == StatusCode::NOT_FOUND && code == "RevisionNotFound" {
            return Err(HubError::NoSuchRevision {
                endpoint: target.endpoint.into(),
                repo: target.repo.into(),
                revision: target.revision.into(),
            });
        }
        return Err(target.status_error(&what, status));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| target.request_error(&what, &e))?;
    let info: Listing = serde_json::from_slice(&body).map_err(|e| target.protocol(&what, &e))?;
    // The commit becomes part of URLs and of paths in the hub's cache.
    if info.sha.is_empty() || !info.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(target.protocol(&what, &format!("commit `{}`", info.sha)));
    }
    Ok(info)
}

/// What to download for a family: the repository's files, and the tokenizers to take elsewhere.
#[derive(Debug, PartialEq, Eq)]
pub struct Selection {
    /// One file of the repository per role it covers, in the order of the family's roles.
    pub files: Vec<String>,
    /// The tokenizer roles the repository has no tokenizer.json for, each with the CLIP
    /// repository to take it from (see [`clip_tokenizer_repo`]).
    pub borrowed: Vec<(FileRole, &'static str)>,
}

/// Where candle's stable-diffusion example takes each tokenizer from (its `ModelFile::Tokenizer`
/// and `Tokenizer2`), for repositories that ship vocab.json and merges.txt but no tokenizer.json:
/// the 1.5 and 2.x families' first tokenizer from CLIP ViT-B/32, the XL families' from CLIP
/// ViT-L/14 (the same vocabulary, with a slightly different split pattern) and their second from
/// OpenCLIP ViT-bigG. tiny-sd has its own small vocabulary and takes none.
pub fn clip_tokenizer_repo(family: Family, role: FileRole) -> Option<&'static str> {
    match (role, family) {
        (FileRole::Tokenizer, Family::Sd15 | Family::Sd21 | Family::SdTurbo) => {
            Some("openai/clip-vit-base-patch32")
        }
        (FileRole::Tokenizer, Family::Sdxl | Family::SdxlTurbo) => {
            Some("openai/clip-vit-large-patch14")
        }
        (FileRole::Tokenizer2, Family::Sdxl | Family::SdxlTurbo) => {
            Some("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
        }
        _ => None,
    }
}

/// The files to download for `family`: one per role it needs, in the order of its roles, with
/// the tokenizers it lacks taken from CLIP repositories; or the roles the listing lacks that
/// nothing else can stand in for.
///
/// Where a role has several candidates (diffusers repositories hold `model.safetensors` beside
/// `model.fp16.safetensors`, `vae_1_0/` beside `vae/`, and so on), the folder named after the role
/// comes first, then the precision the runner computes in: it loads f16 on GPUs and f32 on CPU,
/// so GPU families take the fp16 files (half the download) and CPU families the full ones. Other
/// variants (`non_ema`, `ema`) come last.
pub fn select<'a>(
    files: impl IntoIterator<Item = &'a str>,
    family: Family,
) -> Result<Selection, Vec<FileRole>> {
    let prefer_half = default_resources(family).gpus > 0;
    let mut candidates: Vec<(FileRole, Preference)> = Vec::new();
    for file in files {
        let path = Path::new(file);
        // The hub's names become paths here: nothing may climb out of the folder.
        if !path.components().all(|c| matches!(c, Component::Normal(_))) {
            continue;
        }
        let Some(role) = role_of(path) else { continue };
        if !family.required_roles().contains(&role) {
            continue;
        }
        let first = file
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".safetensors")
            .trim_end_matches(".json")
            .to_lowercase();
        let off_folder = first != role.as_str();
        let variant = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".safetensors"))
            .and_then(|stem| stem.split_once('.'))
            .map(|(_, variant)| variant);
        let rank = match (variant, prefer_half) {
            (Some("fp16"), true) | (None, false) => 0,
            (None, true) | (Some("fp16"), false) => 1,
            (Some(_), _) => 2,
        };
        candidates.push((role, (off_folder, rank, file.len(), file)));
    }
    let mut picks = Vec::new();
    let mut borrowed = Vec::new();
    let mut missing = Vec::new();
    for &role in family.required_roles() {
        let best = candidates
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, key)| key)
            .min();
        match (best, clip_tokenizer_repo(family, role)) {
            (Some((.., file)), _) => picks.push(file.to_string()),
            (None, Some(source)) => borrowed.push((role, source)),
            (None, None) => missing.push(role),
        }
    }
    if missing.is_empty() {
        Ok(Selection {
            files: picks,
            borrowed,
        })
    } else {
        Err(missing)
    }
}

/// How a candidate file ranks for its role, least first: outside the role's own folder, then the
/// precision's rank, then the shorter path, then the path itself (so the choice is repeatable).
type Preference<'a> = (bool, u8, usize, &'a str);

impl Target<'_> {
    fn request_error(&self, what: &str, error: &reqwest::Error) -> HubError {
        if let Some(status) = error.status() {
            return self.status_error(what, status);
        }
        if error.is_connect() || error.is_timeout() {
            let detail = if error.is_timeout() {
                // Only the listing has a timeout of its own; downloads have the stall watchdog.
                format!("no answer within {} s", LISTING_TIMEOUT.as_secs())
            } else {
                root_cause(error)
            };
            return HubError::Unreachable {
                endpoint: self.endpoint.into(),
                detail,
                id: self.id.into(),
                family: self.family,
            };
        }
        HubError::Broken {
            endpoint: self.endpoint.into(),
            what: what.into(),
            detail: root_cause(error),
        }
    }

    /// The listing answers 401 or 404 for a repository it will not show; files answer 401 or 403
    /// for a gated model whose conditions the token's account has not accepted.
    fn status_error(&self, what: &str, status: StatusCode) -> HubError {
        let listing = what.starts_with("the listing");
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND if listing => HubError::NoSuchRepo {
                endpoint: self.endpoint.into(),
                repo: self.repo.into(),
                advice: if self.token_set {
                    "check that HF_TOKEN can read it"
                } else {
                    "set HF_TOKEN"
                },
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                HubError::Refused(self.refused_message(status))
            }
            StatusCode::TOO_MANY_REQUESTS => HubError::Status {
                endpoint: self.endpoint.into(),
                status,
                what: what.into(),
                advice: ": too many requests; wait a while and try again (a token in HF_TOKEN raises the limit).",
            },
            s if s.is_server_error() => HubError::Status {
                endpoint: self.endpoint.into(),
                status,
                what: what.into(),
                advice: ": the hub is in trouble; try again later.",
            },
            _ => HubError::Status {
                endpoint: self.endpoint.into(),
                status,
                what: what.into(),
                advice: ".",
            },
        }
    }

    fn refused_message(&self, status: StatusCode) -> String {
        let (endpoint, repo) = (self.endpoint, self.repo);
        if self.token_set {
            format!(
                "The Hugging Face hub at {endpoint} refused HF_TOKEN for `{repo}` ({status}): if the \
                 model is gated, accept its conditions at {endpoint}/{repo} with the token's account; \
                 otherwise check the token."
            )
        } else {
            format!(
                "The model `{repo}` on {endpoint} is gated ({status}): accept its conditions at \
                 {endpoint}/{repo} while logged in, then set HF_TOKEN to an access token of that account."
            )
        }
    }

    fn download_error(&self, file: &str, error: ApiError) -> HubError {
        let what = format!("`{file}`");
        match error {
            ApiError::RequestError(e) => self.request_error(&what, &e),
            ApiError::TooManyRetries(inner) => self.download_error(file, *inner),
            ApiError::IoError(source) => HubError::Local {
                path: format!(
                    "the download of {file} (under {})",
                    std::env::temp_dir().display()
                ),
                source,
            },
            other => self.protocol(&what, &other),
        }
    }

    fn protocol(&self, what: &str, detail: &dyn std::fmt::Display) -> HubError {
        HubError::Protocol {
            endpoint: self.endpoint.into(),
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    fn incomplete(&self, missing: &[FileRole]) -> HubError {
        let roles: Vec<&str> = missing.iter().map(|r| r.as_str()).collect();
        let tokenizer = missing
            .iter()
            .any(|r| matches!(r, FileRole::Tokenizer | FileRole::Tokenizer2));
        let advice = if tokenizer {
            " ducks reads tokenizers from tokenizer.json, and there is no CLIP tokenizer to stand \
             in for this family's: download the model folder, add tokenizer/tokenizer.json and \
             import the folder."
        } else {
            " Check the family, or download the model folder and import it."
        };
        HubError::Incomplete(format!(
            "`{}` at {} has no {} file, which a {} model needs.{advice}",
            self.repo,
            self.revision,
            roles.join(", "),
            self.family
        ))
    }
}

/// The innermost error: for a refused connection, "Connection refused (os error 111)" rather
/// than "error sending request for url (…)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

fn check_repo_id(repo: &str) -> Result<(), HubError> {
    let parts: Vec<&str> = repo.split('/').collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if (1..=2).contains(&parts.len()) && parts.iter().all(part_ok) {
        Ok(())
    } else {
        Err(HubError::BadRepoId(repo.into()))
    }
}

/// Branches may hold `/` (hf-hub escapes it); anything that would change the URL's meaning is out.
fn check_revision(revision: &str) -> Result<(), HubError> {
    let ok = !revision.is_empty()
        && revision
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(HubError::BadRevision(revision.into()))
    }
}

/// Moves a downloaded file from the hub's cache (a link into its blobs) to its place in the
/// model folder.
fn place(pointer: &Path, destination: &Path) -> Result<(), HubError> {
    let local = |path: &Path| {
        let path = path.display().to_string();
        move |source| HubError::Local { path, source }
    };
    let blob = std::fs::canonicalize(pointer).map_err(local(pointer))?;
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent).map_err(local(parent))?;
    }
    std::fs::rename(&blob, destination).map_err(local(destination))
}

/// When a download last showed signs of life, shared between its progress and its watchdog.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Runs `work` until it ends, or `None` once `activity` has been idle for `limit`.
async fn until_stalled<T>(
    activity: &Activity,
    limit: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        let idle = activity.idle();
        if idle >= limit {
            return None;
        }
        tokio::select! {
            out = &mut work => return Some(out),
            () = tokio::time::sleep(limit - idle) => {}
        }
    }
}

/// Prints each file as its download starts, draws its progress bar (on a terminal only: indicatif
/// draws nothing into pipes and files), and feeds the watchdog as bytes arrive.
#[derive(Clone)]
struct Reporter {
    file: String,
    activity: Activity,
    /// Made when the size is known; the clones hf-hub makes for parallel ranges share it.
    bar: Option<ProgressBar>,
}

impl Progress for Reporter {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.activity.touch();
        eprintln!("Downloading {} ({}).", self.file, human_size(size as u64));
        let bar = ProgressBar::new(size as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "  [{bar:30}] {bytes}/{total_bytes}  {bytes_per_sec}  {eta} left",
        ) {
            bar.set_style(style.progress_chars("#>-"));
        }
        self.bar = Some(bar);
    }

    async fn update(&mut self, size: usize) {
        self.activity.touch();
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }

    async fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Bytes as people read them: 2.6 GB, 340.0 MB.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// runwayml/stable-diffusion-v1-5's weights, as the hub lists them: no tokenizer.json.
    const SD15: &[&str] = &[
        "model_index.json",
        "v1-5-pruned-emaonly.safetensors",
        "safety_checker/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ];

    fn files(selection: Selection) -> Vec<String> {
        assert_eq!(selection.borrowed, [], "{selection:?}");
        selection.files
    }

    #[test]
    fn gpu_families_take_fp16_from_the_role_folders() {
        let mut listing = SD15.to_vec();
        listing.push("tokenizer/tokenizer.json");
        assert_eq!(
            files(select(listing, Family::Sd15).unwrap()),
            [
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.fp16.safetensors",
                "text_encoder/model.fp16.safetensors",
                "tokenizer/tokenizer.json",
            ]
        );
    }

    #[test]
    fn cpu_families_take_full_precision_and_their_config() {
        let mut listing = SD15.to_vec();
        listing.extend(["config.json", "tokenizer/tokenizer.json"]);
        assert_eq!(
            files(select(listing, Family::Tiny).unwrap()),
            [
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "tokenizer/tokenizer.json",
                "config.json",
            ]
        );
    }

    #[test]
    fn the_role_folder_wins_over_lookalikes_and_variants_come_last() {
        let listing = [
            "vae_1_0/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.non_ema.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
            "text_encoder_2/model.fp16.safetensors",
            "tokenizer/tokenizer.json",
            "tokenizer_2/tokenizer.json",
        ];
        assert_eq!(
            files(select(listing, Family::Sdxl).unwrap()),
            [
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "text_encoder_2/model.fp16.safetensors",
                "tokenizer/tokenizer.json",
                "tokenizer_2/tokenizer.json",
            ]
        );
    }

    #[test]
    fn missing_tokenizers_come_from_the_clip_repositories_candle_uses() {
        for family in [Family::Sd15, Family::Sd21, Family::SdTurbo] {
            let selection = select(SD15.iter().copied(), family).unwrap();
            assert_eq!(
                selection.files,
                [
                    "unet/diffusion_pytorch_model.fp16.safetensors",
                    "vae/diffusion_pytorch_model.fp16.safetensors",
                    "text_encoder/model.fp16.safetensors",
                ],
                "{family}"
            );
            assert_eq!(
                selection.borrowed,
                [(FileRole::Tokenizer, "openai/clip-vit-base-patch32")],
                "{family}"
            );
        }
        // stabilityai/stable-diffusion-xl-base-1.0 and sdxl-turbo lack both.
        let mut listing = SD15.to_vec();
        listing.extend([
            "text_encoder_2/model.fp16.safetensors",
            "tokenizer_2/merges.txt",
            "tokenizer_2/vocab.json",
        ]);
        for family in [Family::Sdxl, Family::SdxlTurbo] {
            let selection = select(listing.iter().copied(), family).unwrap();
            assert_eq!(selection.files.len(), 4, "{selection:?}");
            assert_eq!(
                selection.borrowed,
                [
                    (FileRole::Tokenizer, "openai/clip-vit-large-patch14"),
                    (
                        FileRole::Tokenizer2,
                        "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
                    ),
                ],
                "{family}"
            );
        }
        // One present, one missing: only the missing one is borrowed.
        listing.push("tokenizer_2/tokenizer.json");
        let selection = select(listing, Family::Sdxl).unwrap();
        assert_eq!(
            selection.files.last().unwrap(),
            "tokenizer_2/tokenizer.json"
        );
        assert_eq!(
            selection.borrowed,
            [(FileRole::Tokenizer, "openai/clip-vit-large-patch14")]
        );
        // tiny-sd's vocabulary is its own: no CLIP tokenizer fits its text encoder.
        let mut listing = SD15.to_vec();
        listing.push("config.json");
        assert_eq!(
            select(listing, Family::Tiny).unwrap_err(),
            [FileRole::Tokenizer]
        );
    }

    #[test]
    fn missing_roles_are_named_and_paths_may_not_climb_out() {
        let listing = [
            "unet/diffusion_pytorch_model.safetensors",
            "../vae/diffusion_pytorch_model.safetensors",
            "/text_encoder/model.safetensors",
            "tokenizer/vocab.json",
        ];
        // The tokenizer could be borrowed; the weights cannot.
        assert_eq!(
            select(listing, Family::Sd15).unwrap_err(),
            [FileRole::Vae, FileRole::TextEncoder]
        );
    }

    #[test]
    fn ids_revisions_and_endpoints_are_checked() {
        for ok in ["stabilityai/sd-turbo", "gpt2", "a.b/c_d-1"] {
            assert!(check_repo_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b/c", "../x", "a/..", "a b/c", "a/b?x=1", "a/"] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
        for ok in ["main", "v1.0", "refs/pr/3", "0123abcd"] {
            assert!(check_revision(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/../b", "x#y", "a b", "/main"] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
        let hub = Hub::new(None, Some("  ".into())).unwrap();
        assert_eq!(hub.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(hub.token, None);
        let hub = Hub::new(Some("http://127.0.0.1:9/".into()), Some("t".into())).unwrap();
        assert_eq!(hub.endpoint, "http://127.0.0.1:9");
        assert!(Hub::new(Some("huggingface.co".into()), None).is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_234_567), "1.2 MB");
        assert_eq!(human_size(3_400_000_000), "3.4 GB");
    }

    #[tokio::test]
    async fn a_silent_download_stalls_and_a_lively_one_does_not() {
        let limit = Duration::from_millis(200);
        let activity = Activity::new();
        let silent = until_stalled(&activity, limit, std::future::pending::<()>());
        assert_eq!(silent.await, None);

        let activity = Activity::new();
        let lively = {
            let activity = activity.clone();
            async move {
                for _ in 0..8 {
                    tokio::time::sleep(limit / 4).await;
                    activity.touch();
                }
            }
        };
        assert_eq!(until_stalled(&activity, limit, lively).await, Some(()));
    }
}
