"""Parquet rows under a URI as one pandas frame: what a fit in one process reads."""

from __future__ import annotations

from typing import Optional

import pandas as pd


def read_frame(uri: str, columns: Optional[list] = None) -> pd.DataFrame:
    """Parquet rows under ``uri`` as one frame; ``columns`` limits what is read (names the
    files lack are skipped).

    Files written by different Ray Data tasks can disagree on a column's type (an all-null
    block written as ``null``, ``string`` next to ``large_string``): the files' schemas are
    unified first, promoting such columns, instead of trusting the first file's."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from pafo_ray.storage import split_uri

    fs, path = split_uri(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    schemas = [dataset.schema] + [f.physical_schema for f in dataset.get_fragments()]
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    if not unified.equals(dataset.schema):
        dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive",
                               schema=unified)
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns).to_pandas()


def read_rows(uris: list) -> pd.DataFrame:
    """Prepared (or margin) rows under ``uris`` as one frame in ``row_id`` order, with the
    hive partition values of each URI's own path (``.../split=train/group=minority``) as
    columns, as Ray Data's ``read_parquet`` gives them."""
    parts = []
    for uri in uris:
        frame = read_frame(uri)
        for part in uri.rstrip("/").split("?")[0].split("/"):
            key, eq, value = part.partition("=")
            if eq and key not in frame:
                frame[key] = value
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if "row_id" in frame:
        frame = frame.sort_values("row_id", kind="stable", ignore_index=True)
    return frame
