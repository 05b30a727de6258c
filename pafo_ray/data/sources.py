"""Input files as chunks that Ray Data reads in parallel, each row keeping its origin.

A chunk is a small dict (file, row group or slice, first row number). ``prepare``
turns the chunk list into a Ray Dataset and reads every chunk in a task, so each row
carries ``source_file`` and ``source_row``: a bad row is named by file and row.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
from typing import Optional

import pyarrow as pa

from pafo_ray.redact import redact_uri

# Rows per chunk for inputs without row groups (jsonl read whole, hf sliced).
HF_CHUNK_ROWS = 200_000
ROW_ID_FILE_SHIFT = 40  # row_id = file_index << 40 | source_row


class DataValidationError(ValueError):
    """Input that cannot be used; the message names the file, row and field."""


def expand_paths(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """A file, a folder (searched recursively for ``suffixes``) or a glob -> sorted files."""
    if "://" in path:
        from pyarrow import fs as pafs

        fs, root = pafs.FileSystem.from_uri(path)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [path]
        scheme = path.split("://", 1)[0]
        _, sep, query = path.partition("?")  # keep ``?endpoint_override=...`` on every file
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        return sorted(f"{scheme}://{i.path}{sep}{query}" for i in infos
                      if i.type == pafs.FileType.File and i.path.endswith(suffixes)
                      and not posixpath.basename(i.path).startswith((".", "_")))
    if os.path.isdir(path):
        found = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                 if f.endswith(suffixes) and not f.startswith((".", "_"))]
        return sorted(found)
    matches = sorted(glob.glob(path))
    if not matches:
        raise DataValidationError(f"{path}: no such file, folder or glob match")
    return matches


def plan_chunks(source: str, path: str, hf_split: str = "train") -> list[dict]:
    """Chunks of the input: one per parquet row group, per jsonl file, per hf slice."""
    if source == "parquet":

        files = expand_paths(path, (".parquet",))
        chunks = []
        for file_index, file in enumerate(files):
            meta = _parquet_file(file).metadata
            offset = 0
            for rg in range(meta.num_row_groups):
                chunks.append({"kind": "parquet", "path": file, "file_index": file_index,
                               "row_group": rg, "first_row": offset,
                               "num_rows": meta.row_group(rg).num_rows})
                offset += meta.row_group(rg).num_rows
        return chunks
    if source == "jsonl":
        files = expand_paths(path, (".jsonl", ".json"))
        return [{"kind": "jsonl", "path": f, "file_index": i, "first_row": 0}
                for i, f in enumerate(files)]
    if source == "hf":
        dataset = _load_hf(path, hf_split)
        n = len(dataset)
        return [{"kind": "hf", "path": path, "split": hf_split, "file_index": 0,
                 "first_row": start, "stop": min(n, start + HF_CHUNK_ROWS),
                 "num_rows": min(n, start + HF_CHUNK_ROWS) - start}
                for start in range(0, max(n, 1), HF_CHUNK_ROWS)]
    raise DataValidationError(f"unknown data source {source!r}")


def read_chunks(batch: pa.Table, provenance: bool = True) -> pa.Table:
    """``map_batches`` over :func:`plan_chunks` rows: every chunk of ``batch`` read, concatenated."""
    chunks = [{k: v for k, v in c.items() if v is not None} for c in batch.to_pylist()]
    return pa.concat_tables([read_chunk(c, provenance) for c in chunks])


def read_chunk(chunk: dict, provenance: bool = True) -> pa.Table:
    """Read one chunk and add ``source_file``, ``source_row`` (0-based) and ``row_id``.

    ``provenance=False`` reads the chunk as it is stored (a file this project wrote).
    """
    kind = chunk["kind"]
    if kind == "parquet":
        try:
            table = _parquet_file(chunk["path"]).read_row_group(chunk["row_group"])
        except (OSError, pa.ArrowException) as exc:
            raise DataValidationError(f"{chunk['path']}: cannot read row group "
                                      f"{chunk['row_group']} ({exc})") from exc
    elif kind == "jsonl":
        table = _read_jsonl(chunk["path"])
    elif kind == "hf":
        dataset = _load_hf(chunk["path"], chunk["split"])
        table = dataset.with_format("arrow")[chunk["first_row"]:chunk["stop"]]
        table = pa.table(table) if not isinstance(table, pa.Table) else table
    else:  # pragma: no cover - plan_chunks never makes one
        raise DataValidationError(f"unknown chunk kind {kind!r}")
    if not provenance:
        return table
    rows = pa.array(range(chunk["first_row"], chunk["first_row"] + table.num_rows),
                    type=pa.int64())
    row_id = pa.compute.add(rows, pa.scalar(chunk["file_index"] << ROW_ID_FILE_SHIFT, pa.int64()))
    # The recorded origin of each row carries no URI secret (pafo_ray.redact).
    source = redact_uri(chunk["path"]) if kind != "hf" else f"{chunk['path']}[{chunk['split']}]"
    table = table.append_column("source_file", pa.array([source] * table.num_rows, pa.string()))
    table = table.append_column("source_row", rows)
    return table.append_column("row_id", row_id)


def _open(path: str):
    if "://" in path:
        from pyarrow import fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        return fs.open_input_file(inner)
    return path


def _parquet_file(path: str):
    """``pq.ParquetFile`` whose failures (empty file, not parquet, truncated) name the file."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(_open(path))
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError(f"{path}: not a readable parquet file ({exc}); remove it "
                                  "from the folder or point data.path at the good files") from exc


def _file_size(path: str) -> int:
    if "://" in path:
        from pyarrow import fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        return fs.get_file_info(inner).size or 0
    return os.path.getsize(path)


JSONL_BLOCK_BYTES = 1 << 20  # pyarrow's default block: a longer line fails to parse in it


def _read_jsonl(path: str) -> pa.Table:
    """pyarrow's fast reader; a line longer than its 1 MiB block is read with a block of the
    whole file; on a real parse error, find and name the bad line."""
    import pyarrow.json as pajson

    try:
        return pajson.read_json(_open(path))
    except pa.ArrowInvalid as exc:
        error = exc
    bad = _first_bad_json_line(path)
    size = _file_size(path)
    if bad is None and size >= JSONL_BLOCK_BYTES:  # every line parses alone: a long line
        options = pajson.ReadOptions(block_size=min(size + 1, 2**31 - 1))
        try:
            return pajson.read_json(_open(path), read_options=options)
        except pa.ArrowInvalid as exc:
            error = exc
    where = f"line {bad[0]}: {bad[1]}" if bad else str(error)
    raise DataValidationError(f"{path}: not valid JSON lines ({where})") from error


def _first_bad_json_line(path: str) -> Optional[tuple[int, str]]:
    opened = _open(path)
    if not isinstance(opened, str):  # remote: pyarrow's stream, read as text
        import io

        with io.TextIOWrapper(opened, encoding="utf-8") as fh:
            return _scan_json_lines(fh)
    with open(path, encoding="utf-8") as fh:
        return _scan_json_lines(fh)


def _scan_json_lines(fh) -> Optional[tuple[int, str]]:
    for number, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return number, exc.msg
        if not isinstance(value, dict):
            return number, "expected a JSON object"
    return None


def _load_hf(path: str, split: str):
    import datasets

    try:
        if os.path.isdir(path):
            loaded = datasets.load_from_disk(path)
        else:
            loaded = datasets.load_dataset(path, split=split)
    except Exception as exc:  # noqa: BLE001 - every loader failure gets the same advice
        raise DataValidationError(
            f"cannot load Hugging Face dataset {path!r}: {exc}. Offline, pass a folder "
            "written with Dataset.save_to_disk (data.path) instead of a hub name.") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataValidationError(
                f"{path}: split {split!r} not found (has {sorted(loaded)}); set data.hf_split")
        loaded = loaded[split]
    return loaded
