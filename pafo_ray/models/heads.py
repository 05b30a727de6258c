"""Reward heads: r = head(φ(x, y), e_u).

lowrank: K base rewards ``b = W φ`` and ``r = (g + e_u) · b`` with a shared population vector
``g`` and a per-user offset ``e_u`` that shrinkage pulls towards 0, so sparse and new users fall
back to the population (``population_term=False`` gives PReF/LoRe's ``r = e_u · b``).
mlp: ``r = MLP([φ ; e_u])``.

Neither head has an output bias: a constant per user cancels in every margin r(chosen) −
r(rejected), so it would never receive a gradient.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import nn


class FeatureAdapter(nn.Module):
    """``phi [N, D]`` -> ``h [N, dim]``: standardize with the fitted mean/std, one GELU layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clamp(min=1e-6).clone())
        self.layer = nn.Linear(mean.shape[-1], dim)
        nn.init.normal_(self.layer.weight, std=1.0 / math.sqrt(mean.shape[-1]))
        nn.init.zeros_(self.layer.bias)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.layer((phi - self.mean) / self.std))


class RewardHead(nn.Module):
    """Scores ``phi [B, D]`` for ``user_index [B]`` (−1: unknown user -> mean embedding) -> ``[B]``."""

    def __init__(self, input_dim: int, num_users: int, *,
                 head: Literal["lowrank", "mlp"] = "lowrank", rank: int = 8,
                 population_term: bool = True, mlp_hidden: int = 64,
                 dropout: float = 0.0, base_hidden: int = 0) -> None:
        super().__init__()
        if num_users < 1:
            raise ValueError(f"a reward head needs at least one user, got num_users={num_users}")
        if head not in ("lowrank", "mlp"):
            raise ValueError(f"model.head must be 'lowrank' or 'mlp', got {head!r}")
        if input_dim < 1 or rank < 1:
            raise ValueError(f"input_dim and rank must be >= 1, got {input_dim} and {rank}")
        if base_hidden < 0 or (base_hidden and head != "lowrank"):
            raise ValueError(f"base_hidden must be >= 0, and > 0 only with the lowrank head; got "
                             f"{base_hidden} with {head!r}")
        self.head = head
        self.input_dim = input_dim
        self.num_users = num_users
        self.rank = rank
        self.population_term = population_term and head == "lowrank"
        self.dropout = nn.Dropout(dropout)
        self.user_embedding = nn.Embedding(num_users, rank)
        self.base_hidden = base_hidden
        if head == "lowrank" and base_hidden:
            # b = W·gelu(A·(φ − μ)/σ + a): K base rewards over one fitted GELU layer. μ, σ are
            # buffers (saved with the model), set from the embedding cache by fit_feature_scale.
            out = nn.Linear(base_hidden, rank, bias=False)
            nn.init.normal_(out.weight, std=1.0 / math.sqrt(base_hidden))
            self.base = nn.Sequential(
                FeatureAdapter(torch.zeros(input_dim), torch.ones(input_dim), base_hidden), out)
        elif head == "lowrank":
            self.base = nn.Linear(input_dim, rank, bias=False)  # W: [K, D]
            # std 1/sqrt(D): each base reward b_k has about the scale of φ's entries.
            nn.init.normal_(self.base.weight, std=1.0 / math.sqrt(input_dim))
        if head == "lowrank":
            if self.population_term:
                # g ~ N(0, 1/K): |g| ≈ 1 so r = g·b starts at the scale of b, and a random
                # (not constant) g keeps the K base rewards from receiving identical updates.
                self.population = nn.Parameter(torch.randn(rank) / math.sqrt(rank))
                # Offsets start near 0: every user starts at the population.
                nn.init.normal_(self.user_embedding.weight, std=0.02)
            else:
                self.register_parameter("population", None)
                # No population to fall back on: |e_u| ≈ 1 so rewards start at the scale of b.
                nn.init.normal_(self.user_embedding.weight, std=1.0 / math.sqrt(rank))
        else:
            self.register_parameter("population", None)
            self.mlp = nn.Sequential(
                nn.Linear(input_dim + rank, mlp_hidden), nn.GELU(),
                nn.Linear(mlp_hidden, 1, bias=False))
            # Users start near 0 (the shrinkage target); layers Xavier so the output starts O(1).
            nn.init.normal_(self.user_embedding.weight, std=0.02)
            nn.init.xavier_normal_(self.mlp[0].weight)
            nn.init.zeros_(self.mlp[0].bias)
            nn.init.xavier_normal_(self.mlp[2].weight)

    def user_vectors(self, user_index: torch.Tensor) -> torch.Tensor:
        """``user_index [B]`` long -> ``e_u [B, K]``; index −1 gets the mean of all user embeddings."""
        if user_index.dtype != torch.long:
            raise TypeError(f"user_index must be a LongTensor, got {user_index.dtype}")
        if user_index.numel() and int(user_index.min()) < -1:
            raise ValueError("user_index holds values below -1 (only -1 means unknown)")
        known = self.user_embedding(user_index.clamp(min=0))  # [B, K]
        unknown = (user_index < 0).unsqueeze(-1)  # [B, 1]
        if not bool(unknown.any()):  # training rows: the mean over all U users is not needed
            return known
        table = self.user_embedding.weight  # [U, K]
        return torch.where(unknown, table.mean(dim=0).expand_as(known), known)

    def forward(self, phi: torch.Tensor, user_index: torch.Tensor,
                user_only: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``phi [B, D]``, ``user_index [B]`` -> rewards ``[B]``.

        ``user_only [B]`` bool: on these rows the reward is the same, but its gradient reaches
        the user embeddings only (W, g and the MLP are held fixed there). Distillation on
        unlabelled comparisons uses it, so that a group teacher's view moves its users'
        offsets without dragging the shared population (DESIGN §6 lever; BENCHMARKS.md).
        """
        if phi.dim() != 2 or phi.shape[1] != self.input_dim:
            raise ValueError(f"phi must be [batch, {self.input_dim}], got {list(phi.shape)}")
        if user_index.shape != phi.shape[:1]:
            raise ValueError(f"user_index must be [{phi.shape[0]}], got {list(user_index.shape)}")
        if user_only is not None and not bool(user_only.any()):
            user_only = None
        phi = self.dropout(phi)
        users = self.user_vectors(user_index)  # [B, K]
        if self.head == "mlp":
            out = self.mlp(torch.cat([phi, users], dim=-1)).squeeze(-1)
            if user_only is None:
                return out
            fixed = {name: p.detach() for name, p in self.mlp.named_parameters()}
            held = torch.func.functional_call(self.mlp, fixed,
                                              (torch.cat([phi.detach(), users], dim=-1),))
            return torch.where(user_only, held.squeeze(-1), out)
        base = self.base(phi)  # b: [B, K]
        population = self.population
        if user_only is not None:
            rows = user_only.unsqueeze(-1)
            base = torch.where(rows, base.detach(), base)
            if population is not None:
                population = torch.where(rows, population.detach(), population)
        weights = users + population if population is not None else users
        return (weights * base).sum(dim=-1)

    def score_vectors(self, phi: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Rewards ``[B]`` of ``phi [B, D]`` for explicit user offsets ``users [B, K]`` (rows of
        no table: the cold start scores candidate group vectors and fits new offsets with it)."""
        if users.shape != (phi.shape[0], self.rank):
            raise ValueError(f"users must be [{phi.shape[0]}, {self.rank}], got {list(users.shape)}")
        if self.head == "mlp":
            return self.mlp(torch.cat([phi, users], dim=-1)).squeeze(-1)
        weights = users + self.population if self.population is not None else users
        return (weights * self.base(phi)).sum(dim=-1)

    def fit_feature_scale(self, vectors: torch.Tensor) -> None:
        """Standardize φ per feature with ``vectors``' mean and std (the embedding cache: texts,
        never labels) before the base's GELU layer; nothing to do for a linear base."""
        if not self.base_hidden:
            return
        adapter = self.base[0]
        with torch.no_grad():
            adapter.mean.copy_(vectors.float().mean(dim=0))
            adapter.std.copy_(vectors.float().std(dim=0).clamp(min=1e-6))

    def user_penalty(self, user_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean over users of ``||e_u||²`` (scalar); the trainer multiplies by ``user_shrinkage``.
        ``user_index [B]``: the mean over these rows' users instead (a row of an unknown user,
        −1, adds 0), whose gradient reaches only those users (``train.user_updates=sparse``)."""
        if user_index is None:
            return self.user_embedding.weight.pow(2).sum(dim=-1).mean()
        known = user_index >= 0
        norms = self.user_embedding(user_index.clamp(min=0)).pow(2).sum(dim=-1)
        return (norms * known).sum() / max(1, user_index.numel())
