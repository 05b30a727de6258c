"""Disaggregated (Fairlearn-style) accuracy metrics of scored preference rows, with user-cluster
bootstrap intervals.

Input: a DataFrame of scored test rows with columns ``user_id``, ``margin`` (the model's
r(chosen) − r(rejected)), ``group`` (support group), ``support_rate`` (row), ``user_support``
(the user's mean training support, NaN for unseen users) and optionally ``user_type`` (simulator
ground truth), ``seen`` (bool) and ``row_id`` (to pair methods).

Outcomes: correct = margin > 0, tie = margin == 0 (its own outcome, never correct),
wrong = margin < 0; accuracy = correct / rows. Every disaggregation uses Fairlearn's names:
``overall, by_group, count, group_min, group_max, difference (max − min), ratio (min / max)``.

Intervals (user-cluster bootstrap) live in :mod:`pafo_ray.bootstrap`; the bundle of every
metric per method and the paired comparison with vanilla in :mod:`pafo_ray.comparison`.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import numpy as np
import pandas as pd

DIMENSIONS = ("group", "user_type", "seen")
KNOWN_ORDERS = (("minority", "majority"), ("unseen", "seen"))  # lowest support / seen last
PER_USER_STATS = ("mean", "std", "worst", "p10")


def as_float(x) -> float | None:
    """A JSON-safe float: NaN (undefined) becomes None."""
    return None if x is None or not np.isfinite(x) else float(x)


def labels_of(df: pd.DataFrame, by: str) -> pd.Series:
    """String labels of column ``by`` (``seen`` bools become "seen"/"unseen")."""
    if by not in df.columns:
        raise ValueError(f"scored rows have no column {by!r} (columns: {list(df.columns)})")
    column = df[by]
    if column.isna().any():
        raise ValueError(f"{int(column.isna().sum())} scored rows have no {by!r}; fill it or "
                         f"drop the column")
    if by == "seen":
        return pd.Series(np.where(column.astype(bool), "seen", "unseen"), index=df.index)
    return column.astype(str)


def dimensions_of(df: pd.DataFrame) -> list[str]:
    """The disaggregation columns present; an all-missing optional column (e.g. ``user_type``
    on real data) counts as absent; ``group`` never does (its NaNs are an error)."""
    return [by for by in DIMENSIONS
            if by in df.columns and (by == "group" or df[by].notna().any())]


def _order(present: Sequence[str], groups: Sequence[str] | None, by: str) -> list[str]:
    """Group labels from lowest to highest support. ``groups`` given: every one must have
    rows and no other label may occur (an empty group is an error, never a silent gap)."""
    present = list(dict.fromkeys(present))
    if groups is not None:
        groups = [str(g) for g in groups]
        empty = [g for g in groups if g not in present]
        unknown = [g for g in present if g not in groups]
        if empty or unknown:
            raise ValueError(
                f"{by!r}: expected groups {groups}, found {sorted(present)}; "
                + (f"group(s) {empty} have no scored rows — check the grouping rule "
                   f"(threshold/quantile) in prepare and that this split holds users of every "
                   f"group; " if empty else "")
                + (f"unexpected group(s) {unknown}" if unknown else ""))
        return groups
    for known in KNOWN_ORDERS:
        if set(present) <= set(known):
            return [g for g in known if g in present]
    return sorted(present, key=lambda s: [int(p) if p.isdigit() else p
                                          for p in re.split(r"(\d+)", s)])


def outcomes(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with int columns ``correct`` (margin > 0) and ``tie`` (margin == 0) added."""
    for column in ("user_id", "margin"):
        if column not in df.columns:
            raise ValueError(f"scored rows need a {column!r} column (have {list(df.columns)})")
    if len(df) == 0:
        raise ValueError("no scored rows: check that the evaluated split is not empty")
    margin = df["margin"].to_numpy(dtype=np.float64)
    if np.isnan(margin).any():
        raise ValueError(f"{int(np.isnan(margin).sum())} of {len(df)} scored rows have a NaN "
                         "margin; check the model's scores for these rows")
    return df.assign(correct=(margin > 0).astype(np.int64), tie=(margin == 0).astype(np.int64))


def disaggregated(df: pd.DataFrame, by: str, groups: Sequence[str] | None = None) -> dict:
    """Accuracy overall and per value of column ``by``, Fairlearn names.

    Returns ``{"overall", "by_group": {g: acc}, "count": {g: rows}, "group_min", "group_max",
    "difference": max − min, "ratio": min / max (None if max = 0), "order": [g...]}``; ``order``
    runs from lowest to highest support (``groups`` if given, see :func:`_order`).
    """
    frame = outcomes(df)
    labels = labels_of(frame, by)
    order = _order(labels.unique(), groups, by)
    stats = frame.groupby(labels)["correct"].agg(["sum", "count"])
    accuracy = {g: float(stats.loc[g, "sum"] / stats.loc[g, "count"]) for g in order}
    low, high = min(accuracy.values()), max(accuracy.values())
    return {"overall": float(frame["correct"].mean()), "by_group": accuracy,
            "count": {g: int(stats.loc[g, "count"]) for g in order},
            "group_min": low, "group_max": high, "difference": high - low,
            "ratio": low / high if high > 0 else None, "order": order}


def per_user(df: pd.DataFrame) -> dict:
    """Spread of per-user accuracy (a user with one row counts, with accuracy 0 or 1).

    Returns ``{"mean", "std" (population, ddof=0), "worst" (min), "p10" (10th percentile,
    linear interpolation), "num_users", "quantiles": {"p0","p10","p25","p50","p75","p90",
    "p100"}}``.
    """
    accuracy = outcomes(df).groupby("user_id")["correct"].mean().to_numpy()
    qs = (0, 10, 25, 50, 75, 90, 100)
    quantiles = dict(zip((f"p{q}" for q in qs), np.percentile(accuracy, qs).tolist()))
    return {"mean": float(accuracy.mean()), "std": float(accuracy.std()),
            "worst": float(accuracy.min()), "p10": quantiles["p10"],
            "num_users": int(len(accuracy)), "quantiles": quantiles}


def bias_curve(df: pd.DataFrame, buckets: int = 5) -> list[dict]:
    """Accuracy by row support rate in ``buckets`` equal-width bins of [0, 1].

    Bins are ``[lo, hi)``, the last ``[lo, 1]``. An empty bin has ``count 0, accuracy None``.
    Rows with NaN ``support_rate`` are left out (count them with ``support_rate.isna()``).
    """
    frame = outcomes(df)
    support = frame["support_rate"].to_numpy(dtype=np.float64)
    known = ~np.isnan(support)
    if ((support[known] < 0) | (support[known] > 1)).any():
        raise ValueError("support_rate must lie in [0, 1]; check the prepare stage output")
    index = np.minimum(np.floor(support[known] * buckets).astype(np.int64), buckets - 1)
    count = np.bincount(index, minlength=buckets)
    correct = np.bincount(index, weights=frame["correct"].to_numpy()[known], minlength=buckets)
    return [{"lo": k / buckets, "hi": (k + 1) / buckets, "count": int(count[k]),
             "accuracy": float(correct[k] / count[k]) if count[k] else None}
            for k in range(buckets)]


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); pairs with a NaN are dropped.
    NaN when fewer than 2 pairs or either side is constant."""
    frame = pd.DataFrame({"x": np.asarray(x, dtype=float), "y": np.asarray(y, dtype=float)})
    frame = frame.dropna()
    if len(frame) < 2:
        return float("nan")
    ranks = frame.rank(method="average")
    rx, ry = ranks["x"] - ranks["x"].mean(), ranks["y"] - ranks["y"].mean()
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def user_support_spearman(df: pd.DataFrame) -> float:
    """Spearman of per-user support (mean ``user_support``) vs per-user accuracy; users with
    unknown support (unseen) are dropped."""
    frame = outcomes(df)
    per_user_frame = frame.groupby("user_id").agg(support=("user_support", "mean"),
                                                  accuracy=("correct", "mean"))
    return spearman(per_user_frame["support"], per_user_frame["accuracy"])


def accuracy_se(correct: Sequence[float], cluster: Optional[Sequence] = None) -> float:
    """Standard error of an accuracy, the mean ``p`` of 0/1 ``correct`` ``[n]``.

    Without ``cluster``: binomial, ``√(p (1 − p) / n)``. With ``cluster`` ``[n]`` (the user of
    each row), the cluster-robust (sandwich) SE, since a user's rows are not independent:
    ``√(G / (G − 1) · Σ_u (Σ_{i∈u} (c_i − p))²) / n`` over the ``G`` users (binomial when
    ``G < 2``). NaN for no rows.
    """
    values = np.asarray(correct, dtype=float)
    n = len(values)
    if n == 0:
        return math.nan
    p = float(values.mean())
    if cluster is None or len(set(cluster)) < 2:
        return math.sqrt(p * (1 - p) / n)
    residual = pd.Series(values - p).groupby(np.asarray(cluster)).sum()
    clusters = len(residual)
    return math.sqrt(clusters / (clusters - 1) * float((residual ** 2).sum())) / n
