"""The narrow vote shuffle of ``prepare`` as plain functions, against pandas (no Ray).

Chunks -> :func:`votes_of` (sorted by hash partition) -> per partition
:func:`partition_of` + :func:`count_votes` -> per chunk :func:`gather_votes` +
:func:`attach_support`: the same numbers as a direct pandas computation on the whole table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pafo_ray.data import support as S
from pafo_ray.data.sources import DataValidationError
from pafo_ray.data.validate import validate_table

KW = dict(prior_a=0.5, prior_b=0.5, min_raters=3)


def _chunks(n=1500, n_chunks=4, seed=0):
    """Random votes (with repeated votes of a user on a pair) as validated chunks."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, 25, n)
    a, b = rng.integers(0, 4, n), rng.integers(0, 4, n)
    b = np.where(a == b, (b + 1) % 4, b)
    frame = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, 40, n)],
                          "prompt": [f"p{p}" for p in prompts],
                          "chosen": [f"r{x}" for x in a], "rejected": [f"r{y}" for y in b]})
    frame.loc[rng.choice(n, 20, replace=False), "prompt"] = ""  # set aside before the shuffle
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    chunks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        raw = pa.Table.from_pandas(frame.iloc[lo:hi], preserve_index=False)
        raw = (raw.append_column("source_file", pa.array(["f.parquet"] * (hi - lo)))
               .append_column("source_row", pa.array(np.arange(lo, hi)))
               .append_column("row_id", pa.array(np.arange(lo, hi) + (7 << 40))))
        chunks.append(validate_table(raw, strict=False, split_seed=0, val_fraction=0.2,
                                     test_fraction=0.2))
    return frame, chunks


def _shuffle(chunks, partitions, policy="majority"):
    blocks = [S.votes_of(c, partitions) for c in chunks][::-1]  # Ray: in order of completion
    counted = [S.count_votes(S.partition_of(blocks, p), few_raters_policy=policy,
                             with_users=True, **KW) for p in range(partitions)]
    out = []
    for chunk in chunks:
        valid = chunk.column("row_id").to_numpy()[
            chunk.column("set_aside_reason").to_numpy(zero_copy_only=False) == ""]
        out.append(S.attach_support(chunk, S.gather_votes(counted, valid), strict=False))
    return pa.concat_tables(out).to_pandas(), counted


def _reference(frame):
    """Direct pandas: drop blank prompts, keep a user's first vote on a pair, count."""
    ref = frame.assign(row=np.arange(len(frame)), lo=frame[["chosen", "rejected"]].min(axis=1),
                       hi=frame[["chosen", "rejected"]].max(axis=1),
                       first=frame["chosen"] < frame["rejected"])
    ref = ref[ref["prompt"] != ""]
    dup = ref.duplicated(["prompt", "lo", "hi", "user_id"])
    kept = ref[~dup]
    n = kept.groupby(["prompt", "lo", "hi"])["row"].transform("size")
    k = kept.groupby(["prompt", "lo", "hi", "first"])["row"].transform("size")
    first = kept.groupby(["prompt", "lo", "hi"])["row"].transform("min") == kept["row"]
    return ref.loc[dup, "row"].tolist(), kept.assign(n=n, k=k, is_first=first).set_index("row")


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_votes_through_the_narrow_shuffle_match_pandas(partitions):
    frame, chunks = _chunks()
    out, counted = _shuffle(chunks, partitions)
    out = out.sort_values("source_row").set_index("source_row")
    duplicates, kept = _reference(frame)
    assert duplicates and sorted(out.index[out["set_aside_reason"] == "duplicate"]) == duplicates
    assert (out["set_aside_reason"] == "empty_prompt").sum() == 20
    mine = out.loc[kept.index]
    assert (mine["set_aside_reason"] == "").all()
    assert mine["n_raters"].tolist() == kept["n"].tolist()
    assert mine["n_agree"].tolist() == kept["k"].tolist()
    np.testing.assert_allclose(mine["support_rate"], (kept["k"] + 0.5) / (kept["n"] + 1.0))
    assert mine["first_of_comparison"].tolist() == kept["is_first"].tolist()
    assert mine["few_raters"].tolist() == (kept["n"] < KW["min_raters"]).tolist()
    assert out.loc[out["set_aside_reason"] != "", "support_rate"].isna().all()
    # every vote in exactly one partition, and each partition's output sorted by row id
    assert sum(t.num_rows for t in counted) == len(kept) + len(duplicates)
    assert all((np.diff(t.column("row_id").to_numpy()) > 0).all() for t in counted)


def test_too_few_raters_are_set_aside_and_users_training_support():
    frame, chunks = _chunks(seed=1)
    out, counted = _shuffle(chunks, 3, policy="set_aside")
    _, kept = _reference(frame)
    few = out.set_index("source_row").loc[kept.index[kept["n"] < KW["min_raters"]]]
    assert len(few) and (few["set_aside_reason"] == "too_few_raters").all()
    assert not few["first_of_comparison"].any() and few["support_rate"].isna().all()
    # per-user training sums, added over partitions, equal the labelled rows'
    sums = S.add_user_sums([S.user_training_support(t) for t in counted]).to_pandas()
    sums = sums.set_index("user_id")
    assert sums.index.is_unique
    train = out[(out["split"] == "train") & (out["set_aside_reason"] == "")]
    assert sums["train_rows"].sum() == len(train)
    want = train.groupby("user_id")["support_rate"].sum()
    np.testing.assert_allclose(sums.loc[want.index, "train_support"], want)


def test_a_chunk_whose_votes_are_missing_is_an_error_not_a_silent_gap():
    _, chunks = _chunks(n=200, n_chunks=2)
    blocks = [S.votes_of(c, 2) for c in chunks]
    counted = [S.count_votes(S.partition_of(blocks, p), few_raters_policy="majority", **KW)
               for p in range(1)]  # partition 1 left out
    valid = chunks[0].column("row_id").to_numpy()[
        chunks[0].column("set_aside_reason").to_numpy(zero_copy_only=False) == ""]
    with pytest.raises(RuntimeError, match="support rows for"):
        S.gather_votes(counted, valid)


def test_strict_mode_names_the_duplicate_vote():
    frame, chunks = _chunks(n=300, n_chunks=1)
    blocks = [S.votes_of(chunks[0], 2)]
    counted = [S.count_votes(S.partition_of(blocks, p), few_raters_policy="majority", **KW)
               for p in range(2)]
    valid = chunks[0].column("row_id").to_numpy()[
        chunks[0].column("set_aside_reason").to_numpy(zero_copy_only=False) == ""]
    duplicates, _ = _reference(frame)
    with pytest.raises(DataValidationError,
                       match=rf"f\.parquet row {duplicates[0]}: field 'user_id' .* votes again"):
        S.attach_support(chunks[0], S.gather_votes(counted, valid), strict=True)
