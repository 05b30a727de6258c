"""Fresh `pafo-ray run` on the built-in default: the median of N runs with Ray Train workers and
the same run with in-process fits (``train.num_workers=0``) in the same session, stage by stage.

    python -m benchmarks.demo [--runs 3] [--storage DIR] [--smoke] [--keep]

Every run gets a new storage folder (nothing restored) and its own local Ray (``RAY_ADDRESS``
is removed from the child's environment). Per-stage seconds come from each stage's
``summary.json``; teachers and baselines run side by side, so their sum exceeds the wall time.
Issue 21's goal: median ≤ 60 s on 2 cores and ≤ 1.5× the in-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import load_average, record

STAGES = ("input", "prepare", "embed", "regularize", "groups", "teachers", "baselines",
          "margins", "tune", "distill", "evaluate")
SMOKE = {"data.generator.num_users": 60, "data.generator.num_prompts": 40,
         "data.generator.raters_train": 3, "data.generator.raters_eval": 5, "train.epochs": 3,
         "teachers.min_rows": 10, "tune.num_samples": 0, "evaluate.bootstrap": 50,
         "model.max_length": 64}


def one_run(storage: str, extra: dict) -> dict:
    """One fresh ``pafo-ray run``: wall seconds, exit code and each stage's seconds."""
    values = {"run.storage_path": storage, "run.run_name": "demo", "run.ray.progress_bars": False,
              **extra}
    command = [sys.executable, "-m", "pafo_ray.cli", "run", *(f"{k}={v}" for k, v in values.items())]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    began = time.perf_counter()
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    wall = time.perf_counter() - began
    stages = {}
    for stage in STAGES:
        path = os.path.join(storage, "demo", stage, "summary.json")
        if os.path.exists(path):
            with open(path) as fh:
                stages[stage] = json.load(fh).get("seconds")
    if proc.returncode:
        print(proc.stdout[-4000:], flush=True)
    return {"wall": wall, "code": proc.returncode, "stages": stages, "load": load_average()}


def describe(label: str, run: dict) -> str:
    parts = ", ".join(f"{s} {v:.1f}" for s, v in run["stages"].items() if v is not None)
    return f"{label}: {run['wall']:.1f} s (exit {run['code']}; {run['load']}) — {parts}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="fresh runs with Ray Train workers")
    p.add_argument("--storage", default=None, help="parent folder of the runs (default: a temp one)")
    p.add_argument("--smoke", action="store_true", help="tiny data (CI)")
    p.add_argument("--keep", action="store_true", help="keep the runs' folders")
    args = p.parse_args(argv)
    base = args.storage or tempfile.mkdtemp(prefix="pafo-demo-")
    extra = SMOKE if args.smoke else {}
    # The in-process run first: a session cut short still has the ratio's denominator.
    local = one_run(os.path.join(base, "inprocess"), {**extra, "train.num_workers": 0})
    print(describe("demo in-process (train.num_workers=0)", local), flush=True)
    runs = []
    for i in range(args.runs):
        run = one_run(os.path.join(base, f"workers-{i}"), extra)
        print(describe(f"demo workers #{i + 1}", run), flush=True)
        runs.append(run)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    if any(r["code"] for r in runs + [local]):
        return 1
    median = statistics.median(r["wall"] for r in runs)
    ratio = median / local["wall"]
    walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
    print(f"demo: median of {len(runs)} fresh runs {median:.1f} s (runs {walls}); in-process "
          f"{local['wall']:.1f} s; ratio {ratio:.2f}", flush=True)
    for stage in STAGES:
        values = [r["stages"][stage] for r in runs if r["stages"].get(stage) is not None]
        if values:
            print(f"  {stage:<11} workers median {statistics.median(values):6.1f} s   "
                  f"in-process {local['stages'].get(stage) or 0:6.1f} s", flush=True)
    config = "tiny smoke config" if args.smoke else "built-in default config"
    record("demo", f"fresh pafo-ray run, median of {len(runs)} ({config})", median, unit="s")
    record("demo", "fresh run ÷ in-process fits (train.num_workers=0)", ratio, unit="x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
