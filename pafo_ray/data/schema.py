"""Column names and keys shared by every stage.

Input rows (what a loader or converter yields, one preference of one user):
    user_id: string, prompt: string, chosen: string, rejected: string
    optional: weight (float), support_rate (float, honoured when given), split
    ("train" | "val" | "test"), user_type (ground truth of a simulator), margin (float)

Prepared rows (what ``prepare`` writes, partitioned by split and group) add:
    row_id (int64), source_file, source_row, comparison_key (int64), chosen_text_id,
    rejected_text_id (int64), chosen_is_first (bool), n_raters, n_agree, support_rate,
    user_support, group.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

REQUIRED = ("user_id", "prompt", "chosen", "rejected")
OPTIONAL = ("weight", "support_rate", "split", "user_type", "margin")
SPLITS = ("train", "val", "test")
TEXT_FIELDS = ("prompt", "chosen", "rejected")


def group_names(num_groups: int) -> list[str]:
    """Group labels from lowest to highest support."""
    if num_groups == 2:
        return ["minority", "majority"]
    return [f"bucket_{k}" for k in range(num_groups)]


class Encoded(NamedTuple):
    """A text column as ``values[codes]``: each distinct text once (``values``, object)."""

    codes: np.ndarray
    values: np.ndarray


def encode(column) -> Encoded:
    """A text column (arrow or array-like, no nulls), dictionary-encoded by arrow in C++.

    Preference data repeats every prompt and response across raters and pairs, so each
    distinct text becomes a Python object once and is hashed once.
    """
    import pyarrow.compute as pc

    column = _arrow(column)
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    return Encoded(encoded.indices.to_numpy(zero_copy_only=False),
                   encoded.dictionary.to_numpy(zero_copy_only=False))


def column_hash(encoded: Encoded, hash_key: Optional[str] = None) -> np.ndarray:
    """pandas' SipHash of every row of a text column, hashing each distinct text once.

    Equals ``pd.util.hash_array`` of the plain object column (pandas hashes a Categorical
    the same way: its categories, then taken by code; tests/test_schema.py checks it). [n] uint64
    """
    import pandas as pd

    extra = {"hash_key": hash_key} if hash_key is not None else {}
    hashed = pd.util.hash_array(encoded.values, categorize=False, **extra)
    return hashed.take(encoded.codes) if len(hashed) else np.zeros(len(encoded.codes), np.uint64)


def _combine(*hashes: np.ndarray) -> np.ndarray:
    """Row hashes of aligned columns combined as ``hash_pandas_object`` of a frame does. int64"""
    from pandas.core.util.hashing import combine_hash_arrays

    return combine_hash_arrays(iter(hashes), len(hashes)).view(np.int64)


def _arrow(column):
    import pyarrow as pa

    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return column
    return pa.array(np.asarray(column, dtype=object), pa.string())


def row_keys(prompts, chosen, rejected) -> dict:
    """Every key of a preference row, each text column encoded and hashed once.

    Returns ``comparison_key``, ``chosen_is_first`` (see :func:`comparison_keys`),
    ``chosen_text_id``, ``rejected_text_id`` (see :func:`text_ids`) and ``prompts``, the
    :class:`Encoded` prompts (for :func:`pafo_ray.data.validate.assign_split`). Columns are
    arrow arrays or array-likes of str without nulls.
    """
    import pyarrow.compute as pc

    chosen, rejected = _arrow(chosen), _arrow(rejected)
    encoded = [encode(c) for c in (prompts, chosen, rejected)]
    h_prompt, h_chosen, h_rejected = (column_hash(e) for e in encoded)
    # arrow compares UTF-8 bytes, which orders like Python compares code points
    first = pc.less(chosen, rejected).to_numpy(zero_copy_only=False).astype(bool)
    low, high = np.where(first, h_chosen, h_rejected), np.where(first, h_rejected, h_chosen)
    return {"comparison_key": _combine(h_prompt, low, high), "chosen_is_first": first,
            "chosen_text_id": _combine(h_prompt, h_chosen),
            "rejected_text_id": _combine(h_prompt, h_rejected), "prompts": encoded[0]}


def text_ids(prompts, responses) -> np.ndarray:
    """Id of a (prompt, response) text: the key of the embedding cache. [n] int64.

    The hash of the two-column frame (prompt, response) in pandas' stable SipHash.
    """
    return _combine(*(column_hash(encode(c)) for c in (prompts, responses)))


def comparison_keys(prompts, chosen, rejected) -> tuple[np.ndarray, np.ndarray]:
    """Key of the unordered pair (prompt, {chosen, rejected}) and whether chosen sorts first.

    Returns ``(key [n] int64, chosen_is_first [n] bool)``. Two rows about the same pair get
    the same key whichever response won (the hash of the frame (prompt, lower response,
    higher response)); ``chosen_is_first`` is the direction of the vote.
    """
    keys = row_keys(prompts, chosen, rejected)
    return keys["comparison_key"], keys["chosen_is_first"]


def smoothed_support(n_agree, n_raters, prior_a: float, prior_b: float):
    """Support rate ``(k + a) / (n + a + b)`` of a row whose vote k of n raters share."""
    return (np.asarray(n_agree, dtype=np.float64) + prior_a) / (
        np.asarray(n_raters, dtype=np.float64) + prior_a + prior_b)
