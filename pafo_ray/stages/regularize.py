"""Stage ``regularize`` (frozen mode): choose the regularisation on vanilla's validation.

A small grid over ``train.weight_decay_grid`` × ``train.user_shrinkage_grid``: vanilla is
trained in-process on the cached embeddings for each point, and the point with the best
validation accuracy is used for every later model — teachers, baselines, the student and
every Tune trial — so no method wins by being regularised differently (DESIGN §6).
"""

from __future__ import annotations

import itertools

from pafo_ray.stages.base import StageContext

NAME = "regularize"
SECTIONS = ("model", "train")


def run(ctx: StageContext) -> dict:
    from pafo_ray.train.inmemory import train_vanilla

    cfg = ctx.cfg
    grid = []
    for weight_decay, shrinkage in itertools.product(cfg.train.weight_decay_grid,
                                                     cfg.train.user_shrinkage_grid):
        _, metrics = train_vanilla(cfg, weight_decay=weight_decay, user_shrinkage=shrinkage)
        grid.append({"weight_decay": weight_decay, "user_shrinkage": shrinkage,
                     "val_accuracy": metrics["val_accuracy"]})
    best = max(grid, key=lambda g: (g["val_accuracy"], g["user_shrinkage"], g["weight_decay"]))
    return {"grid": grid, "chosen": best,
            "config_updates": {"train": {"weight_decay": best["weight_decay"]},
                               "model": {"user_shrinkage": best["user_shrinkage"]}}}


def describe(summary: dict) -> str:
    best = summary["chosen"]
    return (f"vanilla val acc {best['val_accuracy']:.3f} with weight_decay "
            f"{best['weight_decay']:g}, user_shrinkage {best['user_shrinkage']:g} "
            f"(best of {len(summary['grid'])})")
