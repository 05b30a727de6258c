"""Every metric of each method, and each method against the reference (vanilla).

:func:`method_metrics` bundles :mod:`pafo_ray.metrics` with :mod:`pafo_ray.bootstrap`
intervals; :func:`compare_methods` adds paired differences against the reference.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from pafo_ray.bootstrap import (
    accuracy_stat,
    align_users,
    gap_stat,
    per_user_stat,
    percentile_interval,
    resample_users,
    spearman_stat,
    user_table,
)
from pafo_ray.metrics import (
    PER_USER_STATS,
    as_float,
    bias_curve,
    dimensions_of,
    disaggregated,
    labels_of,
    outcomes,
    per_user,
)


def method_metrics(df: pd.DataFrame, *, groups: Sequence[str] | None = None, buckets: int = 5,
                   bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Every metric of one method's scored rows; estimates are ``{"value", "lo", "hi"}``
    (user-bootstrap interval; ``bootstrap=0``: lo = hi = None). Keys::

        rows, users, ties, tie_rate, overall,
        per_user: {mean, std, worst, p10 (estimates), num_users, quantiles},
        spearman: {value, lo, hi, num_users},   # user support vs user accuracy
        bias_curve: [{lo, hi, count, accuracy}], bias_curve_missing,
        by: {group | user_type | seen (when present): {:func:`disaggregated` keys,
             interval: {g: [lo, hi]}, gap: estimate | None, per_user: {g: per_user()}}},
        bootstrap: {resamples, seed, alpha, unit}

    ``groups``: the support groups ``prepare`` wrote, lowest support first (e.g.
    ``schema.group_names(k)``); a named group without rows raises ``ValueError``. None: the
    groups present. ``gap`` of a dimension = last − first group: majority − minority
    (``seen``: seen − unseen).
    """
    missing = [c for c in ("group", "support_rate", "user_support") if c not in df.columns]
    if missing:
        raise ValueError(f"scored rows lack column(s) {missing}; the evaluate stage joins them "
                         "from the prepared test split")
    frame = outcomes(df)
    table = user_table(frame)
    stats = {"overall": accuracy_stat(), "spearman": spearman_stat(),
             **{f"per_user.{k}": per_user_stat(k) for k in PER_USER_STATS}}
    by = {}
    for dim in dimensions_of(frame):
        by[dim] = disaggregated(frame, dim, groups if dim == "group" else None)
        order = by[dim]["order"]
        stats.update({f"{dim}.{g}": accuracy_stat(dim, g) for g in order})
        if len(order) >= 2:
            stats[f"{dim}.gap"] = gap_stat(dim, order[0], order[-1])
    values = resample_users([table], stats, bootstrap, seed) if bootstrap > 0 else {}

    def estimate(name: str) -> dict:
        lo, hi = percentile_interval(values[name], alpha) if name in values else (None, None)
        return {"value": as_float(stats[name].point(table)), "lo": lo, "hi": hi}

    for dim, result in by.items():
        labels = labels_of(frame, dim)
        result["interval"] = {g: [estimate(f"{dim}.{g}")[k] for k in ("lo", "hi")]
                              for g in result["order"]}
        result["gap"] = estimate(f"{dim}.gap") if f"{dim}.gap" in stats else None
        result["per_user"] = {g: per_user(frame[labels == g]) for g in result["order"]}
    spread = per_user(frame)
    return {
        "rows": len(frame), "users": len(table.users), "ties": int(frame["tie"].sum()),
        "tie_rate": float(frame["tie"].mean()),
        "overall": estimate("overall"),
        "per_user": {**{k: estimate(f"per_user.{k}") for k in PER_USER_STATS},
                     "num_users": spread["num_users"], "quantiles": spread["quantiles"]},
        "spearman": {**estimate("spearman"),
                     "num_users": int(np.isfinite(table.support).sum())},
        "bias_curve": bias_curve(frame, buckets),
        "bias_curve_missing": int(frame["support_rate"].isna().sum()),
        "by": by,
        "bootstrap": {"resamples": bootstrap, "seed": seed, "alpha": alpha, "unit": "user"},
    }


def compare_methods(frames: dict[str, pd.DataFrame], reference: str = "vanilla", *,
                    groups: Sequence[str] | None = None, buckets: int = 5, bootstrap: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> dict:
    """:func:`method_metrics` of each method, and paired differences (method − reference,
    same rows, same user resamples) of overall accuracy, per-user std, each group's accuracy
    and per-user std, and the gap — by ``group`` and, when present, by ``user_type``."""
    if reference not in frames:
        raise ValueError(f"reference method {reference!r} not among {sorted(frames)}")
    kwargs = dict(buckets=buckets, bootstrap=bootstrap, seed=seed, alpha=alpha)
    methods = {name: method_metrics(df, groups=groups, **kwargs) for name, df in frames.items()}
    differences = {}
    for name, df in frames.items():
        if name == reference:
            continue
        tables = [user_table(frame) for frame in align_users(df, frames[reference])]
        stats = {"overall_accuracy": accuracy_stat(), "per_user_std": per_user_stat("std")}
        for dim in ("group", "user_type"):
            order = methods[name]["by"].get(dim, {}).get("order", [])
            for g in order:
                stats[f"{dim}.{g}_accuracy"] = accuracy_stat(dim, g)
                stats[f"{dim}.{g}_per_user_std"] = per_user_stat("std", dim, g)
            if len(order) >= 2:
                stats[f"{dim}.gap"] = gap_stat(dim, order[0], order[-1])
        values = resample_users(tables, stats, bootstrap, seed) if bootstrap > 0 else {}
        result: dict = {"by": {}}
        for key, stat in stats.items():
            lo, hi = percentile_interval(values[key], alpha) if key in values else (None, None)
            entry = {"diff": as_float(stat.point(tables[0]) - stat.point(tables[1])),
                     "lo": lo, "hi": hi}
            if "." in key:
                dim, metric = key.split(".", 1)
                result["by"].setdefault(dim, {})[metric] = entry
            else:
                result[key] = entry
        differences[name] = result
    return {"reference": reference, "methods": methods, "differences": differences,
            "bootstrap": {"resamples": bootstrap, "seed": seed, "alpha": alpha, "unit": "user"}}
