"""The Ray Data prepare stage on hand-built tables (real local Ray, no mocks)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pafo_ray.config import load_config
from pafo_ray.data.sources import DataValidationError
from pafo_ray.stages.base import StageContext, run_stage, stage_hash

pytestmark = pytest.mark.ray


def _rows(spec):
    """spec: (user, prompt, winner, loser) tuples -> a DataFrame of preference rows."""
    return pd.DataFrame(spec, columns=["user_id", "prompt", "chosen", "rejected"])


def _run(tmp_path, frame_or_path, *extra, kind="parquet", name="p"):
    if isinstance(frame_or_path, pd.DataFrame):
        path = tmp_path / f"{name}.{kind}"
        if kind == "parquet":
            pq.write_table(pa.Table.from_pandas(frame_or_path, preserve_index=False), path)
        else:
            frame_or_path.to_json(path, orient="records", lines=True)
    else:
        path = frame_or_path
    cfg = load_config(None, [f"run.storage_path={tmp_path / 'runs'}", f"run.run_name={name}",
                             f"data.source={kind}", f"data.path={path}", *extra])
    ctx = StageContext.create(cfg)
    run_stage(ctx, "input")
    return ctx, run_stage(ctx, "prepare")


def _output(ctx) -> pd.DataFrame:
    ds = pads.dataset(ctx.run_dir.uri("prepare", "data"), format="parquet", partitioning="hive")
    return ds.to_table().to_pandas()


# Three comparisons on prompt P: (a,b) rated by 4 users 3:1, (a,c) by 2 users 1:1,
# (b,c) by one user. Same-prompt rows share a split.
TABLE = _rows([
    ("u1", "P", "a", "b"), ("u2", "P", "a", "b"), ("u3", "P", "b", "a"), ("u4", "P", "a", "b"),
    ("u1", "P", "a", "c"), ("u2", "P", "c", "a"),
    ("u3", "P", "b", "c"),
    ("u1", "Q", "x", "y"), ("u2", "Q", "x", "y"),
])


def test_support_rates_match_a_hand_computed_reference(ray_session, tmp_path):
    ctx, summary = _run(tmp_path, TABLE, "prepare.group_level=row", "prepare.min_raters=1")
    out = _output(ctx).sort_values("source_row").reset_index(drop=True)
    # (k + 0.5) / (n + 1): 3 of 4 agree -> 3.5/5 = 0.7; the dissenter 1.5/5 = 0.3;
    # 1 of 2 -> 1.5/3 = 0.5; a lone rater 1.5/2 = 0.75; Q: 2 of 2 -> 2.5/3.
    expected = [0.7, 0.7, 0.3, 0.7, 0.5, 0.5, 0.75, 2.5 / 3, 2.5 / 3]
    np.testing.assert_allclose(out["support_rate"], expected)
    assert out["n_raters"].tolist() == [4, 4, 4, 4, 2, 2, 1, 2, 2]
    # Reference with pandas: count of the same direction among the comparison's votes.
    ref = TABLE.assign(lo=TABLE[["chosen", "rejected"]].min(axis=1),
                       hi=TABLE[["chosen", "rejected"]].max(axis=1),
                       first=TABLE["chosen"] < TABLE["rejected"])
    k = ref.groupby(["prompt", "lo", "hi", "first"])["user_id"].transform("size")
    n = ref.groupby(["prompt", "lo", "hi"])["user_id"].transform("size")
    np.testing.assert_allclose(out["support_rate"], (k + 0.5) / (n + 1.0))
    # Row level, tau 0.5: only the dissenter (0.3) is minority.
    assert out.loc[out["group"] == "minority", "source_row"].tolist() == [2]
    assert sum(summary["comparisons"].values()) == 4


def test_every_row_lands_once_and_prompts_stay_in_one_split(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(30)}", f"prompt {p}", f"r{a}", f"r{b}")
            for p in range(60) for a in range(3) for b in range(a + 1, 3) for _ in range(3)]
    frame = _rows(rows).drop_duplicates(["user_id", "prompt", "chosen", "rejected"])
    ctx, summary = _run(tmp_path, frame, "prepare.val_fraction=0.2", "prepare.test_fraction=0.2")
    out = _output(ctx)
    assert len(out) == len(frame) == summary["rows"]
    assert out["row_id"].is_unique
    assert (out.groupby("prompt")["split"].nunique() == 1).all()
    assert set(out["split"]) <= {"train", "val", "test", "set_aside"}
    shares = out.drop_duplicates("prompt")["split"].value_counts(normalize=True)
    assert 0.05 < shares.get("val", 0) < 0.4 and 0.05 < shares.get("test", 0) < 0.4
    assert summary["users"] == frame["user_id"].nunique()
    # user-level (the default): minority users are the lowest-support ~20%
    users = pq.read_table(ctx.run_dir.uri("prepare", "users.parquet")).to_pandas()
    minority = users[users["group"] == "minority"]["user_support"]
    majority = users[users["group"] == "majority"]["user_support"]
    assert minority.max() <= majority.min()
    assert 0.1 <= len(minority) / users["user_support"].notna().sum() <= 0.35
    # The summary's counts (from per-user partials, no pass over the output) match the output.
    written = out.groupby(["split", "group"]).size()
    for (split, group), n in written.items():
        if split != "set_aside":
            assert summary["groups"][split][group] == n, (split, group)
    assert sum(sum(g.values()) for g in summary["groups"].values()) == (out["split"] != "set_aside").sum()
    assert summary["users_by_group"] == users["group"].value_counts().to_dict()
    assert sum(summary["support_histogram"]["counts"]) == (out["split"] != "set_aside").sum()


BAD = pd.DataFrame({
    "user_id": ["u1", "u2", "u3", "u1", "u4", "u5", "u6", "u7"],
    "prompt": ["P", "P", "P", "P", None, "P", "P", "P"],
    "chosen": ["a", "a", "b", "a", "a", "same", "a", "a"],
    "rejected": ["b", "b", "a", "b", "b", "same", "b", "c"],
    "weight": ["1", "2.5", "1", "1", "1", "1", "abc", "1"],
})


def test_bad_rows_are_set_aside_with_reasons_and_counted(ray_session, tmp_path):
    ctx, summary = _run(tmp_path, BAD, "prepare.min_raters=2", "prepare.group_level=row",
                        "prepare.few_raters_policy=set_aside")
    assert summary["set_aside"] == {"duplicate": 1, "empty_prompt": 1, "same_response": 1,
                                    "bad_weight": 1, "too_few_raters": 1}
    out = _output(ctx)
    assert len(out) == len(BAD)  # nothing dropped: set-aside rows are kept with their reason
    aside = out[out["split"] == "set_aside"].set_index("source_row")
    assert aside.loc[3, "group"] == "duplicate"  # u1 voted twice on (P, a, b): the later row
    assert aside.loc[6, "set_aside_detail"] == "'abc'"
    kept = out[out["split"] != "set_aside"]
    assert sorted(kept["source_row"]) == [0, 1, 2]
    assert kept.set_index("source_row").loc[1, "weight"] == 2.5


@pytest.mark.parametrize("frame, message", [
    (BAD.drop(columns=["rejected"]), "missing column 'rejected'"),
    (BAD.iloc[[0, 4]], "row 1: field 'prompt' is null or empty"),
    (BAD.iloc[[0, 5]], "row 1: field 'rejected' equals 'chosen'"),
    (BAD.iloc[[0, 6]], "row 1: field 'weight' is not a finite non-negative number"),
    (BAD.iloc[[0, 1, 3]], "row 2: field 'user_id' (u1) votes again"),
])
def test_strict_mode_names_file_row_and_field(ray_session, tmp_path, frame, message):
    with pytest.raises(DataValidationError) as err:
        _run(tmp_path, frame.reset_index(drop=True), "prepare.strict=true",
             "prepare.group_level=row")
    assert message in str(err.value)
    assert "p.parquet" in str(err.value)


def test_jsonl_input_and_a_broken_line(ray_session, tmp_path):
    ctx, summary = _run(tmp_path, TABLE, "prepare.group_level=row", kind="jsonl", name="j")
    assert summary["rows"] == len(TABLE)
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(dict(TABLE.iloc[0])) + "\n{not json\n")
    with pytest.raises(DataValidationError, match="broken.jsonl: not valid JSON lines \\(line 2"):
        _run(tmp_path, path, kind="jsonl", name="b")


def test_rerun_skips_and_a_half_written_stage_is_redone(ray_session, tmp_path, capsys):
    ctx, first = _run(tmp_path, TABLE, "prepare.group_level=row", name="r")
    run_stage(ctx, "prepare")
    assert "done already" in capsys.readouterr().out
    # Simulate a kill after writing data but before the marker: the rerun must redo it.
    ctx.run_dir.remove("prepare", "_SUCCESS.json")
    ctx.run_dir.write_bytes(b"garbage", "prepare", "data", "split=train", "group=x", "junk.parquet")
    again = run_stage(ctx, "prepare")
    assert again["rows"] == first["rows"]
    assert not ctx.run_dir.exists("prepare", "data", "split=train", "group=x")
    # A changed config changes the hash: the old output is not trusted.
    cfg2 = load_config(None, [f"run.storage_path={tmp_path / 'runs'}", "run.run_name=r",
                              "data.source=parquet", f"data.path={tmp_path / 'r.parquet'}",
                              "prepare.group_level=row", "prepare.prior_a=1.0"])
    ctx2 = StageContext.create(cfg2)
    assert not ctx2.run_dir.is_complete("prepare", stage_hash(ctx2, "prepare"))


def test_large_inputs_get_more_shuffle_partitions_than_cores(ray_session, tmp_path):
    from pafo_ray.ray_session import data_parallelism
    from pafo_ray.stages.prepare import _partitions

    cores = data_parallelism()
    chunks = [{"num_rows": 250_000}] * 20  # 5M rows
    assert _partitions(chunks, 500_000) == max(cores, 10)
    assert _partitions([{"num_rows": 10}], 500_000) == cores
    assert _partitions([{}], 500_000) == cores  # jsonl: rows unknown before reading
    with pytest.raises(ValueError, match="rows_per_partition"):
        _partitions(chunks, 0)
    # end to end: 9 rows at 2 rows per partition -> 5 partitions, same support rates
    ctx, summary = _run(tmp_path, TABLE, "prepare.group_level=row", "prepare.min_raters=1",
                        "prepare.rows_per_partition=2", name="many")
    assert summary["partitions"] == max(cores, 5)
    out = _output(ctx).sort_values("source_row")
    assert out["n_raters"].tolist() == [4, 4, 4, 4, 2, 2, 1, 2, 2]


@pytest.mark.parametrize("level", ["row", "user"])
def test_an_empty_input_is_a_clear_error(ray_session, tmp_path, level):
    empty = TABLE.iloc[:0]
    with pytest.raises(DataValidationError, match=r"e\.parquet: no rows to prepare"):
        _run(tmp_path, empty, f"prepare.group_level={level}", name="e")


def _objects_in_store() -> int:
    import re

    import ray
    from ray._private.internal_api import memory_summary

    # This session's Ray by address: with none, memory_summary refuses when other Rays run on
    # the machine ("Found multiple active Ray instances").
    summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    return int(re.search(r"Plasma memory usage \d+ MiB, (\d+) objects", summary).group(1))


def test_prepare_leaves_none_of_its_votes_in_the_object_store(ray_session, tmp_path):
    """The narrow votes are freed when the stage ends (they stayed pinned while a Ray Data
    map's fn_kwargs captured them: 48 bytes a row for the rest of the session)."""
    import gc
    import time

    rng = np.random.default_rng(3)  # 4 files of 5,000 rows: vote blocks of ~240 kB, in plasma
    a = rng.integers(0, 6, 20_000)
    frame = _rows([(f"u{u}", f"p{p}", f"r{x}", f"r{(x + d) % 6}") for u, p, x, d in zip(
        rng.integers(0, 300, 20_000), rng.integers(0, 200, 20_000), a, rng.integers(1, 6, 20_000))])
    folder = tmp_path / "four"
    folder.mkdir()
    for i, part in enumerate(frame.iloc[k::4] for k in range(4)):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"{i}.parquet")
    gc.collect()
    before = _objects_in_store()
    for level in ("row", "user"):
        _run(tmp_path, folder, f"prepare.group_level={level}", name=f"free-{level}")
    deadline = time.monotonic() + 10
    while (left := _objects_in_store()) > before + 1 and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.5)
    assert left <= before + 1, f"{left - before} objects left in the object store by prepare"
