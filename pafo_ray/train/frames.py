"""Parquet rows under a URI as one pandas frame: what a fit in one process reads."""

from __future__ import annotations

from typing import Optional

import pandas as pd

# The texts of a row: a frozen-mode fit reads their embeddings from the cache by text id, and
# at millions of rows they are most of a frame's memory (2.45 of the 5M-row run's 3.5M training
# rows' 2.9 GiB in pandas).
TEXTS = ("prompt", "chosen", "rejected")


def skipped_columns(cfg) -> tuple:
    """What a fit of ``cfg`` need not read: the texts in frozen mode, else nothing."""
    return TEXTS if cfg.model.mode == "frozen" else ()


def read_frame(uri: str, columns: Optional[list] = None, skip: tuple = ()) -> pd.DataFrame:
    """Parquet rows under ``uri`` as one frame; ``columns`` limits what is read (names the
    files lack are skipped), ``skip`` names columns not to read.

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
    if columns is not None or skip:
        columns = [c for c in (dataset.schema.names if columns is None else columns)
                   if c in dataset.schema.names and c not in skip]
    return dataset.to_table(columns=columns).to_pandas()


def read_rows(uris: list, skip: tuple = ()) -> pd.DataFrame:
    """Prepared (or margin) rows under ``uris`` as one frame in ``row_id`` order, with the
    hive partition values of each URI's own path (``.../split=train/group=minority``) as
    columns, as Ray Data's ``read_parquet`` gives them; ``skip``: columns not to read."""
    parts = []
    for uri in uris:
        frame = read_frame(uri, skip=skip)
        for part in uri.rstrip("/").split("?")[0].split("/"):
            key, eq, value = part.partition("=")
            if eq and key not in frame:
                frame[key] = value
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if "row_id" in frame:
        frame = frame.sort_values("row_id", kind="stable", ignore_index=True)
    return frame
