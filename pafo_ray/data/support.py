"""Support rates and groups, computed on one hash partition of the comparison key.

``prepare`` hash-partitions the narrow *votes* of the valid rows (:func:`votes_of`: row
id, comparison key, user, direction) by ``comparison_key`` so that every vote on a
comparison lands in the same partition; :func:`count_votes` then needs no communication.
The labelling pass reads each chunk again and takes its rows' results back by row id
(:func:`gather_votes`, :func:`attach_support`): the texts never go through the shuffle.
The support rate of a row is the smoothed share of the comparison's raters who voted the
same way: ``(k + a) / (n + a + b)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pafo_ray.data.schema import smoothed_support
from pafo_ray.data.sources import DataValidationError

VOTE_COLUMNS = ["row_id", "comparison_key", "user_id", "chosen_is_first", "given_support",
                "split"]
_EMPTY = pa.table({"row_id": pa.array([], pa.int64()), "comparison_key": pa.array([], pa.int64()),
                   "user_id": pa.array([], pa.string()), "chosen_is_first": pa.array([], pa.bool_()),
                   "given_support": pa.array([], pa.float64()), "split": pa.array([], pa.string()),
                   "set_aside_reason": pa.array([], pa.string())})
_NO_USERS = pa.table({"user_id": pa.array([], pa.string()), "train_rows": pa.array([], pa.int64()),
                      "train_support": pa.array([], pa.float64())})
KEPT, DUPLICATE, TOO_FEW = 0, 1, 2  # ``status`` of a vote
_REASONS = {DUPLICATE: "duplicate", TOO_FEW: "too_few_raters"}


def votes_of(table: pa.Table, partitions: int) -> pa.Table:
    """The narrow columns of a validated chunk's valid rows, with the hash ``partition`` of
    their comparison key and sorted by it: what the shuffle carries.

    A vote is ~50 bytes against ~700 for a row with its texts; the texts are read again
    in the labelling pass. Sorted by partition, each partition is one slice of the block.
    """
    valid = pc.equal(table.column("set_aside_reason"), "")
    votes = table.select(VOTE_COLUMNS).filter(valid)
    keys = votes.column("comparison_key").to_numpy().view(np.uint64)
    partition = (keys % np.uint64(partitions)).astype(np.int32)
    order = np.argsort(partition, kind="stable")
    return votes.take(pa.array(order)).append_column("partition", pa.array(partition[order]))


def _slices(blocks: list, column: str, lo, hi) -> list:
    """The rows of each block whose sorted ``column`` lies in [lo, hi], one slice a block."""
    parts = []
    for block in blocks:
        if not block.num_rows:
            continue
        values = block.column(column).to_numpy()
        a, b = np.searchsorted(values, lo, side="left"), np.searchsorted(values, hi, side="right")
        if b > a:
            parts.append(block.slice(a, b - a))
    return parts


def partition_of(blocks: list, partition: int) -> pa.Table:
    """All votes of one hash partition: its slice of every block of :func:`votes_of`."""
    parts = _slices(blocks, "partition", partition, partition)
    return pa.concat_tables(parts) if parts else votes_of(_EMPTY, 1)


def count_votes(votes: pa.Table, *, prior_a: float, prior_b: float, min_raters: int,
                few_raters_policy: str, with_users: bool = False) -> pa.Table:
    """Support of every vote on one hash partition of ``comparison_key`` (all its votes).

    Returns one row per vote, sorted by ``row_id``: ``n_raters``, ``n_agree`` (int32),
    ``support_rate``, ``status`` (int8: kept, duplicate, too few raters), ``few_raters``
    and ``first_of_comparison`` (the comparison's lowest kept row_id), plus ``user_id`` and
    ``split`` when ``with_users`` (user-level groups need each user's training support).

    A second vote of the same user on the same comparison is a duplicate (the lowest
    row_id wins). Comparisons with fewer than ``min_raters`` kept votes are ``few_raters``
    or, under ``few_raters_policy='set_aside'``, set aside as too few raters.
    """
    n = votes.num_rows
    order = np.argsort(votes.column("row_id").to_numpy(), kind="stable")
    votes = votes.take(pa.array(order, pa.int64())) if n else votes
    row_ids = votes.column("row_id").to_numpy()
    keys = votes.column("comparison_key").to_numpy()
    users = votes.column("user_id").to_numpy(zero_copy_only=False)
    status = np.zeros(n, dtype=np.int8)
    # rows sorted by row_id: a pair's later rows are the duplicates
    status[pd.DataFrame({"key": keys, "user": users}).duplicated().to_numpy()] = DUPLICATE
    kept = status == KEPT

    chosen_is_first = votes.column("chosen_is_first").to_numpy(zero_copy_only=False)
    n_raters = np.zeros(n, dtype=np.int32)
    n_agree = np.zeros(n, dtype=np.int32)
    first = np.zeros(n, dtype=bool)
    if kept.any():
        _, first_pos, inverse = np.unique(keys[kept], return_index=True, return_inverse=True)
        counts = np.bincount(inverse)
        firsts = np.bincount(inverse, weights=chosen_is_first[kept].astype(np.float64))
        raters = counts[inverse]
        n_raters[kept] = raters
        n_agree[kept] = np.where(chosen_is_first[kept], firsts[inverse], raters - firsts[inverse])
        first[np.flatnonzero(kept)[first_pos]] = True  # np.unique: the lowest row_id of a key
    support = np.where(kept, smoothed_support(n_agree, n_raters, prior_a, prior_b), np.nan)
    given = votes.column("given_support").to_numpy(zero_copy_only=False)
    support = np.where(kept & np.isfinite(given), given, support)

    few = kept & (n_raters < min_raters)
    if few_raters_policy == "set_aside" and few.any():
        status[few] = TOO_FEW
        first[few] = False
        support[few] = np.nan
        few[:] = False
    out = {"row_id": pa.array(row_ids), "n_raters": pa.array(n_raters),
           "n_agree": pa.array(n_agree), "support_rate": pa.array(support, pa.float64()),
           "status": pa.array(status), "few_raters": pa.array(few),
           "first_of_comparison": pa.array(first)}
    if with_users:
        out.update(user_id=votes.column("user_id"), split=votes.column("split"))
    return pa.table(out)


def user_training_support(votes: pa.Table) -> pa.Table:
    """Per user with kept votes in one block of :func:`count_votes` output (``with_users``):
    ``train_rows`` and ``train_support``, the count and sum of the support of its kept
    training votes on comparisons with enough raters (0 when it has none). Blocks' tables
    add up: :func:`add_user_sums`."""
    if "status" not in votes.column_names:  # an empty block without a schema
        return _NO_USERS
    kept = votes.filter(pc.equal(votes.column("status"), KEPT))
    train = pc.and_(pc.equal(kept.column("split"), "train"), pc.invert(kept.column("few_raters")))
    return add_user_sums([pa.table({
        "user_id": kept.column("user_id"), "train_rows": pc.cast(train, pa.int64()),
        "train_support": pc.if_else(train, kept.column("support_rate"), 0.0)})])


def add_user_sums(tables: list) -> pa.Table:
    """Per-user ``train_rows`` and ``train_support`` summed over tables (arrow hash aggregate)."""
    tables = [t for t in tables if t.num_rows] or [_NO_USERS]  # empty blocks may lack a schema
    out = pa.concat_tables(tables).group_by("user_id").aggregate(
        [("train_rows", "sum"), ("train_support", "sum")])
    return pa.table({"user_id": out.column("user_id"), "train_rows": out.column("train_rows_sum"),
                     "train_support": out.column("train_support_sum")})


def gather_votes(blocks: list, row_ids: np.ndarray) -> pa.Table:
    """The :func:`count_votes` rows of ``row_ids`` (ascending) from blocks sorted by row_id.

    A chunk's rows have consecutive row_ids, so each block holds them as one slice.
    """
    if not row_ids.size:
        return None
    parts = _slices(blocks, "row_id", int(row_ids[0]), int(row_ids[-1]))
    table = pa.concat_tables(parts) if parts else None
    if table is None or table.num_rows != row_ids.size:
        found = 0 if table is None else table.num_rows
        raise RuntimeError(f"prepare: {found} support rows for {row_ids.size} valid rows of a "
                           "chunk (its rows validated differently in the two passes)")
    table = table.take(pc.sort_indices(table, [("row_id", "ascending")]))
    if not np.array_equal(table.column("row_id").to_numpy(), row_ids):
        raise RuntimeError("prepare: the support rows do not match the chunk's valid rows")
    return table


def attach_support(table: pa.Table, votes, *, strict: bool) -> pa.Table:
    """A validated chunk with its votes' support (from :func:`gather_votes`; None when no
    row is valid): adds ``n_raters``, ``n_agree``, ``support_rate``, ``few_raters``,
    ``first_of_comparison`` and sets duplicates and too-few-rater rows aside."""
    n = table.num_rows
    reason = table.column("set_aside_reason").to_numpy(zero_copy_only=False).astype(object)
    valid = np.flatnonzero(reason == "")
    columns = {"n_raters": np.zeros(n, np.int64), "n_agree": np.zeros(n, np.int64),
               "support_rate": np.full(n, np.nan), "few_raters": np.zeros(n, bool),
               "first_of_comparison": np.zeros(n, bool)}
    if votes is not None:
        status = votes.column("status").to_numpy()
        dup = valid[status == DUPLICATE]
        if strict and dup.size:
            i = int(dup[0])
            raise DataValidationError(
                f"{table.column('source_file')[i].as_py()} row {table.column('source_row')[i].as_py()}: "
                f"field 'user_id' ({table.column('user_id')[i].as_py()}) votes again on a "
                "comparison it already rated")
        for code, name in _REASONS.items():
            reason[valid[status == code]] = name
        for name, values in columns.items():
            values[valid] = votes.column(name).to_numpy(zero_copy_only=False)
    table = table.set_column(table.schema.get_field_index("set_aside_reason"),
                             "set_aside_reason", pa.array(reason, pa.string()))
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values))
    return table


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
