"""The plain PyTorch loop every model trains with: teachers, baselines, student, trials.

It knows nothing of Ray: a Ray Train worker, a Tune trial and a benchmark call the same
:func:`fit`. One step scores the chosen and rejected texts of a minibatch, turns the
margins into per-row losses and lets the :class:`Objective` combine them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from pafo_ray import losses
from pafo_ray.train.arrays import Cache, Rows

# train.user_updates=auto: from this many users a step updates only its batch's users. Dense
# updates cost O(users) a step: at 50,000 users 1.95 ms a 256-row step, sparse 1.24 ms
# (python -m benchmarks.users).
SPARSE_USERS_FROM = 20_000


class PairScorer(nn.Module):
    """Wraps a RewardModel so that one ``forward`` (the one DDP sees) yields margins."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, user_index, chosen_phi=None, rejected_phi=None, chosen_tokens=None,
                rejected_tokens=None, user_only=None) -> torch.Tensor:
        """Margins ``[B]``; ``user_only [B]`` bool: rows whose gradient reaches only the user
        embeddings (unlabelled distillation rows)."""
        users = torch.cat([user_index, user_index])
        both = None if user_only is None else torch.cat([user_only, user_only])
        if chosen_phi is not None:
            rewards = self.model(users, phi=torch.cat([chosen_phi, rejected_phi]), user_only=both)
        else:
            rewards = self.model(users, input_ids=_stack(chosen_tokens["input_ids"],
                                                         rejected_tokens["input_ids"]),
                                 attention_mask=_stack(chosen_tokens["attention_mask"],
                                                       rejected_tokens["attention_mask"]),
                                 user_only=both)
        half = user_index.shape[0]
        return rewards[:half] - rewards[half:]


def _stack(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a; b]`` of two token batches padded separately: the narrower one is right-padded
    (id 0, mask 0: nothing attends to it) to the wider one's width."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([nn.functional.pad(t, (0, width - t.shape[1])) for t in (a, b)])


def margins_of(scorer: nn.Module, rows: Rows, cache: Optional[Cache], device=None) -> torch.Tensor:
    """Margins ``[n]`` of a (mini)batch of rows."""
    def dev(t):
        return t.to(device) if device is not None else t

    user_only = None
    if rows.label_mask is not None and scorer.training:
        user_only = dev(rows.label_mask == 0)
    if cache is not None:
        return scorer(dev(rows.user_index), chosen_phi=dev(cache.vectors[rows.chosen_index]),
                      rejected_phi=dev(cache.vectors[rows.rejected_index]), user_only=user_only)
    return scorer(dev(rows.user_index),
                  chosen_tokens={k: dev(v) for k, v in rows.chosen_tokens.items()},
                  rejected_tokens={k: dev(v) for k, v in rows.rejected_tokens.items()},
                  user_only=user_only)


@dataclass
class Objective:
    """How per-row Bradley–Terry losses become the training loss.

    kind: ``bt`` (vanilla, teachers), ``reweight`` (inverse group frequency), ``groupdro``,
    ``fairness_penalty``, ``faro_dp`` / ``faro_eo`` (BT under a demographic-parity /
    equalized-odds constraint with slack ``faro_epsilon``, Lagrange multipliers by dual ascent
    at rate ``faro_dual_lr``: :class:`pafo_ray.losses.FaroConstraint`), ``pafo`` (BT + λ·D
    toward the own group's teacher margin).
    ``group_weight`` multiplies row weights per group (pafo: [w_min, 1, ...]).
    """

    kind: str = "bt"
    num_groups: int = 2
    group_weight: Optional[list] = None
    reweight_power: float = 1.0
    groupdro_eta: float = 0.05
    fairness_alpha: float = 1.0
    faro_epsilon: float = 0.02
    faro_dual_lr: float = 0.5
    distill_loss: str = "mse"
    lam: float = 1.0
    temperature: float = 1.0
    clip: Optional[float] = None
    user_shrinkage: float = 0.0
    sparse_users: bool = False  # set by fit(): the shrinkage on the batch's users only
    state: dict = field(default_factory=dict)

    def __post_init__(self):
        self._dro = (losses.GroupDRO(self.num_groups, self.groupdro_eta)
                     if self.kind == "groupdro" else None)
        self._faro = (losses.FaroConstraint(self.num_groups, self.kind[len("faro_"):],
                                            self.faro_epsilon, self.faro_dual_lr)
                      if self.kind in ("faro_dp", "faro_eo") else None)

    def prepare(self, train: Rows) -> None:
        """Fix the per-group weights from the training rows (reweight)."""
        if self.kind == "reweight" and self.group_weight is None:
            self.group_weight = losses.inverse_frequency_weights(
                train.group_index, self.num_groups, self.reweight_power).tolist()

    def row_weight(self, rows: Rows, device=None) -> torch.Tensor:
        weight = rows.weight
        if self.group_weight is not None:
            table = torch.as_tensor(self.group_weight, dtype=weight.dtype)
            weight = weight * table[rows.group_index]
        return weight.to(device) if device is not None else weight

    def __call__(self, margin: torch.Tensor, rows: Rows, model: nn.Module) -> tuple:
        device = margin.device
        weight = self.row_weight(rows, device)
        group = rows.group_index.to(device)
        label_mask = None if rows.label_mask is None else rows.label_mask.to(device)
        offset = None if rows.label_margin is None else rows.label_margin.to(device)
        if self.kind == "pafo":
            loss, metrics = losses.pafo_student_loss(
                margin, rows.teacher_margin.to(device), weight, rows.distill_mask.to(device),
                lam=self.lam, kind=self.distill_loss, temperature=self.temperature,
                clip=self.clip, label_mask=label_mask, label_offset=offset)
        else:
            if label_mask is not None and not bool(label_mask.all()):
                raise ValueError(f"objective {self.kind!r} got unlabelled rows; only the pafo "
                                 "student trains on unlabelled (distillation-only) comparisons")
            per_row = losses.bradley_terry_loss(margin, offset) * weight
            if self.kind == "groupdro":
                loss = self._dro(per_row, group)
            elif self._faro is not None:
                loss = self._faro(margin, group, weight, label=_label_class(rows, device)
                                  if self.kind == "faro_eo" else None)
            elif self.kind == "fairness_penalty":
                loss = losses.fairness_penalty_loss(per_row, group, self.num_groups,
                                                    self.fairness_alpha)
            else:
                loss = losses.weighted_mean(losses.bradley_terry_loss(margin, offset), weight)
            metrics = {}
        if self.user_shrinkage > 0:
            users = rows.user_index.to(device) if self.sparse_users else None
            loss = loss + self.user_shrinkage * _unwrap(model).head.user_penalty(users)
        return loss, metrics

    def state_dict(self) -> dict:
        if self._faro is not None:
            return {"multipliers": self._faro.multipliers.tolist()}
        return {"q": self._dro.q.tolist()} if self._dro is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self._dro is not None and "q" in state:
            self._dro.q.copy_(torch.as_tensor(state["q"]))
        if self._faro is not None and "multipliers" in state:
            self._faro.multipliers.copy_(torch.as_tensor(state["multipliers"]))


def _label_class(rows: Rows, device=None) -> torch.Tensor:
    """``[n]`` long: 1 where the chosen response is the pair's first by text id, else 0 — the
    label of the pair in a fixed orientation (Faro's equalized odds conditions on it). The
    cache is sorted by text id, so cache positions order the pair as text ids do."""
    if rows.chosen_index is None or rows.rejected_index is None:
        raise ValueError("baseline faro_eo needs the embedding cache's text positions "
                         "(model.mode=frozen) to orient each pair")
    label = (rows.chosen_index < rows.rejected_index).long()
    return label.to(device) if device is not None else label


def _unwrap(module: nn.Module) -> nn.Module:
    """PairScorer/DDP -> the RewardModel inside."""
    while hasattr(module, "module") or isinstance(module, PairScorer):
        module = module.module if hasattr(module, "module") else module.model
    return module


@torch.no_grad()
def score_rows(scorer: nn.Module, rows: Rows, cache: Optional[Cache], batch_size: int = 4096,
               device=None) -> np.ndarray:
    """Margins ``[n]`` of every row, in eval mode."""
    was_training = scorer.training
    scorer.eval()
    out = [margins_of(scorer, rows.take(torch.arange(i, min(i + batch_size, len(rows)))),
                      cache, device).cpu()
           for i in range(0, len(rows), batch_size)]
    scorer.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def accuracy_by_group(margin: np.ndarray, group_index: np.ndarray, names: list) -> dict:
    """Validation metrics: accuracy overall and per group (ties count as not correct)."""
    correct = margin > 0
    out = {"val_accuracy": float(correct.mean()) if len(correct) else float("nan")}
    for i, name in enumerate(names):
        mask = group_index == i
        out[f"val_{name}_accuracy"] = float(correct[mask].mean()) if mask.any() else float("nan")
    out["val_margin_mean"] = float(margin.mean()) if len(margin) else 0.0
    out["val_margin_std"] = float(margin.std()) if len(margin) > 1 else 1.0
    return out


def fit(scorer: nn.Module, train: Rows, val: Rows, objective: Objective, *, epochs: int,
        batch_size: int, lr: float, weight_decay: float, group_names: list,
        cache: Optional[Cache] = None, seed: int = 0, device=None, start_epoch: int = 0,
        optimizer_state: Optional[dict] = None,
        on_epoch: Optional[Callable[[int, dict, torch.optim.Optimizer], None]] = None,
        user_updates: str = "dense") -> dict:
    """Train ``scorer`` for ``epochs`` (from ``start_epoch``); returns the last epoch's metrics.
    ``user_updates``: ``train.user_updates`` (:func:`sparse_users`)."""
    from pafo_ray.train.lazyadam import LazyAdamW

    if len(train) == 0:
        raise ValueError("no training rows")
    objective.prepare(train)
    table = _unwrap(scorer).head.user_embedding
    sparse = sparse_users(user_updates, table.num_embeddings,
                          distributed=isinstance(scorer, nn.parallel.DistributedDataParallel))
    objective.sparse_users = sparse
    params = [p for p in scorer.parameters() if p.requires_grad]
    optimizer = LazyAdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    table.sparse = sparse
    try:
        return _epochs(scorer, train, val, objective, optimizer, epochs=epochs,
                       batch_size=batch_size, group_names=group_names, cache=cache, seed=seed,
                       device=device, start_epoch=start_epoch, on_epoch=on_epoch)
    finally:
        table.sparse = False


def sparse_users(user_updates: str, num_users: int, distributed: bool = False) -> bool:
    """Whether a fit updates only the batch's users (``train.user_updates``): ``sparse``,
    ``dense``, or ``auto`` = sparse from :data:`SPARSE_USERS_FROM` users on one rank (a
    DDP-wrapped model all-reduces dense gradients)."""
    if user_updates == "sparse":
        if distributed:
            raise ValueError("train.user_updates=sparse needs one rank a job (train.num_workers "
                             "≤ 1): DDP all-reduces the user table's gradient densely")
        return True
    if user_updates == "auto":
        return not distributed and num_users >= SPARSE_USERS_FROM
    if user_updates == "dense":
        return False
    raise ValueError(f"train.user_updates must be auto, dense or sparse, got {user_updates!r}")


def _epochs(scorer: nn.Module, train: Rows, val: Rows, objective: Objective,
            optimizer: torch.optim.Optimizer, *, epochs: int, batch_size: int,
            group_names: list, cache: Optional[Cache], seed: int, device, start_epoch: int,
            on_epoch) -> dict:
    metrics: dict = {}
    steps_per_epoch = math.ceil(len(train) / batch_size)
    for epoch in range(start_epoch, epochs):
        scorer.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
        total = 0.0
        began = time.perf_counter()
        for step in range(steps_per_epoch):
            batch = train.take(order[step * batch_size:(step + 1) * batch_size])
            margin = margins_of(scorer, batch, cache, device)
            loss, _ = objective(margin, batch, scorer)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        train_seconds = time.perf_counter() - began  # the steps alone (benchmarks: steps/s)
        val_margin = score_rows(scorer, val, cache, device=device)
        metrics = {"epoch": epoch + 1, "train_loss": total / steps_per_epoch,
                   "train_seconds": train_seconds, "steps": steps_per_epoch,
                   **accuracy_by_group(val_margin, val.group_index.numpy(), group_names)}
        if on_epoch is not None:
            on_epoch(epoch, metrics, optimizer)
    return metrics
