//! The chart and the code cannot drift apart: each process runs with exactly the environment and
//! files the chart renders for it, changed only where a cluster's addresses must become this
//! machine's (Redis, S3, the listen ports, the Kubernetes API through a kubeconfig, and the
//! chat platforms' simulators), and must work.
//!
//! - The worker, from the CPU-only value set, against the Kubernetes API simulator enforcing
//!   exactly the Role the chart renders, runs a job through a runner pod (the chart's runner
//!   image runs the real `ducks runner` in the simulator's kubelet) to a link that serves the PNG.
//! - The API, the Discord bot and the Twitch bot start with what the chart gives them and report
//!   ready on `/readyz`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use ducks_contract::EventKind;
use ducks_tests::chart::{self, EnvSource, Rendered, ci_values};
use ducks_tests::{
    DiscordSim, KubeApi, Kubelet, PodBehaviour, RedisServer, TwitchSim, ducks_binary, tiny_bucket,
};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::json;

use crate::support::{
    JOB_LIMIT, events_until_end, eventually, png_size, queue_on, quick, submit, terminal,
    worker_queue_config,
};

const READY_LIMIT: Duration = Duration::from_secs(60);

fn free_address() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// One process's environment as the chart renders it, with its mounted files written under
/// `root` (paths in the environment that name them point there).
fn rendered_env(rendered: &Rendered, component: &str, root: &Path) -> BTreeMap<String, String> {
    let workload = format!("{}-{component}", chart::RELEASE);
    let env = rendered
        .environment(&workload, component)
        .unwrap_or_else(|e| panic!("{component}: {e}"));
    let mut vars: BTreeMap<String, String> = env
        .vars
        .into_iter()
        .map(|(key, source)| {
            let value = match source {
                EnvSource::Value(value) => value,
                EnvSource::ExternalSecret { key, .. } => {
                    panic!("{component}: {key} comes from a Secret the chart does not render")
                }
            };
            (key, value)
        })
        .collect();
    for (path, content) in rendered.files(&workload, component).expect("mounted files") {
        let local = root.join(path.strip_prefix("/").unwrap_or(&path));
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(&local, content).unwrap();
        for value in vars.values_mut() {
            if Path::new(value.as_str()) == path {
                *value = local.display().to_string();
            }
        }
    }
    vars
}

/// Replaces settings the chart gave with this machine's addresses: each must be one the chart
/// set, so the test changes the chart's environment and never fills in for it.
fn replace(vars: &mut BTreeMap<String, String>, replacements: &[(&str, String)]) {
    for (key, value) in replacements {
        let old = vars.insert((*key).to_owned(), value.clone());
        assert!(old.is_some(), "the chart sets no {key}");
    }
}

async fn start(
    command: &[&str],
    vars: &BTreeMap<String, String>,
    extra: &[(&str, String)],
    dir: &Path,
) -> tokio::process::Child {
    let log = std::fs::File::create(dir.join(format!("{}.log", command.join("-")))).unwrap();
    tokio::process::Command::new(ducks_binary())
        .args(command)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("ducks starts")
}

async fn ready(address: &str, what: &str) {
    let url = format!("http://{address}/readyz");
    eventually(READY_LIMIT, what, || async {
        reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_runs_a_job_with_exactly_the_charts_environment_and_role() {
    let rendered = chart::render_ci("kind-cpu");
    let scratch = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let (_s3, s3_config, _storage) = tiny_bucket().await;
    let queue = queue_on(&redis, worker_queue_config()).await;

    let mut vars = rendered_env(&rendered, "worker", scratch.path());
    let namespace = vars["DUCKS_WORKER__KUBERNETES__NAMESPACE"].clone();
    let s3_secret = vars["DUCKS_WORKER__KUBERNETES__S3_SECRET"].clone();
    let listen = free_address();
    replace(
        &mut vars,
        &[
            ("DUCKS_REDIS__URL", redis.url()),
            ("DUCKS_S3__ENDPOINT", s3_config.endpoint.clone()),
            ("DUCKS_S3__ACCESS_KEY_ID", s3_config.access_key_id.clone()),
            (
                "DUCKS_S3__SECRET_ACCESS_KEY",
                s3_config.secret_access_key.expose().to_owned(),
            ),
            ("DUCKS_WORKER__LISTEN", listen.clone()),
        ],
    );

    // The cluster: exactly the chart's Role, the S3 Secret it names, and a kubelet that runs the
    // chart's runner image (the `ducks` image) as this machine's `ducks` binary.
    let api = KubeApi::start().await;
    let role = rendered
        .get("Role", &format!("{}-worker", chart::RELEASE))
        .expect("the chart renders the worker's Role");
    let rules: Vec<PolicyRule> = serde_json::from_value(role["rules"].clone()).unwrap();
    api.enforce_rbac(rules);
    api.put_secret(
        &namespace,
        &s3_secret,
        BTreeMap::from([
            (
                "DUCKS_S3__ACCESS_KEY_ID".to_owned(),
                s3_config.access_key_id.clone(),
            ),
            (
                "DUCKS_S3__SECRET_ACCESS_KEY".to_owned(),
                s3_config.secret_access_key.expose().to_owned(),
            ),
        ]),
    );
    api.set_kubelet(Kubelet {
        entrypoint: vec![ducks_binary().into()],
        root: scratch.path().join("node"),
        env: vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())],
    });
    api.set_default_pod_behaviour(PodBehaviour::Run);
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: sim, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: worker, user: {{}}}}]\n\
             contexts: [{{name: sim, context: {{cluster: sim, user: worker, namespace: {namespace}}}}}]\n\
             current-context: sim\n",
            api.endpoint()
        ),
    )
    .unwrap();

    let _worker = start(
        &["worker"],
        &vars,
        &[("KUBECONFIG", kubeconfig.display().to_string())],
        scratch.path(),
    )
    .await;
    ready(&listen, "the worker is ready").await;
    let id = submit(&queue, quick("a duck on a chart")).await;
    let events = tokio::time::timeout(JOB_LIMIT, events_until_end(&queue, &id))
        .await
        .expect("the job ends");
    let EventKind::Succeeded { images, .. } = terminal(&events) else {
        panic!("{events:?}");
    };
    let image = reqwest::get(&images[0].url).await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(png_size(&image.bytes().await.unwrap()), (64, 64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_and_both_bots_start_ready_with_the_charts_environment() {
    let twitch_values = json!({
        "twitch": {"enabled": true, "login": "duckbot", "channels": "pond"},
        "secrets": {"twitchToken": "oauth:chart-token", "linksSigningKey": "chart-signing-key"},
        "api": {"publicUrl": "https://ducks.example.com"},
    });
    let rendered = chart::render(&[&ci_values("kind-cpu")], Some(&twitch_values))
        .expect("the chart renders with the Twitch bot");
    let scratch = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let (_s3, s3_config, _storage) = tiny_bucket().await;
    let discord = DiscordSim::start().await;
    let twitch = TwitchSim::start().await;

    // Redis and the listen address always; the S3 endpoint where the chart gives one.
    let s3 = |vars: &mut BTreeMap<String, String>, listen_key: &str, listen: &str| {
        replace(
            vars,
            &[
                ("DUCKS_REDIS__URL", redis.url()),
                (listen_key, listen.to_owned()),
            ],
        );
        if vars.contains_key("DUCKS_S3__ENDPOINT") {
            replace(vars, &[("DUCKS_S3__ENDPOINT", s3_config.endpoint.clone())]);
        }
    };

    let api_listen = free_address();
    let mut api = rendered_env(&rendered, "api", &scratch.path().join("api"));
    s3(&mut api, "DUCKS_API__LISTEN", &api_listen);
    replace(
        &mut api,
        &[
            ("DUCKS_S3__ACCESS_KEY_ID", s3_config.access_key_id.clone()),
            (
                "DUCKS_S3__SECRET_ACCESS_KEY",
                s3_config.secret_access_key.expose().to_owned(),
            ),
        ],
    );
    let _api = start(&["api"], &api, &[], scratch.path()).await;

    let discord_listen = free_address();
    let mut bot = rendered_env(&rendered, "discord", &scratch.path().join("discord"));
    s3(&mut bot, "DUCKS_DISCORD__LISTEN", &discord_listen);
    replace(
        &mut bot,
        &[("DUCKS_DISCORD__TOKEN", discord.bot_token().to_owned())],
    );
    let _discord = start(
        &["bots", "discord"],
        &bot,
        &[("DUCKS_DISCORD__API_BASE", discord.api_base())],
        scratch.path(),
    )
    .await;

    let twitch_listen = free_address();
    let mut bot = rendered_env(&rendered, "twitch", &scratch.path().join("twitch"));
    s3(&mut bot, "DUCKS_TWITCH__LISTEN", &twitch_listen);
    let _twitch = start(
        &["bots", "twitch"],
        &bot,
        &[("DUCKS_TWITCH__SERVER", format!("tcp://{}", twitch.addr()))],
        scratch.path(),
    )
    .await;

    ready(&api_listen, "the API is ready").await;
    ready(&discord_listen, "the Discord bot is ready").await;
    ready(&twitch_listen, "the Twitch bot is ready").await;
    // /readyz says Redis answers; the gateway session opens on its own time.
    eventually(
        READY_LIMIT,
        "the Discord bot's gateway session is ready",
        || async { discord.gateway_counts().0 >= 1 },
    )
    .await;
    twitch.wait_joined("pond", 1, READY_LIMIT).await;
}
