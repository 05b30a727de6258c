"""Unlabelled comparisons for distillation: training comparisons offered to other users.

A user with ~10 rated rows tells the student little about where its preferences lie; its
group's teacher can say what it would prefer on many more comparisons. The margins stage
draws, for every training row, about ``per_row`` other users (so each user gets about
``extra_pairs_per_user`` comparisons it did not rate), and the user's group teacher scores
them; the student distils those margins into the user's offset only (no BT term: there is
no label). Draws are a hash of (seed, row_id, copy), so they do not depend on how Ray Data
batches the rows, and reruns give the same rows.

Extra rows keep the source row's texts and text ids, take ``split = "extra"``,
``labelled = False``, a negative ``row_id`` (``-(row_id · 1024 + copy + 1)``) and
``extra_rank`` ∈ [0, 1): the student keeps the rows with ``extra_rank < n / per_user`` to use
about ``n`` per user.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MAX_COPIES = 1024
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(*parts: np.ndarray) -> np.ndarray:
    """splitmix64 of the combined parts: uint64 [n], uniform and independent per input."""
    with np.errstate(over="ignore"):
        z = np.zeros(np.broadcast(*parts).shape, dtype=np.uint64)
        for part in parts:
            z = (z * np.uint64(0x9E3779B97F4A7C15) + np.asarray(part).astype(np.uint64)) & _MASK
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK
            z = z ^ (z >> np.uint64(31))
    return z


def _unit(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def copies_per_row(per_user: int, num_users: int, num_train_rows: int) -> float:
    """How many extra rows each training row yields so that users get ``per_user`` each."""
    if per_user <= 0 or num_train_rows == 0:
        return 0.0
    copies = per_user * num_users / num_train_rows
    if copies > MAX_COPIES:
        raise ValueError(f"margins.extra_pairs_per_user={per_user} with {num_users} users and "
                         f"{num_train_rows} training rows needs {copies:.0f} copies per row "
                         f"(at most {MAX_COPIES}); lower it")
    return copies


def extra_rows(batch: pd.DataFrame, users: pd.Series, per_row: float, seed: int) -> pd.DataFrame:
    """Extra comparisons drawn from a batch of training rows.

    Args:
        batch: training rows (``row_id``, ``user_id``, texts and text ids, ...).
        users: the users to draw from: index the user ids, values their groups.
        per_row: expected copies per row (:func:`copies_per_row`).
        seed: the run's seed.
    Returns:
        The extra rows (the batch's columns, with ``user_id``, ``group``, ``user_group``,
        ``split``, ``row_id``, ``weight``, ``labelled``, ``extra_rank``, ``support_rate`` and
        ``user_type`` rewritten).
    """
    whole, frac = int(math.floor(per_row)), per_row - math.floor(per_row)
    slots = whole + (1 if frac > 0 else 0)
    if slots == 0 or len(batch) == 0:
        return batch.iloc[:0].assign(labelled=pd.Series(dtype=bool),
                                     extra_rank=pd.Series(dtype=np.float64))
    row_id = batch["row_id"].to_numpy(np.int64)
    copy = np.arange(slots, dtype=np.int64)
    rid, cid = np.repeat(row_id, slots), np.tile(copy, len(row_id))
    keep = cid < whole
    if frac > 0:
        keep |= (cid == whole) & (_unit(_mix(seed, 2, rid, cid)) < frac)
    source = np.repeat(np.arange(len(batch)), slots)[keep]
    rid, cid = rid[keep], cid[keep]
    pick = (_mix(seed, 1, rid, cid) % np.uint64(len(users))).astype(np.int64)
    out = batch.iloc[source].reset_index(drop=True)
    group = users.to_numpy(dtype=object)[pick]
    out["user_id"] = users.index.to_numpy(dtype=object)[pick]
    out["group"] = group
    out["user_group"] = group
    out["split"] = "extra"
    out["row_id"] = -(rid * MAX_COPIES + cid + 1)
    out["weight"] = 1.0
    out["support_rate"] = np.nan
    out["user_type"] = None
    out["labelled"] = False
    out["extra_rank"] = _unit(_mix(seed, 3, rid, cid))
    return out
