"""Helm's own engine and Kubernetes' schemas, for tests/tests/it/chart.rs and tests/src/chart.rs.

Run by target/py/bin/python (tests/python/requirements.txt pins helm-python-sdk, whose
libhelm_c.so is Helm v4's Go SDK, and kubernetes-validate). Offline: nothing contacts a cluster.

    chart.py render CHART [--values FILE]... [--set-json JSON] [--name N] [--namespace NS]
        Prints {"objects": [{"template": path, "object": {...}}, ...], "notes": text}.
        Values Helm refuses (the schema) or templates that fail print {"error": message}, exit 2.
    chart.py lint CHART [--values FILE]... [--set-json JSON] [--kube-version VERSION]
        Prints `helm lint --strict`'s report: {"messages": [{"severity", "path", "error"}],
        "errors": [...]}, severity 1 info, 2 warning, 3 error.
    chart.py validate --kube VERSION... --crds DIR < objects.json
        Validates every object (a JSON list) strictly, unknown fields refused, against each
        Kubernetes version's schemas, and objects of custom resources against the CRD files in DIR.
        Prints {"checked": [...], "problems": [...]}; exits 1 when there are problems.
"""

import argparse
import json
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml


def merge(base, override):
    """Deep merge of values, as Helm layers -f files and --set-json."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(base.get(key), value)
    return merged


def values_of(args):
    values = {}
    for path in args.values or []:
        values = merge(values, yaml.safe_load(Path(path).read_text()) or {})
    if args.set_json:
        values = merge(values, json.loads(args.set_json))
    return values


def render(args):
    chart = helm.Chart.load(args.chart)
    try:
        manifests = chart.render(values_of(args), name=args.name, namespace=args.namespace)
    except helm.HelmError as error:
        print(json.dumps({"error": str(error)}))
        return 2
    objects, notes = [], ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append({"template": template, "object": document})
    print(json.dumps({"objects": objects, "notes": notes}))
    return 0


def lint(args):
    report = helm.lint(args.chart, values_of(args), strict=True, kube_version=args.kube_version)
    print(json.dumps(report))
    return 0


def strict(schema):
    """A CRD's structural schema with unknown fields refused, as the API server prunes them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def crd_schemas(folder):
    """(apiVersion, kind) -> (schema, the file it came from) for every CRD in the folder."""
    schemas = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                # metadata is the API server's ObjectMeta, which the CRD leaves open.
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                schemas[(f"{group}/{version['name']}", kind)] = (schema, path.name)
    return schemas


def validate(args):
    objects = json.load(sys.stdin)
    crds = crd_schemas(args.crds)
    checked, problems = [], []
    for entry in objects:
        obj = entry["object"]
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({entry.get('template')})"
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in crds:
            schema, source = crds[key]
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
            for error in errors:
                path = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{name} against {source}: {path}: {error.message}")
            checked.append(f"{name} against {source}")
            continue
        for version in args.kube:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                checked.append(f"{name} against Kubernetes {version}")
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problems.append(f"{name} against Kubernetes {version}: {path}: {error.message}")
            except kubernetes_validate.utils.SchemaNotFoundError as error:
                problems.append(f"{name}: {error.message}, and no CRD in {args.crds} defines it")
    print(json.dumps({"checked": checked, "problems": problems}))
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("render", "lint"):
        sub = commands.add_parser(command)
        sub.add_argument("chart")
        sub.add_argument("--values", action="append")
        sub.add_argument("--set-json")
        sub.add_argument("--name", default="ducks")
        sub.add_argument("--namespace", default="ducks")
        if command == "lint":
            sub.add_argument("--kube-version")
    sub = commands.add_parser("validate")
    sub.add_argument("--kube", action="append", required=True)
    sub.add_argument("--crds", required=True)
    args = parser.parse_args()
    return {"render": render, "lint": lint, "validate": validate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
