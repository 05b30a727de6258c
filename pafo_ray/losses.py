"""Losses of the student, the teachers and the baselines: small pure functions over margins.

A *margin* is ``r(chosen) − r(rejected)``, shape ``[batch]``. Every per-row loss returns
``[batch]``; the reductions (:func:`weighted_mean`, :class:`GroupDRO`, :class:`FaroConstraint`,
:func:`fairness_penalty_loss`) turn it into a scalar. Nothing here knows about Ray or models.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DistillKind = Literal["mse", "kl"]


def bradley_terry_loss(margin: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood of the label, per row.

    ``BT(m) = −log σ(m) = log(1 + e^{−m})``, computed with ``logsigmoid`` so that it is
    finite (≈ |m| for m ≪ 0, ≈ 0 for m ≫ 0) and has finite gradients for any |m|.
    With ``offset`` (a dataset's ``margin`` column, ``train.use_margin``): ``BT(m − offset)``,
    as TRL's RewardTrainer and OpenRLHF's PairWiseLoss use it — the chosen response must win
    by at least that much before the loss flattens.

    Args:
        margin: ``[batch]`` r(chosen) − r(rejected).
        offset: ``[batch]`` or None (0).
    Returns:
        ``[batch]``.
    """
    if offset is not None:
        margin = margin - offset
    return -F.logsigmoid(margin)


def margin_mse(
    student_margin: torch.Tensor, teacher_margin: torch.Tensor, clip: float | None = None
) -> torch.Tensor:
    """Squared difference of (clipped) margins, per row.

    ``D(s, t) = (clip(s) − clip(t))²`` with ``clip(x) = min(max(x, −c), c)``; ``clip=None``
    leaves margins as they are. Clipping zeroes the gradient wherever ``|s| > c``: a student
    margin already beyond the range is not pulled back by this term (only by the BT term).

    Args:
        student_margin, teacher_margin: ``[batch]``.
        clip: ``c > 0`` or None.
    Returns:
        ``[batch]``.
    """
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        student_margin = student_margin.clamp(-clip, clip)
        teacher_margin = teacher_margin.clamp(-clip, clip)
    return (student_margin - teacher_margin) ** 2


def bernoulli_kl(
    student_margin: torch.Tensor, teacher_margin: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Temperature-scaled KL between the teacher's and the student's preference Bernoullis.

    With ``p = σ(t/T)`` and ``q = σ(s/T)``:
    ``D = T² · [p (log p − log q) + (1 − p)(log(1 − p) − log(1 − q))]``,
    all logs through ``logsigmoid`` (``log(1 − σ(x)) = logsigmoid(−x)``). ``D ≥ 0``, zero iff
    ``s = t``; ``∂D/∂s = T (q − p)``, so ``T²`` keeps the gradient scale comparable across T
    (Hinton et al. 2015).

    Args:
        student_margin, teacher_margin: ``[batch]``.
        temperature: ``T > 0``.
    Returns:
        ``[batch]``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = student_margin / temperature
    t = teacher_margin / temperature
    log_p, log_not_p = F.logsigmoid(t), F.logsigmoid(-t)
    log_q, log_not_q = F.logsigmoid(s), F.logsigmoid(-s)
    p = torch.sigmoid(t)
    kl = p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)
    return temperature**2 * kl


def distill_loss(
    student_margin: torch.Tensor,
    teacher_margin: torch.Tensor,
    kind: DistillKind = "mse",
    temperature: float = 1.0,
    clip: float | None = None,
) -> torch.Tensor:
    """Distillation distance ``D(s, t)`` per row: :func:`margin_mse` or :func:`bernoulli_kl`.

    Returns ``[batch]``. ``clip`` applies to ``"mse"`` only, ``temperature`` to ``"kl"`` only.
    """
    if kind == "mse":
        return margin_mse(student_margin, teacher_margin, clip)
    if kind == "kl":
        return bernoulli_kl(student_margin, teacher_margin, temperature)
    raise ValueError(f"distillation kind must be 'mse' or 'kl', got {kind!r}")


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i v_i / Σ_i w_i`` over ``[batch]`` values and weights; a scalar."""
    total = weights.sum()
    if total == 0:
        raise ValueError(
            "weighted_mean: the weights sum to 0 — every row of the batch has weight 0; "
            "check the group weights (e.g. minority_weight) and that the batch is not empty")
    return (weights * values).sum() / total


def pafo_student_loss(
    student_margin: torch.Tensor,
    teacher_margin: torch.Tensor,
    row_weight: torch.Tensor | None,
    distill_mask: torch.Tensor,
    lam: float,
    kind: DistillKind = "mse",
    temperature: float = 1.0,
    clip: float | None = None,
    label_mask: torch.Tensor | None = None,
    label_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PAFO student objective on one batch.

    ``L = Σ_i w_i [l_i · BT(s_i) + λ · mask_i · D(s_i, t_i)] / Σ_i w_i``
    ``  = bt + λ · distill`` with ``bt = Σ w l BT / Σ w`` and ``distill = Σ w mask D / Σ w``.
    ``l_i`` (``label_mask``, default all 1) is 0 on unlabelled comparisons: rows that exist only
    to carry a teacher's margin, with no label for the BT term. With every row labelled this is
    the objective of DESIGN §2.

    ``teacher_margin`` may be NaN where ``mask_i = 0`` (rows without a teacher): those
    entries are replaced by the detached student margin before ``D`` is computed, so neither
    the loss nor its gradient sees the NaN (``0 · NaN`` would be NaN in both).

    Args:
        student_margin: ``[batch]``, with grad.
        teacher_margin: ``[batch]``, NaN allowed where the mask is 0.
        row_weight: ``[batch]`` group weight ``w_{g(i)}``; None: all 1.
        distill_mask: ``[batch]`` bool (or 0/1) — rows that receive the distillation term.
        lam: ``λ ≥ 0``.
        kind, temperature, clip: see :func:`distill_loss`.
        label_mask: ``[batch]`` 0/1, rows that carry a label (None: all).
        label_offset: ``[batch]`` the data's margin for the BT term only (None: 0).
    Returns:
        ``(loss, metrics)``: a scalar with grad, and detached floats ``loss``, ``bt``,
        ``distill``, ``distill_fraction`` (share of rows masked in) and ``accuracy``
        (share of rows with student margin > 0; ties are not correct).
    """
    mask = distill_mask.to(torch.bool)
    if row_weight is None:
        row_weight = torch.ones_like(student_margin)
    # A host sync per step, worth it: a NaN target would silently poison the student.
    bad_teacher = mask & ~torch.isfinite(teacher_margin)
    if bad_teacher.any():
        raise ValueError(
            f"pafo_student_loss: {int(bad_teacher.sum())} rows have distill_mask set but a "
            "non-finite teacher_margin; check the margins stage output for these rows")
    safe_teacher = torch.where(mask, teacher_margin, student_margin.detach())
    distance = distill_loss(student_margin, safe_teacher, kind, temperature, clip)
    distance = torch.where(mask, distance, torch.zeros_like(distance))
    bt_per_row = bradley_terry_loss(student_margin, label_offset)
    if label_mask is not None:
        bt_per_row = torch.where(label_mask.to(torch.bool), bt_per_row, torch.zeros_like(bt_per_row))
    bt = weighted_mean(bt_per_row, row_weight)
    distill = weighted_mean(distance, row_weight)
    loss = bt + lam * distill
    metrics = {
        "loss": loss.item(),
        "bt": bt.item(),
        "distill": distill.item(),
        "distill_fraction": mask.float().mean().item(),
        "accuracy": ((student_margin.detach() > 0).float().mean().item() if label_mask is None
                     else (student_margin.detach()[label_mask.to(torch.bool)] > 0)
                     .float().mean().nan_to_num(0.0).item()),
    }
    return loss, metrics


def inverse_frequency_weights(group_index: torch.Tensor, num_groups: int,
                              power: float = 1.0) -> torch.Tensor:
    """Per-group weights ``w_g ∝ n_g^{-p}``, scaled so that the mean row weight is 1.

    ``w_g = N · n_g^{-p} / Σ_h n_h^{1-p}`` over the groups that have rows, so
    ``Σ_g n_g w_g / N = 1``: ``p = 1`` gives ``N / (G' · n_g)`` (inverse frequency, ``G'`` groups
    with rows), ``p = 0`` gives 1 for every row (vanilla). A group with no rows gets weight 0.

    Args:
        group_index: ``[N]`` long in ``[0, num_groups)``.
        power: ``p ≥ 0``.
    Returns:
        ``[num_groups]`` float.
    """
    if power < 0:
        raise ValueError(f"reweight power must be >= 0, got {power}")
    counts = torch.bincount(group_index, minlength=num_groups).to(torch.float64)
    if counts.numel() > num_groups:
        raise ValueError(f"group_index holds values >= num_groups={num_groups}")
    present = counts > 0
    if not present.any():
        raise ValueError("inverse_frequency_weights: no rows (group_index is empty)")
    weights = torch.zeros(num_groups, dtype=torch.float64)
    n = counts[present]
    weights[present] = counts.sum() * n.pow(-power) / n.pow(1 - power).sum()
    return weights.to(torch.get_default_dtype())


def group_mean_losses(
    per_row_loss: torch.Tensor, group_index: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss per group: ``L_g = Σ_{i∈g} ℓ_i / n_g``.

    Returns ``(L [num_groups], present [num_groups] bool)``; ``L_g = 0`` where ``n_g = 0``.
    """
    sums = per_row_loss.new_zeros(num_groups).index_add(0, group_index, per_row_loss)
    counts = torch.bincount(group_index, minlength=num_groups).to(per_row_loss.dtype)
    present = counts > 0
    return sums / counts.clamp(min=1), present


class GroupDRO(nn.Module):
    """Online group DRO (Sagawa et al. 2020, Algorithm 1).

    Holds adversary weights ``q`` (buffer ``[num_groups]``, uniform at start). On each batch,
    with ``L_g`` the mean loss of group ``g`` over its rows in the batch (groups present only):

    ``q_g ← q_g · exp(η · L_g)`` (detached), ``q ← q / Σ q``, then
    ``loss = Σ_{g present} q_g L_g / Σ_{g present} q_g``.

    ``q`` moves only in training mode; ``eval()`` freezes it. ``q`` is a buffer, so it is
    saved and restored with the module's ``state_dict`` (resumed runs keep the adversary).
    """

    def __init__(self, num_groups: int, step_size: float = 0.01) -> None:
        super().__init__()
        if num_groups < 1 or step_size < 0:
            raise ValueError(f"GroupDRO needs num_groups >= 1 and step_size >= 0, got "
                             f"{num_groups}, {step_size}")
        self.num_groups = num_groups
        self.step_size = step_size
        self.register_buffer("q", torch.full((num_groups,), 1.0 / num_groups))

    def forward(self, per_row_loss: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
        """``per_row_loss`` ``[batch]``, ``group_index`` ``[batch]`` long → scalar."""
        group_loss, present = group_mean_losses(per_row_loss, group_index, self.num_groups)
        if self.training:
            # In log space: exp(η L) can overflow for large losses; softmax renormalises.
            step = torch.where(present, self.step_size * group_loss.detach(),
                               torch.zeros_like(group_loss))
            log_q = torch.log(self.q.to(group_loss.dtype)) + step
            self.q.copy_(torch.softmax(log_q, dim=0))
        q = torch.where(present, self.q.to(group_loss.dtype), torch.zeros_like(group_loss))
        return (q * group_loss).sum() / q.sum()

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, step_size={self.step_size}"


def fairness_penalty_loss(
    per_row_loss: torch.Tensor, group_index: torch.Tensor, num_groups: int, alpha: float
) -> torch.Tensor:
    """Faro-style loss: the mean loss plus a penalty on the spread of group losses.

    ``loss = mean_i ℓ_i + α · (max_g L_g − min_g L_g)`` over the groups present in the batch
    (``L_g`` as in :func:`group_mean_losses`); the penalty is 0 when one group is present.

    Args:
        per_row_loss: ``[batch]``; group_index: ``[batch]`` long; alpha: ``α ≥ 0``.
    Returns:
        A scalar.
    """
    group_loss, present = group_mean_losses(per_row_loss, group_index, num_groups)
    present_loss = group_loss[present]
    penalty = present_loss.max() - present_loss.min()
    return per_row_loss.mean() + alpha * penalty


# ------------------------------------------------------------------ Faro (Choi et al. 2026)
#
# Reward-level fairness constraints trained by a Lagrangian with dual ascent, after "Fairness
# Aware Reward Optimization" (Faro): minimise the BT loss subject to c(θ) ≤ ε, as
# min_θ max_{μ ≥ 0} BT(θ) + Σ_j μ_j (c_j(θ) − ε). The primal step is the optimiser's; the dual
# step is :func:`dual_ascent_step`. Unlike :func:`fairness_penalty_loss` (a fixed weight on the
# spread of group *losses*), the constraint is on the model's *predictions* per group and its
# weight μ grows for as long as the constraint is violated.


def group_mean_probabilities(
    margin: torch.Tensor, group_index: torch.Tensor, num_groups: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean predicted probability of the labelled winner per group: ``P̄_g = mean_{i∈g} σ(m_i)``.

    ``σ(m_i)`` is the model's P(chosen ≻ rejected), i.e. its probability of being correct on
    row ``i``. Only rows with ``mask_i`` (default all) count.

    Args:
        margin: ``[batch]``; group_index: ``[batch]`` long; mask: ``[batch]`` bool or None.
    Returns:
        ``(P̄ [num_groups], present [num_groups] bool)``; ``P̄_g = 0`` where no row counts.
    """
    prob = torch.sigmoid(margin)
    if mask is not None:
        keep = mask.to(torch.bool)
        prob, group_index = prob[keep], group_index[keep]
    return group_mean_losses(prob, group_index, num_groups)


def _spread(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``max_g v_g − min_g v_g`` over the present groups; 0 with fewer than two."""
    if int(present.sum()) < 2:
        return values.sum() * 0.0  # keeps the graph (and the dtype) of ``values``
    kept = values[present]
    return kept.max() - kept.min()


def demographic_parity_gap(margin: torch.Tensor, group_index: torch.Tensor,
                           num_groups: int) -> torch.Tensor:
    """Reward-level demographic parity gap: ``c_DP = max_g P̄_g − min_g P̄_g``.

    With two groups ``c_DP = |P̄_majority − P̄_minority|``, the absolute difference of the mean
    probability ``σ(m)`` the reward model gives the labelled winner (its soft accuracy) on
    majority and minority rows; groups absent from the batch are left out (0 with fewer than
    two present). Differentiable in ``margin``.

    Args:
        margin: ``[batch]`` r(chosen) − r(rejected); group_index: ``[batch]`` long.
    Returns:
        A scalar in ``[0, 1]``.
    """
    means, present = group_mean_probabilities(margin, group_index, num_groups)
    return _spread(means, present)


def equalized_odds_gaps(margin: torch.Tensor, group_index: torch.Tensor, label: torch.Tensor,
                        num_groups: int) -> torch.Tensor:
    """Reward-level equalized odds: the demographic parity gap within each label class.

    A row's label ``y_i ∈ {0, 1}`` says which response of the pair won in a fixed orientation
    of the pair (``y = 1``: the first, by text id, is the chosen one). The model predicts the
    first wins with ``σ(m)`` when ``y = 1`` and ``1 − σ(m)`` when ``y = 0``, so per class the
    group gap of that prediction is the gap of ``σ(m)``:

    ``c_EO,y = max_g P̄_{g,y} − min_g P̄_{g,y}``, ``P̄_{g,y} = mean_{i∈g, y_i=y} σ(m_i)``,

    the gaps of the true- and false-positive rates of the classic definition (Hardt et al.
    2016), with soft predictions. ``c_DP`` pools both classes; EO asks for parity in each.

    Args:
        margin: ``[batch]``; group_index: ``[batch]`` long; label: ``[batch]`` in {0, 1}.
    Returns:
        ``[2]``: ``(c_EO,0, c_EO,1)``, each in ``[0, 1]``.
    """
    label = label.to(torch.long)
    return torch.stack([
        _spread(*group_mean_probabilities(margin, group_index, num_groups, label == y))
        for y in (0, 1)])


def dual_ascent_step(multiplier: torch.Tensor, constraint: torch.Tensor, epsilon: float,
                     dual_lr: float) -> torch.Tensor:
    """Projected dual ascent on the Lagrange multipliers: ``μ ← max(0, μ + η_μ (c − ε))``.

    ``μ`` rises while the constraint is violated (``c > ε``) and falls, never below 0, while it
    holds with room to spare. ``constraint`` is detached.

    Args:
        multiplier, constraint: ``[J]`` (one per constraint); epsilon: slack ``ε ≥ 0``;
        dual_lr: ``η_μ ≥ 0``.
    Returns:
        ``[J]``, the new multipliers.
    """
    return (multiplier + dual_lr * (constraint.detach().to(multiplier.dtype) - epsilon)).clamp(min=0)


class FaroConstraint(nn.Module):
    """Faro's Lagrangian: ``loss = mean_w BT + Σ_j μ_j (c_j − ε)``, ``μ`` updated by dual ascent.

    ``kind="dp"``: one constraint, :func:`demographic_parity_gap`. ``kind="eo"``: two, the
    :func:`equalized_odds_gaps` of the two label classes. The multipliers ``μ`` (buffer
    ``multipliers`` ``[J]``, 0 at start) enter the loss as constants; in training mode each
    ``forward`` then takes one :func:`dual_ascent_step` with this batch's constraint values (the
    primal step is the optimiser's step on the returned loss). ``eval()`` freezes ``μ``. As a
    buffer, ``μ`` is saved and restored with the module's ``state_dict``.
    """

    def __init__(self, num_groups: int, kind: Literal["dp", "eo"] = "dp", epsilon: float = 0.02,
                 dual_lr: float = 0.5) -> None:
        super().__init__()
        if kind not in ("dp", "eo"):
            raise ValueError(f"Faro constraint kind must be 'dp' or 'eo', got {kind!r}")
        if num_groups < 1 or epsilon < 0 or dual_lr < 0:
            raise ValueError(f"FaroConstraint needs num_groups >= 1, epsilon >= 0 and "
                             f"dual_lr >= 0, got {num_groups}, {epsilon}, {dual_lr}")
        self.num_groups, self.kind, self.epsilon, self.dual_lr = num_groups, kind, epsilon, dual_lr
        self.register_buffer("multipliers", torch.zeros(1 if kind == "dp" else 2))

    def constraints(self, margin: torch.Tensor, group_index: torch.Tensor,
                    label: torch.Tensor | None = None) -> torch.Tensor:
        """``[J]`` constraint values ``c_j`` of a batch (with grad)."""
        if self.kind == "dp":
            return demographic_parity_gap(margin, group_index, self.num_groups)[None]
        if label is None:
            raise ValueError("the Faro equalized-odds constraint needs each row's label class")
        return equalized_odds_gaps(margin, group_index, label, self.num_groups)

    def forward(self, margin: torch.Tensor, group_index: torch.Tensor,
                weight: torch.Tensor | None = None,
                label: torch.Tensor | None = None) -> torch.Tensor:
        """``margin``, ``group_index``, ``weight``, ``label``: ``[batch]`` → scalar loss."""
        bt = bradley_terry_loss(margin)
        bt = bt.mean() if weight is None else weighted_mean(bt, weight)
        constraint = self.constraints(margin, group_index, label)
        # A copy: the dual step below updates the buffer in place, and backward needs the μ
        # this loss was built with (``.to`` of the same dtype would return the buffer itself).
        mu = self.multipliers.detach().clone().to(constraint.dtype)
        loss = bt + (mu * (constraint - self.epsilon)).sum()
        if self.training:
            self.multipliers.copy_(dual_ascent_step(self.multipliers, constraint, self.epsilon,
                                                    self.dual_lr))
        return loss

    def extra_repr(self) -> str:
        return f"kind={self.kind}, epsilon={self.epsilon}, dual_lr={self.dual_lr}"
