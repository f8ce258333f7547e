//! The Helm chart (`charts/ducks`) as Helm's own engine renders it, for tests that check what the
//! chart gives each process.
//!
//! Rendering runs `tests/python/chart.py` with the virtual environment's Python (`target/py`,
//! made by `make test` from tests/python/requirements.txt): the pinned `helm-python-sdk` wraps
//! Helm v4's Go SDK, so this is `helm template`, not a re-implementation. Nothing contacts a
//! cluster.
//!
//! [`Rendered::environment`] resolves a container's environment as the kubelet would (envFrom in
//! order, then env; ConfigMap and Secret keys, optional ones left out when missing; `$(VAR)`
//! references), and [`Rendered::files`] lists the files its ConfigMap and Secret volumes mount, so
//! a test can start the real binary with exactly what the chart gives its pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::Value;

/// The release name and namespace every render uses.
pub const RELEASE: &str = "ducks";
pub const NAMESPACE: &str = "ducks";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    workspace().join("charts/ducks")
}

/// `charts/ducks/ci/<name>-values.yaml`.
pub fn ci_values(name: &str) -> PathBuf {
    chart_dir().join("ci").join(format!("{name}-values.yaml"))
}

/// Every value set in `charts/ducks/ci/`, by name (`kind-cpu` for `kind-cpu-values.yaml`).
pub fn value_sets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("charts/ducks/ci exists")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix("-values.yaml").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// The Python of `target/py`, which `make test` installs with Helm's engine and the schemas.
pub fn python() -> PathBuf {
    let python = workspace().join("target/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `make test` installs it (tests/python/requirements.txt)",
        python.display()
    );
    python
}

/// Runs `tests/python/chart.py` with `args` and, if given, `stdin`; returns its exit code and
/// its stdout as JSON.
pub fn chart_py(args: &[&str], stdin: Option<&str>) -> (i32, Value) {
    use std::io::Write;
    let script = workspace().join("tests/python/chart.py");
    let mut child = Command::new(python())
        .arg(&script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chart.py starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("chart.py reads its input");
    drop(input);
    let output = child.wait_with_output().expect("chart.py runs");
    let code = output.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "chart.py {args:?} printed no JSON (exit {code}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code, value)
}

/// One rendered object and the template it came from.
#[derive(Clone, Debug)]
pub struct Object {
    pub template: String,
    pub object: Value,
}

/// What Helm rendered for one set of values.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub objects: Vec<Object>,
    /// NOTES.txt as rendered.
    pub notes: String,
}

/// Renders the chart with the value files (later ones win) and `overrides` on top, as
/// `helm template ducks charts/ducks -n ducks -f … --set-json …` would. `Err` is Helm's message:
/// a schema refusal or a template's `fail`.
pub fn render(values: &[&Path], overrides: Option<&Value>) -> Result<Rendered, String> {
    let chart = chart_dir();
    let mut args = vec![
        "render".to_owned(),
        chart.display().to_string(),
        "--name".into(),
        RELEASE.into(),
        "--namespace".into(),
        NAMESPACE.into(),
    ];
    for file in values {
        args.push("--values".into());
        args.push(file.display().to_string());
    }
    if let Some(overrides) = overrides {
        args.push("--set-json".into());
        args.push(overrides.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, output) = chart_py(&args, None);
    if let Some(error) = output.get("error") {
        return Err(error.as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(code, 0, "chart.py render failed: {output}");
    let objects = output["objects"]
        .as_array()
        .expect("objects is a list")
        .iter()
        .map(|entry| Object {
            template: entry["template"].as_str().unwrap_or_default().to_owned(),
            object: entry["object"].clone(),
        })
        .collect();
    Ok(Rendered {
        objects,
        notes: output["notes"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Renders one of `charts/ducks/ci/*-values.yaml` (`"kind-cpu"`), panicking on an error.
pub fn render_ci(name: &str) -> Rendered {
    let file = ci_values(name);
    render(&[&file], None).unwrap_or_else(|e| panic!("{} does not render: {e}", file.display()))
}

/// Where a variable of a container's environment comes from, when it is not a plain value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvSource {
    /// A value: literal, or from a ConfigMap or Secret the chart rendered.
    Value(String),
    /// A key of a Secret the chart did not render (`secrets.existingSecret`, `s3.existingSecret`):
    /// the cluster's operator provides it.
    ExternalSecret { secret: String, key: String },
}

impl EnvSource {
    pub fn value(&self) -> Option<&str> {
        match self {
            EnvSource::Value(value) => Some(value),
            EnvSource::ExternalSecret { .. } => None,
        }
    }
}

/// A container's environment, resolved.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub vars: BTreeMap<String, EnvSource>,
    /// Secrets the chart did not render that `envFrom` names whole (`s3.existingSecret`): their
    /// keys are the operator's.
    pub external_secrets: Vec<String>,
}

impl Rendered {
    /// Every object of this kind.
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .map(|o| &o.object)
            .filter(|o| o["kind"] == kind)
            .collect()
    }

    /// The object of this kind and name.
    pub fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .map(|o| &o.object)
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// The pod template's spec of a Deployment or StatefulSet.
    pub fn pod_spec(&self, workload: &str) -> Result<&Value, String> {
        ["Deployment", "StatefulSet"]
            .iter()
            .find_map(|kind| self.get(kind, workload))
            .map(|w| &w["spec"]["template"]["spec"])
            .ok_or_else(|| format!("no Deployment or StatefulSet {workload} was rendered"))
    }

    /// One container of a workload's pod template.
    pub fn container(&self, workload: &str, container: &str) -> Result<&Value, String> {
        self.pod_spec(workload)?["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container)
            .ok_or_else(|| format!("{workload} has no container {container}"))
    }

    /// The data of a rendered ConfigMap or Secret (decoded), by name; `None` when the chart did
    /// not render it.
    pub fn data(&self, kind: &str, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let Some(object) = self.get(kind, name) else {
            return Ok(None);
        };
        let mut data = BTreeMap::new();
        for (key, value) in object["data"].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            let text = if kind == "Secret" {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("{kind} {name}: {key} is not base64: {e}"))?;
                String::from_utf8(bytes).map_err(|e| format!("{kind} {name}: {key}: {e}"))?
            } else {
                text.to_owned()
            };
            data.insert(key.clone(), text);
        }
        for (key, value) in object["stringData"].as_object().into_iter().flatten() {
            data.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
        }
        Ok(Some(data))
    }

    /// A container's environment as the kubelet makes it: `envFrom` sources in order (a later
    /// source wins), then `env` (which wins over all of them), with `$(VAR)` references to
    /// variables defined before expanded (one whose value is an external Secret's stays as
    /// written). Keys of a ConfigMap or Secret that the chart rendered
    /// become values; keys of one it did not render are [`EnvSource::ExternalSecret`], and a whole
    /// Secret it did not render goes to [`Environment::external_secrets`]. A missing
    /// key marked optional is left out, as Kubernetes does; a missing required one is an error.
    pub fn environment(&self, workload: &str, container: &str) -> Result<Environment, String> {
        let spec = self.container(workload, container)?;
        let mut env = BTreeMap::new();
        let mut external_secrets = Vec::new();
        for source in spec["envFrom"].as_array().into_iter().flatten() {
            let prefix = source["prefix"].as_str().unwrap_or_default();
            let (kind, reference) = if source["configMapRef"].is_object() {
                ("ConfigMap", &source["configMapRef"])
            } else {
                ("Secret", &source["secretRef"])
            };
            let name = reference["name"].as_str().unwrap_or_default();
            match self.data(kind, name)? {
                Some(data) => {
                    for (key, value) in data {
                        env.insert(format!("{prefix}{key}"), EnvSource::Value(value));
                    }
                }
                None if kind == "Secret" => external_secrets.push(name.to_owned()),
                None if reference["optional"] == true => {}
                None => {
                    return Err(format!(
                        "{workload}: envFrom names {kind} {name}, not rendered"
                    ));
                }
            }
        }
        for var in spec["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or_default().to_owned();
            if let Some(value) = var["value"].as_str() {
                let known = env.clone();
                env.insert(name, EnvSource::Value(expand(value, &known)));
                continue;
            }
            let from = &var["valueFrom"];
            let (kind, reference) = if from["secretKeyRef"].is_object() {
                ("Secret", &from["secretKeyRef"])
            } else if from["configMapKeyRef"].is_object() {
                ("ConfigMap", &from["configMapKeyRef"])
            } else {
                return Err(format!(
                    "{workload}: {name} has a source this helper does not know"
                ));
            };
            let (object, key) = (
                reference["name"].as_str().unwrap_or_default(),
                reference["key"].as_str().unwrap_or_default(),
            );
            let optional = reference["optional"] == true;
            match self.data(kind, object)? {
                Some(data) => match data.get(key) {
                    Some(value) => {
                        env.insert(name, EnvSource::Value(value.clone()));
                    }
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "{workload}: {name} needs key {key} of {kind} {object}, which lacks it"
                        ));
                    }
                },
                None if kind == "Secret" => {
                    env.insert(
                        name,
                        EnvSource::ExternalSecret {
                            secret: object.to_owned(),
                            key: key.to_owned(),
                        },
                    );
                }
                None => {
                    return Err(format!(
                        "{workload}: {name} needs {kind} {object}, not rendered"
                    ));
                }
            }
        }
        Ok(Environment {
            vars: env,
            external_secrets,
        })
    }

    /// The files a container sees from its ConfigMap and Secret volumes: mount path + key →
    /// content. Volumes of Secrets the chart did not render are left out.
    pub fn files(
        &self,
        workload: &str,
        container: &str,
    ) -> Result<BTreeMap<PathBuf, String>, String> {
        let pod = self.pod_spec(workload)?;
        let spec = self.container(workload, container)?;
        let mut files = BTreeMap::new();
        for mount in spec["volumeMounts"].as_array().into_iter().flatten() {
            let volume = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == mount["name"])
                .ok_or_else(|| format!("{workload}: no volume {}", mount["name"]))?;
            let (kind, name) = if let Some(name) = volume["configMap"]["name"].as_str() {
                ("ConfigMap", name)
            } else if let Some(name) = volume["secret"]["secretName"].as_str() {
                ("Secret", name)
            } else {
                continue;
            };
            let Some(data) = self.data(kind, name)? else {
                continue;
            };
            let root = PathBuf::from(mount["mountPath"].as_str().unwrap_or_default());
            for (key, content) in data {
                files.insert(root.join(key), content);
            }
        }
        Ok(files)
    }
}

/// Kubernetes' `$(VAR)` expansion of one value: known variables replaced, `$$` an escaped `$`,
/// anything else left as written.
fn expand(value: &str, known: &BTreeMap<String, EnvSource>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(EnvSource::Value(found)) = known.get(&inner[..end])
        {
            out.push_str(found);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let known = BTreeMap::from([
            ("A".to_owned(), EnvSource::Value("x".into())),
            (
                "S".to_owned(),
                EnvSource::ExternalSecret {
                    secret: "s".into(),
                    key: "k".into(),
                },
            ),
        ]);
        assert_eq!(expand("redis://:$(A)@h/", &known), "redis://:x@h/");
        assert_eq!(expand("$(B) $$(A) $(S)", &known), "$(B) $(A) $(S)");
    }
}
