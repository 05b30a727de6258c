"""User groups by a mixture of population reward vectors (``groups.method=mixture``).

With few raters per comparison a user's mean support rate is a noisy signal: with 2 raters a
row's support says only whether the one co-rater agreed. The features carry more: under the
population model ``r = g · Wφ`` of a lowrank head, every training row of user ``u`` has a
base-reward difference ``x = W(φ_chosen − φ_rejected)`` ``[K]``, and a group's population
vector ``g_k`` predicts the label with ``σ(g_k · x)``. Starting from the support groups, each
round fits ``g_k`` on the rows of group ``k``'s users (ridge logistic regression, Newton) and
moves every user to the group whose population explains its labels best. The fit has K
parameters per group, so a user's own rows barely move it (no per-user overfitting).

With two groups the sizes are kept: the users with the largest log-likelihood ratio
``Σ_rows log σ(g_min·x) − log σ(g_maj·x)`` form the lowest-support group, as many as the
support quantile put there. With more groups each user takes the group of highest likelihood.
Users without training rows keep the group they had. Everything here is plain torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def fit_population(x: torch.Tensor, l2: float, init: torch.Tensor | None = None,
                   steps: int = 25) -> torch.Tensor:
    """Ridge logistic regression without intercept for labels that are all "chosen wins".

    Minimises ``f(g) = mean_i −log σ(g · x_i) + l2 · ||g||²`` over ``g`` ``[K]`` by Newton's
    method (f is strictly convex for ``l2 > 0``): ``∇f = −mean((1 − σ_i) x_i) + 2 l2 g``,
    ``∇²f = mean(σ_i (1 − σ_i) x_i x_iᵀ) + 2 l2 I``, with step halving so f never rises.

    Args:
        x: ``[n, K]`` base-reward differences (chosen − rejected) of the rows.
        l2: ridge weight, > 0.
        init: ``[K]`` start (default 0).
    Returns:
        ``[K]`` float64.
    """
    if l2 <= 0:
        raise ValueError(f"groups.l2 must be > 0, got {l2}")
    x = x.to(torch.float64)
    k = x.shape[1]
    g = torch.zeros(k, dtype=torch.float64) if init is None else init.to(torch.float64).clone()
    if x.shape[0] == 0:
        return torch.zeros(k, dtype=torch.float64)

    def objective(v):
        return -F.logsigmoid(x @ v).mean() + l2 * v.dot(v)

    value = objective(g)
    eye = torch.eye(k, dtype=torch.float64)
    for _ in range(steps):
        p = torch.sigmoid(x @ g)
        grad = -((1 - p)[:, None] * x).mean(0) + 2 * l2 * g
        if float(grad.abs().max()) < 1e-10:
            break
        hess = (x.T * (p * (1 - p))) @ x / x.shape[0] + 2 * l2 * eye
        step = torch.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            candidate = g - scale * step
            new_value = objective(candidate)
            if new_value <= value:
                g, value = candidate, new_value
                break
            scale /= 2
        else:
            break
    return g


@dataclass
class MixtureResult:
    groups: torch.Tensor      # [U] long, 0 = lowest support
    score: torch.Tensor       # [U] log-likelihood of own group minus the best other (NaN: no rows)
    populations: torch.Tensor  # [G, K] the last round's population vectors
    moved: list               # users that changed group, per round


def mixture_groups(x: torch.Tensor, user_index: torch.Tensor, initial: torch.Tensor, *,
                   iterations: int = 2, l2: float = 1e-3,
                   keep_sizes: bool = True) -> MixtureResult:
    """Refine user groups by the population vector that explains each user's labels.

    Args:
        x: ``[n, K]`` base-reward differences of the training rows.
        user_index: ``[n]`` long in ``[0, U)``: the user of each row.
        initial: ``[U]`` long in ``[0, G)``: the starting groups (prepare's support groups).
        iterations: refit-and-reassign rounds (0 keeps ``initial``).
        keep_sizes: with two groups, keep each group's number of users (users with rows).
    Returns:
        :class:`MixtureResult`.
    """
    num_users = initial.shape[0]
    num_groups = int(initial.max()) + 1 if num_users else 1
    if user_index.numel() and (int(user_index.min()) < 0 or int(user_index.max()) >= num_users):
        raise ValueError("user_index must lie in [0, number of users)")
    groups = initial.clone().long()
    has_rows = torch.bincount(user_index, minlength=num_users) > 0
    x = x.to(torch.float64)
    populations = torch.zeros(num_groups, x.shape[1], dtype=torch.float64)
    loglik = torch.zeros(num_users, num_groups, dtype=torch.float64)
    moved = []
    for _ in range(iterations):
        row_group = groups[user_index]
        for k in range(num_groups):
            populations[k] = fit_population(x[row_group == k], l2, init=populations[k])
        per_row = F.logsigmoid(x @ populations.T)  # [n, G]
        loglik = torch.zeros(num_users, num_groups, dtype=torch.float64).index_add_(
            0, user_index, per_row)
        if num_groups == 2 and keep_sizes:
            new = _keep_sizes(loglik[:, 0] - loglik[:, 1], groups, has_rows)
        else:
            new = torch.where(has_rows, loglik.argmax(dim=1), groups)
        moved.append(int((new != groups).sum()))
        groups = new
    own = loglik.gather(1, groups[:, None]).squeeze(1)
    other = loglik.clone()
    other.scatter_(1, groups[:, None], float("-inf"))
    score = torch.where(has_rows, own - other.max(dim=1).values, torch.tensor(float("nan"),
                        dtype=torch.float64)) if num_groups > 1 else torch.zeros(num_users)
    return MixtureResult(groups, score, populations, moved)


def _keep_sizes(ratio: torch.Tensor, groups: torch.Tensor, has_rows: torch.Tensor) -> torch.Tensor:
    """Two groups: the ``n_0`` users with rows and the largest ``ratio`` become group 0, where
    ``n_0`` is how many users with rows group 0 had; ties broken by user index."""
    size = int(((groups == 0) & has_rows).sum())
    candidates = torch.nonzero(has_rows).squeeze(1)
    order = torch.argsort(-ratio[candidates], stable=True)
    new = torch.where(has_rows, torch.ones_like(groups), groups)
    new[candidates[order[:size]]] = 0
    return new
