"""Features learned from the preferences: a small adapter fitted once on the training rows.

Frozen features that cannot tell apart what users disagree about (DSP: the domain of a
response) leave every model — vanilla, teachers, student, baselines — at the same ceiling
(DESIGN §6). The adapter ``h = GELU(A · standardize(φ) + a)`` ``[N, D] -> [N, dim]`` is
trained once, by Bradley–Terry, under the same personalized head the models use,
``r(u, y) = (g + e_u) · W h(φ_y)``, on the **training** rows only; then ``h`` replaces φ in
the embedding cache, so every method trains on the same, shared features and the comparison
stays fair. A slice of the training prompts is held out to choose the epoch (never the
validation or test split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pafo_ray.losses import bradley_terry_loss
from pafo_ray.models.heads import FeatureAdapter, RewardHead


@dataclass
class AdaptResult:
    adapter: FeatureAdapter
    features: np.ndarray       # h for every cached text [N, dim] float32
    epoch: int                 # epoch kept (best held-out BT accuracy)
    holdout_accuracy: float    # that accuracy (nan without a holdout)
    frozen_holdout_accuracy: float  # the same head on the frozen φ, for comparison
    train_rows: int
    seconds: float


@dataclass
class Pairs:
    """Training comparisons as indices: ``chosen``/``rejected`` into the feature rows,
    ``user`` into the users, ``prompt`` a prompt key (holdout by prompt). All ``[n]``."""

    chosen: np.ndarray
    rejected: np.ndarray
    user: np.ndarray
    prompt: np.ndarray


def holdout_mask(prompt: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    keys = np.unique(prompt)
    rng = np.random.default_rng([seed, 18])
    held = keys[rng.random(len(keys)) < fraction] if fraction > 0 else keys[:0]
    return np.isin(prompt, held)


def fit_bt(features: torch.Tensor, pairs: Pairs, num_users: int, adapter: nn.Module | None, *,
           rank: int, epochs: int, lr: float, weight_decay: float, user_shrinkage: float,
           holdout: np.ndarray, seed: int, batch_size: int = 512):
    """BT under ``(g + e_u)·W·adapter(φ)`` (``adapter`` None: standardized φ itself); returns
    (best state, best epoch, best holdout acc)."""
    torch.manual_seed(seed)
    width = adapter.layer.out_features if adapter is not None else features.shape[1]
    head = RewardHead(width, num_users, head="lowrank", rank=rank, population_term=True)
    encode = adapter if adapter is not None else nn.Identity()
    if adapter is None:  # the frozen comparison: standardize φ as the adapter does
        mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
        features = (features - mean) / std
    params = list(head.parameters()) + list(encode.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    tensors = {k: torch.from_numpy(np.asarray(getattr(pairs, k), dtype=np.int64))
               for k in ("chosen", "rejected", "user")}
    train_idx = torch.from_numpy(np.flatnonzero(~holdout))
    held_idx = torch.from_numpy(np.flatnonzero(holdout))
    generator = torch.Generator().manual_seed(seed)

    def margin(index):
        u = tensors["user"][index]
        return (head(encode(features[tensors["chosen"][index]]), u)
                - head(encode(features[tensors["rejected"][index]]), u))

    best = (None, 0, float("nan"))
    for epoch in range(1, epochs + 1):
        encode.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = bradley_terry_loss(margin(batch)).mean()
            users = head.user_embedding(tensors["user"][batch])
            loss = loss + user_shrinkage * users.pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if len(held_idx):
            encode.eval()
            with torch.no_grad():
                accuracy = float((margin(held_idx) > 0).float().mean())
            if not accuracy <= best[2]:  # first epoch, or better
                best = ({k: v.detach().clone() for k, v in encode.state_dict().items()},
                        epoch, accuracy)
    if best[0] is None:  # no holdout: the last epoch
        best = ({k: v.detach().clone() for k, v in encode.state_dict().items()}, epochs,
                float("nan"))
    return best


def fit_adapter(features: np.ndarray, pairs: Pairs, num_users: int, *, dim: int = 32,
                rank: int = 8, epochs: int = 30, lr: float = 3e-3, weight_decay: float = 1e-2,
                user_shrinkage: float = 1e-3, holdout_fraction: float = 0.1,
                seed: int = 0) -> AdaptResult:
    """Fit the adapter on ``pairs`` (training rows only: the caller passes nothing else) over
    ``features [N, D]``; return it and ``h`` for all N texts."""
    import time

    if len(pairs.chosen) == 0:
        raise ValueError("embed.adapt needs training rows; the train split is empty")
    began = time.time()
    phi = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    holdout = holdout_mask(np.asarray(pairs.prompt), holdout_fraction, seed)
    if holdout.all():
        holdout[:] = False
    settings = dict(rank=rank, epochs=epochs, lr=lr, weight_decay=weight_decay,
                    user_shrinkage=user_shrinkage, holdout=holdout, seed=seed)
    torch.manual_seed(seed)  # the adapter's init: same data and seed -> same features
    adapter = FeatureAdapter(phi.mean(0), phi.std(0), dim)
    state, epoch, accuracy = fit_bt(phi, pairs, num_users, adapter, **settings)
    adapter.load_state_dict(state)
    adapter.eval()
    _, _, frozen = fit_bt(phi, pairs, num_users, None, **settings)
    with torch.no_grad():
        out = adapter(phi).numpy().astype(np.float32)
    return AdaptResult(adapter, out, epoch, accuracy, frozen, int((~holdout).sum()),
                       round(time.time() - began, 2))


def training_pairs(rows, text_ids: np.ndarray, users: list) -> Pairs:
    """Index the **training** rows of ``rows`` (a frame with ``split``, ``user_id``, ``prompt``,
    ``chosen_text_id``, ``rejected_text_id``) into ``text_ids`` (sorted) and ``users``.

    Rows of any other split are dropped here, whatever the caller passed: the adapter's
    features are shared by every model, so a validation or test label reaching them would
    leak into every comparison.
    """
    import pandas as pd

    rows = rows[rows["split"] == "train"]
    user_index = pd.Series(range(len(users)), index=users)
    ids = np.asarray(text_ids)

    def locate(column):
        values = rows[column].to_numpy()
        at = np.searchsorted(ids, values)
        at = np.minimum(at, len(ids) - 1)
        if len(values) and not (ids[at] == values).all():
            missing = values[ids[at] != values][0]
            raise ValueError(f"embed.adapt: text id {missing} of a training row is not in the "
                             "embedding cache")
        return at

    user = user_index.reindex(rows["user_id"].astype(str)).to_numpy()
    if np.isnan(user).any():
        raise ValueError("embed.adapt: a training row's user_id is not in prepare/users.parquet")
    prompt = pd.factorize(rows["prompt"])[0]
    return Pairs(locate("chosen_text_id"), locate("rejected_text_id"), user.astype(np.int64),
                 prompt)
