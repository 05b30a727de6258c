"""``pafo-ray score``: a saved student scores a file, by Ray Data batch inference.

    pafo-ray score MODEL INPUT OUTPUT [--cold-start mean|population] [--batch-size 64]
                   [--num-actors 1] [--num-gpus-per-actor 0]

``MODEL``: a student folder, ``s3://``/``gs://`` URI or hub id (``RewardModel.from_pretrained``).
``INPUT``: parquet (file or folder) or JSON lines (``.jsonl``/``.json``), local or a URI, with
either ``user_id, prompt, response`` (-> ``reward``) or ``user_id, prompt, chosen, rejected``
(-> ``reward_chosen``, ``reward_rejected``, ``margin``); other columns pass through.
``OUTPUT``: a parquet folder; every row also gets ``unknown_user`` (True: a user the model has
not seen, scored by the cold-start rule: the mean user, or the population with offset 0).

Before any work the input is checked file by file; a missing column names the file and the
field, a null or non-text value names the file, the row (0-based, in file order) and the field.
(pafo_ray.scoring's MarginScorer scores a run's own rows from its embedding cache; new texts
need the backbone, so this module has its own actor.)
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

POINTWISE = ("user_id", "prompt", "response")
PAIRWISE = ("user_id", "prompt", "chosen", "rejected")


class ScoreInputError(ValueError):
    """The input to score is missing a column or holds a bad value (file, row, field named)."""


def _files(path: str) -> tuple:
    """(pyarrow filesystem, [file paths in fs terms], format) of a file or a folder."""
    from pyarrow import fs as pafs

    from pafo_ray.storage import split_uri

    fs, base = split_uri(path)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise ScoreInputError(f"{path}: no such file or folder")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File
                       and not os.path.basename(i.path).startswith(("_", ".")))
    else:
        files = [base]
    if not files:
        raise ScoreInputError(f"{path}: the folder holds no files")
    kinds = {"jsonl" if f.endswith((".jsonl", ".json")) else "parquet" for f in files}
    if len(kinds) != 1:
        raise ScoreInputError(f"{path}: mixes JSON lines and parquet files")
    return fs, files, kinds.pop()


def _read(fs, file: str, kind: str, columns=None):
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    with fs.open_input_file(file) as fh:
        if kind == "parquet":
            return pq.read_table(fh, columns=columns)
        table = pajson.read_json(fh)
        return table.select(columns) if columns else table


def check_input(path: str) -> tuple:
    """Check every file -> (columns the scorer reads, "pointwise"|"pairwise", format, files)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, files, kind = _files(path)
    mode = None
    for file in files:
        if kind == "parquet":
            with fs.open_input_file(file) as fh:
                names = pq.read_schema(fh).names
        else:
            try:
                names = _read(fs, file, kind).column_names
            except pa.ArrowInvalid as exc:
                raise ScoreInputError(f"{file}: not valid JSON lines: {exc}") from exc
        this = "pairwise" if {"chosen", "rejected"} <= set(names) else "pointwise"
        need = PAIRWISE if this == "pairwise" else POINTWISE
        missing = [c for c in need if c not in names]
        if missing:
            raise ScoreInputError(f"{file}: missing field {missing[0]!r} (a file needs "
                                  f"{', '.join(POINTWISE)} or {', '.join(PAIRWISE)}; has {names})")
        if mode not in (None, this):
            raise ScoreInputError(f"{file}: {this} rows, but earlier files hold {mode} rows")
        mode = this
        table = _read(fs, file, kind, list(need))
        for column in need:
            values = table.column(column)
            if column != "user_id" and not pa.types.is_string(values.type) \
                    and not pa.types.is_large_string(values.type) and len(values):
                raise ScoreInputError(f"{file}: field {column!r} must be text, "
                                      f"got {values.type}")
            bad = pc.is_null(values)
            if pc.any(bad).as_py():
                row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
                raise ScoreInputError(f"{file}: row {row}: field {column!r} is null")
    return list(PAIRWISE if mode == "pairwise" else POINTWISE), mode, kind, files


class FileScorer:
    """One Ray Data actor: the student loaded once; adds rewards (and margins) to each batch."""

    def __init__(self, model: str, mode: str, cold_start: str = "mean", device: str = "cpu"):
        from pafo_ray.models import RewardModel

        self.model = RewardModel.from_pretrained(model).to(device).eval()
        self.model.cold_start = cold_start
        self.mode = mode

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        users = batch["user_id"].astype(str).tolist()
        prompts = batch["prompt"].tolist()
        known = self.model._rows
        batch["unknown_user"] = [u not in known for u in users]
        if self.mode == "pointwise":
            batch["reward"] = self.model.score(users, prompts, batch["response"].tolist())
            return batch
        chosen = self.model.score(users, prompts, batch["chosen"].tolist())
        rejected = self.model.score(users, prompts, batch["rejected"].tolist())
        batch["reward_chosen"], batch["reward_rejected"] = chosen, rejected
        batch["margin"] = chosen - rejected
        return batch


def score_file(model: str, input_path: str, output_path: str, *, cold_start: str = "mean",
               batch_size: int = 64, num_actors: int = 1, num_gpus_per_actor: float = 0.0) -> dict:
    """Score ``input_path`` with ``model`` into the parquet folder ``output_path``."""
    import ray.data

    from pafo_ray.ray_session import cluster_cpus

    if cold_start not in ("mean", "population"):
        raise ValueError(f"cold_start must be 'mean' or 'population', got {cold_start!r}")
    _, mode, kind, files = check_input(input_path)
    from pafo_ray.storage import split_uri

    fs, _ = split_uri(input_path)  # the files are paths in this filesystem's terms
    ds = (ray.data.read_parquet(files, filesystem=fs) if kind == "parquet"
          else ray.data.read_json(files, filesystem=fs))
    actors = max(1, min(num_actors, cluster_cpus() - 1))
    out = ds.map_batches(
        FileScorer, batch_format="pandas", batch_size=batch_size,
        fn_constructor_kwargs=dict(model=model, mode=mode, cold_start=cold_start,
                                   device="cuda" if num_gpus_per_actor > 0 else "cpu"),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=num_gpus_per_actor or None)
    out.write_parquet(output_path)
    return {"mode": mode, "files": len(files), "output": output_path}
