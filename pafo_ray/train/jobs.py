"""Each method's objective, and the group names: one place for all stages (the rows they
train on: :meth:`pafo_ray.layout.RunLayout.grouped_rows`)."""

from __future__ import annotations

from pafo_ray.config import PipelineConfig
from pafo_ray.data.schema import group_names

BASELINE_KINDS = {"reweight", "groupdro", "fairness_penalty", "faro_dp", "faro_eo"}


def objective_for(method: str, cfg: PipelineConfig, distill=None) -> dict:
    """Keyword arguments of :class:`pafo_ray.train.loop.Objective` for a method."""
    k = cfg.prepare.num_groups
    base = {"num_groups": k, "user_shrinkage": cfg.model.user_shrinkage}
    if method in ("vanilla", "teacher"):
        return {**base, "kind": "bt"}
    if method == "reweight":
        return {**base, "kind": "reweight", "reweight_power": cfg.baselines.reweight_power}
    if method == "groupdro":
        return {**base, "kind": "groupdro", "groupdro_eta": cfg.baselines.groupdro_eta}
    if method == "fairness_penalty":
        return {**base, "kind": "fairness_penalty", "fairness_alpha": cfg.baselines.fairness_alpha}
    if method in ("faro_dp", "faro_eo"):
        return {**base, "kind": method, "faro_epsilon": cfg.baselines.faro_epsilon,
                "faro_dual_lr": cfg.baselines.faro_dual_lr}
    if method == "pafo":
        d = distill or cfg.distill
        return {**base, "kind": "pafo", "group_weight": [d.minority_weight] + [1.0] * (k - 1),
                "distill_loss": d.loss, "lam": d.lam, "temperature": d.temperature,
                "clip": d.clip}
    raise ValueError(f"unknown method {method!r}; known: vanilla, pafo, {sorted(BASELINE_KINDS)}")


def names(cfg: PipelineConfig) -> list:
    return group_names(cfg.prepare.num_groups)
