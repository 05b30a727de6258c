"""Support rates and groups, computed on one hash partition of the comparison key.

``prepare`` hash-partitions rows by ``comparison_key`` so that every vote on a
comparison lands in the same partition; :func:`annotate_support` then needs no
communication. The support rate of a row is the smoothed share of the comparison's
raters who voted the same way: ``(k + a) / (n + a + b)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from pafo_ray.data.schema import smoothed_support
from pafo_ray.data.sources import DataValidationError


def annotate_support(table: pa.Table, *, prior_a: float, prior_b: float, min_raters: int,
                     few_raters_policy: str, strict: bool) -> pa.Table:
    """Add ``n_raters``, ``n_agree``, ``support_rate``, ``few_raters``, ``first_of_comparison``.

    Rows already set aside pass through untouched (support NaN). A second vote of the same
    user on the same comparison is set aside as ``duplicate`` (the earliest row wins).
    Comparisons with fewer than ``min_raters`` votes are flagged ``few_raters`` or, under
    ``few_raters_policy='set_aside'``, set aside as ``too_few_raters``.
    """
    n = table.num_rows
    reason = table.column("set_aside_reason").to_numpy(zero_copy_only=False).astype(object)
    keys = table.column("comparison_key").to_numpy()
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    row_ids = table.column("row_id").to_numpy()
    valid = reason == ""

    frame = pd.DataFrame({"key": keys[valid], "user": users[valid], "row": row_ids[valid]})
    order = np.argsort(frame["row"].to_numpy(), kind="stable")
    dup_sorted = frame.iloc[order].duplicated(["key", "user"]).to_numpy()
    duplicate = np.zeros(valid.sum(), dtype=bool)
    duplicate[order] = dup_sorted
    if duplicate.any():
        index = np.flatnonzero(valid)[np.flatnonzero(duplicate)]
        if strict:
            i = int(index[np.argmin(row_ids[index])])
            raise DataValidationError(
                f"{table.column('source_file')[i].as_py()} row {table.column('source_row')[i].as_py()}: "
                f"field 'user_id' ({users[i]}) votes again on a comparison it already rated")
        reason[index] = "duplicate"
        valid = reason == ""

    chosen_is_first = table.column("chosen_is_first").to_numpy(zero_copy_only=False)
    n_raters = np.zeros(n, dtype=np.int64)
    n_agree = np.zeros(n, dtype=np.int64)
    first = np.zeros(n, dtype=bool)
    if valid.any():
        uniq, first_pos, inverse = np.unique(keys[valid], return_index=True, return_inverse=True)
        counts = np.bincount(inverse)
        firsts = np.bincount(inverse, weights=chosen_is_first[valid].astype(np.float64))
        raters = counts[inverse]
        agree = np.where(chosen_is_first[valid], firsts[inverse], raters - firsts[inverse])
        n_raters[valid] = raters
        n_agree[valid] = agree.astype(np.int64)
        first[np.flatnonzero(valid)[first_pos]] = True
    support = np.where(valid, smoothed_support(n_agree, n_raters, prior_a, prior_b), np.nan)
    given = table.column("given_support").to_numpy(zero_copy_only=False)
    support = np.where(valid & np.isfinite(given), given, support)

    few = valid & (n_raters < min_raters)
    if few_raters_policy == "set_aside" and few.any():
        reason[few] = "too_few_raters"
        first[few] = False
        support[few] = np.nan
        few = np.zeros(n, dtype=bool)
    table = table.set_column(table.schema.get_field_index("set_aside_reason"),
                             "set_aside_reason", pa.array(reason, pa.string()))
    return (table.append_column("n_raters", pa.array(n_raters))
            .append_column("n_agree", pa.array(n_agree))
            .append_column("support_rate", pa.array(support, pa.float64()))
            .append_column("few_raters", pa.array(few))
            .append_column("first_of_comparison", pa.array(first)))


def row_groups(support: np.ndarray, few_raters: np.ndarray, tau: list, names: list) -> np.ndarray:
    """Row level: group k holds supports in [tau[k-1], tau[k]); few-rater rows go to the top."""
    index = np.searchsorted(np.asarray(tau, dtype=np.float64), support, side="right")
    index = np.where(few_raters, len(names) - 1, index)
    return np.asarray(names, dtype=object)[index]


def user_cut_points(user_support: np.ndarray, quantiles: list) -> np.ndarray:
    """Support values that cut users into groups at the given quantiles."""
    finite = user_support[np.isfinite(user_support)]
    if finite.size == 0:
        raise DataValidationError("no user has training rows: user-level groups need some")
    return np.quantile(finite, np.asarray(quantiles, dtype=np.float64))


def user_groups(user_support: np.ndarray, cuts: np.ndarray, names: list) -> np.ndarray:
    """User level: a user at or below the q-th cut is in the lower group.

    Users with no training rows (NaN support) fall back to the top group: the population
    the model serves when it knows nothing about a user.
    """
    index = np.searchsorted(cuts, user_support, side="left")
    index = np.where(np.isfinite(user_support), index, len(names) - 1)
    return np.asarray(names, dtype=object)[index]
