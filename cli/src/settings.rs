//! Configuration: built-in defaults, then an optional `ducks.toml`, then `DUCKS_*` environment
//! variables where `__` separates levels (`DUCKS_QUEUE__MAX_BACKLOG=500`). `.env` in the current
//! directory is read first, for development. [`Origins`] remembers which layer set each key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, Source};
use ducks_api::ApiConfig;
use ducks_bots::discord::DiscordConfig;
use ducks_bots::twitch::TwitchConfig;
use ducks_contract::Secret;
use ducks_contract::links::LinkConfig;
use ducks_models::S3Config;
use ducks_queue::{Queue, QueueConfig, QueueError, RedisTarget};
use ducks_runner::run::RunnerConfig;
use ducks_worker::WorkerConfig;
use serde::{Deserialize, Serialize};

/// Everything `ducks` can be configured with. `.env.example` lists every key.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub redis: RedisSettings,
    pub queue: QueueConfig,
    pub s3: S3Config,
    pub runner: RunnerConfig,
    pub worker: WorkerConfig,
    pub links: LinkConfig,
    pub api: ApiConfig,
    pub discord: DiscordConfig,
    pub twitch: TwitchConfig,
    pub dev: DevSettings,
    pub log: LogSettings,
    /// Which layer set each key; not a setting.
    #[serde(skip)]
    pub origins: Origins,
}

/// `ducks dev` and `ducks demo`: the whole stack on one machine.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevSettings {
    /// Everything the local stack keeps: Redis data, the S3 folder, the weight cache, runner
    /// folders and downloaded images.
    pub data_dir: PathBuf,
    /// Address of the embedded S3 server; port 0 picks a free one.
    pub s3_listen: String,
}

impl Default for DevSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".ducks"),
            s3_listen: "127.0.0.1:0".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port/[db]`; for a cluster, seed node URLs separated by commas.
    /// Secret, because it may carry a password.
    pub url: Secret,
    /// Talk to a Redis Cluster instead of a single server.
    pub cluster: bool,
    /// How long `ducks submit`, `status` and `cancel` wait for Redis to answer before they give
    /// up with one line of error (s). Services keep retrying through Redis outages.
    pub cli_wait_secs: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("redis://127.0.0.1:6379/"),
            cluster: false,
            cli_wait_secs: 3,
        }
    }
}

impl RedisSettings {
    pub fn target(&self) -> RedisTarget {
        let url = self.url.expose();
        if self.cluster {
            RedisTarget::Cluster(url.split(',').map(|u| u.trim().to_owned()).collect())
        } else {
            RedisTarget::Single(url.to_owned())
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`. The level comes from `RUST_LOG` (default `info`).
    pub format: LogFormat,
}

/// A configuration problem, worded to name the key and what it expected.
#[derive(Debug, thiserror::Error)]
#[error("Invalid configuration: {0}. See .env.example for every key and its format.")]
pub struct SettingsError(String);

/// Which layer set each key, by dotted path (`queue.lease_ms`): `ducks config` says so beside
/// every value, and a key left to its default may behave differently from one set to the same
/// value (`worker.listen`).
#[derive(Clone, Debug, Default)]
pub struct Origins {
    /// Keys the file sets, with the file's path as found.
    file: BTreeMap<String, String>,
    /// Keys the environment sets, with the variable that set each.
    env: BTreeMap<String, String>,
    /// Variables read from `.env` rather than the process's environment.
    dotenv: BTreeSet<String>,
    /// Keys whose value followed from another key's, with that key.
    derived: BTreeMap<String, &'static str>,
}

/// Where one key's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin<'a> {
    Default,
    File(&'a str),
    Env { var: &'a str, dotenv: bool },
    Derived(&'static str),
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "from {path}"),
            Origin::Env { var, dotenv: false } => write!(f, "from {var}"),
            Origin::Env { var, dotenv: true } => write!(f, "from {var} in .env"),
            Origin::Derived(key) => write!(f, "from {key}"),
        }
    }
}

impl Origins {
    /// Where the key at `path`, or a key under it, got its value: the environment over the file,
    /// the file over what follows from other keys, and that over the default.
    pub fn of(&self, path: &str) -> Origin<'_> {
        let sets = |key: &str| {
            key == path
                || key
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        if let Some((_, var)) = self.env.iter().find(|(key, _)| sets(key)) {
            let dotenv = self.dotenv.contains(var);
            return Origin::Env { var, dotenv };
        }
        if let Some((_, file)) = self.file.iter().find(|(key, _)| sets(key)) {
            return Origin::File(file);
        }
        match self.derived.get(path) {
            Some(from) => Origin::Derived(from),
            None => Origin::Default,
        }
    }

    /// Whether ducks.toml or the environment names the key at `path`.
    pub fn configured(&self, path: &str) -> bool {
        matches!(self.of(path), Origin::File(_) | Origin::Env { .. })
    }

    /// The keys each layer sets: the file's as its table's leaves, the environment's from the
    /// variables' names as the `config` crate reads them (`DUCKS_QUEUE__LEASE_MS`).
    fn read(
        file: &File<config::FileSourceFile, FileFormat>,
        env: &config::Map<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut origins = Origins::default();
        let table = file.collect().map_err(|e| SettingsError(e.to_string()))?;
        file_keys("", table, &mut origins.file);
        origins.env = env
            .keys()
            .filter_map(|var| {
                let key = var
                    .strip_prefix("DUCKS_")?
                    .to_lowercase()
                    .replace("__", ".");
                Some((key, var.clone()))
            })
            .collect();
        Ok(origins)
    }
}

/// Every leaf of a file's table by dotted path, with the file it came from; an empty table is a
/// leaf of its own.
fn file_keys(
    prefix: &str,
    table: config::Map<String, config::Value>,
    out: &mut BTreeMap<String, String>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        let origin = value
            .origin()
            .unwrap_or("the configuration file")
            .to_owned();
        match value.kind {
            config::ValueKind::Table(table) if !table.is_empty() => file_keys(&path, table, out),
            _ => {
                out.insert(path, origin);
            }
        }
    }
}

impl Settings {
    /// The queue these settings name.
    pub async fn connect_queue(&self) -> Result<Queue, QueueError> {
        Queue::connect(self.redis.target(), self.queue.clone()).await
    }

    /// Loads the layers. `file` defaults to `ducks.toml` in the current directory, if present.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let before: BTreeSet<String> = std::env::vars().map(|(key, _)| key).collect();
        // A missing .env is normal; a malformed one is worth knowing about.
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            return Err(SettingsError(format!(".env could not be read ({e})")));
        }
        let mut settings = Self::from_sources(file, std::env::vars())?;
        settings.origins.dotenv = std::env::vars()
            .map(|(key, _)| key)
            .filter(|key| !before.contains(key))
            .collect();
        Ok(settings)
    }

    /// The layering itself, with the environment passed in so tests need not touch the process's.
    pub fn from_sources(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let file_source = match file {
            Some(path) => File::from(path).format(FileFormat::Toml).required(true),
            None => File::new("ducks", FileFormat::Toml).required(false),
        };
        let env: config::Map<String, String> = env
            .into_iter()
            // DUCKS_CONFIG names the file (read by the argument parser), not a setting.
            .filter(|(k, _)| k.starts_with("DUCKS_") && k != "DUCKS_CONFIG")
            .collect();
        let origins = Origins::read(&file_source, &env)?;
        let settings = Config::builder()
            .add_source(file_source)
            .add_source(
                Environment::with_prefix("DUCKS")
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .and_then(|c| c.try_deserialize::<Settings>())
            .map_err(|e| SettingsError(e.to_string()))?;
        if let Some(key) = settings.redacted_placeholder() {
            return Err(SettingsError(format!(
                "{key} is \"{}\", which `ducks config` prints in place of a secret: put the real \
                 value there, or leave the key out",
                Secret::REDACTED
            )));
        }
        Ok(settings.settled(origins))
    }

    /// The first key whose value is the placeholder `ducks config` prints for a secret: a file
    /// copied from its output and loaded unedited would otherwise run with "<redacted>" as a
    /// password or signing key.
    fn redacted_placeholder(&self) -> Option<String> {
        fn find(value: &serde_json::Value, path: &str) -> Option<String> {
            match value {
                serde_json::Value::String(s) if s == Secret::REDACTED => Some(path.to_owned()),
                serde_json::Value::Object(map) => map.iter().find_map(|(key, value)| {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    find(value, &path)
                }),
                serde_json::Value::Array(items) => items.iter().find_map(|v| find(v, path)),
                _ => None,
            }
        }
        find(&serde_json::to_value(self).ok()?, "")
    }

    /// Defaults that follow from other settings: the API's public address is where permanent
    /// image links point, unless `links.base_url` says otherwise; the worker's probes may move
    /// off a taken port unless someone chose their address.
    fn settled(mut self, mut origins: Origins) -> Self {
        if self.links.base_url.is_empty() && !self.api.public_url.is_empty() {
            self.links.base_url = self.api.public_url.clone();
            origins
                .derived
                .insert("links.base_url".into(), "api.public_url");
        }
        self.worker.listen_may_move = !origins.configured("worker.listen");
        self.origins = origins;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::from_sources(None, env)
    }

    #[test]
    fn defaults_need_no_configuration() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.queue, QueueConfig::default());
        assert!(
            matches!(settings.redis.target(), RedisTarget::Single(url) if url == "redis://127.0.0.1:6379/")
        );
    }

    #[test]
    fn environment_overrides_with_double_underscore_nesting() {
        let settings = load(&[
            ("DUCKS_QUEUE__MAX_BACKLOG", "500"),
            ("DUCKS_QUEUE__PER_REQUESTER_IN_FLIGHT", "1"),
            ("DUCKS_REDIS__URL", "redis://a:1/,redis://b:2/"),
            ("DUCKS_REDIS__CLUSTER", "true"),
            ("DUCKS_LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(settings.queue.max_backlog, 500);
        assert_eq!(settings.queue.per_requester_in_flight, 1);
        assert_eq!(settings.log.format, LogFormat::Json);
        assert!(
            matches!(settings.redis.target(), RedisTarget::Cluster(urls) if urls == ["redis://a:1/", "redis://b:2/"])
        );
    }

    #[test]
    fn a_file_is_a_layer_under_the_environment() {
        let dir = std::env::temp_dir().join(format!("ducks-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ducks.toml");
        std::fs::write(&file, "[queue]\nmax_backlog = 7\nlease_ms = 9000\n").unwrap();
        let env = [("DUCKS_QUEUE__LEASE_MS".to_string(), "1234".to_string())];
        let settings = Settings::from_sources(Some(&file), env).unwrap();
        assert_eq!(
            (settings.queue.max_backlog, settings.queue.lease_ms),
            (7, 1234)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_key_and_what_was_expected() {
        let err = load(&[("DUCKS_QUEUE__MAX_BACKLOG", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue.max_backlog"), "{err}");
        assert!(err.contains("lots"), "{err}");
        let err = load(&[("DUCKS_QUEUE__MAX_BACKLGO", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_backlgo"), "{err}");
        let err = load(&[("DUCKS_LOG__FORMAT", "xml")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml"), "{err}");
    }

    /// `.env.example` must name every key, with values that load.
    #[test]
    fn env_example_lists_every_key_and_loads() {
        let example = include_str!("../../.env.example");
        let pairs: Vec<(String, String)> = example
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("DUCKS_") && !k.contains(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sections = [
            (
                "QUEUE",
                serde_json::to_value(QueueConfig::default()).unwrap(),
            ),
            ("S3", serde_json::to_value(S3Config::default()).unwrap()),
            (
                "RUNNER",
                serde_json::to_value(RunnerConfig::default()).unwrap(),
            ),
            (
                "WORKER",
                serde_json::to_value(WorkerConfig::default()).unwrap(),
            ),
            (
                "LINKS",
                serde_json::to_value(LinkConfig::default()).unwrap(),
            ),
            ("API", serde_json::to_value(ApiConfig::default()).unwrap()),
            ("DEV", serde_json::to_value(DevSettings::default()).unwrap()),
            (
                "DISCORD",
                serde_json::to_value(DiscordConfig::default()).unwrap(),
            ),
            (
                "TWITCH",
                serde_json::to_value(TwitchConfig::default()).unwrap(),
            ),
        ];
        let (mut expected, mut toml_only) = (Vec::new(), Vec::new());
        for (section, value) in &sections {
            flatten_keys(
                &format!("DUCKS_{section}"),
                value,
                &mut expected,
                &mut toml_only,
            );
        }
        expected.extend(
            [
                "DUCKS_REDIS__URL",
                "DUCKS_REDIS__CLUSTER",
                "DUCKS_REDIS__CLI_WAIT_SECS",
                "DUCKS_LOG__FORMAT",
                "DUCKS_CONFIG",
            ]
            .map(String::from),
        );
        for key in &expected {
            assert!(
                pairs.iter().any(|(k, _)| k == key),
                ".env.example lacks {key}"
            );
        }
        // Lists of objects have no environment form: the example names them, for ducks.toml.
        for key in &toml_only {
            assert!(example.contains(key.as_str()), ".env.example lacks {key}");
        }
        let settings = Settings::from_sources(None, pairs).expect(".env.example loads");
        assert_eq!(
            settings.queue,
            QueueConfig::default(),
            ".env.example shows the defaults"
        );
    }

    /// `DUCKS_A__B__C` for every leaf of a nested settings object; lists of objects go to
    /// `toml_only`.
    fn flatten_keys(
        prefix: &str,
        value: &serde_json::Value,
        out: &mut Vec<String>,
        toml_only: &mut Vec<String>,
    ) {
        match value {
            serde_json::Value::Object(object) => {
                for (key, value) in object {
                    let key = format!("{prefix}__{}", key.to_uppercase());
                    flatten_keys(&key, value, out, toml_only);
                }
            }
            serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
                toml_only.push(prefix.to_owned())
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn image_links_point_at_the_apis_public_address_unless_told_otherwise() {
        let settings = load(&[("DUCKS_API__PUBLIC_URL", "https://ducks.example.com")]).unwrap();
        assert_eq!(settings.links.base_url, "https://ducks.example.com");
        let settings = load(&[
            ("DUCKS_API__PUBLIC_URL", "https://ducks.example.com"),
            ("DUCKS_LINKS__BASE_URL", "https://i.example.com"),
        ])
        .unwrap();
        assert_eq!(settings.links.base_url, "https://i.example.com");
    }

    #[test]
    fn a_secret_left_as_ducks_config_prints_it_is_refused() {
        let err = load(&[("DUCKS_API__PEPPER", "<redacted>")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.pepper is \"<redacted>\""), "{err}");
        assert!(load(&[("DUCKS_API__PEPPER", "a real one")]).is_ok());
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let settings = load(&[
            ("DUCKS_REDIS__URL", "redis://:hunter2@db:6379/"),
            ("DUCKS_S3__SECRET_ACCESS_KEY", "hunter2"),
        ])
        .unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
