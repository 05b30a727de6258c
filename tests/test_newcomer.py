"""A newcomer's first hour: a stage by name on a fresh run, and input errors that name the
file (an empty or corrupt parquet file in a folder, a JSONL line over pyarrow's 1 MiB block,
strict mode's first bad row in file order)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_overrides

from pafo_ray.cli import main
from pafo_ray.data.sources import DataValidationError, plan_chunks, read_chunk
from pafo_ray.data.validate import validate_table

ROW = {"user_id": "u1", "prompt": "P", "chosen": "a", "rejected": "b"}


@pytest.mark.ray
def test_a_stage_by_name_on_a_fresh_run_runs_its_upstream_stages(ray_session, tmp_path, capsys):
    overrides = small_overrides(tmp_path)
    assert main(["prepare", *overrides]) == 0, capsys.readouterr().err
    runs = tmp_path / "runs" / "t"
    assert (runs / "input" / "_SUCCESS.json").exists()
    assert (runs / "prepare" / "_SUCCESS.json").exists()
    # Again: both complete, nothing reruns.
    assert main(["prepare", *overrides]) == 0
    out = capsys.readouterr().out
    assert "[input] done already" in out and "[prepare] done already" in out


def test_the_missing_upstream_message_names_a_command_that_exists():
    from pafo_ray.cli import make_parser
    from pafo_ray.stages import base

    commands = set(make_parser()._subparsers._group_actions[0].choices)
    assert set(base.ORDER) <= commands  # `pafo-ray input` exists too


@pytest.mark.parametrize("content", [b"", b"not parquet at all " * 10])
def test_an_unreadable_parquet_file_in_a_folder_is_named(tmp_path, content):
    pq.write_table(pa.table({k: [v] for k, v in ROW.items()}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(content)
    with pytest.raises(DataValidationError, match=r"b\.parquet: not a readable parquet file"):
        plan_chunks("parquet", str(tmp_path))


def test_a_jsonl_line_over_one_mib_is_read(tmp_path):
    path = tmp_path / "long.jsonl"
    long_prompt = "word " * 700_000  # 3.5 MB on one line: it straddles two 1 MiB blocks
    rows = [ROW, dict(ROW, prompt=long_prompt), dict(ROW, user_id="u2")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = read_chunk({"kind": "jsonl", "path": str(path), "file_index": 0, "first_row": 0})
    assert table.column("prompt").to_pylist() == ["P", long_prompt, "P"]
    # A real syntax error is still named by line.
    path.write_text(json.dumps(dict(ROW, prompt=long_prompt)) + "\n{oops\n")
    with pytest.raises(DataValidationError, match=r"long\.jsonl: not valid JSON lines \(line 2"):
        read_chunk({"kind": "jsonl", "path": str(path), "file_index": 0, "first_row": 0})


def test_strict_mode_reports_the_first_bad_row_in_file_order(tmp_path):
    rows = [ROW, dict(ROW, user_id="u2", weight="heavy"), dict(ROW, user_id="u3", prompt=" "),
            dict(ROW, user_id="u4", chosen="b")]
    for row in rows:
        row.setdefault("weight", "1")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    chunk = plan_chunks("parquet", str(tmp_path))[0]
    with pytest.raises(DataValidationError) as err:
        validate_table(read_chunk(chunk), strict=True, split_seed=0, val_fraction=0.2,
                       test_fraction=0.2)
    # Row 1's weight, not row 2's empty prompt (the prompt check runs first).
    assert "s.parquet row 1: field 'weight'" in str(err.value)
