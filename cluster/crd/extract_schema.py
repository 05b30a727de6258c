"""Refresh ``rayjob.v1.schema.json`` (or ``rayservice.v1.schema.json``) from a KubeRay CRD file.

    python cluster/crd/extract_schema.py path/to/ray.io_rayjobs.yaml [--source TEXT]
    python cluster/crd/extract_schema.py path/to/ray.io_rayservices.yaml [--source TEXT]

Takes the ``ray.io/v1`` ``openAPIV3Schema`` of the RayJob CRD (KubeRay's
``ray-operator/config/crd/bases/ray.io_rayjobs.yaml``), drops the ``description`` texts
(six times the size of the rules) and writes compact JSON next to this file. The RayJob's
``spec.rayClusterSpec`` is the same Go type as a RayCluster's ``spec``, so one file
validates both kinds (tests/test_cluster_manifests.py).
"""

from __future__ import annotations

import argparse
import json
import os

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {"RayJob": "rayjob.v1.schema.json", "RayService": "rayservice.v1.schema.json"}


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", help="ray.io_rayjobs.yaml or ray.io_rayservices.yaml from KubeRay")
    parser.add_argument("--source", default="", help="where the CRD came from (kept in $comment)")
    args = parser.parse_args()
    with open(args.crd) as fh:
        crd = yaml.safe_load(fh)
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] not in KINDS:
        raise SystemExit(f"{args.crd}: not the RayJob or RayService CustomResourceDefinition")
    kind = crd["spec"]["names"]["kind"]
    out = os.path.join(HERE, KINDS[kind])
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if "v1" not in versions:
        raise SystemExit(f"{args.crd}: has no ray.io/v1 version (found {sorted(versions)})")
    schema = strip_descriptions(versions["v1"]["schema"]["openAPIV3Schema"])
    schema = {"$comment": f"KubeRay {kind} ray.io/v1 openAPIV3Schema, descriptions removed. "
                          f"{args.source}".strip(), **schema}
    with open(out, "w") as fh:
        json.dump(schema, fh, separators=(",", ":"), sort_keys=True)
        fh.write("\n")
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
