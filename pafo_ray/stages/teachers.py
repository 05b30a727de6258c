"""Stage ``teachers``: one Bradley–Terry teacher per group, plus vanilla, on Ray Train.

Each teacher trains only on its group's rows and is validated on its group's validation
rows; vanilla trains on all rows. With ``teachers.init=scratch`` all of them fit at once;
with ``init=vanilla`` vanilla fits first and each teacher starts from it; ``init=both`` trains
the scratch set beside vanilla, then the vanilla-initialised set as ``<group>_ft``. A group with
fewer than ``teachers.min_rows`` training rows either fails the stage or (policy
``vanilla``) takes the vanilla model as its teacher, which the summary and report state.
Outputs: ``teachers/<group>/`` and ``teachers/vanilla/`` (saved models with margin stats).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile

from pafo_ray.stages.base import StageContext, stage_hash
from pafo_ray.train import jobs as J
from pafo_ray.train.ray_train import TrainJob, run_jobs
from pafo_ray.train.targets import FINETUNED

NAME = "teachers"
SECTIONS = ("model", "train", "teachers")


def run(ctx: StageContext) -> dict:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    names = J.names(cfg)
    grouped = run_dir.groups_summary()
    counts = grouped.row_counts("train")
    small = [g for g in names if counts.get(g, 0) < cfg.teachers.min_rows]
    if small and cfg.teachers.small_group_policy == "error":
        raise ValueError(
            f"group(s) {small} have {[counts.get(g, 0) for g in small]} training rows, fewer than "
            f"teachers.min_rows={cfg.teachers.min_rows}; lower it, change prepare.user_quantile/"
            "tau, or set teachers.small_group_policy=vanilla")
    digest = stage_hash(ctx, NAME)
    vanilla = TrainJob("vanilla", J.objective_for("vanilla", cfg), run_dir.grouped_rows("train"),
                       run_dir.grouped_rows("val"), run_dir.teacher_model("vanilla"))
    teachers = [TrainJob(g, J.objective_for("teacher", cfg), run_dir.grouped_rows("train", [g]),
                         _val_uris(run_dir, g, grouped.row_counts("val")), run_dir.teacher_model(g))
                for g in names if g not in small]
    results = {}
    init = cfg.teachers.init
    if init == "scratch":
        results.update(run_jobs(cfg, run_dir, NAME, [vanilla] + teachers, digest))
    else:
        # The scratch teachers (init=both) do not need vanilla: they fit beside it.
        results.update(run_jobs(cfg, run_dir, NAME,
                                [vanilla] + (teachers if init == "both" else []), digest))
        tuned = [_finetuned(run_dir, job, results["vanilla"]["model"], cfg, suffix=FINETUNED if
                            init == "both" else "") for job in teachers]
        results.update(run_jobs(cfg, run_dir, NAME, tuned, digest))
    fallbacks = {}
    suffixes = ["", FINETUNED] if init == "both" else [""]
    for g in small:
        for suffix in suffixes:
            _copy_vanilla(run_dir, g + suffix)
        fallbacks[g] = (f"group '{g}' has {counts.get(g, 0)} training rows (< teachers.min_rows="
                        f"{cfg.teachers.min_rows}): its teacher is the vanilla model")
    return {"jobs": results, "train_rows": counts, "fallbacks": fallbacks, "groups": names,
            "init": cfg.teachers.init, "overlap_seconds": _overlap(results, names)}


def _finetuned(run_dir, job: TrainJob, vanilla_model: str, cfg, suffix: str) -> TrainJob:
    """A group's teacher started from the vanilla model (``<group><suffix>``)."""
    return dataclasses.replace(job, name=job.name + suffix,
                               output=run_dir.teacher_model(job.name + suffix),
                               init_from=vanilla_model, epochs=cfg.teachers.finetune_epochs)


def _copy_vanilla(run_dir, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = run_dir.fetch_folder(run_dir.teacher_model("vanilla"), tmp)
        copy = tempfile.mkdtemp()
        shutil.copytree(local, copy, dirs_exist_ok=True)
        run_dir.save_folder(copy, run_dir.teacher_model(name))
        shutil.rmtree(copy, ignore_errors=True)


def teacher_names(cfg) -> list:
    """Every teacher model the stage writes: ``<group>`` and, with init=both, ``<group>_ft``."""
    names = J.names(cfg)
    return names + ([g + FINETUNED for g in names] if cfg.teachers.init == "both" else [])


def _val_uris(run_dir, group: str, val_counts: dict) -> list:
    if val_counts.get(group, 0) > 0:
        return run_dir.grouped_rows("val", [group])
    return run_dir.grouped_rows("val")  # no validation rows of this group: validate on all


def _overlap(results: dict, names: list) -> float:
    spans = [(results[g]["started"], results[g]["finished"]) for g in names if g in results]
    if len(spans) < 2:
        return 0.0
    return round(max(0.0, min(e for _, e in spans) - max(s for s, _ in spans)), 2)


def describe(summary: dict) -> str:
    parts = []
    for name, info in summary["jobs"].items():
        m = info["metrics"]
        parts.append(f"{name} val acc {m.get('val_accuracy', float('nan')):.3f}")
    extra = f"; fallbacks: {list(summary['fallbacks'])}" if summary["fallbacks"] else ""
    return f"{'; '.join(parts)} (teachers overlapped {summary['overlap_seconds']:.0f} s){extra}"
