"""Stage ``evaluate``: every method scored on the test split, one report.

Methods: ``vanilla`` (teachers/vanilla), each baseline, ``pafo`` (distill/student) and,
when the student's weights came from the tune stage, ``pafo_default`` (the student with
the default weights). Ray Data batch inference scores the rows; the metrics (Fairlearn
style, bootstrap intervals by user) and the report are computed on the driver from the
narrow scored table. Outputs: ``evaluate/report.md``, ``metrics.json``, PNG plots.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd

from pafo_ray.stages.base import StageContext, is_active, is_done

NAME = "evaluate"
SECTIONS = ("evaluate",)
KEEP = ["row_id", "user_id", "group", "support_rate", "user_type"]


def tuned_baselines(ctx: StageContext) -> dict:
    """``{method: search summary}`` of the baselines the tune stage searched (may be empty)."""
    if not (is_active(ctx.cfg, "tune") and is_done(ctx, "tune")):
        return {}
    return ctx.run_dir.tune_summary().baseline_searches


def method_models(ctx: StageContext) -> dict:
    """Each method's saved model; a baseline whose own search chose a setting is that one."""
    run_dir, cfg = ctx.run_dir, ctx.cfg
    models = {"vanilla": run_dir.teacher_model("vanilla")}
    tuned = tuned_baselines(ctx)
    if is_active(cfg, "baselines"):
        for m in cfg.baselines.methods:
            recorded = (tuned.get(m) or {}).get("model")  # recorded without URI secrets
            models[m] = run_dir.resolve(recorded) if recorded else run_dir.baseline_model(m)
    models["pafo"] = run_dir.student_model("student")
    if run_dir.has_student("student_default"):
        models["pafo_default"] = run_dir.student_model("student_default")
    return models


def score_split(ctx: StageContext, models: dict, split: str) -> pd.DataFrame:
    """One row per test row: the kept columns plus ``margin_<method>`` for each method."""
    import ray.data

    from pafo_ray.scoring import score_columns, score_dataset

    cfg = ctx.cfg
    columns = KEEP + [c for m in models for c in (f"margin_{m}", f"margin_{m}_unknown_user")]
    rows = sum(ctx.run_dir.groups_summary().row_counts(split).values())
    if rows <= cfg.evaluate.inline_rows:
        return _score_here(ctx, models, split)[columns]
    ds = ray.data.read_parquet(ctx.run_dir.grouped_rows(split)).select_columns(
        score_columns(cfg) + ["support_rate", "user_type"])
    ds = score_dataset(ds, {f"margin_{m}": uri for m, uri in models.items()}, cfg.to_dict(),
                       batch_size=cfg.margins.batch_size, num_actors=cfg.margins.num_actors,
                       num_gpus=cfg.margins.num_gpus_per_actor)
    frame = ds.select_columns(columns).to_pandas()
    # Ray Data's blocks arrive in any order: row_id order, as the in-driver path gives.
    return frame.sort_values("row_id", kind="stable", ignore_index=True)


def _score_here(ctx: StageContext, models: dict, split: str) -> pd.DataFrame:
    """``score_split`` in this process: the same scorer as the actor pool's, batch by batch."""
    from pafo_ray.scoring import MarginScorer, score_columns
    from pafo_ray.train.frames import read_rows

    cfg = ctx.cfg
    frame = read_rows(ctx.run_dir.grouped_rows(split))
    frame = frame[[c for c in score_columns(cfg) + ["support_rate", "user_type"] if c in frame]]
    scorer = MarginScorer({f"margin_{m}": uri for m, uri in models.items()}, cfg.to_dict())
    size = max(1, cfg.margins.batch_size)
    parts = [scorer(frame.iloc[i:i + size].reset_index(drop=True))
             for i in range(0, len(frame), size)]
    return pd.concat(parts, ignore_index=True) if parts else scorer(frame)


def method_frames(scored: pd.DataFrame, users: pd.DataFrame, models: dict) -> dict:
    users = users.assign(user_id=users["user_id"].astype(str)).set_index("user_id")
    base = scored[KEEP].copy()
    base["user_id"] = base["user_id"].astype(str)
    base["user_support"] = users["user_support"].reindex(base["user_id"]).to_numpy()
    base["seen"] = users["train_rows"].reindex(base["user_id"]).fillna(0).to_numpy() > 0
    if base["user_type"].isna().all():
        base = base.drop(columns=["user_type"])
    return {m: base.assign(margin=scored[f"margin_{m}"].to_numpy(np.float64)) for m in models}


def run(ctx: StageContext) -> dict:
    from pafo_ray.comparison import compare_methods
    from pafo_ray.report import write_report

    cfg, run_dir = ctx.cfg, ctx.run_dir
    models = method_models(ctx)
    scored = score_split(ctx, models, cfg.evaluate.split)
    users = run_dir.users()
    frames = method_frames(scored, users, models)
    metrics = compare_methods(frames, reference="vanilla", buckets=cfg.evaluate.support_buckets,
                              bootstrap=cfg.evaluate.bootstrap, seed=cfg.run.seed)
    unknown = int(scored["margin_pafo_unknown_user"].sum())
    notes = _notes(ctx, unknown, len(scored))
    pareto = None
    if is_active(cfg, "tune") and is_done(ctx, "tune"):
        pareto = run_dir.tune_summary().data
    with tempfile.TemporaryDirectory() as tmp:
        local = run_dir.local_path(run_dir.evaluate_dir()) or tmp
        paths = write_report(local, metrics, title=f"pafo_ray report: {cfg.run.run_name}",
                             notes=notes, pareto=pareto)
        if pareto and pareto.get("plot"):
            _copy_plot(run_dir, local, pareto["plot"])
        run_dir.save_folder(local, run_dir.evaluate_dir())
    return {"report": run_dir.report(), "methods": list(models),
            "rows": int(len(scored)), "files": {k: os.path.basename(v) for k, v in paths.items()},
            "headline": _headline(metrics)}


def _notes(ctx: StageContext, unknown: int, rows: int) -> list:
    run_dir = ctx.run_dir
    notes = list(run_dir.teachers_summary().fallbacks.values())
    distill = run_dir.distill_summary()
    notes.append(f"pafo student weights from {distill.origin}: {distill.settings}")
    for method, found in tuned_baselines(ctx).items():
        if found.get("chosen"):
            notes.append(f"{method}: its own search ({found['trials']} trials, the same rule) "
                         f"chose {found['chosen']['params']}")
        else:
            notes.append(f"{method}: its own search met no constraint ({found['message']}); "
                         "the default setting is reported")
    prepare = run_dir.prepare_summary()
    groups = run_dir.groups_summary()
    moved = (f", {groups.users_moved} users moved from their support group"
             if groups.users_moved is not None else "")
    notes.append(f"groups: {groups.how}{moved}; rows set aside in prepare: "
                 f"{prepare.rows_set_aside} {prepare.set_aside}")
    if unknown:
        notes.append(f"{unknown} of {rows} test rows came from users unseen in training "
                     "(scored with the mean user embedding)")
    return notes


def _copy_plot(run_dir, local: str, plot: str) -> None:
    data = run_dir.read_file(run_dir.tune_file(plot))
    with open(os.path.join(local, plot), "wb") as fh:
        fh.write(data)


def _headline(metrics: dict) -> dict:
    """Per method: accuracy by support group and the majority − minority gap."""
    out = {}
    for method, m in metrics["methods"].items():
        group = m["by"]["group"]
        out[method] = {"overall": m["overall"]["value"], "by_group": group["by_group"],
                       "gap": (group.get("gap") or {}).get("value")}
        if "user_type" in m["by"]:
            out[method]["by_user_type"] = m["by"]["user_type"]["by_group"]
    return out


def describe(summary: dict) -> str:
    return f"{summary['rows']:,} test rows, methods {summary['methods']}; report {summary['report']}"
