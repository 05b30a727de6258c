"""How time and memory grow with the data: every stage of a frozen-mode run at 100k, 1M, 5M rows.

    python -m benchmarks.scaling [--rows 100000 1000000 5000000] [--trials 4] [--smoke]

For each size the built-in generator writes the rows once (5 raters per comparison, one user
per 100 rows, as ``benchmarks.prepare``), then one pipeline runs stage by stage in this
process's Ray session: ``prepare`` (Ray Data), ``embed`` (builtin-tiny actor pool), ``groups``
(the mixture), ``teachers`` (vanilla + two teachers, in-process fits), ``margins`` (Ray Data
batch inference, labelled rows and the unlabelled comparisons) and ``tune`` (Ray Tune +
Optuna, ``--trials`` trials, each a student trained in-process on the cached embeddings).
Each size runs in its own fresh local Ray (as a user's run would: nothing a smaller size left in
the object store or in idle workers counts against the next). Each stage's wall time, rows per
second, the peak PSS of the driver and every Ray process (object store included) and the
workers Ray's memory monitor killed during the stage are printed, with how each grows against the smallest size: time
should grow about linearly with rows, and memory stay bounded by Ray's object store for the
Ray Data stages (the in-process stages hold the rows as tensors, so theirs grows).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from benchmarks.common import (
    GIB,
    Timer,
    TreeUsage,
    fmt,
    load_average,
    memory_kills,
    record,
    start_ray,
    table,
)

SUITE = "scaling"
STAGES = ("input", "prepare", "embed", "groups", "teachers", "margins", "tune")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=None,
                   help="sizes (default 100000 1000000 5000000; smoke 3000)")
    p.add_argument("--trials", type=int, default=4, help="tune trials per size")
    p.add_argument("--epochs", type=int, default=2, help="epochs of every fit")
    p.add_argument("--bench-dir", default="./pafo_runs/bench-scaling")
    p.add_argument("--smoke", action="store_true", help="one tiny size, for CI")
    p.add_argument("--reuse", action="store_true",
                   help="reuse stages whose complete output (same config hash) is in --bench-dir: "
                        "their time is the one saved in their summary, their memory not measured")
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return p


def run_size(rows: int, args) -> list:
    from benchmarks.prepare import generate
    from pafo_ray.config import load_config
    from pafo_ray.stages.base import StageContext, is_done, run_stage

    gen_args = argparse.Namespace(users=None, rows_per_file=250_000, bench_dir=args.bench_dir)
    folder = generate(rows, gen_args)
    values = {"run.storage_path": os.path.abspath(args.bench_dir), "run.run_name": f"run-{rows}",
              "data.source": "parquet", "data.path": folder, "model.backbone": "builtin-tiny",
              "model.mode": "frozen", "model.max_length": 64, "train.epochs": args.epochs,
              "train.num_workers": 0, "train.select_regularization": False,
              "baselines.methods": "[]", "tune.num_samples": args.trials,
              "tune.tune_baselines": False, "embed.num_actors": 1,
              "run.ray.progress_bars": False, "run.force": not args.reuse}
    cfg = load_config(None, [f"{k}={v}" for k, v in values.items()] + list(args.overrides))
    fresh_ray(cfg)
    ctx = StageContext.create(cfg)
    out = []
    for stage in STAGES:
        reused = args.reuse and is_done(ctx, stage)
        killed = memory_kills()
        with TreeUsage() as use, Timer() as t:
            summary = run_stage(ctx, stage, force=not args.reuse)
        killed = memory_kills() - killed
        seconds = float(summary.get("seconds", math.nan)) if reused else t.seconds
        peak = math.nan if reused else use.peak
        detail = _detail(stage, summary) + (" (reused: saved time)" if reused else "")
        out.append({"rows": rows, "stage": stage, "seconds": seconds,
                    "count": _rows_of(stage, summary, rows), "peak": peak, "start": use.start,
                    "cpu": use.cpu_seconds, "detail": detail, "killed": killed})
        print(f"  {rows:>9,} {stage:9s} {seconds:8.1f} s  peak {peak / GIB:5.2f} GiB  "
              f"killed {killed}  {detail}  ({load_average()})", flush=True)
    return out


def fresh_ray(cfg) -> None:
    """A new local Ray for this size (the one before, if any, shut down first)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    start_ray(cfg)


def _rows_of(stage: str, summary: dict, rows: int) -> int:
    if stage == "embed":
        return int(summary.get("texts", 0))
    if stage == "margins":
        return int(summary.get("rows", 0)) + int(summary.get("extra_rows", 0))
    return rows


def _detail(stage: str, summary: dict) -> str:
    if stage == "tune":
        trials = len(summary.get("trials", []))
        seconds = summary.get("search_seconds") or math.nan
        return f"{trials} trials, {seconds / max(1, trials):.1f} s per trial"
    if stage == "margins":
        return f"{summary.get('rows', 0):,} rows + {summary.get('extra_rows', 0):,} unlabelled"
    if stage == "groups":
        return f"{summary.get('users_moved', 0)} users moved"
    return ""


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    sizes = args.rows or ([3000] if args.smoke else [100_000, 1_000_000, 5_000_000])
    if args.smoke:
        args.trials, args.epochs = 2, 1
        args.bench_dir = args.bench_dir + "-smoke"
    print(f"scaling benchmark: sizes {sizes}; {load_average()}", flush=True)
    results = [row for rows in sizes for row in run_size(rows, args)]
    smallest = min(sizes)
    base = {r["stage"]: r for r in results if r["rows"] == smallest}
    lines = []
    for r in results:
        b = base[r["stage"]]
        lines.append([f"{r['rows']:,}", r["stage"], fmt(r["seconds"], 1),
                      fmt(r["count"] / r["seconds"] if r["seconds"] > 0 else math.nan, 0),
                      fmt(r["seconds"] / b["seconds"] if b["seconds"] > 0 else math.nan),
                      fmt(r["peak"] / GIB), fmt(r["peak"] / b["peak"] if b["peak"] else math.nan),
                      str(r["killed"]), r["detail"]])
        if r["rows"] != smallest:
            record(SUITE, f"{r['stage']} s at {r['rows']:,} rows (× the {smallest:,}-row time)",
                   r["seconds"], b["seconds"], r["seconds"] / b["seconds"] if b["seconds"] else None,
                   unit="s")
    print()
    print(table(["rows", "stage", "seconds", "rows/s", "time × smallest", "peak GiB (PSS)",
                 "memory × smallest", "killed (memory monitor)", "note"], lines))
    print(f"\nrows grow {max(sizes) / smallest:.0f}× from the smallest size; {load_average()}")
    if args.smoke:
        record(SUITE, f"all stages at {smallest:,} rows, wall s",
               sum(r["seconds"] for r in results), unit="s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
