"""A parquet ``Datasink`` whose write tasks also hand back a summary of what they wrote.

Ray Data's ``write_parquet`` returns nothing, so counts of the written rows would need a
second execution that reads the output again. :class:`SummarisingParquetSink` writes each
write task's blocks with pyarrow (hive partitions like ``write_parquet(partition_cols=)``)
and returns ``summarise(table)`` from the task; Ray collects the returns of the tasks
that succeeded into ``WriteResult.write_returns`` (a retried task counts once), and
:meth:`on_write_complete` keeps them on the driver's sink object as :attr:`returns`.

A retried task rewrites the same file names (``<write id>_<task index>_<i>.parquet``),
so a retry replaces its earlier attempt's files instead of adding to them.
"""

from __future__ import annotations

import uuid
from typing import Callable, Iterable, Optional

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

ROW_GROUP_ROWS = 262_144


class SummarisingParquetSink(Datasink):
    def __init__(self, uri: str, *, partition_cols: Optional[list] = None,
                 summarise: Optional[Callable[[pa.Table], object]] = None):
        self.uri = uri
        self.partition_cols = list(partition_cols or [])
        self.summarise = summarise
        self.write_id = uuid.uuid4().hex[:12]
        self.returns: Optional[list] = None

    def _filesystem(self):
        from pafo_ray.storage import split_uri

        return split_uri(self.uri)

    def on_write_start(self, schema=None) -> None:
        fs, path = self._filesystem()
        fs.create_dir(path, recursive=True)

    def write(self, blocks: Iterable[Block], ctx) -> object:
        import pyarrow.dataset as pads

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="permissive")
        fs, path = self._filesystem()
        partitioning = (pads.partitioning(table.select(self.partition_cols).schema,
                                          flavor="hive") if self.partition_cols else None)
        pads.write_dataset(table, path, filesystem=fs, format="parquet",
                           partitioning=partitioning,
                           basename_template=f"{self.write_id}_{ctx.task_idx:06d}_{{i}}.parquet",
                           existing_data_behavior="overwrite_or_ignore",
                           # row groups of 64k-256k rows, not of the (shuffle-sized) chunks:
                           # min 256k made the partitioned write of 1M rows 0.74 s vs 0.48 s
                           min_rows_per_group=ROW_GROUP_ROWS // 4, max_rows_per_group=ROW_GROUP_ROWS)
        return self.summarise(table) if self.summarise else table.num_rows

    def on_write_complete(self, write_result) -> None:
        self.returns = [r for r in write_result.write_returns if r is not None]

    def get_name(self) -> str:
        return "SummarisingParquet"
