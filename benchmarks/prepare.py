"""How fast is ``prepare`` against plain pyarrow and against Ray Data's own floor?

    python -m benchmarks.prepare [--rows 1000000 5000000] [--repeats N] [--smoke]

For each size, the built-in generator writes the rows once (5 raters per comparison,
``--rows-per-file`` rows per file) under ``--bench-dir``; then, in one Ray session:

* ``prepare`` as the pipeline runs it (``run_stage``, forced), at ``group_level=row``
  and ``user`` (config overrides on the command line apply to it); peak memory is the
  summed PSS of the driver and every Ray process it started, CPU seconds theirs too
  (:class:`benchmarks.common.TreeUsage`);
* a single-process pyarrow baseline in a subprocess: read the files, the same comparison
  keys (:func:`pafo_ray.data.schema.comparison_keys`), ``group_by`` count + sum, join
  back, write parquet; its peak RSS is its own ``ru_maxrss``, its CPU its own rusage. Its support rates must
  equal prepare's, row for row (checked at every size);
* Ray Data's floor: read the same files as prepare reads them (one task per parquet row
  group) and ``write_parquet``, no compute; the two-pass floor (that, then the same of its
  output): prepare reads its input twice at both levels (the narrow votes, then the rows to
  label and write), so this is its nearest floor (one write more than prepare does); and
  ``read_parquet -> write_parquet`` with Ray Data's V1 reader (what
  pafo_ray configures: ``run.ray.parquet_reader_v2=false``) and with 2.60's default
  DataSourceV2 reader (3-8 s more per execution here, even at 20k rows).

Before the first repeat, ``--warmup`` floor runs (not counted) start Ray's worker
processes: the first execution of a fresh session was 2-3x slower than the fourth.
The order of the measured runs rotates from repeat to repeat. Each is timed ``--repeats``
times (default 5 below 5M rows, else 2); the table gives the median and the best, and
ratios of both. The best is the figure to compare: on this VM the same single-process
pyarrow run took 1.5 s or 4.1 s at 1M rows (12 s or 31 s at 5M), CPU seconds moving with
it — memory freed back to the host is slow to touch again — so a median of few repeats
measures the VM as much as the code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

from benchmarks.common import (
    GIB,
    Timer,
    TreeUsage,
    fmt,
    load_average,
    median,
    ratio,
    record,
    start_ray,
    table,
)

SUITE = "prepare"
RATERS = 5
PAIRS = 6  # responses_per_prompt=4 -> all 6 pairs


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=None,
                   help="sizes (default 1000000 5000000; smoke 20000)")
    p.add_argument("--repeats", type=int, default=None, help="default 5 below 5M rows, else 2")
    p.add_argument("--levels", nargs="+", default=["row", "user"], choices=["row", "user"])
    p.add_argument("--warmup", type=int, default=2, help="uncounted floor runs first")
    p.add_argument("--profile", action="store_true",
                   help="only prepare, twice per size and level (cold, then warm), with Ray "
                        "Data's per-operator stats logged after each execution")
    p.add_argument("--object-store-mb", type=int, default=None,
                   help="cap the local Ray's object store (run.ray.object_store_memory_mb)")
    p.add_argument("--skip-pyarrow-above", type=int, default=None, metavar="ROWS",
                   help="no pyarrow baseline above this size (it holds every row in memory)")
    p.add_argument("--rows-per-file", type=int, default=250_000)
    p.add_argument("--users", type=int, default=None, help="simulated users (default rows/100)")
    p.add_argument("--bench-dir", default="./pafo_runs/bench-prepare")
    p.add_argument("--smoke", action="store_true", help="tiny size, for CI")
    p.add_argument("overrides", nargs="*", help="config overrides for prepare, section.key=value")
    p.add_argument("--pyarrow-baseline", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return p


def generate(rows: int, args) -> str:
    """Write ~rows generated rows once; reuse them while the generator config is unchanged."""
    from dataclasses import asdict

    from pafo_ray.config import GeneratorConfig
    from pafo_ray.data.generate import estimate_rows, write_generated

    users = args.users or max(500, rows // 100)
    cfg = GeneratorConfig(num_users=users, num_prompts=math.ceil(rows / (PAIRS * RATERS)),
                          raters_train=RATERS, raters_eval=RATERS,
                          rows_per_file=args.rows_per_file)
    folder = os.path.abspath(os.path.join(args.bench_dir, f"data-{rows}"))
    marker = os.path.join(folder, "_generator.json")
    wanted = json.dumps(asdict(cfg), sort_keys=True)
    if not (os.path.exists(marker) and open(marker).read() == wanted):
        with Timer() as t:
            write_generated(cfg, folder)
        with open(marker, "w") as fh:
            fh.write(wanted)
        print(f"generated {estimate_rows(cfg):,} rows into {folder} in {t.seconds:.1f} s",
              flush=True)
    return folder


def pyarrow_baseline(in_dir: str, out_dir: str, prior_a: float, prior_b: float) -> dict:
    """Support rates with pyarrow in this process; returns seconds per phase and peak RSS."""
    import resource

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pafo_ray.data.schema import comparison_keys, smoothed_support
    from pafo_ray.data.sources import ROW_ID_FILE_SHIFT, expand_paths

    began, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    parts = []
    for index, path in enumerate(expand_paths(in_dir, (".parquet",))):
        part = pq.read_table(path)
        rows = np.arange(part.num_rows, dtype=np.int64)
        parts.append(part.append_column("row_id", pa.array((index << ROW_ID_FILE_SHIFT) + rows)))
    data = pa.concat_tables(parts)
    read = time.perf_counter()
    key, chosen_is_first = comparison_keys(*(data.column(c)  # arrow columns, as prepare's
                                             for c in ("prompt", "chosen", "rejected")))
    keyed = time.perf_counter()
    votes = pa.table({"comparison_key": key, "first": chosen_is_first.astype(np.int64),
                      "position": np.arange(len(key))})
    counts = votes.group_by("comparison_key").aggregate([("first", "count"), ("first", "sum")])
    joined = votes.join(counts, "comparison_key").sort_by("position")  # join reorders rows
    n_raters = joined.column("first_count").to_numpy()
    firsts = joined.column("first_sum").to_numpy()
    n_agree = np.where(chosen_is_first, firsts, n_raters - firsts)
    data = (data.append_column("comparison_key", pa.array(key))
            .append_column("n_raters", pa.array(n_raters)).append_column("n_agree", pa.array(n_agree))
            .append_column("support_rate", pa.array(smoothed_support(n_agree, n_raters,
                                                                      prior_a, prior_b))))
    grouped = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(data, os.path.join(out_dir, "part-0.parquet"))
    done, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": done - began,
            "cpu": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, "read": read - began, "keys": keyed - read,
            "group_join": grouped - keyed, "write": done - grouped, "rows": data.num_rows,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_baseline(in_dir: str, out_dir: str) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.prepare", "--pyarrow-baseline",
                           in_dir, out_dir], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"pyarrow baseline failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_prepare(data_dir: str, level: str, args):
    from pafo_ray.config import load_config
    from pafo_ray.stages.base import StageContext, run_stage

    cfg = load_config(None, [f"run.storage_path={os.path.abspath(args.bench_dir)}",
                             f"run.run_name=runs-{level}", "data.source=parquet",
                             f"data.path={data_dir}", f"prepare.group_level={level}",
                             "run.ray.progress_bars=false", *args.overrides])
    ctx = StageContext.create(cfg)
    run_stage(ctx, "input", force=True)
    with TreeUsage() as use, Timer() as t:
        summary = run_stage(ctx, "prepare", force=True)
    return ctx, summary, {"seconds": t.seconds, "cpu": use.cpu_seconds, "peak": use.peak,
                          "idle": use.start, "every": use.mean_interval}


def run_floor(data_dir: str, out_dir: str, passes: int = 1, reader: str = "chunks") -> dict:
    """``passes`` x (read -> write_parquet), each pass reading the last one's output.

    ``reader="chunks"`` reads as prepare does (one task per parquet row group, pyarrow
    inside ``map_batches``: :func:`pafo_ray.data.sources.read_chunks`); ``"read_parquet"``
    is Ray Data's own reader (V1, as pafo_ray configures it), ``"read_parquet_v2"`` the
    same through 2.60's default DataSourceV2.
    """
    import ray.data

    from pafo_ray.data.sources import expand_paths, plan_chunks, read_chunks

    outs = [f"{out_dir}-{k}" for k in range(passes)]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    source = data_dir
    with TreeUsage() as use, Timer() as t:
        for k, out in enumerate(outs):
            if reader.startswith("read_parquet"):
                context = ray.data.DataContext.get_current()
                was, context.use_datasource_v2 = context.use_datasource_v2, reader.endswith("v2")
                try:
                    ds = ray.data.read_parquet(expand_paths(source, (".parquet",)))
                finally:
                    context.use_datasource_v2 = was
            else:
                chunks = plan_chunks("parquet", source)
                ds = ray.data.from_items(chunks, override_num_blocks=len(chunks)).map_batches(
                    read_chunks, batch_size=1, batch_format="pyarrow",
                    fn_kwargs={"provenance": k == 0})
            ds.write_parquet(out)
            source = out
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": t.seconds, "cpu": use.cpu_seconds, "peak": use.peak}


def check_same_support(ctx, baseline_dir: str) -> float:
    """Prepare's support rate of every row equals the baseline's (matched by row_id)."""
    import numpy as np
    import pyarrow.dataset as pads

    ours = pads.dataset(ctx.run_dir.prepared_rows(), format="parquet",
                        partitioning="hive").to_table(columns=["row_id", "support_rate", "split"])
    theirs = pads.dataset(baseline_dir, format="parquet").to_table(
        columns=["row_id", "support_rate"])
    assert ours.num_rows == theirs.num_rows, (ours.num_rows, theirs.num_rows)
    assert "set_aside" not in set(ours.column("split").unique().to_pylist()), "rows set aside"
    ours, theirs = ours.sort_by("row_id"), theirs.sort_by("row_id")
    assert ours.column("row_id").equals(theirs.column("row_id"))
    a, b = ours.column("support_rate").to_numpy(), theirs.column("support_rate").to_numpy()
    diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
    assert diff <= 1e-12, f"support rates differ from the pyarrow baseline by {diff}"
    return diff


FLOORS = (("floor", "Ray Data read→write floor (read as prepare reads)"),
          ("floor2", "the same floor, two passes"),
          ("read_parquet", "Ray Data read_parquet→write_parquet (V1 reader)"),
          ("read_parquet_v2", "the same, DataSourceV2 reader (2.60's default)"))
HEADERS = ["rows", "what", "median s", "best s", "pyarrow ÷ this (median)",
           "pyarrow ÷ this (best)", "this ÷ floor (best)", "this ÷ its passes' floor (best)",
           "CPU s (median)", "peak memory GiB"]


def _stats(runs: list) -> dict:
    return {"median": median([r["seconds"] for r in runs]),
            "best": min(r["seconds"] for r in runs), "cpu": median([r["cpu"] for r in runs])}


def _row(n: int, what: str, me: dict, base: dict, floor: dict, memory: str,
         least: float = math.nan) -> list:
    return [f"{n:,}", what, fmt(me["median"]), fmt(me["best"]),
            fmt(ratio(base["median"], me["median"])), fmt(ratio(base["best"], me["best"])),
            fmt(ratio(me["best"], floor["best"])), fmt(ratio(me["best"], least)),
            fmt(me["cpu"]), memory]


def _measure(rows: int, repeats: int, args, data_dir: str, out: str, with_pyarrow: bool):
    floor_dir = os.path.join(out, "floor")
    jobs = {"floor": lambda: run_floor(data_dir, floor_dir),
            "floor2": lambda: run_floor(data_dir, floor_dir, passes=2),
            "read_parquet": lambda: run_floor(data_dir, floor_dir, reader="read_parquet"),
            "read_parquet_v2": lambda: run_floor(data_dir, floor_dir, reader="read_parquet_v2")}
    for level in args.levels:
        jobs[level] = lambda level=level: run_prepare(data_dir, level, args)
    if with_pyarrow:
        jobs["pyarrow"] = lambda: run_baseline(data_dir, os.path.join(out, "pyarrow"))
    for _ in range(args.warmup):
        run_floor(data_dir, os.path.join(out, "warmup"))
    runs: dict = {name: [] for name in jobs}
    checked, ctxs, summary = None, {}, None
    for repeat in range(repeats):
        names = list(jobs)
        names = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in names:
            result = jobs[name]()
            if name in args.levels:
                ctxs[name], summary, result = result
            runs[name].append(result)
        if with_pyarrow and checked is None:
            checked = check_same_support(ctxs[args.levels[-1]], os.path.join(out, "pyarrow"))
        print(f"  {rows:,} rows, repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1]['seconds']:.1f} s ({v[-1]['cpu']:.1f} CPU s)" for k, v in runs.items())
            + f"; {load_average()}", flush=True)
    return runs, summary, checked


def bench_size(rows: int, repeats: int, args) -> list:
    import ray

    data_dir = generate(rows, args)
    out = os.path.abspath(os.path.join(args.bench_dir, "out"))
    with_pyarrow = args.skip_pyarrow_above is None or rows <= args.skip_pyarrow_above
    runs, summary, checked = _measure(rows, repeats, args, data_dir, out, with_pyarrow)
    n = summary["rows"]
    stats = {name: _stats(r) for name, r in runs.items()}
    base = stats.get("pyarrow", {"median": math.nan, "best": math.nan})
    floor = stats["floor"]
    result = []
    if with_pyarrow:
        rss = max(b["peak_rss"] for b in runs["pyarrow"])
        result.append(_row(n, "pyarrow baseline (1 process)", base, base, floor,
                           f"{rss / GIB:.2f} (RSS)"))
    for name, what in FLOORS:
        peak = max(f["peak"] for f in runs[name])
        result.append(_row(n, what, stats[name], base, floor, f"{peak / GIB:.2f} (PSS)"))
    for level in args.levels:
        me = stats[level]
        peak = max(r["peak"] for r in runs[level])
        passes = "floor2"  # both levels read the input twice (votes, then rows)
        least = stats[passes]["best"]
        result.append(_row(n, f"prepare (group_level={level})", me, base, floor,
                           f"{peak / GIB:.2f} (PSS)", least))
        if with_pyarrow:
            for which in ("median", "best"):
                record(SUITE, f"{n:,} rows prepare({level}) {which} s [ratio = pyarrow s / "
                       "prepare s]", me[which], base[which], ratio(base[which], me[which]), "s")
            record(SUITE, f"{n:,} rows prepare({level}) peak PSS GiB vs pyarrow peak RSS",
                   peak / GIB, rss / GIB, ratio(peak, rss), "GiB")
        record(SUITE, f"{n:,} rows prepare({level}) best s vs Ray Data floor [prepare/floor]",
               me["best"], floor["best"], ratio(me["best"], floor["best"]), "s")
        record(SUITE, f"{n:,} rows prepare({level}) best s vs its passes' floor ({passes})",
               me["best"], least, ratio(me["best"], least), "s")
    if with_pyarrow:
        phases = {k: median([b[k] for b in runs["pyarrow"]]) for k in
                  ("read", "keys", "group_join", "write")}
        print("  pyarrow phases (s, median): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
              + f"; support rates equal prepare's (max diff {checked})", flush=True)
    idle = median([r["idle"] for level in args.levels for r in runs[level]])
    every = median([r["every"] for level in args.levels for r in runs[level]])
    print(f"  Ray PSS before prepare {idle / GIB:.2f} GiB (sampled every {every:.2f} s); "
          f"{len(ray.nodes())} node(s), {int(ray.cluster_resources().get('CPU', 0))} logical "
          f"CPUs", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return result


def profile_size(rows: int, args) -> list:
    """Prepare alone, cold then warm, Ray Data's own stats logged (time per operator)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_auto_log_stats = True
    data_dir, result = generate(rows, args), []
    for level in args.levels:
        for run in ("cold", "warm"):
            _, summary, figures = run_prepare(data_dir, level, args)
            print(f"  profile {summary['rows']:,} rows, {level}, {run}: "
                  f"{figures['seconds']:.1f} s, {summary['partitions']} partitions", flush=True)
            result.append([f"{summary['rows']:,}", f"prepare (group_level={level}), {run}",
                           fmt(figures["seconds"]), fmt(figures["cpu"]), str(summary["partitions"]),
                           f"{figures['idle'] / GIB:.2f}", f"{figures['peak'] / GIB:.2f}"])
    return result


PROFILE_HEADERS = ["rows", "what", "s", "CPU s", "vote partitions", "Ray PSS before GiB",
                   "peak PSS GiB"]


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.pyarrow_baseline:
        from pafo_ray.config import PrepareConfig

        prep = PrepareConfig()
        print(json.dumps(pyarrow_baseline(*args.pyarrow_baseline, prep.prior_a, prep.prior_b)))
        return 0
    sizes = args.rows or ([20_000] if args.smoke else [1_000_000, 5_000_000])
    if args.smoke:
        args.bench_dir = args.bench_dir.rstrip("/") + "-smoke"
    from pafo_ray.config import load_config

    start_ray(load_config(None, [] if args.object_store_mb is None else
                          [f"run.ray.object_store_memory_mb={args.object_store_mb}"]))
    print(f"prepare benchmark: sizes {sizes}; object store {args.object_store_mb or 'default'} "
          f"MB; {load_average()}", flush=True)
    rows = []
    if args.profile:
        for size in sizes:
            rows += profile_size(size, args)
        print()
        print(table(PROFILE_HEADERS, rows))
        return 0
    for size in sizes:
        repeats = args.repeats or (1 if args.smoke else 2 if size >= 5_000_000 else 5)
        rows += bench_size(size, repeats, args)
    print()
    print(table(HEADERS, rows))
    print(f"\n{load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
