"""cluster/rayservice.yaml: KubeRay's RayService CRD schema (vendored in cluster/crd/,
unknown fields rejected as ``kubectl apply`` does) and a serveConfigV2 whose application
imports and binds here exactly as Serve would build it."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import yaml
from test_cluster_manifests import strict

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def rayservice() -> dict:
    with open(CLUSTER / "rayservice.yaml") as fh:
        return yaml.safe_load(fh)


def schema_problems(obj: dict) -> list:
    import jsonschema

    with open(CLUSTER / "crd" / "rayservice.v1.schema.json") as fh:
        validator = jsonschema.Draft7Validator(strict(json.load(fh)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)]


def serve_problems(obj: dict) -> list:
    """The serveConfigV2 string: YAML, each application importable and its args binding."""
    from pafo_ray.config import ConfigError, ServeConfig, _bind

    problems = []
    try:
        config = yaml.safe_load(obj["spec"]["serveConfigV2"])
    except yaml.YAMLError as exc:
        return [f"serveConfigV2 is not YAML: {exc}"]
    for app in config.get("applications", []):
        module, _, attr = app.get("import_path", "").partition(":")
        try:
            builder = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{app.get('name')}: import_path {app.get('import_path')!r}: {exc}")
            continue
        try:
            cfg = _bind(ServeConfig, dict(app.get("args") or {}), "serve")
            builder(app.get("args") or {})
        except ConfigError as exc:
            problems.append(f"{app.get('name')}: args: {exc}")
            continue
        if not cfg.model:
            problems.append(f"{app.get('name')}: args.model is empty")
    head = obj["spec"]["rayClusterConfig"]["headGroupSpec"]
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        problems.append('headGroupSpec.rayStartParams["num-cpus"] must be "0"')
    if obj["spec"]["rayClusterConfig"].get("authOptions", {}).get("mode") != "token":
        problems.append("rayClusterConfig.authOptions.mode must be token")
    return problems


def test_rayservice_matches_the_crd_and_builds():
    import ray

    obj = rayservice()
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayService"
    assert schema_problems(obj) == []
    assert serve_problems(obj) == []
    assert obj["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_the_checks_bite():
    obj = rayservice()
    typo = copy.deepcopy(obj)
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    assert any("rayStartParam" in p for p in schema_problems(typo))
    wrong = copy.deepcopy(obj)
    wrong["spec"]["serveConfigV2"] = wrong["spec"]["serveConfigV2"].replace(
        "max_batch_size", "max_batchsize")
    assert any("serve.max_batchsize" in p for p in serve_problems(wrong))
    missing = copy.deepcopy(obj)
    missing["spec"]["serveConfigV2"] = missing["spec"]["serveConfigV2"].replace(
        "pafo_ray.serve:build_app", "pafo_ray.serve:nothing")
    assert any("nothing" in p for p in serve_problems(missing))
