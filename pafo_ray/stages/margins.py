"""Stage ``margins``: Ray Data batch inference of every teacher on every train/val row.

With ``margins.extra_pairs_per_user > 0`` it also scores unlabelled comparisons
(:mod:`pafo_ray.data.extra`: training comparisons offered to other users) into
``rows/split=extra``, each by the teacher of its user's group, for the student's distillation.
Per row the output keeps ``margin_<group>`` of each teacher (for analysis; with
``teachers.init=both`` also ``margin_<group>_ft`` of the vanilla-initialised set), the row's own
group, and ``user_group`` (the user's support group, for the minority-users scope). The
conditional target (the own group's teacher) is picked when the student trains, because
its normalisation is a tunable. ``margins/teacher_stats.json`` holds each teacher's
validation margin mean/std. NaN/inf margins fail the stage with their row count.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pafo_ray.stages.base import StageContext
from pafo_ray.train import jobs as J

NAME = "margins"
SECTIONS = ("margins",)


def _add_user_group(batch: pd.DataFrame, users_ref) -> pd.DataFrame:
    from pafo_ray.ray_session import fetch_once

    table = fetch_once(users_ref)
    batch["user_group"] = table.reindex(batch["user_id"].astype(str)).to_numpy(dtype=object)
    return batch


def _labelled(batch: pd.DataFrame) -> pd.DataFrame:
    return batch.assign(labelled=True, extra_rank=np.nan)


def _extra(batch: pd.DataFrame, users_ref, per_row: float, seed: int) -> pd.DataFrame:
    from pafo_ray.data.extra import extra_rows
    from pafo_ray.ray_session import fetch_once

    return extra_rows(batch, fetch_once(users_ref), per_row, seed)


def user_groups(run_dir, cfg) -> pd.Series:
    """Each user's group: the groups stage's when grouping by user, else by support quantile."""
    from pafo_ray.data import support as support_lib

    users = run_dir.users()
    names = J.names(cfg)
    if cfg.prepare.group_level != "user":
        cuts = support_lib.user_cut_points(users["user_support"].to_numpy(), cfg.prepare.user_quantile)
        users["group"] = support_lib.user_groups(users["user_support"].to_numpy(), cuts, names)
    return users.set_index("user_id")["group"]


def run(ctx: StageContext) -> dict:
    import ray
    import ray.data

    from pafo_ray.data.extra import copies_per_row
    from pafo_ray.scoring import score_columns, score_dataset

    cfg, run_dir = ctx.cfg, ctx.run_dir
    from pafo_ray.stages.teachers import teacher_names

    names = teacher_names(cfg)
    teachers = run_dir.teachers_summary()
    stats = {}
    for g in names:
        if not run_dir.has_teacher(g):
            raise RuntimeError(f"teacher '{g}' has no complete checkpoint at "
                               f"{run_dir.teacher_model(g)}: rerun `pafo-ray teachers --force`")
        stats[g] = run_dir.teacher_margin_stats(g)
    columns = score_columns(cfg) + ["support_rate", "user_type"]
    ds = ray.data.read_parquet(run_dir.grouped_rows("train") + run_dir.grouped_rows("val")
                               ).select_columns(columns)
    groups = user_groups(run_dir, cfg)
    users_ref = ray.put(groups)
    ds = ds.map_batches(_add_user_group, batch_format="pandas", fn_kwargs={"users_ref": users_ref})
    ds = ds.map_batches(_labelled, batch_format="pandas")
    m = cfg.margins
    per_row = copies_per_row(m.extra_pairs_per_user, len(groups),
                             sum(run_dir.groups_summary().row_counts("train").values()))
    if per_row > 0:
        extra = ray.data.read_parquet(run_dir.grouped_rows("train")).select_columns(columns)
        ds = ds.union(extra.map_batches(_extra, batch_format="pandas", fn_kwargs={
            "users_ref": users_ref, "per_row": per_row, "seed": cfg.run.seed}))
    ds = score_dataset(ds, {f"margin_{g}": run_dir.teacher_model(g) for g in names},
                       cfg.to_dict(), batch_size=m.batch_size, num_actors=m.num_actors,
                       num_gpus=m.num_gpus_per_actor)
    out = run_dir.margin_data()
    ds.write_parquet(out, partition_cols=["split"])
    counts = _count_written(out, [f"margin_{g}" for g in names])
    bad = int(counts["non_finite"].sum())
    if bad:
        raise RuntimeError(f"{bad} rows got NaN/inf teacher margins; the student will not train "
                           "on them. Check the teachers (rerun `pafo-ray teachers --force`).")
    run_dir.write_teacher_stats(stats)
    return {"rows": int(counts["rows"].sum()), "extra_rows": int(counts["extra"].sum()),
            "extra_per_user": round(int(counts["extra"].sum()) / max(1, len(groups)), 2),
            "teacher_stats": stats,
            "fallbacks": teachers.fallbacks}


def _count_written(uri: str, margins: list) -> pd.DataFrame:
    """Rows, extra rows and rows with a NaN/inf margin in the written output, streamed batch
    by batch with pyarrow in this process (the margin columns and the split only): a Ray Data
    execution for this costs seconds of start-up on a small run."""
    import pyarrow.dataset as pads

    from pafo_ray.storage import split_uri

    fs, path = split_uri(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    parts = [_finite_counts(batch.to_pandas())
             for batch in dataset.to_batches(columns=margins + ["split"]) if batch.num_rows]
    return pd.concat(parts, ignore_index=True) if parts else _finite_counts(
        pd.DataFrame({**{m: [] for m in margins}, "split": []}))


def _finite_counts(batch: pd.DataFrame) -> pd.DataFrame:
    values = batch[[c for c in batch.columns if c.startswith("margin_")]].to_numpy(np.float64)
    extra = int((batch["split"] == "extra").sum())
    return pd.DataFrame({"rows": [len(batch) - extra], "extra": [extra],
                         "non_finite": [int((~np.isfinite(values)).any(axis=1).sum())]})


def describe(summary: dict) -> str:
    spread = ", ".join(f"{g}: mean {s['mean']:.2f} std {s['std']:.2f}"
                       for g, s in summary["teacher_stats"].items())
    extra = (f", {summary['extra_rows']:,} unlabelled comparisons (~{summary['extra_per_user']:g}"
             " per user)" if summary.get("extra_rows") else "")
    return f"{summary['rows']:,} rows{extra} scored by every teacher ({spread})"
