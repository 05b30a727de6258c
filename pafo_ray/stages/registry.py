"""Every stage in one table: name, order, when it runs, what it reads, its help.

``pafo-ray run`` (:func:`pafo_ray.stages.base.run_pipeline`), the CLI's subcommands and their
help are built from :data:`STAGES`. A stage's module (``pafo_ray.stages.<name>``) holds its
config (``SECTIONS`` or ``hash_payload``), ``run(ctx)`` and ``describe(summary)``. Importing
this module is light (no ray, torch or stage module): ``pafo-ray --help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _always(cfg) -> bool:
    return True


def _embed_active(cfg) -> bool:
    # the mixture groups score cached features in finetune mode too
    return cfg.model.mode == "frozen" or (cfg.groups.method == "mixture"
                                          and cfg.prepare.group_level == "user")


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    # Stages whose outputs this one reads: they must be complete first, and their hashes are
    # part of this stage's hash (order matters: it is the hash's order).
    depends: tuple = ()
    active: Callable = _always  # (cfg) -> whether this run has the stage at all


# Pipeline order.
STAGES = (
    Stage("input", "record the input files, or write the built-in/converted rows as parquet"),
    Stage("prepare", "Ray Data: validate rows, support rates, groups, splits", ("input",)),
    Stage("embed", "Ray Data actor pool: embed every distinct text once (frozen mode)",
          ("prepare",), _embed_active),
    Stage("regularize", "weight decay and user shrinkage chosen on vanilla's validation (frozen)",
          ("prepare", "embed"),
          lambda cfg: cfg.model.mode == "frozen" and cfg.train.select_regularization),
    Stage("groups", "the users' final groups (support or mixture) and the rows partitioned by them",
          ("prepare", "embed", "regularize")),
    Stage("teachers", "Ray Train: one teacher per group, concurrently, plus vanilla",
          ("groups", "embed", "regularize")),
    Stage("margins", "Ray Data batch inference: each teacher's margins on every row",
          ("teachers",)),
    Stage("baselines", "Ray Train: reweight, groupdro, fairness_penalty",
          ("groups", "embed", "regularize"), lambda cfg: bool(cfg.baselines.methods)),
    Stage("tune", "Ray Tune + Optuna: Pareto search of the distillation weights",
          ("margins", "baselines"), lambda cfg: cfg.tune.num_samples > 0),
    Stage("distill", "Ray Train: the unified student (no group input)", ("margins", "tune")),
    Stage("evaluate", "metrics, report.md, metrics.json and plots for every method",
          ("distill", "baselines")),
)
BY_NAME = {stage.name: stage for stage in STAGES}
ORDER = [stage.name for stage in STAGES]

# Stages that read the same inputs and nothing of each other: run side by side, so their
# Ray Train fixed costs overlap instead of adding up.
CONCURRENT = ("teachers", "baselines")


def stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}; stages are {ORDER}")
    return BY_NAME[name]


def is_active(cfg, name: str) -> bool:
    return stage(name).active(cfg)


def depends(name: str) -> tuple:
    return stage(name).depends
