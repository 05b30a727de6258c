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


def as_categorical(column):
    """A text column (arrow or array-like, no nulls) as a pandas Categorical.

    Arrow dictionary-encodes it in C++, so each distinct text becomes a Python object once:
    preference data repeats every prompt and response across raters and pairs. pandas
    hashes a Categorical by hashing its categories, so every hash below equals the hash of
    the plain object array (tests/test_schema.py checks it).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    elif not isinstance(column, pa.Array):
        column = pa.array(np.asarray(column, dtype=object), pa.string())
    encoded = pc.dictionary_encode(column)
    return pd.Categorical.from_codes(encoded.indices.to_numpy(zero_copy_only=False),
                                     categories=encoded.dictionary.to_numpy(zero_copy_only=False))


def _hash_columns(columns: list) -> np.ndarray:
    """64-bit hash of aligned string columns, as int64 (pandas' stable SipHash)."""
    import pandas as pd

    frame = pd.DataFrame({f"c{i}": as_categorical(col) for i, col in enumerate(columns)})
    return pd.util.hash_pandas_object(frame, index=False).to_numpy().view(np.int64)


def text_ids(prompts, responses) -> np.ndarray:
    """Id of a (prompt, response) text: the key of the embedding cache. [n] int64."""
    return _hash_columns([prompts, responses])


def comparison_keys(prompts, chosen, rejected) -> tuple[np.ndarray, np.ndarray]:
    """Key of the unordered pair (prompt, {chosen, rejected}) and whether chosen sorts first.

    Returns ``(key [n] int64, chosen_is_first [n] bool)``. Two rows about the same pair get
    the same key whichever response won; ``chosen_is_first`` is the direction of the vote.
    Columns are arrow arrays or array-likes of str without nulls; arrow compares UTF-8
    bytes, which orders like Python compares code points.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    chosen, rejected = (c if isinstance(c, (pa.Array, pa.ChunkedArray))
                        else pa.array(np.asarray(c, dtype=object), pa.string())
                        for c in (chosen, rejected))
    first = pc.less(chosen, rejected)
    low, high = pc.if_else(first, chosen, rejected), pc.if_else(first, rejected, chosen)
    return (_hash_columns([prompts, low, high]),
            first.to_numpy(zero_copy_only=False).astype(bool))


def smoothed_support(n_agree, n_raters, prior_a: float, prior_b: float):
    """Support rate ``(k + a) / (n + a + b)`` of a row whose vote k of n raters share."""
    return (np.asarray(n_agree, dtype=np.float64) + prior_a) / (
        np.asarray(n_raters, dtype=np.float64) + prior_a + prior_b)
