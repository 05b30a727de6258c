"""Prepared rows -> the tensors a training loop steps over.

Frozen mode keeps one embedding matrix (the cache, ``[n_texts, hidden]``) and per-row
indices into it, so memory grows with distinct texts, not rows × hidden. Finetune mode
tokenizes each row's two texts once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import torch

ROW_COLUMNS = ["row_id", "user_id", "prompt", "chosen", "rejected", "chosen_text_id",
               "rejected_text_id", "weight", "group", "split", "support_rate", "user_type"]


@dataclass
class Rows:
    """Aligned per-row tensors, all with first dimension ``n``."""

    user_index: torch.Tensor          # [n] long, -1 = unknown user
    group_index: torch.Tensor         # [n] long, 0 = lowest support (minority)
    weight: torch.Tensor              # [n] float
    chosen_index: Optional[torch.Tensor] = None    # [n] long into the cache (frozen)
    rejected_index: Optional[torch.Tensor] = None  # [n] long into the cache (frozen)
    chosen_tokens: Optional[dict] = None           # input_ids/attention_mask [n, T] (finetune)
    rejected_tokens: Optional[dict] = None
    teacher_margin: Optional[torch.Tensor] = None  # [n] float, NaN = no target
    distill_mask: Optional[torch.Tensor] = None    # [n] float in {0, 1}
    label_mask: Optional[torch.Tensor] = None      # [n] float in {0, 1}; 0 = unlabelled row
    label_margin: Optional[torch.Tensor] = None    # [n] float: the data's margin (use_margin)
    extra: dict = field(default_factory=dict)      # numpy columns kept for reporting

    def __len__(self) -> int:
        return int(self.user_index.shape[0])

    def take(self, index: torch.Tensor) -> "Rows":
        def pick(value):
            if value is None:
                return None
            if isinstance(value, dict):
                return {k: v[index] for k, v in value.items()}
            return value[index]

        return Rows(**{name: pick(getattr(self, name)) for name in
                       ("user_index", "group_index", "weight", "chosen_index", "rejected_index",
                        "chosen_tokens", "rejected_tokens", "teacher_margin", "distill_mask",
                        "label_mask", "label_margin")})


@dataclass
class Cache:
    """The embedding cache: sorted text ids and their vectors."""

    text_ids: np.ndarray   # [n_texts] int64, sorted
    vectors: torch.Tensor  # [n_texts, hidden] float32

    def index_of(self, ids: np.ndarray, what: str = "text") -> torch.Tensor:
        pos = np.searchsorted(self.text_ids, ids)
        pos = np.clip(pos, 0, len(self.text_ids) - 1)
        missing = self.text_ids[pos] != ids
        if missing.any():
            raise RuntimeError(f"{int(missing.sum())} {what}s have no embedding in the cache: "
                               "rerun `pafo-ray embed` (the cache is older than the data)")
        return torch.as_tensor(pos, dtype=torch.long)


def read_cache(uri: str) -> Cache:
    """Load ``embed/cache`` parquet (``text_id``, ``embedding``) into memory."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pafo_ray.storage import split_uri

    fs, path = split_uri(uri)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    order = pc.sort_indices(table, [("text_id", "ascending")])
    table = table.take(order)
    ids = table.column("text_id").to_numpy()
    flat = pc.list_flatten(table.column("embedding")).to_numpy(zero_copy_only=False)
    vectors = torch.from_numpy(np.array(flat, dtype=np.float32).reshape(len(ids), -1))
    return Cache(ids, vectors)


def user_map(user_ids: list) -> dict:
    return {u: i for i, u in enumerate(user_ids)}


def _tensor(series: pd.Series, dtype) -> torch.Tensor:
    """A tensor over a writable copy: pandas may hand out a read-only view of Arrow memory."""
    return torch.from_numpy(series.to_numpy(dtype, copy=True))


def build_rows(frame: pd.DataFrame, *, users: dict, group_names: list,
               cache: Optional[Cache] = None, encoder=None, label_margin: bool = False) -> Rows:
    """Tensors for ``frame`` (prepared rows, optionally with teacher targets).
    ``label_margin``: the rows' ``margin`` column (missing values 0) offsets their BT term."""
    user_index = _tensor(frame["user_id"].map(users).fillna(-1), np.int64)
    index = {name: i for i, name in enumerate(group_names)}
    unknown = set(frame["group"].unique()) - set(index)
    if unknown:
        raise ValueError(f"rows carry groups {sorted(unknown)} not in {group_names}")
    rows = Rows(
        user_index=user_index,
        group_index=_tensor(frame["group"].map(index), np.int64),
        weight=_tensor(frame["weight"].fillna(1.0), np.float32),
    )
    if cache is not None:
        rows.chosen_index = cache.index_of(frame["chosen_text_id"].to_numpy(np.int64))
        rows.rejected_index = cache.index_of(frame["rejected_text_id"].to_numpy(np.int64))
    if encoder is not None:
        rows.chosen_tokens = encoder.tokenize(list(frame["prompt"]), list(frame["chosen"]))
        rows.rejected_tokens = encoder.tokenize(list(frame["prompt"]), list(frame["rejected"]))
    if "teacher_margin" in frame:
        rows.teacher_margin = _tensor(frame["teacher_margin"], np.float32)
        rows.distill_mask = _tensor(frame["distill_mask"], np.float32)
    if "labelled" in frame and not frame["labelled"].fillna(True).astype(bool).all():
        rows.label_mask = _tensor(frame["labelled"].fillna(True), np.float32)
    if label_margin and "margin" in frame:
        rows.label_margin = _tensor(frame["margin"].astype(float).fillna(0.0), np.float32)
    rows.extra = {c: frame[c].to_numpy() for c in ("row_id", "user_id") if c in frame}
    return rows


def frame_from_shard(shard, columns: Optional[list] = None) -> pd.DataFrame:
    """Materialise a Ray Data shard (DataIterator) into one pandas frame, in ``row_id`` order:
    Ray Data's blocks arrive in any order, and a rerun with the same seed must see the same rows
    in the same order."""
    parts = [batch for batch in shard.iter_batches(batch_size=65536, batch_format="pandas")]
    if not parts:
        return pd.DataFrame(columns=columns or ROW_COLUMNS)
    frame = pd.concat(parts, ignore_index=True)
    if "row_id" in frame:
        frame = frame.sort_values("row_id", kind="stable", ignore_index=True)
    return frame[columns] if columns else frame
