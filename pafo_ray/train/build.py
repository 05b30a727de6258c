"""One builder of a model and its rows for every fit: the Ray Train worker
(:func:`pafo_ray.train.ray_train.train_func`) and the in-process fits
(:func:`pafo_ray.train.inmemory.train_student`, :func:`~pafo_ray.train.inmemory.train_vanilla`).
"""

from __future__ import annotations

import tempfile
from typing import Optional

import pandas as pd


def build_model(model_cfg, users: list, cache, init_from: Optional[str] = None):
    """A new :class:`~pafo_ray.models.RewardModel` (``model_cfg``, one embedding per user,
    the cache's width in frozen mode), or the saved one at ``init_from``."""
    from pafo_ray.models import RewardModel
    from pafo_ray.storage import local_copy

    if init_from:
        with tempfile.TemporaryDirectory() as tmp:
            return RewardModel.from_pretrained(local_copy(init_from, tmp))
    dim = int(cache.vectors.shape[1]) if cache is not None else None
    model = RewardModel.from_config(model_cfg, users, input_dim=dim)
    if cache is not None:
        model.head.fit_feature_scale(cache.vectors)  # model.base_hidden: φ's scale, from texts
    return model


def build_model_and_rows(model_cfg, users: list, cache, train: pd.DataFrame, val: pd.DataFrame,
                         *, group_names: list, seed: int, init_from: Optional[str] = None,
                         label_margin: bool = False):
    """``(model, train rows, val rows)``: the model seeded with ``seed`` (the same init on
    every worker and every rerun) and the tensors of both frames for it. ``label_margin``:
    the training rows carry the data's ``margin`` column (``train.use_margin``)."""
    import torch

    from pafo_ray.train.arrays import build_rows, user_map

    torch.manual_seed(seed)
    model = build_model(model_cfg, users, cache, init_from)
    umap = user_map(model.user_ids)
    train_rows = build_rows(train, users=umap, group_names=group_names, cache=cache,
                            encoder=model.encoder, label_margin=label_margin)
    val_rows = build_rows(val, users=umap, group_names=group_names, cache=cache,
                          encoder=model.encoder)
    return model, train_rows, val_rows
