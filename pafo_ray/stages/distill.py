"""Stage ``distill``: the unified student — no group input — on Ray Train.

Loss per row: ``w_g [BT + λ·D(m_S, m_T)]`` with ``m_T`` the margin of the row's own
group's teacher (see pafo_ray.train.targets). The weights come from ``distill.*``, or
from the tune stage's chosen trial when one exists and ``distill.use_tuned`` is on.
Output: ``distill/student/`` (a saved RewardModel).
"""

from __future__ import annotations

import dataclasses

from pafo_ray.config import DistillConfig
from pafo_ray.stages.base import StageContext, is_active, is_done, stage_hash
from pafo_ray.train import jobs as J
from pafo_ray.train.ray_train import TrainJob, run_jobs

NAME = "distill"
DEPENDS = ["margins", "tune"]
SECTIONS = ("model", "train", "distill")


def chosen_settings(ctx: StageContext) -> tuple[DistillConfig, dict, str]:
    """(distill settings, train overrides, where they came from)."""
    cfg = ctx.cfg
    if cfg.distill.use_tuned and is_active(cfg, "tune") and is_done(ctx, "tune"):
        chosen = ctx.run_dir.read_json("tune", "summary.json").get("chosen")
        if chosen:
            params = chosen["params"]
            fields = {f.name for f in dataclasses.fields(DistillConfig)}
            distill = dataclasses.replace(cfg.distill, **{k: v for k, v in params.items()
                                                          if k in fields})
            train = {k: params[k] for k in ("lr", "weight_decay") if k in params}
            return distill, train, f"tune trial {chosen.get('trial_id')}"
    return cfg.distill, {}, "distill config"


def targets_for(ctx: StageContext, distill: DistillConfig) -> dict:
    stats = ctx.run_dir.read_json("margins", "teacher_stats.json")
    return {"margin_norm": distill.margin_norm, "scope": distill.scope, "stats": stats}


def margin_uris(run_dir, split: str) -> list:
    return [run_dir.uri("margins", "rows", f"split={split}")]


def run(ctx: StageContext) -> dict:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    distill, train_overrides, origin = chosen_settings(ctx)
    if train_overrides:
        ctx = dataclasses.replace(ctx, cfg=dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, **train_overrides)))
    jobs = [TrainJob("student", J.objective_for("pafo", cfg, distill), margin_uris(run_dir, "train"),
                     J.rows_uris(run_dir, "val"), [NAME, "student"],
                     targets=targets_for(ctx, distill))]
    if origin != "distill config":
        # The report compares the tuned student with the default-weights one.
        jobs.append(TrainJob("student_default", J.objective_for("pafo", cfg, cfg.distill),
                             margin_uris(run_dir, "train"), J.rows_uris(run_dir, "val"),
                             [NAME, "student_default"], targets=targets_for(ctx, cfg.distill)))
    results = run_jobs(ctx, NAME, jobs, stage_hash(ctx, NAME))
    return {"student": results["student"], "student_default": results.get("student_default"),
            "settings": dataclasses.asdict(distill), "train": train_overrides, "origin": origin}


def describe(summary: dict) -> str:
    m = summary["student"]["metrics"]
    return (f"student val acc {m.get('val_accuracy', float('nan')):.3f} "
            f"(minority {m.get('val_minority_accuracy', float('nan')):.3f}, majority "
            f"{m.get('val_majority_accuracy', float('nan')):.3f}) with weights from {summary['origin']}")
