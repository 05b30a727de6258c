"""Fair cold start: place a new user in a group from a few answered comparisons, start from that
group's vector, and fit only the user's offset (DESIGN §8).

The student has no group input, but it knows each trained user's final group (the groups stage's
mixture; ``user_groups.json`` in its folder). A group's vector ``v_k`` is the offset that makes
``r = (g + v_k) · Wφ`` the group's population in the student's own basis: the distill stage fits
``g + v_k`` by ridge logistic regression (pafo_ray.grouping.fit_population, the mixture's
population fit) on the training comparisons of group k's users, through the student's W, and
saves it (``group_vectors.json``; :func:`fit_group_vectors`). A model without that file falls
back to the mean user offset of each group's users (worse on builtin-80: BENCHMARKS.md). With
comparisons ``(φ_chosen_i, φ_rejected_i)`` a new user is placed by the mixture's posterior

    p(k | answers) ∝ π_k · Π_i σ(r_k(chosen_i) − r_k(rejected_i)),   π_k = the group's user share
                                                                     (``prior="flat"``: 1/G),

starts from ``v_k`` of the most probable group, and fits ``e = v_k + δ`` by Bradley–Terry on
its answers with ``shrinkage · ||δ||²`` (the head held fixed). Where validation found a better
start for a group than ``v_k`` (the shared population, or the mean user: the group's seen
users scored with each start alone, a one-SE rule; :func:`choose_group_starts`, saved by the
distill stage as ``group_starts.json``), a user placed there starts from that instead. ``place="population"`` starts
from offset 0 and ``"mean"`` from the mean user (the fallbacks it is compared with).

Active choice (:func:`choose_next`): from a pool of comparisons the user could be asked, the one
on which the groups disagree most under the current posterior (the posterior-weighted variance
of the groups' win probabilities), asked one at a time; pafo_ray.active.ActiveSession drives it
for a real user (ask, record the answer, place).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pafo_ray.grouping import ridge_newton
from pafo_ray.metrics import accuracy_se

PLACES = ("group", "population", "mean")
# The placement prior π_k: "share" = each group's share of the trained users (the mixture's
# own prior), "flat" = 1/G (the group sizes do not count against a small group's members).
PRIORS = ("share", "flat")
# The pull of a new user's offset towards its start. Chosen on builtin-80 seed 0 (grid 0.1, 1,
# 3, 10, 30: minority-type accuracy after 5 answers rose to 3 and stayed flat above it);
# reported on another seed in BENCHMARKS.md.
DEFAULT_SHRINKAGE = 3.0
GROUP_L2 = 1e-3  # the ridge of the group population fits (groups.l2's default)


@dataclass
class Placement:
    place: str
    group: str | None                # the chosen group (place="group")
    posterior: dict = field(default_factory=dict)  # group -> probability
    start: torch.Tensor | None = None  # [K] the offset the fit started from
    vector: torch.Tensor | None = None  # [K] the fitted offset


def group_vectors(model) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(group names, ``[G, K]`` start offset per group, ``[G]`` share of users).

    The fitted group populations (``model.group_vectors``, from :func:`fit_group_vectors`) when
    the model has them, else each group's mean user offset."""
    if not model.user_groups:
        raise ValueError("this model has no user groups (user_groups.json): save it from a run's "
                         "distill stage, or call model.set_user_groups({user: group})")
    stored = getattr(model, "group_vectors", None)
    if stored:
        names = sorted(stored)
        vectors = torch.tensor([stored[g] for g in names], dtype=torch.float32)
        counts = torch.tensor([sum(1 for gu in model.user_groups.values() if gu == g)
                               for g in names], dtype=torch.float64)
        return names, vectors, counts.clamp(min=1) / counts.clamp(min=1).sum()
    names = sorted(set(model.user_groups.values()))
    table = model.head.user_embedding.weight.detach()
    rows = {g: [model._rows[u] for u, gu in model.user_groups.items() if gu == g] for g in names}
    vectors = torch.stack([table[rows[g]].mean(dim=0) for g in names])
    counts = torch.tensor([len(rows[g]) for g in names], dtype=torch.float64)
    return names, vectors, counts / counts.sum()


@torch.no_grad()
def fit_group_vectors(model, phi_chosen: torch.Tensor, phi_rejected: torch.Tensor,
                      row_groups, l2: float = GROUP_L2) -> dict:
    """``{group: [K] offset}``: per group, ``fit_population`` of the base differences
    ``W(φ_chosen − φ_rejected)`` of its users' training rows, minus ``g`` (so it is an offset
    in the user table's sense). Lowrank heads only (an mlp head has no linear population);
    groups without rows are left out (they fall back to nothing: not a start)."""
    from pafo_ray.grouping import fit_population

    head = model.head
    if head.head != "lowrank":
        return {}
    x = head.base(phi_chosen.float()) - head.base(phi_rejected.float())
    g = head.population.detach() if head.population is not None else torch.zeros(head.rank)
    row_groups = np.asarray(row_groups, dtype=object)
    out = {}
    for name in sorted({g for g in row_groups.tolist() if isinstance(g, str)}):
        rows = torch.from_numpy(row_groups == name)
        if bool(rows.any()):
            out[str(name)] = (fit_population(x[rows], l2).float() - g).tolist()
    return out


# Candidates for a group's start, the group's own vector first (kept unless beaten).
START_CANDIDATES = ("group", "shared", "mean_user")


@torch.no_grad()
def choose_group_starts(model, phi_chosen: torch.Tensor, phi_rejected: torch.Tensor,
                        row_groups, row_users=None, min_rows: int = 50) -> dict:
    """Per group, where a new user placed in it starts, chosen on validation comparisons of
    the group's (seen) users scored with each candidate alone — the cold start before any
    answer: ``"group"`` (its fitted population, :func:`group_vectors`), ``"shared"`` (offset 0,
    the student's shared population ``g``) or ``"mean_user"`` (the mean user offset). The
    group's vector is kept unless another candidate's validation accuracy beats it by more
    than one standard error of that accuracy (a one-SE rule: the pick of three noisy points
    otherwise; clustered by user when ``row_users`` gives each row's user, as a user's rows
    are not independent: :func:`pafo_ray.metrics.accuracy_se`) or the group has fewer than
    ``min_rows`` validation rows.

    Returns ``{group: {"source", "start" [K], "val_accuracy" {candidate: acc}, "val_rows"}}``.
    """
    names, vectors, _ = group_vectors(model)
    table = model.head.user_embedding.weight.detach()
    candidates = {"shared": torch.zeros(table.shape[1]), "mean_user": table.mean(dim=0)}
    row_groups = np.asarray(row_groups, dtype=object)
    out = {}
    for name, vector in zip(names, vectors):
        rows = torch.from_numpy(row_groups == name)
        n = int(rows.sum())
        starts = {"group": vector, **candidates}
        accuracy = {}
        if n:
            margins = group_margins(model, phi_chosen[rows].float(), phi_rejected[rows].float(),
                                    torch.stack([starts[c] for c in START_CANDIDATES]))
            accuracy = {c: float((margins[:, i] > 0).double().mean())
                        for i, c in enumerate(START_CANDIDATES)}
        source = "group"
        if n >= min_rows:
            hits = (margins[:, 0] > 0).numpy()
            se = accuracy_se(hits, None if row_users is None
                             else np.asarray(row_users, dtype=object)[rows.numpy()])
            best = max(START_CANDIDATES, key=lambda c: accuracy[c])
            if accuracy[best] > accuracy["group"] + se:
                source = best
        out[name] = {"source": source, "start": starts[source].tolist(),
                     "val_accuracy": accuracy, "val_rows": n,
                     "se": se if n >= min_rows else None}
    return out


def group_start(model, names: list, vectors: torch.Tensor, index: int) -> torch.Tensor:
    """Where a user placed in group ``names[index]`` starts: the start validation chose
    (``model.group_starts``, :func:`choose_group_starts`) or the group's vector."""
    stored = getattr(model, "group_starts", None) or {}
    start = stored.get(names[index])
    return vectors[index] if start is None else torch.tensor(start, dtype=torch.float32)


@torch.no_grad()
def group_margins(model, phi_chosen: torch.Tensor, phi_rejected: torch.Tensor,
                  vectors: torch.Tensor) -> torch.Tensor:
    """``[n, G]``: each group vector's margin chosen − rejected on each comparison."""
    head = model.head
    n, groups = phi_chosen.shape[0], vectors.shape[0]
    users = vectors.repeat(n, 1)                       # [n*G, K]
    chosen = phi_chosen.repeat_interleave(groups, 0)   # [n*G, D]
    rejected = phi_rejected.repeat_interleave(groups, 0)
    margin = head.score_vectors(chosen, users) - head.score_vectors(rejected, users)
    return margin.reshape(n, groups).double()


def placement_prior(prior: torch.Tensor, kind: str = "share") -> torch.Tensor:
    """``[G]`` π for :func:`posterior`: ``prior`` (the groups' user shares) or flat."""
    if kind not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {kind!r}")
    return prior if kind == "share" else torch.full_like(prior, 1.0 / prior.numel())


def posterior(margins: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``[G]`` p(group | answers) from ``margins [n, G]`` of the answered comparisons."""
    log = prior.log() + F.logsigmoid(margins).sum(dim=0)
    return torch.softmax(log, dim=0)


def choose_next(margins: torch.Tensor, post: torch.Tensor, asked: set) -> int:
    """The pool comparison (not yet asked) whose answer the groups disagree on most."""
    p = torch.sigmoid(margins)                       # [n, G]
    mean = (p * post).sum(dim=1, keepdim=True)
    spread = ((p - mean) ** 2 * post).sum(dim=1)     # posterior-weighted variance
    if asked:
        spread[list(asked)] = -1.0
    return int(spread.argmax())


def fit_offset(model, phi_chosen: torch.Tensor, phi_rejected: torch.Tensor, start: torch.Tensor,
               shrinkage: float = DEFAULT_SHRINKAGE, steps: int = 50) -> torch.Tensor:
    """``[K]`` offset ``e = start + δ`` minimising ``Σ −log σ(m_e) + shrinkage·||δ||²`` (head fixed)."""
    start = start.detach().float()
    if phi_chosen.shape[0] == 0:
        return start.clone()
    if model.head.head == "lowrank":
        with torch.no_grad():
            x = model.head.base(phi_chosen) - model.head.base(phi_rejected)  # [n, K]
        weight = start + (model.head.population.detach() if model.head.population is not None
                          else 0.0)
        return start + newton_offset(x, weight, shrinkage, steps).float()
    delta = torch.zeros_like(start, requires_grad=True)
    optimizer = torch.optim.LBFGS([delta], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    head = model.head
    was_training = head.training
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    n = phi_chosen.shape[0]

    def closure():
        optimizer.zero_grad()
        users = (start + delta).expand(n, -1)
        margin = head.score_vectors(phi_chosen, users) - head.score_vectors(phi_rejected, users)
        loss = -F.logsigmoid(margin).sum() + shrinkage * delta.pow(2).sum()
        loss.backward()
        return loss

    try:
        optimizer.step(closure)
    finally:
        for p in head.parameters():
            p.requires_grad_(True)
        head.train(was_training)
    return (start + delta).detach()


def newton_offset(x: torch.Tensor, weight: torch.Tensor, shrinkage: float,
                  steps: int = 50) -> torch.Tensor:
    """``[K]`` δ minimising ``f(δ) = Σ_i −log σ((w + δ)·x_i) + shrinkage·||δ||²``: a lowrank
    head's margin is linear in the user's weights, so the fit is a ridge logistic regression
    in K dimensions (Newton with step halving; strictly convex for shrinkage > 0).
    ``∇f = −Σ (1 − σ_i) x_i + 2sδ``, ``∇²f = Σ σ_i(1 − σ_i) x_i x_iᵀ + 2sI``."""
    if shrinkage <= 0:
        raise ValueError(f"shrinkage must be > 0, got {shrinkage}")
    x = x.detach().double()
    return ridge_newton(x, torch.ones(x.shape[0], dtype=torch.float64), weight.detach(),
                        torch.zeros(x.shape[1], dtype=torch.float64), shrinkage, steps, tol=1e-9)


def place_user(model, phi_chosen, phi_rejected, *, place: str = "group",
               shrinkage: float = DEFAULT_SHRINKAGE, prior: str = "share") -> Placement:
    """Where a new user starts and the offset fitted to its answers (no table change).
    ``prior``: the placement prior (:data:`PRIORS`)."""
    if place not in PLACES:
        raise ValueError(f"place must be one of {PLACES}, got {place!r}")
    placement_prior(torch.ones(1), prior)  # a bad prior is an error whatever the place
    phi_chosen = torch.as_tensor(np.asarray(phi_chosen, dtype=np.float32))
    phi_rejected = torch.as_tensor(np.asarray(phi_rejected, dtype=np.float32))
    table = model.head.user_embedding.weight.detach()
    if place == "group":
        names, vectors, shares = group_vectors(model)
        post = posterior(group_margins(model, phi_chosen, phi_rejected, vectors),
                         placement_prior(shares, prior))
        # An exact tie (a flat prior and no answers yet) goes to the larger group, not to
        # whichever name sorts first.
        best = max(range(len(names)), key=lambda i: (float(post[i]), float(shares[i])))
        result = Placement(place, names[best], dict(zip(names, post.tolist())),
                           group_start(model, names, vectors, best))
    elif place == "population":
        result = Placement(place, None, start=torch.zeros(table.shape[1]))
    else:
        result = Placement(place, None, start=table.mean(dim=0))
    result.vector = fit_offset(model, phi_chosen, phi_rejected, result.start, shrinkage)
    return result


def fit_user(model, user_id: str, prompts, chosen, rejected, *, embeddings=None,
             place: str = "group", shrinkage: float = DEFAULT_SHRINKAGE,
             prior: str = "share") -> Placement:
    """Add ``user_id`` to ``model`` from its answered comparisons (see the module doc).

    ``embeddings``: optional ``(φ_chosen [n, D], φ_rejected [n, D])``, else the backbone embeds
    the texts. After the call ``model.score(user_id, ...)`` uses the fitted offset.
    """
    if embeddings is None:
        phi_c = model.embed_texts(prompts, chosen).cpu()
        phi_r = model.embed_texts(prompts, rejected).cpu()
    else:
        phi_c, phi_r = embeddings
    result = place_user(model, phi_c, phi_r, place=place, shrinkage=shrinkage, prior=prior)
    model.add_user(user_id, result.vector)
    if result.group is not None:
        model.user_groups[str(user_id)] = result.group
    return result
