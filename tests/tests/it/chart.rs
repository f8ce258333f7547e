//! The Helm chart (`charts/ducks`), proved without a cluster.
//!
//! Every value set in `charts/ducks/ci/` is linted and rendered by Helm's own engine (Helm v4's Go
//! SDK through the pinned `helm-python-sdk`; tests/src/chart.rs), and every rendered object is
//! validated strictly, unknown fields refused, against the schemas of Kubernetes 1.31.0 and
//! 1.37.0 (the pinned `kubernetes-validate`) or, for KEDA's and the Prometheus Operator's objects,
//! against their CRDs kept in tests/crds/ (KEDA v2.20.2, Prometheus Operator v0.93.0). Values the
//! schema must refuse are refused, one test per rule, with the key in the message. The chart and
//! the code cannot drift apart unseen: every DUCKS_* key the chart sets is one the settings know
//! (`ducks config` loads each process's rendered environment and files), every setting a process
//! needs has a value, the worker's Role is exactly the rules the worker checks at start, KEDA's
//! triggers name the queue's own keys, and the images run the commands the chart gives them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use ducks_tests::chart::{
    self, EnvSource, Environment, NAMESPACE, Rendered, chart_py, ci_values, value_sets,
};
use ducks_tests::ducks_binary;
use serde_json::{Value, json};

/// The oldest and newest Kubernetes the chart supports: 1.31 made the Job features the worker
/// relies on generally available.
const KUBERNETES: [&str; 2] = ["1.31.0", "1.37.0"];

/// Every value set rendered once, by name.
fn rendered() -> &'static BTreeMap<String, Rendered> {
    static RENDERED: OnceLock<BTreeMap<String, Rendered>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        value_sets()
            .into_iter()
            .map(|name| {
                let rendered = chart::render_ci(&name);
                (name, rendered)
            })
            .collect()
    })
}

fn set(name: &str) -> &'static Rendered {
    rendered()
        .get(name)
        .unwrap_or_else(|| panic!("charts/ducks/ci/{name}-values.yaml is missing"))
}

fn workload(component: &str) -> String {
    format!("{}-{component}", chart::RELEASE)
}

#[test]
fn the_value_sets_cover_the_shapes_docs_deploy_md_describes() {
    assert_eq!(
        value_sets(),
        ["coreweave", "eks-gpu", "external-redis-keda", "kind-cpu"],
        "docs/deploy.md walks through these four"
    );
}

#[test]
fn every_value_set_passes_helm_lint_strict() {
    for name in value_sets() {
        for version in KUBERNETES {
            let file = ci_values(&name);
            let (_, report) = chart_py(
                &[
                    "lint",
                    &chart::chart_dir().display().to_string(),
                    "--values",
                    &file.display().to_string(),
                    "--kube-version",
                    version,
                ],
                None,
            );
            assert_eq!(report["errors"], json!([]), "{name} on {version}: {report}");
            // Severity 1 is information ("icon is recommended"); warnings and errors fail.
            let serious: Vec<&Value> = report["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["severity"].as_i64().unwrap_or(3) > 1)
                .collect();
            assert!(serious.is_empty(), "{name} on {version}: {serious:?}");
        }
    }
}

#[test]
fn every_rendered_object_is_valid_on_kubernetes_1_31_and_1_37_and_against_the_crds() {
    let mut kinds = BTreeSet::new();
    for (name, rendered) in rendered() {
        let objects: Vec<Value> = rendered
            .objects
            .iter()
            .map(|o| json!({"template": o.template, "object": o.object}))
            .collect();
        let mut args = vec!["validate".to_owned()];
        for version in KUBERNETES {
            args.extend(["--kube".to_owned(), version.to_owned()]);
        }
        let crds = chart::workspace().join("tests/crds");
        args.extend(["--crds".to_owned(), crds.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, report) = chart_py(&args, Some(&Value::from(objects).to_string()));
        assert_eq!(
            (code, &report["problems"]),
            (0, &json!([])),
            "{name}: rendered objects are not valid"
        );
        let checked = report["checked"].as_array().expect("a list").len();
        assert!(checked >= rendered.objects.len(), "{name}: {report}");
        kinds.extend(
            rendered
                .objects
                .iter()
                .filter_map(|o| o.object["kind"].as_str().map(str::to_owned)),
        );
    }
    // The custom resources are among them, so their CRD schemas were used.
    for kind in [
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "NetworkPolicy",
        "Ingress",
        "PodDisruptionBudget",
        "StatefulSet",
    ] {
        assert!(kinds.contains(kind), "no value set renders a {kind}");
    }
}

/// Renders the CPU-only value set with `overrides` and expects Helm to refuse it with the schema's
/// message naming each of `keys` (JSON pointers, as Helm writes them).
fn refused(overrides: Value, keys: &[&str]) {
    let error = chart::render(&[&ci_values("kind-cpu")], Some(&overrides))
        .err()
        .unwrap_or_else(|| panic!("{overrides} was accepted"));
    assert!(
        error.contains("values don't meet the specifications of the schema"),
        "{overrides}: not the schema's refusal: {error}"
    );
    for key in keys {
        assert!(
            error.contains(&format!("'{key}'")),
            "{overrides}: the message does not name {key}: {error}"
        );
    }
}

/// One test per rule of values.schema.json.
macro_rules! refused {
    ($($name:ident: $overrides:tt => [$($key:literal),+];)+) => {
        $(
            #[test]
            fn $name() {
                refused(json!($overrides), &[$($key),+]);
            }
        )+
    };
}

refused! {
    refuses_an_unknown_key: {"worker": {"replica": 2}} => ["/worker"];
    refuses_a_count_that_is_not_a_number: {"worker": {"replicas": "two"}} => ["/worker/replicas"];
    refuses_an_unknown_pull_policy: {"image": {"pullPolicy": "Sometimes"}} => ["/image/pullPolicy"];
    refuses_an_unknown_log_format: {"log": {"format": "xml"}} => ["/log/format"];
    refuses_resources_without_limits: {"api": {"resources": {"limits": null}}} => ["/api/resources"];
    refuses_an_unknown_toleration_field: {"runner": {"gpuTolerations": [{"key": "a", "tolerationSecs": 5}]}} => ["/runner/gpuTolerations/0"];
    refuses_a_secret_among_plain_settings: {"settings": {"DUCKS_API__PEPPER": "x"}} => ["/settings/DUCKS_API__PEPPER"];
    refuses_a_setting_that_is_not_a_ducks_setting: {"settings": {"QUEUE_NAME": "x"}} => ["/settings"];
    refuses_an_external_redis_without_its_url: {"redis": {"internal": {"enabled": false}}} => ["/redis/external/url"];
    refuses_a_redis_url_that_is_not_redis: {"redis": {"internal": {"enabled": false}, "external": {"url": "http://redis:6379"}}} => ["/redis/external/url"];
    refuses_redis_auth_without_a_password: {"redis": {"internal": {"auth": true}}} => ["/secrets/redisPassword"];
    refuses_an_api_with_keys_but_no_pepper: {"secrets": {"apiPepper": "short"}} => ["/secrets/apiPepper"];
    refuses_an_ingress_without_a_host: {"api": {"ingress": {"enabled": true}}} => ["/api/ingress/host"];
    refuses_discord_without_an_application_id: {"discord": {"applicationId": "my-bot"}} => ["/discord/applicationId"];
    refuses_discord_without_a_token: {"secrets": {"discordToken": ""}} => ["/secrets/discordToken"];
    refuses_discord_http_without_a_public_key: {"discord": {"mode": "http"}} => ["/secrets/discordPublicKey"];
    refuses_two_discord_gateway_replicas: {"discord": {"replicas": 2}} => ["/discord/replicas"];
    refuses_the_interactions_route_without_http_mode_and_an_ingress: {"discord": {"ingress": true}} => ["/discord/mode", "/api/ingress/enabled"];
    refuses_twitch_without_a_login: {"twitch": {"enabled": true, "channels": "ducks_tv"}, "secrets": {"twitchToken": "t"}} => ["/twitch/login"];
    refuses_twitch_channels_that_are_not_logins: {"twitch": {"enabled": true, "login": "bot", "channels": "#ducks tv!"}, "secrets": {"twitchToken": "t"}} => ["/twitch/channels"];
    refuses_twitch_without_a_token: {"twitch": {"enabled": true, "login": "bot", "channels": "ducks_tv"}} => ["/secrets/twitchToken", "/secrets/twitchRefreshToken"];
    refuses_a_refresh_token_without_the_client: {"secrets": {"twitchRefreshToken": "r"}} => ["/twitch/clientId", "/secrets/twitchClientSecret"];
    refuses_twitch_without_a_signing_key: {"twitch": {"enabled": true, "login": "bot", "channels": "ducks_tv"}, "secrets": {"twitchToken": "t"}, "api": {"publicUrl": "https://ducks.example.com"}} => ["/secrets/linksSigningKey"];
    refuses_twitch_without_a_public_address: {"twitch": {"enabled": true, "login": "bot", "channels": "ducks_tv"}, "secrets": {"twitchToken": "t", "linksSigningKey": "k"}} => ["/links/baseUrl", "/api/publicUrl", "/api/ingress/host"];
    refuses_keda_on_an_external_redis_without_its_address: {"redis": {"internal": {"enabled": false}, "external": {"url": "redis://r:6379/"}}, "autoscaling": {"keda": {"enabled": true}}} => ["/autoscaling/keda/redis/address"];
    refuses_half_an_s3_key_pair: {"s3": {"secretAccessKey": ""}} => ["/s3/secretAccessKey"];
    refuses_two_weight_caches: {"runner": {"cache": {"existingClaim": "weights"}}} => ["/runner/cache/existingClaim"];
}

/// The processes the chart runs, with the settings each cannot start without (their `check()`s:
/// ApiConfig, DiscordConfig, TwitchConfig, and the worker's launcher) and the address it serves
/// its probes on.
struct Process {
    component: &'static str,
    listen: &'static str,
    required: fn(&BTreeMap<String, EnvSource>) -> Vec<&'static str>,
}

const PROCESSES: [Process; 4] = [
    Process {
        component: "worker",
        listen: "DUCKS_WORKER__LISTEN",
        required: |_| {
            vec![
                "DUCKS_WORKER__KUBERNETES__NAMESPACE",
                "DUCKS_WORKER__KUBERNETES__RUNNER_IMAGE",
                "DUCKS_WORKER__KUBERNETES__SERVICE_ACCOUNT",
                "DUCKS_CONFIG",
            ]
        },
    },
    Process {
        component: "api",
        listen: "DUCKS_API__LISTEN",
        required: |env| {
            if value(env, "DUCKS_API__OPEN") == Some("true") {
                vec![]
            } else {
                vec!["DUCKS_API__PEPPER"]
            }
        },
    },
    Process {
        component: "discord",
        listen: "DUCKS_DISCORD__LISTEN",
        required: |env| {
            let mut keys = vec!["DUCKS_DISCORD__TOKEN", "DUCKS_DISCORD__APPLICATION_ID"];
            if value(env, "DUCKS_DISCORD__MODE") == Some("http") {
                keys.push("DUCKS_DISCORD__PUBLIC_KEY");
            }
            keys
        },
    },
    Process {
        component: "twitch",
        listen: "DUCKS_TWITCH__LISTEN",
        required: |env| {
            let mut keys = vec![
                "DUCKS_TWITCH__LOGIN",
                "DUCKS_TWITCH__CHANNELS",
                "DUCKS_LINKS__SIGNING_KEY",
            ];
            keys.push(if env.contains_key("DUCKS_TWITCH__TOKEN") {
                "DUCKS_TWITCH__TOKEN"
            } else {
                "DUCKS_TWITCH__REFRESH_TOKEN"
            });
            if env.contains_key("DUCKS_TWITCH__REFRESH_TOKEN") {
                keys.extend(["DUCKS_TWITCH__CLIENT_ID", "DUCKS_TWITCH__CLIENT_SECRET"]);
            }
            // Short links: links.base_url, which the settings default to api.public_url.
            keys.push(if has_value(env, "DUCKS_LINKS__BASE_URL") {
                "DUCKS_LINKS__BASE_URL"
            } else {
                "DUCKS_API__PUBLIC_URL"
            });
            keys
        },
    },
];

/// Settings every process needs.
const EVERYONE_NEEDS: [&str; 3] = ["DUCKS_REDIS__URL", "DUCKS_QUEUE__NAME", "DUCKS_S3__BUCKET"];

fn value<'a>(env: &'a BTreeMap<String, EnvSource>, key: &str) -> Option<&'a str> {
    env.get(key).and_then(EnvSource::value)
}

/// A literal that is not empty, or a key of a Secret the operator provides.
fn has_value(env: &BTreeMap<String, EnvSource>, key: &str) -> bool {
    match env.get(key) {
        Some(EnvSource::Value(value)) => !value.trim().is_empty(),
        Some(EnvSource::ExternalSecret { .. }) => true,
        None => false,
    }
}

/// The processes a value set runs, with their environment.
fn processes(rendered: &Rendered) -> Vec<(&'static Process, Environment)> {
    PROCESSES
        .iter()
        .filter(|p| rendered.get("Deployment", &workload(p.component)).is_some())
        .map(|p| {
            let env = rendered
                .environment(&workload(p.component), p.component)
                .unwrap_or_else(|e| panic!("{}: {e}", p.component));
            (p, env)
        })
        .collect()
}

/// Every `DUCKS_*` key .env.example names (a unit test in cli/src/settings.rs proves it names
/// every setting), commented-out examples included.
fn known_settings() -> BTreeSet<String> {
    let example = std::fs::read_to_string(chart::workspace().join(".env.example"))
        .expect(".env.example is readable");
    example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .map(|(key, _)| key.to_owned())
        .filter(|key| key.starts_with("DUCKS_") && !key.contains(' '))
        .collect()
}

#[test]
fn every_setting_the_chart_sets_exists_and_every_required_one_has_a_value() {
    let known = known_settings();
    for (name, rendered) in rendered() {
        let processes = processes(rendered);
        assert!(
            processes.iter().any(|(p, _)| p.component == "worker"),
            "{name}: no worker"
        );
        for (process, env) in &processes {
            let what = format!("{name}: {}", process.component);
            for key in env.vars.keys().filter(|k| k.starts_with("DUCKS_")) {
                assert!(
                    known.contains(key),
                    "{what} sets {key}, which no setting is"
                );
            }
            for key in EVERYONE_NEEDS.iter().chain(&(process.required)(&env.vars)) {
                assert!(has_value(&env.vars, key), "{what} has no value for {key}");
            }
            // The probes reach the process: it listens on every address, on the port named http.
            let listen = value(&env.vars, process.listen).unwrap_or_default();
            let container = rendered
                .container(&workload(process.component), process.component)
                .expect("rendered");
            let port = container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "http")
                .map(|p| p["containerPort"].clone());
            assert_eq!(
                Some(listen.to_owned()),
                port.map(|p| format!("0.0.0.0:{p}")),
                "{what}: {} and the http port differ",
                process.listen
            );
        }
    }
}

/// Runs `ducks config` with exactly a process's rendered environment and files (secrets from an
/// operator's Secret stand in as placeholders): it loads every layer with unknown keys refused,
/// so a key or value the settings do not take fails here. What it prints is the settings as
/// ducks.toml.
fn ducks_config(rendered: &Rendered, component: &str) -> toml::Table {
    let (workload, env) = (
        workload(component),
        rendered.environment(&workload(component), component),
    );
    let env = env.unwrap_or_else(|e| panic!("{component}: {e}"));
    let root = tempfile::tempdir().expect("a temporary folder");
    let files = rendered.files(&workload, component).expect("mounted files");
    let mut vars: BTreeMap<String, String> = env
        .vars
        .iter()
        .map(|(key, source)| {
            let value = match source {
                EnvSource::Value(value) => value.clone(),
                EnvSource::ExternalSecret { key, .. } => format!("placeholder-{key}"),
            };
            (key.clone(), value)
        })
        .collect();
    for (path, content) in &files {
        let local = root.path().join(path.strip_prefix("/").unwrap_or(path));
        std::fs::create_dir_all(local.parent().expect("a folder")).expect("made");
        std::fs::write(&local, content).expect("written");
        for value in vars.values_mut() {
            if Path::new(value.as_str()) == path {
                *value = local.display().to_string();
            }
        }
    }
    let output = Command::new(ducks_binary())
        .arg("config")
        .env_clear()
        .envs(&vars)
        .current_dir(root.path())
        .output()
        .expect("ducks config runs");
    assert!(
        output.status.success(),
        "{component}: `ducks config` refuses the chart's settings: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    printed
        .parse()
        .unwrap_or_else(|e| panic!("{component}: `ducks config` printed no TOML ({e}):\n{printed}"))
}

#[test]
fn every_process_loads_the_settings_the_chart_gives_it() {
    for (name, rendered) in rendered() {
        for (process, _) in processes(rendered) {
            let printed = ducks_config(rendered, process.component);
            assert_eq!(
                printed["worker"]["launcher"].as_str(),
                Some("kubernetes"),
                "{name}: {printed}"
            );
        }
    }
    // The worker's file: maps and tolerations, which have no environment form, arrive.
    let printed = ducks_config(set("eks-gpu"), "worker");
    let kubernetes = &printed["worker"]["kubernetes"];
    assert_eq!(
        kubernetes["node_selector"]["karpenter.sh/nodepool"].as_str(),
        Some("gpu"),
        "{printed}"
    );
    let toleration = toml::Value::try_from(json!({
        "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"
    }))
    .expect("a TOML table");
    assert_eq!(
        kubernetes["gpu_tolerations"].as_array(),
        Some(&vec![toleration]),
        "{printed}"
    );
    let printed = ducks_config(set("kind-cpu"), "worker");
    assert_eq!(
        printed["worker"]["kubernetes"]["gpu_tolerations"].as_array(),
        Some(&Vec::new()),
        "{printed}"
    );
}

#[test]
fn settings_of_your_own_reach_every_process() {
    let rendered = chart::render(
        &[&ci_values("kind-cpu")],
        Some(&json!({"settings": {"DUCKS_QUEUE__LEASE_MS": 4500000, "DUCKS_WORKER__CONCURRENCY": "3"}})),
    )
    .expect("renders");
    for (process, env) in processes(&rendered) {
        // A number as written, not 4.5e+06.
        assert_eq!(value(&env.vars, "DUCKS_QUEUE__LEASE_MS"), Some("4500000"));
        // Over the chart's own value.
        assert_eq!(
            value(&env.vars, "DUCKS_WORKER__CONCURRENCY"),
            Some("3"),
            "{}",
            process.component
        );
    }
}

/// Names of settings that are secrets.
const SECRET_SETTINGS: [&str; 10] = [
    "DUCKS_REDIS__URL",
    "DUCKS_S3__ACCESS_KEY_ID",
    "DUCKS_S3__SECRET_ACCESS_KEY",
    "DUCKS_API__PEPPER",
    "DUCKS_LINKS__SIGNING_KEY",
    "DUCKS_DISCORD__TOKEN",
    "DUCKS_DISCORD__PUBLIC_KEY",
    "DUCKS_TWITCH__TOKEN",
    "DUCKS_TWITCH__REFRESH_TOKEN",
    "DUCKS_TWITCH__CLIENT_SECRET",
];

#[test]
fn nothing_secret_is_in_a_config_map_or_a_pod_spec() {
    let secrets = json!({
        "secrets": {"apiPepper": "pepper-7f3a9c1d5e", "linksSigningKey": "signing-2b8e4f6a",
                    "discordToken": "token-9d1c3b5a", "discordPublicKey": "ab".repeat(32),
                    "twitchToken": "twitch-4e6f8a0b", "twitchRefreshToken": "refresh-1a3c5e7g",
                    "twitchClientSecret": "client-5b7d9f1h", "redisPassword": "redispassword0123456789"},
        "redis": {"internal": {"auth": true}},
        "s3": {"secretAccessKey": "s3secret-3c5e7a9b"},
        "discord": {"mode": "http"},
        "twitch": {"enabled": true, "login": "bot", "channels": "ducks_tv", "clientId": "c"},
        "api": {"publicUrl": "https://ducks.example.com"},
    });
    let rendered = chart::render(&[&ci_values("kind-cpu")], Some(&secrets)).expect("renders");
    let values: Vec<String> = secrets["secrets"]
        .as_object()
        .expect("an object")
        .values()
        .chain([&secrets["s3"]["secretAccessKey"]])
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect();
    for object in &rendered.objects {
        if object.object["kind"] == "Secret" {
            continue;
        }
        let text = object.object.to_string();
        for value in &values {
            assert!(
                !text.contains(value.as_str()),
                "{} holds a secret",
                object.template
            );
        }
        if object.object["kind"] == "ConfigMap" {
            for key in object.object["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                assert!(
                    !SECRET_SETTINGS.contains(&key.as_str()),
                    "{key} in a ConfigMap"
                );
            }
        }
    }
    // Each process finds its secrets, and only its own: the runner's S3 Secret has S3 keys only.
    for (process, env) in processes(&rendered) {
        for key in SECRET_SETTINGS
            .iter()
            .filter(|k| env.vars.contains_key(**k))
        {
            assert!(has_value(&env.vars, key), "{}: {key}", process.component);
        }
        let has = |key: &str| env.vars.contains_key(key);
        match process.component {
            "worker" => assert!(!has("DUCKS_API__PEPPER") && !has("DUCKS_DISCORD__TOKEN")),
            "discord" | "twitch" => assert!(!has("DUCKS_S3__SECRET_ACCESS_KEY")),
            _ => {}
        }
    }
    let s3 = rendered.data("Secret", "ducks-s3").expect("decodes");
    assert_eq!(
        s3.map(|d| d.into_keys().collect::<Vec<_>>()),
        Some(vec![
            "DUCKS_S3__ACCESS_KEY_ID".to_owned(),
            "DUCKS_S3__SECRET_ACCESS_KEY".to_owned()
        ])
    );
    let worker = rendered
        .environment("ducks-worker", "worker")
        .expect("resolves");
    assert_eq!(
        value(&worker.vars, "DUCKS_REDIS__URL"),
        Some("redis://:redispassword0123456789@ducks-redis:6379/")
    );
    assert_eq!(
        value(&worker.vars, "DUCKS_WORKER__KUBERNETES__S3_SECRET"),
        Some("ducks-s3")
    );
}

#[test]
fn the_worker_role_is_exactly_what_the_worker_checks_at_start() {
    let expected =
        serde_json::to_value(ducks_worker::kube::rbac::required_rules()).expect("serializes");
    for (name, rendered) in rendered() {
        let roles = rendered.of_kind("Role");
        assert_eq!(roles.len(), 1, "{name}: one Role, the worker's");
        assert_eq!(roles[0]["rules"], expected, "{name}");
        assert!(rendered.of_kind("ClusterRole").is_empty(), "{name}");
        assert!(rendered.of_kind("ClusterRoleBinding").is_empty(), "{name}");
        let binding = rendered.get("RoleBinding", "ducks-worker").expect("bound");
        assert_eq!(binding["roleRef"]["name"], "ducks-worker");
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "ducks-worker", "namespace": NAMESPACE}])
        );
        let pod = rendered.pod_spec("ducks-worker").expect("rendered");
        assert_eq!(pod["serviceAccountName"], "ducks-worker");
        assert_eq!(pod["automountServiceAccountToken"], true);
    }
}

#[test]
fn runner_pods_get_an_identity_and_no_kubernetes_api_access() {
    for (name, rendered) in rendered() {
        let runner = rendered
            .get("ServiceAccount", "ducks-runner")
            .expect("the runner's service account");
        assert_eq!(runner["automountServiceAccountToken"], false, "{name}");
        for binding in rendered.of_kind("RoleBinding") {
            for subject in binding["subjects"].as_array().into_iter().flatten() {
                assert_ne!(
                    subject["name"], "ducks-runner",
                    "{name}: the runner is bound"
                );
            }
        }
        let settings = rendered
            .data("ConfigMap", "ducks-settings")
            .expect("decodes");
        let settings = settings.expect("the settings");
        assert_eq!(
            settings["DUCKS_WORKER__KUBERNETES__SERVICE_ACCOUNT"], "ducks-runner",
            "{name}"
        );
        // Only the worker may talk to the API server.
        for kind in ["Deployment", "StatefulSet"] {
            for workload in rendered.of_kind(kind) {
                let token = &workload["spec"]["template"]["spec"]["automountServiceAccountToken"];
                let is_worker = workload["metadata"]["name"] == "ducks-worker";
                assert_eq!(
                    token,
                    &json!(is_worker),
                    "{name}: {}",
                    workload["metadata"]["name"]
                );
            }
        }
    }
    let irsa = set("eks-gpu")
        .get("ServiceAccount", "ducks-runner")
        .expect("rendered");
    assert!(
        irsa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string(),
        "{irsa}"
    );
}

#[test]
fn every_pod_runs_locked_down_with_requests_limits_and_probes() {
    for (name, rendered) in rendered() {
        for kind in ["Deployment", "StatefulSet"] {
            for workload in rendered.of_kind(kind) {
                let what = format!("{name}: {}", workload["metadata"]["name"]);
                let pod = &workload["spec"]["template"]["spec"];
                assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
                assert_eq!(
                    pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                    "{what}"
                );
                for container in pod["containers"].as_array().expect("containers") {
                    let security = &container["securityContext"];
                    assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
                    assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
                    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{what}");
                    for side in ["requests", "limits"] {
                        for resource in ["cpu", "memory"] {
                            assert!(
                                container["resources"][side][resource].is_string(),
                                "{what}: no {side}.{resource}"
                            );
                        }
                    }
                    let redis = container["name"] == "redis";
                    for (probe, path) in
                        [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
                    {
                        if redis {
                            assert!(container[probe]["exec"].is_object(), "{what}: {probe}");
                        } else {
                            assert_eq!(container[probe]["httpGet"]["path"], path, "{what}");
                            assert_eq!(container[probe]["httpGet"]["port"], "http", "{what}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_in_chart_redis_keeps_every_acknowledged_write() {
    let rendered = set("kind-cpu");
    let redis = rendered
        .get("StatefulSet", "ducks-redis")
        .expect("rendered");
    let args: Vec<&str> = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for pair in [
        ["--appendonly", "yes"],
        ["--appendfsync", "always"],
        ["--maxmemory-policy", "noeviction"],
        ["--dir", "/data"],
    ] {
        assert!(
            args.windows(2).any(|w| w == pair),
            "{pair:?} not in {args:?}"
        );
    }
    let claims = &redis["spec"]["volumeClaimTemplates"];
    assert_eq!(claims[0]["metadata"]["name"], "data");
    assert!(
        set("external-redis-keda")
            .get("StatefulSet", "ducks-redis")
            .is_none()
    );
}

#[test]
fn images_default_to_the_charts_app_version_which_is_the_workspaces() {
    let chart_yaml = std::fs::read_to_string(chart::chart_dir().join("Chart.yaml")).expect("read");
    let app_version = chart_yaml
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"'))
        .expect("Chart.yaml has an appVersion");
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml's appVersion"
    );
    // The CoreWeave set names no tag.
    let rendered = set("coreweave");
    let settings = rendered
        .data("ConfigMap", "ducks-settings")
        .expect("decodes")
        .expect("rendered");
    assert_eq!(
        settings["DUCKS_WORKER__KUBERNETES__RUNNER_IMAGE"],
        format!("ghcr.io/ducks-dev/ducks-runner:{app_version}")
    );
    for (process, _) in processes(rendered) {
        let container = rendered
            .container(&workload(process.component), process.component)
            .expect("rendered");
        assert_eq!(
            container["image"],
            format!("ghcr.io/ducks-dev/ducks:{app_version}")
        );
    }
}

/// `ENTRYPOINT` and `USER` of a Dockerfile's last stage.
fn entrypoint_and_user(dockerfile: &str) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(chart::workspace().join(dockerfile)).expect("read");
    let last_stage = text.rsplit("\nFROM ").next().expect("a stage");
    let line = |instruction: &str| {
        last_stage
            .lines()
            .filter_map(|l| l.strip_prefix(instruction))
            .next_back()
            .map(str::trim)
            .unwrap_or_else(|| panic!("{dockerfile} has no {instruction}"))
            .to_owned()
    };
    let entrypoint = serde_json::from_str(&line("ENTRYPOINT ")).expect("ENTRYPOINT in JSON form");
    (entrypoint, line("USER "))
}

#[test]
fn the_images_run_what_the_chart_and_the_worker_ask_of_them() {
    // Both images start the `ducks` binary as the user the pods run as.
    for dockerfile in ["docker/ducks.Dockerfile", "docker/runner.Dockerfile"] {
        let (entrypoint, user) = entrypoint_and_user(dockerfile);
        assert_eq!(entrypoint, ["/usr/local/bin/ducks"], "{dockerfile}");
        assert_eq!(user, "10001:10001", "{dockerfile}");
    }
    let check = |args: &[String], what: &str| {
        let status = Command::new(ducks_binary())
            .args(args)
            .arg("--help")
            .output()
            .expect("ducks runs");
        assert!(
            status.status.success(),
            "{what}: `ducks {}` is no command",
            args.join(" ")
        );
    };
    // The worker's Jobs give the runner container its command as arguments to that entrypoint.
    check(
        &[ducks_worker::kube::spec::RUNNER_COMMAND.to_owned()],
        "runner Jobs",
    );
    for (name, rendered) in rendered() {
        for (process, _) in processes(rendered) {
            let what = format!("{name}: {}", process.component);
            let workload = workload(process.component);
            let pod = rendered.pod_spec(&workload).expect("rendered");
            assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{what}");
            assert_eq!(pod["securityContext"]["runAsGroup"], 10001, "{what}");
            let container = rendered
                .container(&workload, process.component)
                .expect("rendered");
            assert!(
                container["command"].is_null(),
                "{what}: the entrypoint is the image's"
            );
            let args: Vec<String> =
                serde_json::from_value(container["args"].clone()).expect("args are strings");
            check(&args, &what);
        }
    }
}

#[test]
fn the_cpu_value_set_runs_runner_pods_on_the_ducks_image() {
    let rendered = set("kind-cpu");
    let settings = rendered
        .data("ConfigMap", "ducks-settings")
        .expect("decodes")
        .expect("rendered");
    let worker = rendered
        .container("ducks-worker", "worker")
        .expect("rendered");
    assert_eq!(
        json!(settings["DUCKS_WORKER__KUBERNETES__RUNNER_IMAGE"]),
        worker["image"],
        "the runner image is built for CUDA"
    );
    assert_eq!(
        settings["DUCKS_WORKER__KUBERNETES__CACHE__CLAIM"],
        "ducks-runner-cache"
    );
    assert!(
        rendered
            .get("PersistentVolumeClaim", "ducks-runner-cache")
            .is_some()
    );
    let gpu = set("eks-gpu")
        .data("ConfigMap", "ducks-settings")
        .expect("decodes")
        .expect("rendered");
    assert!(gpu["DUCKS_WORKER__KUBERNETES__RUNNER_IMAGE"].contains("/ducks-runner:"));
}

#[test]
fn keda_scales_workers_on_waiting_running_and_delayed_jobs() {
    let rendered = set("external-redis-keda");
    let scaled = rendered
        .get("ScaledObject", "ducks-worker")
        .expect("rendered");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "ducks-worker");
    assert_eq!(scaled["spec"]["minReplicaCount"], 0);
    // KEDA owns the replica count.
    let worker = rendered
        .get("Deployment", "ducks-worker")
        .expect("rendered");
    assert!(worker["spec"]["replicas"].is_null());
    let keys = ducks_queue::keys::Keys::new("main");
    let triggers: BTreeMap<String, &Value> = scaled["spec"]["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .map(|t| (t["name"].as_str().unwrap_or_default().to_owned(), t))
        .collect();
    let waiting = &triggers["waiting"];
    assert_eq!(waiting["type"], "redis-streams");
    assert_eq!(waiting["metadata"]["stream"], keys.jobs());
    assert_eq!(
        waiting["metadata"]["consumerGroup"],
        ducks_queue::keys::WORKER_GROUP
    );
    assert!(waiting["metadata"]["lagCount"].is_string());
    let running = &triggers["running"];
    assert_eq!(running["metadata"]["stream"], keys.jobs());
    assert_eq!(
        running["metadata"]["consumerGroup"],
        ducks_queue::keys::WORKER_GROUP
    );
    assert!(running["metadata"]["pendingEntriesCount"].is_string());
    assert!(
        running["metadata"]["lagCount"].is_null(),
        "lag would replace pending entries"
    );
    let delayed = &triggers["delayed"];
    assert_eq!(delayed["type"], "redis");
    assert_eq!(delayed["metadata"]["listName"], keys.delayed());
    for trigger in triggers.values() {
        assert_eq!(
            trigger["metadata"]["address"],
            "redis.example.internal:6380"
        );
        assert_eq!(trigger["metadata"]["enableTLS"], "true");
        assert_eq!(trigger["authenticationRef"]["name"], "ducks-redis");
    }
    let auth = rendered
        .get("TriggerAuthentication", "ducks-redis")
        .expect("rendered");
    assert_eq!(
        auth["spec"]["secretTargetRef"],
        json!([{"parameter": "password", "name": "ducks-redis-auth", "key": "password"}])
    );
    // The in-chart Redis, another queue name, a Redis Cluster.
    let rendered = chart::render(
        &[&ci_values("kind-cpu")],
        Some(&json!({"autoscaling": {"keda": {"enabled": true}}, "queue": {"name": "blue"}})),
    )
    .expect("renders");
    let scaled = rendered
        .get("ScaledObject", "ducks-worker")
        .expect("rendered");
    let trigger = &scaled["spec"]["triggers"][0]["metadata"];
    assert_eq!(trigger["address"], "ducks-redis.ducks.svc:6379");
    assert_eq!(
        trigger["stream"],
        ducks_queue::keys::Keys::new("blue").jobs()
    );
    let rendered = chart::render(
        &[&ci_values("external-redis-keda")],
        Some(&json!({"redis": {"external": {"cluster": true}}})),
    )
    .expect("renders");
    let scaled = rendered
        .get("ScaledObject", "ducks-worker")
        .expect("rendered");
    let types: Vec<&Value> = scaled["spec"]["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .map(|t| &t["type"])
        .collect();
    assert_eq!(
        types,
        [
            &json!("redis-cluster-streams"),
            &json!("redis-cluster-streams"),
            &json!("redis-cluster")
        ]
    );
    assert!(scaled["spec"]["triggers"][0]["metadata"]["addresses"].is_string());
}

#[test]
fn runner_pods_reach_only_dns_and_s3_when_network_policies_are_on() {
    let rendered = set("eks-gpu");
    let policy = rendered
        .get("NetworkPolicy", "ducks-runner")
        .expect("rendered");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        json!({
            "app.kubernetes.io/managed-by": ducks_worker::kube::spec::MANAGED_BY.1,
            "app.kubernetes.io/component": "runner"
        })
    );
    assert_eq!(policy["spec"]["ingress"], json!([]));
    let ports: BTreeSet<i64> = policy["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, BTreeSet::from([53, 443]));
    // Redis admits the release's own processes only.
    let redis = rendered
        .get("NetworkPolicy", "ducks-redis")
        .expect("rendered");
    let from = redis["spec"]["ingress"][0]["from"]
        .as_array()
        .expect("from");
    assert!(
        from.iter().all(
            |peer| peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "ducks"
        )
    );
}

#[test]
fn notes_tell_the_user_what_to_do_next() {
    let notes = &set("kind-cpu").notes;
    for step in [
        "ducks models create-tiny",
        "kubectl -n ducks port-forward svc/ducks-api 8080:80",
        "ducks api keys create",
        "curl -s http://127.0.0.1:8080/v1/images/generations",
        "ducks bots discord register",
    ] {
        assert!(notes.contains(step), "NOTES.txt lacks {step}:\n{notes}");
    }
    let notes = &set("eks-gpu").notes;
    assert!(
        notes.contains("https://ducks.example.com/interactions"),
        "{notes}"
    );
}

/// values.yaml explains every key: each key line has a comment right above it, except inside
/// list items and `resources` (Kubernetes' own shapes, explained by the key that holds them).
#[test]
fn values_yaml_has_a_comment_on_every_key() {
    let text = std::fs::read_to_string(chart::chart_dir().join("values.yaml")).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    // (indent, key, exempt) of the keys that hold the current line.
    let mut stack: Vec<(usize, String, bool)> = Vec::new();
    let mut uncommented = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        let item = body.starts_with("- ");
        let body = body.trim_start_matches("- ");
        let Some((key, _)) = body.split_once(':') else {
            continue;
        };
        if body.starts_with('#')
            || key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            continue;
        }
        while stack.last().is_some_and(|(i, _, _)| *i >= indent) {
            stack.pop();
        }
        let inherited = stack.last().is_some_and(|(_, _, exempt)| *exempt);
        let exempt = inherited || item || key == "resources";
        let path: Vec<&str> = stack.iter().map(|(_, k, _)| k.as_str()).collect();
        let commented = number > 0 && lines[number - 1].trim_start().starts_with('#');
        if !commented && !inherited && !item {
            uncommented.push(format!(
                "line {}: {}",
                number + 1,
                [path, vec![key]].concat().join(".")
            ));
        }
        stack.push((indent, key.to_owned(), exempt));
    }
    assert!(
        uncommented.is_empty(),
        "values.yaml keys without a comment: {uncommented:#?}"
    );
}
