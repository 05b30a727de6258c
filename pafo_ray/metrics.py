"""Disaggregated (Fairlearn-style) accuracy metrics of scored preference rows, with user-cluster
bootstrap intervals.

Input: a DataFrame of scored test rows with columns ``user_id``, ``margin`` (the model's
r(chosen) − r(rejected)), ``group`` (support group), ``support_rate`` (row), ``user_support``
(the user's mean training support, NaN for unseen users) and optionally ``user_type`` (simulator
ground truth), ``seen`` (bool) and ``row_id`` (to pair methods).

Outcomes: correct = margin > 0, tie = margin == 0 (its own outcome, never correct),
wrong = margin < 0; accuracy = correct / rows. Every disaggregation uses Fairlearn's names:
``overall, by_group, count, group_min, group_max, difference (max − min), ratio (min / max)``.

Intervals resample *users* with replacement (a cluster bootstrap): rows of one user are not
independent. The resampling is vectorised: a :class:`UserTable` holds per-user sums of correct
rows and rows per cell, and a :class:`UserStatistic` evaluates on resample multiplicities
``weights [resamples, users]`` (at all-ones weights it is the point estimate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

DIMENSIONS = ("group", "user_type", "seen")
KNOWN_ORDERS = (("minority", "majority"), ("unseen", "seen"))  # lowest support / seen last
PER_USER_STATS = ("mean", "std", "worst", "p10")


def _float(x) -> float | None:
    """A JSON-safe float: NaN (undefined) becomes None."""
    return None if x is None or not np.isfinite(x) else float(x)


def _labels(df: pd.DataFrame, by: str) -> pd.Series:
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


def _dimensions(df: pd.DataFrame) -> list[str]:
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
    labels = _labels(frame, by)
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


@dataclass(frozen=True)
class UserTable:
    """Per-user sums that a user bootstrap resamples.

    ``correct``, ``count``: ``[users, cells]`` correct rows and rows of each user in each cell
    ``(dimension, label)`` — ``("all", "all")`` and one per label of ``group``, ``user_type``,
    ``seen`` present; ``support``: ``[users]`` mean user_support (NaN when unknown).
    """

    users: np.ndarray
    cells: dict
    correct: np.ndarray
    count: np.ndarray
    support: np.ndarray


def user_table(df: pd.DataFrame) -> UserTable:
    """Build the :class:`UserTable` of scored rows (users sorted by id)."""
    frame = outcomes(df)
    user_codes, users = pd.factorize(frame["user_id"], sort=True)
    cells, cell_codes = {("all", "all"): 0}, [np.zeros(len(frame), dtype=np.int64)]
    for by in _dimensions(frame):
        codes, labels = pd.factorize(_labels(frame, by), sort=True)
        cell_codes.append(codes + len(cells))
        cells.update({(by, label): len(cells) + k for k, label in enumerate(labels)})
    shape = (len(users), len(cells))
    correct, count = np.zeros(shape), np.zeros(shape)
    for codes in cell_codes:
        flat = user_codes * shape[1] + codes
        correct += np.bincount(flat, frame["correct"].to_numpy(float), shape[0] * shape[1]
                               ).reshape(shape)
        count += np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)
    support = np.full(shape[0], np.nan)
    if "user_support" in frame.columns:
        support = frame.groupby(user_codes)["user_support"].mean().to_numpy(float)
    return UserTable(np.asarray(users), cells, correct, count, support)


class UserStatistic:
    """A statistic of a :class:`UserTable` under resample multiplicities ``[resamples, users]``
    → ``[resamples]``. Build with :func:`accuracy_stat`, :func:`gap_stat`,
    :func:`per_user_stat`, :func:`spearman_stat`."""

    def __init__(self, name: str, fn: Callable[[UserTable, np.ndarray], np.ndarray]):
        self.name, self.fn = name, fn

    def __call__(self, table: UserTable, weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.fn(table, weights)

    def point(self, df_or_table) -> float:
        table = df_or_table if isinstance(df_or_table, UserTable) else user_table(df_or_table)
        return float(self(table, np.ones((1, len(table.users))))[0])

    def __repr__(self) -> str:
        return f"UserStatistic({self.name})"


def _cell(table: UserTable, by: str, label: str) -> int:
    if (by, label) not in table.cells:
        raise ValueError(f"no scored rows with {by} = {label!r} (cells: {list(table.cells)})")
    return table.cells[(by, label)]


def accuracy_stat(by: str = "all", label: str = "all") -> UserStatistic:
    """Accuracy of the rows with ``by == label`` (default: all rows)."""
    def fn(table, weights):
        c = _cell(table, by, label)
        return (weights @ table.correct[:, c]) / (weights @ table.count[:, c])
    return UserStatistic(f"accuracy[{by}={label}]", fn)


def gap_stat(by: str, low: str, high: str) -> UserStatistic:
    """``accuracy(high) − accuracy(low)``, e.g. majority − minority."""
    high_stat, low_stat = accuracy_stat(by, high), accuracy_stat(by, low)
    return UserStatistic(f"gap[{by}:{high}-{low}]",
                         lambda table, weights: high_stat(table, weights) - low_stat(table, weights))


def per_user_stat(kind: str, by: str = "all", label: str = "all") -> UserStatistic:
    """Per-user accuracy ``mean | std | worst | p10`` over users with rows in the cell (as
    :func:`per_user`, on the resampled population: a user drawn twice counts twice)."""
    if kind not in PER_USER_STATS:
        raise ValueError(f"per-user statistic must be one of {PER_USER_STATS}, got {kind!r}")

    def fn(table, weights):
        c = _cell(table, by, label)
        keep = table.count[:, c] > 0
        accuracy = table.correct[keep, c] / table.count[keep, c]
        w = weights[:, keep]
        total = w.sum(axis=1)
        mean = (w @ accuracy) / total
        if kind == "mean":
            return mean
        if kind == "std":
            return np.sqrt((w * (accuracy[None, :] - mean[:, None]) ** 2).sum(axis=1) / total)
        if kind == "worst":
            worst = np.where(w > 0, accuracy[None, :], np.inf).min(axis=1)
            return np.where(np.isfinite(worst), worst, np.nan)
        # p10 of the repeated sample, numpy's linear rule: position h = (M − 1)·0.1.
        order = np.argsort(accuracy, kind="stable")
        values, cumulative = accuracy[order], np.cumsum(w[:, order], axis=1)
        position = (total - 1) * 0.1
        below = np.floor(position)
        at = lambda k: values[np.minimum((cumulative <= k[:, None]).sum(axis=1),  # noqa: E731
                                         len(values) - 1)]
        lower, upper = at(below), at(np.minimum(below + 1, total - 1))
        return np.where(total > 0, lower + (position - below) * (upper - lower), np.nan)
    return UserStatistic(f"per_user_{kind}[{by}={label}]", fn)


def spearman_stat() -> UserStatistic:
    """Spearman of user support vs user accuracy (all rows), users with known support."""
    def fn(table, weights):
        keep = np.isfinite(table.support) & (table.count[:, 0] > 0)
        accuracy = table.correct[keep, 0] / table.count[keep, 0]
        w = weights[:, keep]
        rx, ry = _weighted_ranks(table.support[keep], w), _weighted_ranks(accuracy, w)
        total = w.sum(axis=1, keepdims=True)
        rx = rx - (w * rx).sum(axis=1, keepdims=True) / total
        ry = ry - (w * ry).sum(axis=1, keepdims=True) / total
        return (w * rx * ry).sum(1) / np.sqrt((w * rx**2).sum(1) * (w * ry**2).sum(1))
    return UserStatistic("spearman[user_support,user_accuracy]", fn)


def _weighted_ranks(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average ranks of ``x [users]`` in the sample that repeats user u ``weights[:, u]``
    times: ``[resamples, users]``."""
    if len(x) == 0:
        return np.zeros_like(weights)
    order = np.argsort(x, kind="stable")
    _, starts, inverse = np.unique(x[order], return_index=True, return_inverse=True)
    tie_weight = np.add.reduceat(weights[:, order], starts, axis=1)
    tie_rank = np.cumsum(tie_weight, axis=1) - tie_weight + (tie_weight + 1) / 2
    ranks = np.empty_like(weights)
    ranks[:, order] = tie_rank[:, inverse]
    return ranks


# ---- user-cluster bootstrap --------------------------------------------------------------


def _draws(num_users: int, n: int, seed: int):
    """Resampled user indices, ``[chunk, users]`` at a time (bounded memory); a given seed
    and user count always give the same stream, whatever statistic is computed."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n, 4_000_000 // max(num_users, 1)))
    for start in range(0, n, chunk):
        yield rng.integers(0, num_users, size=(min(chunk, n - start), num_users))


def _multiplicity(draws: np.ndarray, num_users: int) -> np.ndarray:
    """How often each user was drawn: ``[chunk, users]`` float."""
    flat = (draws + np.arange(len(draws))[:, None] * num_users).ravel()
    return np.bincount(flat, minlength=draws.size).reshape(draws.shape).astype(float)


def _interval(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None, None
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _resample(tables: list[UserTable], stats: dict, n: int, seed: int) -> dict:
    """Each statistic on ``n`` user resamples: ``{name: [n]}``; with two tables (the same
    users, see :func:`_align`) the difference ``stat(a) − stat(b)`` under the same draws."""
    num_users = len(tables[0].users)
    out = {name: [] for name in stats}
    for draws in _draws(num_users, n, seed):
        weights = _multiplicity(draws, num_users)
        for name, stat in stats.items():
            values = stat(tables[0], weights)
            out[name].append(values - stat(tables[1], weights) if len(tables) == 2 else values)
    return {name: np.concatenate(v) if v else np.array([]) for name, v in out.items()}


def _resample_frames(frames: list[pd.DataFrame], statistic: Callable, n: int, seed: int):
    """Generic (slow) path for a ``statistic(DataFrame) -> float``: rebuilds each resampled
    frame, the k-th drawn user relabelled ``k`` so that a user drawn twice counts twice."""
    codes, users = pd.factorize(frames[0]["user_id"], sort=True)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=len(users))
    starts = np.cumsum(sizes) - sizes
    values = []
    for draws in _draws(len(users), n, seed):
        for draw in draws:
            lengths = sizes[draw]
            within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            rows = order[np.repeat(starts[draw], lengths) + within]
            relabel = np.repeat(np.arange(len(draw)), lengths)
            value = [statistic(f.iloc[rows].assign(user_id=relabel)) for f in frames]
            values.append(value[0] - value[1] if len(frames) == 2 else value[0])
    return np.asarray(values, dtype=float)


def bootstrap_by_user(df: pd.DataFrame, statistic, n: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float | None, float | None]:
    """``(lo, hi)`` percentile interval of ``statistic`` over ``n`` resamples of users.

    ``statistic``: a :class:`UserStatistic` (vectorised: 1000 resamples of 50k rows in well
    under a second) or any ``Callable[[DataFrame], float]`` (rebuilds every resampled frame;
    the same draws as the fast path for the same seed). ``(None, None)`` if undefined.
    """
    if isinstance(statistic, UserStatistic):
        values = _resample([user_table(df)], {"s": statistic}, n, seed)["s"]
    else:
        values = _resample_frames([df], statistic, n, seed)
    return _interval(values, alpha)


def _align(df_a: pd.DataFrame, df_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same rows of two methods, sorted by ``row_id``; users and groups must agree."""
    for name, frame in (("first", df_a), ("second", df_b)):
        if "row_id" not in frame.columns or frame["row_id"].duplicated().any():
            raise ValueError(f"paired metrics need a unique 'row_id' column ({name} frame)")
    a, b = df_a.sort_values("row_id"), df_b.sort_values("row_id")
    if len(a) != len(b) or (a["row_id"].to_numpy() != b["row_id"].to_numpy()).any():
        raise ValueError(f"paired metrics need the same rows scored by both methods: "
                         f"{len(a)} vs {len(b)} rows, "
                         f"{len(set(a['row_id']) ^ set(b['row_id']))} row_ids in only one")
    for column in ("user_id", *DIMENSIONS):
        if column in a.columns and column in b.columns and (
                a[column].astype(str).to_numpy() != b[column].astype(str).to_numpy()).any():
            raise ValueError(f"rows with the same row_id disagree on {column!r}")
    return a, b


def paired_difference(df_a: pd.DataFrame, df_b: pd.DataFrame, statistic, n: int = 1000,
                      seed: int = 0, alpha: float = 0.05) -> dict:
    """``{"diff", "lo", "hi"}`` of ``statistic(a) − statistic(b)`` on the same rows (aligned
    on ``row_id``), both methods evaluated on the same user resamples."""
    a, b = _align(df_a, df_b)
    if isinstance(statistic, UserStatistic):
        tables = [user_table(a), user_table(b)]
        diff = statistic.point(tables[0]) - statistic.point(tables[1])
        values = _resample(tables, {"s": statistic}, n, seed)["s"]
    else:
        diff = statistic(a) - statistic(b)
        values = _resample_frames([a, b], statistic, n, seed)
    lo, hi = _interval(values, alpha)
    return {"diff": _float(diff), "lo": lo, "hi": hi}


# ---- bundles ----------------------------------------------------------------------------


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
    for dim in _dimensions(frame):
        by[dim] = disaggregated(frame, dim, groups if dim == "group" else None)
        order = by[dim]["order"]
        stats.update({f"{dim}.{g}": accuracy_stat(dim, g) for g in order})
        if len(order) >= 2:
            stats[f"{dim}.gap"] = gap_stat(dim, order[0], order[-1])
    values = _resample([table], stats, bootstrap, seed) if bootstrap > 0 else {}

    def estimate(name: str) -> dict:
        lo, hi = _interval(values[name], alpha) if name in values else (None, None)
        return {"value": _float(stats[name].point(table)), "lo": lo, "hi": hi}

    for dim, result in by.items():
        labels = _labels(frame, dim)
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
        tables = [user_table(frame) for frame in _align(df, frames[reference])]
        stats = {"overall_accuracy": accuracy_stat(), "per_user_std": per_user_stat("std")}
        for dim in ("group", "user_type"):
            order = methods[name]["by"].get(dim, {}).get("order", [])
            for g in order:
                stats[f"{dim}.{g}_accuracy"] = accuracy_stat(dim, g)
                stats[f"{dim}.{g}_per_user_std"] = per_user_stat("std", dim, g)
            if len(order) >= 2:
                stats[f"{dim}.gap"] = gap_stat(dim, order[0], order[-1])
        values = _resample(tables, stats, bootstrap, seed) if bootstrap > 0 else {}
        result: dict = {"by": {}}
        for key, stat in stats.items():
            lo, hi = _interval(values[key], alpha) if key in values else (None, None)
            entry = {"diff": _float(stat.point(tables[0]) - stat.point(tables[1])),
                     "lo": lo, "hi": hi}
            if "." in key:
                dim, metric = key.split(".", 1)
                result["by"].setdefault(dim, {})[metric] = entry
            else:
                result[key] = entry
        differences[name] = result
    return {"reference": reference, "methods": methods, "differences": differences,
            "bootstrap": {"resamples": bootstrap, "seed": seed, "alpha": alpha, "unit": "user"}}
