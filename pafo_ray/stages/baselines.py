"""Stage ``baselines``: reweight, groupdro, fairness_penalty and (opt-in) faro_dp / faro_eo
through the same trainer.

All rows, the same model, data and regularisation as vanilla (which trains with the
teachers); only the objective differs. They fit concurrently. Output: ``baselines/<method>/``.
"""

from __future__ import annotations

from pafo_ray.stages.base import StageContext, stage_hash
from pafo_ray.train import jobs as J
from pafo_ray.train.ray_train import TrainJob, run_jobs

NAME = "baselines"
SECTIONS = ("model", "train", "baselines")


def run(ctx: StageContext) -> dict:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    unknown = [m for m in cfg.baselines.methods if m not in J.BASELINE_KINDS]
    if unknown:
        raise ValueError(f"baselines.methods: unknown {unknown}; known {sorted(J.BASELINE_KINDS)}")
    jobs = [TrainJob(m, J.objective_for(m, cfg), run_dir.grouped_rows("train"),
                     run_dir.grouped_rows("val"), run_dir.baseline_model(m))
            for m in cfg.baselines.methods]
    return {"jobs": run_jobs(cfg, run_dir, NAME, jobs, stage_hash(ctx, NAME))}


def describe(summary: dict) -> str:
    return "; ".join(f"{name} val acc {info['metrics'].get('val_accuracy', float('nan')):.3f}"
                     for name, info in summary["jobs"].items())
