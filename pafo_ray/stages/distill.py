"""Stage ``distill``: the unified student — no group input — on Ray Train.

Loss per row: ``w_g [BT + λ·D(m_S, m_T)]`` (on unlabelled comparisons, ``distill.extra_pairs``:
``w_g λ·D`` alone, reaching the user offsets only) with ``m_T`` the margin of the row's own
group's teacher (see pafo_ray.train.targets). The weights come from ``distill.*``, or
from the tune stage's chosen trial when one exists and ``distill.use_tuned`` is on.
Output: ``distill/student/`` (a saved RewardModel, with ``user_groups.json``: each user's
final group from the groups stage, ``group_vectors.json``: each group's population in the
student's basis, and ``group_starts.json`` where validation chose another start for a group —
what the fair cold start needs).
"""

from __future__ import annotations

import dataclasses

from pafo_ray.config import DistillConfig, PipelineConfig
from pafo_ray.stages.base import StageContext, is_active, is_done, stage_hash
from pafo_ray.train import jobs as J
from pafo_ray.train.ray_train import TrainJob, run_jobs

NAME = "distill"
SECTIONS = ("model", "train", "distill")


def chosen_settings(ctx: StageContext) -> tuple[PipelineConfig, str]:
    """(the config with the chosen trial's params written in, where they came from)."""
    cfg = ctx.cfg
    if cfg.distill.use_tuned and is_active(cfg, "tune") and is_done(ctx, "tune"):
        chosen = ctx.run_dir.tune_summary().chosen
        if chosen:
            from tuning.space import apply_params

            return apply_params(cfg, chosen["params"]), f"tune trial {chosen.get('trial_id')}"
    return cfg, "distill config"


def targets_for(ctx: StageContext, distill: DistillConfig) -> dict:
    from pafo_ray.train.targets import target_settings

    stats = ctx.run_dir.teacher_stats()
    return target_settings(distill, ctx.cfg.teachers.init, stats,
                           ctx.cfg.margins.extra_pairs_per_user)


def margin_uris(run_dir, split: str, distill: DistillConfig | None = None) -> list:
    """Margin rows of a split; for training with ``distill.extra_pairs > 0`` also the
    unlabelled comparisons (``split=extra``)."""
    uris = [run_dir.margin_rows(split)]
    if distill is not None and distill.extra_pairs > 0 and run_dir.has_margin_rows("extra"):
        uris.append(run_dir.margin_rows("extra"))
    return uris


def write_user_groups(ctx: StageContext, outputs: list) -> dict:
    """``user_groups.json`` ({user_id: group}) into each saved model folder (see
    pafo_ray.models.reward_model), and the cold start's group vectors and starts; nothing when
    groups are row-level (a user has no one group). Returns the starts chosen per model."""
    import json

    from pafo_ray.models.reward_model import GROUPS_NAME
    from pafo_ray.storage import join

    users = ctx.run_dir.users()
    users = users[users["group"].notna()]
    if users.empty:
        return {}
    mapping = dict(zip(users["user_id"].astype(str), users["group"].astype(str)))
    for uri in outputs:
        ctx.run_dir.write_file(join(uri, GROUPS_NAME), json.dumps(mapping, indent=1).encode())
    return write_group_vectors(ctx, outputs, mapping)


def split_comparisons(ctx: StageContext, split: str, mapping: dict, cache) -> tuple:
    """``(φ_chosen, φ_rejected, group, user)`` of a split's prepared rows: the embedding
    cache's vectors, each row's user and its group under ``mapping`` ({user_id: group})."""
    import numpy as np

    from pafo_ray.train.frames import read_frame

    rows = read_frame(ctx.run_dir.prepared_rows(split),
                      columns=["user_id", "chosen_text_id", "rejected_text_id"])
    chosen = cache.vectors[cache.index_of(rows["chosen_text_id"].to_numpy(np.int64))]
    rejected = cache.vectors[cache.index_of(rows["rejected_text_id"].to_numpy(np.int64))]
    users = rows["user_id"].astype(str)
    return chosen, rejected, users.map(mapping).to_numpy(dtype=object), users.to_numpy()


def write_group_vectors(ctx: StageContext, outputs: list, mapping: dict) -> dict:
    """``group_vectors.json`` ({group: [K] offset}) into each saved model folder: each group's
    population fitted through the student's own W on its users' training rows — the fair cold
    start's group vectors (pafo_ray.coldstart.fit_group_vectors); and ``group_starts.json``
    where validation chose another start for a group (pafo_ray.coldstart.choose_group_starts,
    on the validation rows of the group's users). Frozen mode only: the embedding cache is the
    student's φ there (finetune mode keeps the mean-offset fallback). Returns, per model
    folder, each group's chosen start and its validation accuracies."""
    import json

    from pafo_ray.coldstart import choose_group_starts, fit_group_vectors
    from pafo_ray.models import RewardModel
    from pafo_ray.models.reward_model import GROUP_STARTS_NAME, GROUP_VECTORS_NAME
    from pafo_ray.storage import join
    from pafo_ray.train.arrays import read_cache

    if ctx.cfg.model.mode != "frozen" or ctx.cfg.model.head != "lowrank":
        return {}
    cache = read_cache(ctx.run_dir.embed_cache())
    train = split_comparisons(ctx, "train", mapping, cache)[:3]  # group vectors: no users
    val = split_comparisons(ctx, "val", mapping, cache)
    chosen_starts = {}
    for uri in outputs:
        model = RewardModel.from_pretrained(uri)
        vectors = fit_group_vectors(model, *train)
        if not vectors:
            continue
        ctx.run_dir.write_file(join(uri, GROUP_VECTORS_NAME),
                               json.dumps(vectors, indent=1).encode())
        model.set_group_vectors(vectors)
        starts = choose_group_starts(model, *val)
        moved = {g: c["start"] for g, c in starts.items() if c["source"] != "group"}
        if moved:
            ctx.run_dir.write_file(join(uri, GROUP_STARTS_NAME),
                                   json.dumps(moved, indent=1).encode())
        chosen_starts[uri.rstrip("/").rsplit("/", 1)[-1]] = {
            g: {k: v for k, v in c.items() if k != "start"} for g, c in starts.items()}
    return chosen_starts


def run(ctx: StageContext) -> dict:
    cfg, run_dir = ctx.cfg, ctx.run_dir
    chosen, origin = chosen_settings(ctx)
    tuned = dataclasses.replace(ctx, cfg=chosen)
    jobs = [TrainJob("student", J.objective_for("pafo", chosen),
                     margin_uris(run_dir, "train", chosen.distill),
                     run_dir.grouped_rows("val"), run_dir.student_model("student"),
                     targets=targets_for(tuned, chosen.distill), config=chosen.to_dict())]
    if origin != "distill config":
        # The report compares the tuned student with the default-weights one.
        jobs.append(TrainJob("student_default", J.objective_for("pafo", cfg),
                             margin_uris(run_dir, "train", cfg.distill), run_dir.grouped_rows("val"),
                             run_dir.student_model("student_default"),
                             targets=targets_for(ctx, cfg.distill)))
    results = run_jobs(cfg, run_dir, NAME, jobs, stage_hash(ctx, NAME))
    cold_start = write_user_groups(ctx, [job.output for job in jobs])
    changed = {section: {k: v for k, v in getattr(chosen, section).__dict__.items()
                         if getattr(getattr(cfg, section), k) != v}
               for section in ("train", "model")}
    suffix = jobs[0].targets["suffix"]
    return {"student": results["student"], "student_default": results.get("student_default"),
            "settings": dataclasses.asdict(chosen.distill),
            # Which teacher set each group's targets came from ("" scratch, "_ft" vanilla-init).
            "teachers_distilled": suffix if isinstance(suffix, dict) else None,
            "train": changed["train"],
            "model": changed["model"], "origin": origin, "cold_start_starts": cold_start}


def describe(summary: dict) -> str:
    m = summary["student"]["metrics"]
    return (f"student val acc {m.get('val_accuracy', float('nan')):.3f} "
            f"(minority {m.get('val_minority_accuracy', float('nan')):.3f}, majority "
            f"{m.get('val_majority_accuracy', float('nan')):.3f}) with weights from {summary['origin']}")
