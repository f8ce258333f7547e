//! `ducks config`: the settings after every layer, printed as the ducks.toml they amount to, each
//! key with where its value came from (the default, the file, a variable, another key), and
//! secrets redacted.

use std::fmt::Write as _;

use ducks_contract::{Secret, secret};
use serde::Serialize;
use toml::{Table, Value};

use crate::settings::{Origins, Settings};

const HEADER: &str = "\
# The settings `ducks` runs with, as the ducks.toml they amount to: every key, and where its value
# came from. Secrets show as \"<redacted>\" (\"\" when empty): fill them in before loading this file.
";

pub fn run(settings: &Settings) -> Result<(), crate::Error> {
    print!("{}", render(settings, &settings.origins)?);
    Ok(())
}

/// `settings` as TOML that loads back to them (secrets aside), keys in the order the settings
/// declare them, each line ending in a comment that says where the value came from. Options
/// that are unset have no TOML form: they show as comments.
pub fn render(settings: &impl Serialize, origins: &Origins) -> Result<String, crate::Error> {
    let plain = Table::try_from(settings)?;
    // Secrets are where the two serializations differ; only the redacted one is ever printed.
    let redacted = secret::redacted(|| Table::try_from(settings))?;
    // TOML leaves unset options out; JSON keeps them, as null.
    let every_key = serde_json::to_value(settings)?;
    let mut out = String::from(HEADER);
    write_table(
        &mut out,
        &Section {
            path: Vec::new(),
            plain: &plain,
            redacted: &redacted,
            every_key: &every_key,
        },
        origins,
    );
    Ok(out)
}

/// One table of the settings, as both serializations have it.
struct Section<'a> {
    /// Its keys from the top (`["worker", "kubernetes"]`); empty for the top.
    path: Vec<&'a str>,
    plain: &'a Table,
    redacted: &'a Table,
    every_key: &'a serde_json::Value,
}

/// A table's own keys, then its unset options, then each of its tables under its own header
/// (TOML puts a table's keys before its subtables).
fn write_table(out: &mut String, section: &Section<'_>, origins: &Origins) {
    let dotted = |key: &str| {
        let mut path = section.path.clone();
        path.push(key);
        path.join(".")
    };
    let mut tables = Vec::new();
    for (key, value) in section.plain {
        let known = section.every_key.get(key);
        match value {
            // An empty map is a value (`labels = {}`); a struct whose options are all unset
            // is still a table of keys.
            Value::Table(table)
                if !table.is_empty()
                    || known
                        .and_then(|k| k.as_object())
                        .is_some_and(|o| !o.is_empty()) =>
            {
                tables.push((key.as_str(), table));
            }
            _ => {
                let origin = origins.of(&dotted(key));
                let line = match section.redacted.get(key) {
                    Some(shown) if shown == value => format!("{value} # {origin}"),
                    _ if value.as_str() == Some("") => format!("\"\" # {origin} (secret, empty)"),
                    shown => {
                        let marker = Value::String(Secret::REDACTED.into());
                        let shown = shown.unwrap_or(&marker);
                        format!("{shown} # {origin} (secret, redacted)")
                    }
                };
                let _ = writeln!(out, "{} = {line}", toml_key(key));
            }
        }
    }
    if let Some(object) = section.every_key.as_object() {
        for (key, _) in object
            .iter()
            .filter(|(key, value)| value.is_null() && !section.plain.contains_key(*key))
        {
            let _ = writeln!(out, "# {} is unset (default)", toml_key(key));
        }
    }
    for (key, table) in tables {
        let mut path = section.path.clone();
        path.push(key);
        let header: Vec<String> = path.iter().map(|k| toml_key(k)).collect();
        let _ = writeln!(out, "\n[{}]", header.join("."));
        let empty = Table::new();
        let redacted = match section.redacted.get(key) {
            Some(Value::Table(table)) => table,
            _ => &empty,
        };
        write_table(
            out,
            &Section {
                path,
                plain: table,
                redacted,
                every_key: section
                    .every_key
                    .get(key)
                    .unwrap_or(&serde_json::Value::Null),
            },
            origins,
        );
    }
}

/// A key as TOML writes it: bare when it can be, quoted otherwise (`"karpenter.sh/nodepool"`).
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every shape the settings have: a secret set and one empty, an unset option, a map, a
    /// list of tables, nested tables.
    #[derive(Serialize)]
    struct Example {
        server: Server,
        limits: BTreeMap<String, Limit>,
    }

    #[derive(Serialize)]
    struct Server {
        url: Secret,
        token: Secret,
        port: u16,
        labels: BTreeMap<String, String>,
        rules: Vec<Limit>,
        tls: Tls,
        name: String,
    }

    #[derive(Serialize)]
    struct Tls {
        enabled: bool,
    }

    #[derive(Serialize)]
    struct Limit {
        rate: Option<u32>,
        window: Option<u32>,
    }

    #[test]
    fn renders_every_shape_as_toml_with_secrets_redacted() {
        let example = Example {
            server: Server {
                url: Secret::new("redis://:hunter2@db/"),
                token: Secret::default(),
                port: 9464,
                labels: BTreeMap::new(),
                rules: vec![Limit {
                    rate: Some(3),
                    window: None,
                }],
                tls: Tls { enabled: true },
                name: "a \"quoted\" name".into(),
            },
            limits: BTreeMap::from([(
                "a.b c".to_owned(),
                Limit {
                    rate: None,
                    window: Some(60),
                },
            )]),
        };
        let rendered = render(&example, &Origins::default()).unwrap();
        let body = rendered.strip_prefix(HEADER).unwrap();
        assert_eq!(
            body,
            r#"
[server]
url = "<redacted>" # default (secret, redacted)
token = "" # default (secret, empty)
port = 9464 # default
labels = {} # default
rules = [{ rate = 3 }] # default
name = 'a "quoted" name' # default

[server.tls]
enabled = true # default

[limits]

[limits."a.b c"]
window = 60 # default
# rate is unset (default)
"#
        );
        let parsed: Table = rendered.parse().unwrap();
        assert_eq!(parsed["server"]["port"].as_integer(), Some(9464));
        assert_eq!(parsed["limits"]["a.b c"]["window"].as_integer(), Some(60));
    }

    /// A folder of this test's own, emptied first.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ducks-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const FILE: &str = r#"
[queue]
max_backlog = 7
lease_ms = 9000

[worker.kubernetes]
node_selector = { "karpenter.sh/nodepool" = "gpu" }
gpu_tolerations = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]

[twitch.channel.ducks]
max_jobs = 2
"#;

    const SECRET: &str = "hunter2";

    fn environment() -> Vec<(String, String)> {
        [
            ("DUCKS_QUEUE__LEASE_MS", "1234"),
            ("DUCKS_REDIS__URL", "redis://:hunter2@db:6379/"),
            ("DUCKS_S3__SECRET_ACCESS_KEY", SECRET),
            ("DUCKS_DISCORD__TOKEN", SECRET),
            ("DUCKS_TWITCH__TOKEN", SECRET),
            ("DUCKS_TWITCH__CLIENT_SECRET", SECRET),
            ("DUCKS_API__PEPPER", SECRET),
            ("DUCKS_LINKS__SIGNING_KEY", SECRET),
            ("DUCKS_API__PUBLIC_URL", "https://ducks.example.com"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }

    #[test]
    fn says_where_each_key_came_from_and_never_prints_a_secret() {
        let dir = scratch("origins");
        let file = dir.join("ducks.toml");
        std::fs::write(&file, FILE).unwrap();
        let settings = Settings::from_sources(Some(&file), environment()).unwrap();
        let printed = render(&settings, &settings.origins).unwrap();
        assert!(!printed.contains(SECRET), "{printed}");
        let from_file = |line: &str| {
            printed
                .lines()
                .any(|l| l.starts_with(&format!("{line} # from ")) && l.ends_with("ducks.toml"))
        };
        for line in [
            "max_backlog = 7",
            r#""karpenter.sh/nodepool" = "gpu""#,
            r#"gpu_tolerations = [{ effect = "NoSchedule", key = "nvidia.com/gpu", operator = "Exists" }]"#,
            "max_jobs = 2",
        ] {
            assert!(from_file(line), "{line} from the file:\n{printed}");
        }
        for line in [
            // The environment over the file.
            "lease_ms = 1234 # from DUCKS_QUEUE__LEASE_MS",
            r#"url = "<redacted>" # from DUCKS_REDIS__URL (secret, redacted)"#,
            r#"secret_access_key = "<redacted>" # from DUCKS_S3__SECRET_ACCESS_KEY (secret, redacted)"#,
            r#"pepper = "<redacted>" # from DUCKS_API__PEPPER (secret, redacted)"#,
            r#"signing_key = "<redacted>" # from DUCKS_LINKS__SIGNING_KEY (secret, redacted)"#,
            r#"refresh_token = "" # default (secret, empty)"#,
            r#"base_url = "https://ducks.example.com" # from api.public_url"#,
            r#"public_url = "https://ducks.example.com" # from DUCKS_API__PUBLIC_URL"#,
            "cluster = false # default",
            r#"listen = "127.0.0.1:9464" # default"#,
            r#"format = "text" # default"#,
            "[worker.kubernetes.node_selector]",
            "# user_cooldown_secs is unset (default)",
        ] {
            assert!(printed.lines().any(|l| l == line), "{line}:\n{printed}");
        }
        // Every section, in the order the settings declare them.
        let sections: Vec<&str> = printed
            .lines()
            .filter(|l| l.starts_with('[') && !l.contains('.'))
            .collect();
        assert_eq!(
            sections,
            [
                "[redis]",
                "[queue]",
                "[s3]",
                "[runner]",
                "[worker]",
                "[links]",
                "[api]",
                "[discord]",
                "[twitch]",
                "[dev]",
                "[log]"
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn loads_back_to_the_same_settings_secrets_aside() {
        let dir = scratch("round-trip");
        let file = dir.join("ducks.toml");
        std::fs::write(&file, FILE).unwrap();
        let settings = Settings::from_sources(Some(&file), environment()).unwrap();
        let printed = dir.join("printed.toml");
        std::fs::write(&printed, render(&settings, &settings.origins).unwrap()).unwrap();
        // Unedited, the placeholders are refused: no process runs with "<redacted>" as a key.
        let err = Settings::from_sources(Some(&printed), []).unwrap_err();
        assert!(err.to_string().contains("\"<redacted>\""), "{err}");
        // With the secrets where a deployment keeps them, the rest comes back as it was.
        let reloaded = Settings::from_sources(Some(&printed), environment()).unwrap();
        let shown = |s: &Settings| secret::redacted(|| serde_json::to_value(s).unwrap());
        assert_eq!(shown(&reloaded), shown(&settings));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_defaults_print_and_load_back() {
        let settings = Settings::from_sources(None, []).unwrap();
        let printed = render(&settings, &settings.origins).unwrap();
        let table: Table = printed.parse().unwrap();
        assert_eq!(table["worker"]["launcher"].as_str(), Some("local"));
        assert!(
            printed
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with(['#', '[']))
                .all(|l| l.ends_with("# default")
                    || l.ends_with("# default (secret, redacted)")
                    || l.ends_with("# default (secret, empty)")),
            "{printed}"
        );
    }
}
