//! The crate boundaries ARCHITECTURE.md states, checked against `cargo metadata`: the crates form
//! layers contract → queue / models → runner / worker → front ends → cli, with no dependency back
//! up, and the heavy or dangerous dependencies stay where they belong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::host_triple;

/// Each workspace crate's layer; a crate may depend only on crates of lower layers.
const LAYERS: [(&str, u8); 10] = [
    ("ducks-contract", 0),
    ("ducks-chat", 1),
    ("ducks-queue", 1),
    ("ducks-models", 1),
    ("ducks-runner", 2),
    ("ducks-worker", 2),
    ("ducks-bots", 3),
    ("ducks-api", 3),
    ("ducks", 4),
    ("ducks-tests", 5),
];

/// The workspace's dependency graph: package name → names of its normal (not dev, not build)
/// dependencies, with features as the whole workspace resolves them.
struct Graph {
    deps: BTreeMap<String, BTreeSet<String>>,
    members: BTreeSet<String>,
}

impl Graph {
    fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let output = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--locked", "--offline"])
            .args(["--filter-platform", host_triple()])
            .current_dir(&root)
            .output()
            .expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
        let name_of: BTreeMap<&str, &str> = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let members = metadata["workspace_members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| name_of[id.as_str().unwrap()].to_owned())
            .collect();
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in metadata["resolve"]["nodes"].as_array().unwrap() {
            let name = name_of[node["id"].as_str().unwrap()];
            let normal = node["deps"].as_array().unwrap().iter().filter(|dep| {
                dep["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|kind| kind["kind"].is_null())
            });
            deps.entry(name.to_owned())
                .or_default()
                .extend(normal.map(|dep| name_of[dep["pkg"].as_str().unwrap()].to_owned()));
        }
        Self { deps, members }
    }

    /// Every crate `package` links, however indirectly.
    fn reaches(&self, package: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![package.to_owned()];
        while let Some(next) = todo.pop() {
            for dep in self.deps.get(&next).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    todo.push(dep.clone());
                }
            }
        }
        seen
    }

    fn assert_never(&self, package: &str, forbidden: &[&str], why: &str) {
        if !self.members.contains(package) {
            return;
        }
        let reached = self.reaches(package);
        for crate_name in forbidden {
            assert!(
                !reached.contains(*crate_name),
                "{package} depends on {crate_name}: {why}"
            );
        }
    }
}

#[test]
fn the_crates_form_layers_with_no_dependency_back_up() {
    let graph = Graph::load();
    let layer: BTreeMap<&str, u8> = LAYERS.into_iter().collect();
    for member in &graph.members {
        let own = *layer.get(member.as_str()).unwrap_or_else(|| {
            panic!("{member} has no layer: add it to LAYERS and ARCHITECTURE.md")
        });
        for dep in &graph.deps[member] {
            if let Some(&theirs) = layer.get(dep.as_str()) {
                assert!(
                    theirs < own,
                    "{member} (layer {own}) depends on {dep} (layer {theirs})"
                );
            }
        }
    }
    for present in [
        "ducks-contract",
        "ducks-queue",
        "ducks-models",
        "ducks-runner",
        "ducks-worker",
        "ducks-chat",
        "ducks-api",
        "ducks-bots",
    ] {
        assert!(
            graph.members.contains(present),
            "{present} is a workspace member"
        );
    }
}

#[test]
fn heavy_and_foreign_dependencies_stay_where_they_belong() {
    let graph = Graph::load();
    graph.assert_never(
        "ducks-contract",
        &[
            "tokio",
            "redis",
            "aws-sdk-s3",
            "kube",
            "candle-core",
            "reqwest",
        ],
        "the contract is pure: no I/O",
    );
    graph.assert_never(
        "ducks-runner",
        &["redis", "kube", "ducks-queue"],
        "the runner reads only its environment and S3",
    );
    graph.assert_never(
        "ducks-worker",
        &[
            "candle-core",
            "candle-transformers",
            "tokenizers",
            "ducks-runner",
        ],
        "the worker runs `ducks runner`; it does not link the pipelines",
    );
    graph.assert_never(
        "ducks-models",
        &["candle-core", "redis", "kube"],
        "models are manifests and S3, for the worker and the runner alike",
    );
    for front_end in ["ducks-bots", "ducks-api"] {
        graph.assert_never(
            front_end,
            &["candle-core", "kube", "ducks-runner", "ducks-worker"],
            "front ends touch only Redis and their own platform",
        );
    }
    graph.assert_never(
        "ducks-chat",
        &["tokio", "redis", "serenity", "twitch-irc", "reqwest"],
        "the front ends' core is pure: grammar, checks and wording, shared by every platform",
    );
    graph.assert_never(
        "ducks-api",
        &["serenity", "twitch-irc"],
        "the API does not carry the chat platforms' clients",
    );
    // The checks above see something: the runner does link candle, the worker kube.
    assert!(graph.reaches("ducks-runner").contains("candle-core"));
    assert!(graph.reaches("ducks-worker").contains("kube"));
    assert!(graph.reaches("ducks-queue").contains("redis"));
    assert!(graph.reaches("ducks-api").contains("redis"));
    assert!(graph.reaches("ducks-bots").contains("serenity"));
    assert!(graph.reaches("ducks-bots").contains("ducks-chat"));
}
