"""The summarising parquet sink: what it writes, what it hands back, retries, the reader."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from pafo_ray.data.sink import SummarisingParquetSink
from pafo_ray.data.sources import expand_paths, plan_chunks, read_chunks

pytestmark = pytest.mark.ray


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": np.arange(n), "split": rng.choice(["train", "val"], n),
                         "group": rng.choice(["a", "b", "c"], n),
                         "user_id": rng.choice(["u1", "u2", "u3"], n),
                         "support_rate": rng.uniform(0, 1, n), "set_aside_reason": "",
                         "few_raters": False, "first_of_comparison": True})


def test_partitioned_write_and_the_tasks_summaries_add_up(ray_session, tmp_path):
    """prepare's own partials, from four write tasks, add up to the whole table's counts."""
    from pafo_ray.stages.prepare import _collect, _partials_of, _summarise

    frame = _frame(5_000)
    out = str(tmp_path / "out")
    sink = SummarisingParquetSink(out, partition_cols=["split", "group"], summarise=_partials_of)
    ray_session.data.from_pandas(frame).repartition(4).write_datasink(sink)

    assert len(sink.returns) == 4, sink.returns  # one summary per write task
    users, blocks = _collect(sink.returns)
    assert users["rows"].to_dict() == frame.groupby("user_id").size().to_dict()
    train = frame[frame["split"] == "train"]
    assert np.allclose(users["user_support"], train.groupby("user_id")["support_rate"].mean())
    prep = types.SimpleNamespace(group_level="row", few_raters_policy="keep")
    summary = _summarise(blocks, users, prep, ["a", "b", "c"])
    want = frame.groupby(["split", "group"]).size()
    assert summary["groups"] == {s: {g: int(want[s][g]) for g in want[s].index}
                                 for s in ("train", "val")}
    assert summary["rows"] == 5_000

    back = pads.dataset(out, format="parquet", partitioning="hive").to_table().to_pandas()
    assert sorted(back["x"]) == list(range(5_000))  # every row once
    merged = back.merge(frame, on="x", suffixes=("", "_in"))
    assert (merged["split"].astype(str) == merged["split_in"]).all()
    assert (merged["group"].astype(str) == merged["group_in"]).all()
    # Ray Data reads it back with the partition columns, as write_parquet's output
    again = ray_session.data.read_parquet(out).to_pandas()
    assert set(again.columns) == set(frame.columns) and len(again) == 5_000


def test_a_retried_task_replaces_its_files(tmp_path):
    """The same write task (same write id and task index) writes the same names again."""
    sink = SummarisingParquetSink(str(tmp_path / "out"), partition_cols=["split"])
    sink.on_write_start()
    block = pa.Table.from_pandas(_frame(100), preserve_index=False)
    ctx = types.SimpleNamespace(task_idx=3)
    assert sink.write([block], ctx) == 100
    assert sink.write([block], ctx) == 100  # the retry
    other = types.SimpleNamespace(task_idx=4)
    assert sink.write([block.slice(0, 10)], other) == 10
    back = pads.dataset(str(tmp_path / "out"), format="parquet", partitioning="hive").to_table()
    assert back.num_rows == 110
    assert sink.write([block.slice(0, 0)], ctx) is None  # nothing to write, nothing returned


def test_without_summarise_it_counts_rows_and_reads_back_as_chunks(ray_session, tmp_path):
    out = str(tmp_path / "plain")
    sink = SummarisingParquetSink(out)
    ray_session.data.range(1_000).repartition(3).write_datasink(sink)
    assert sum(sink.returns) == 1_000
    chunks = plan_chunks("parquet", out)
    assert len(expand_paths(out, (".parquet",))) == 3
    assert len(chunks) == 3  # one row group per file, whatever the blocks' chunks were
    table = read_chunks(pa.Table.from_pylist(chunks), provenance=False)
    assert sorted(table.column("id").to_pylist()) == list(range(1_000))
    assert table.column_names == ["id"]  # no provenance columns added
    with_ids = read_chunks(pa.Table.from_pylist(chunks[:1]))
    assert {"source_file", "source_row", "row_id"} <= set(with_ids.column_names)


def test_pafo_ray_reads_parquet_with_the_v1_reader_unless_told(ray_session):
    from pafo_ray import ray_session as session
    from pafo_ray.config import RayConfig

    context = ray_session.data.DataContext.get_current()
    assert context.use_datasource_v2 is False
    session.init_ray(RayConfig(progress_bars=False, parquet_reader_v2=True))
    try:
        assert context.use_datasource_v2 is True
    finally:
        session.init_ray(RayConfig(progress_bars=False))
    assert context.use_datasource_v2 is False
