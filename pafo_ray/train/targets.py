"""Conditional distillation targets: each row's margin from its own group's teacher.

The margins stage stores every teacher's margin on every row (``margin_<group>``) and
each teacher's validation margin mean/std. Here a row's target is picked from the
teacher of its group, optionally standardised so that a teacher with a wider spread
does not dominate, and masked by the distillation scope.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FINETUNED = "_ft"  # suffix of the vanilla-initialised teachers when teachers.init=both


def teacher_suffix(teachers_init: str, teacher_init: str, stats: dict | None = None):
    """Column/folder suffix of the teacher set a student distils (see DistillConfig.teacher_init):
    ``""`` or ``"_ft"``, or for ``teacher_init="best"`` ``{group: suffix}`` from
    :func:`best_teachers` on ``stats``."""
    if teacher_init == "best":
        if teachers_init != "both":
            raise ValueError(f"distill.teacher_init=best chooses between the two teacher sets "
                             f"per group, but teachers.init={teachers_init} trained one: set "
                             "teachers.init=both and rerun `pafo-ray teachers`")
        return best_teachers(stats or {})
    if teacher_init == "auto" or teacher_init == teachers_init:
        return ""
    if teachers_init == "both":
        return FINETUNED if teacher_init == "vanilla" else ""
    raise ValueError(f"distill.teacher_init={teacher_init} but teachers.init={teachers_init} "
                     f"trained no such teachers: set teachers.init=both (or {teacher_init}) and "
                     "rerun `pafo-ray teachers`")


def best_teachers(stats: dict) -> dict:
    """``{group: "" | "_ft"}``: per group, the teacher (scratch ``<g>`` or vanilla-initialised
    ``<g>_ft``) with the higher validation accuracy on the group's validation rows (the
    teachers' own ``val_accuracy``, recorded in their margin stats); scratch on a tie or where
    either accuracy is missing (a run trained before it was recorded)."""
    out = {}
    for name in stats:
        if name.endswith(FINETUNED) or name + FINETUNED not in stats:
            continue
        scratch = stats[name].get("val_accuracy")
        tuned = stats[name + FINETUNED].get("val_accuracy")
        out[name] = FINETUNED if scratch is not None and tuned is not None and tuned > scratch \
            else ""
    return out


def suffix_of(suffix, group: str) -> str:
    """The suffix of ``group``'s teacher: one for every group, or a ``{group: suffix}``."""
    return suffix.get(group, "") if isinstance(suffix, dict) else suffix


def target_settings(distill, teachers_init: str, stats: dict, extra_per_user: int = 0) -> dict:
    """The ``targets`` dict of :func:`distill_targets` for a DistillConfig.

    ``extra_per_user``: how many unlabelled comparisons per user the margins stage scored
    (``margins.extra_pairs_per_user``); ``distill.extra_pairs`` may use up to that many.
    """
    if distill.extra_pairs < 0 or distill.extra_pairs > extra_per_user:
        raise ValueError(f"distill.extra_pairs={distill.extra_pairs} must lie in [0, "
                         f"margins.extra_pairs_per_user={extra_per_user}]: raise "
                         "margins.extra_pairs_per_user (and rerun `pafo-ray margins`) or lower it")
    return {"margin_norm": distill.margin_norm, "scope": distill.scope, "stats": stats,
            "suffix": teacher_suffix(teachers_init, distill.teacher_init, stats),
            # λ = 0: unlabelled rows would carry nothing but dilute the batches.
            "extra_fraction": (distill.extra_pairs / extra_per_user
                               if extra_per_user and distill.lam > 0 else 0.0),
            "extra_users": distill.extra_users}


def distill_targets(frame: pd.DataFrame, targets: dict, names: list) -> pd.DataFrame:
    """Add ``teacher_margin`` [n] and ``distill_mask`` [n] to ``frame``.

    targets: ``margin_norm`` (none | standardize), ``scope`` (all | agree | minority_users),
    ``stats`` {teacher: {"mean", "std"}} of each teacher on its validation rows, ``suffix``
    ("" or ``_ft``: which teacher set, ``margin_<group><suffix>``; or ``{group: suffix}``,
    one set per group), ``extra_fraction`` and
    ``extra_users`` (which unlabelled rows to keep, see below).
    Standardised target: ``μ_pool + σ_pool · (m − μ_g) / σ_g`` with μ_pool, σ_pool the
    means of the teachers' μ_g, σ_g, so every teacher speaks on one scale.

    Unlabelled rows (``labelled`` False, the margins stage's ``split=extra``) are kept when
    ``extra_rank < extra_fraction`` and their user is in scope of ``extra_users`` (all, or the
    lowest group); they always receive the distillation term (the scope applies to labelled
    rows). The others are dropped from the returned frame.
    """
    frame = _select_extra(frame, targets, names)
    suffix = targets.get("suffix", "")
    missing = [f"margin_{g}{suffix_of(suffix, g)}" for g in names
               if f"margin_{g}{suffix_of(suffix, g)}" not in frame]
    if missing:
        raise RuntimeError(f"rows lack teacher margins {missing}: rerun `pafo-ray margins`")
    group = frame["group"].to_numpy(dtype=object)
    source = group.copy()
    if targets["scope"] == "minority_users":
        source = np.where(frame["user_group"].to_numpy(dtype=object) == names[0], names[0], group)
    raw = np.full(len(frame), np.nan)
    margin = np.full(len(frame), np.nan)
    for g in names:
        rows = source == g
        raw[rows] = frame[f"margin_{g}{suffix_of(suffix, g)}"].to_numpy(np.float64)[rows]
        margin[rows] = raw[rows]
        if targets["margin_norm"] == "standardize":
            stats = {k: targets["stats"][k + suffix_of(suffix, k)] for k in names}
            pooled = _pooled(stats)
            std = max(stats[g]["std"], 1e-6)
            margin[rows] = pooled["mean"] + pooled["std"] * (raw[rows] - stats[g]["mean"]) / std
    bad = ~np.isfinite(margin)
    if bad.any():
        raise RuntimeError(f"{int(bad.sum())} rows have NaN/inf teacher margins: refusing to "
                           "train on them; rerun `pafo-ray margins` (and check the teachers)")
    labelled = (frame["labelled"].fillna(True).to_numpy(bool) if "labelled" in frame
                else np.ones(len(frame), dtype=bool))
    if targets["scope"] == "agree":
        # The teacher agrees with the label when its own margin is positive; a standardized
        # target is shifted by the teacher's mean and would move that boundary.
        mask = raw > 0
    elif targets["scope"] == "minority_users":
        # Rows of minority users only (with row-level groups a user's rows span groups).
        mask = frame["user_group"].to_numpy(dtype=object) == names[0]
    else:
        mask = np.ones(len(frame), dtype=bool)
    mask = np.where(labelled, mask, True)
    return frame.assign(teacher_margin=margin.astype(np.float32),
                        distill_mask=mask.astype(np.float32))


def _select_extra(frame: pd.DataFrame, targets: dict, names: list) -> pd.DataFrame:
    if "labelled" not in frame:
        return frame
    extra = ~frame["labelled"].fillna(True).to_numpy(bool)
    if not extra.any():
        return frame
    keep = frame["extra_rank"].to_numpy(np.float64) < targets.get("extra_fraction", 0.0)
    if targets.get("extra_users", "all") == "minority":
        keep &= frame["user_group"].to_numpy(dtype=object) == names[0]
    return frame[~extra | keep].reset_index(drop=True)


def _pooled(stats: dict) -> dict:
    return {"mean": float(np.mean([s["mean"] for s in stats.values()])),
            "std": float(np.mean([s["std"] for s in stats.values()]))}
