"""Train a student in the current process on cached embeddings and teacher margins.

The fast path for Tune trials in frozen mode (RAY_NOTES: a TorchTrainer per trial costs
15–20 s before the first step): each trial is already a Ray actor with its own CPUs or
GPU share, so it runs the same :func:`pafo_ray.train.loop.fit` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from pafo_ray.config import PipelineConfig
from pafo_ray.layout import RunLayout
from pafo_ray.train.frames import TEXTS, read_frame


@dataclass
class StudentData:
    """Everything a student needs, loaded once and shared by every trial."""

    train: pd.DataFrame          # margins/rows split=train (teacher margins per row)
    val: pd.DataFrame            # prepared validation rows
    users: list                  # sorted user ids (the embedding table's order)
    teacher_stats: dict          # {group: {"mean", "std"}}
    cache: Optional[object] = None  # arrays.Cache in frozen mode


# What a frozen-mode student reads of the rows: ids, weights, groups and every teacher margin,
# not the texts (the cache holds their embeddings). At millions of rows the texts would be most
# of the memory, and every trial receives this data through the object store.
STUDENT_COLUMNS = ["row_id", "user_id", "chosen_text_id", "rejected_text_id", "weight",
                    "group", "user_group", "labelled", "extra_rank", "margin"]


def _student_frame(uri: str) -> pd.DataFrame:
    import pyarrow.dataset as pads

    from pafo_ray.storage import split_uri

    fs, path = split_uri(uri)
    names = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive").schema.names
    margins = [c for c in names if c.startswith("margin_") and not c.endswith("_unknown_user")]
    return read_frame(uri, STUDENT_COLUMNS + margins)


def load_student_data(cfg: PipelineConfig) -> StudentData:
    from pafo_ray.train.arrays import read_cache

    layout = RunLayout.of(cfg)
    if cfg.model.mode != "frozen":
        raise ValueError("in-process students need model.mode=frozen (finetune trains in Ray Train)")
    train = _student_frame(layout.margin_rows("train"))
    if layout.has_margin_rows("extra"):  # the trials choose how many to use
        extra = _student_frame(layout.margin_rows("extra"))
        train = pd.concat([train, extra], ignore_index=True)
    val = read_frame(layout.grouped_rows("val")[0], STUDENT_COLUMNS)
    return StudentData(train=train, val=val, users=layout.user_ids(),
                       teacher_stats=layout.teacher_stats(),
                       cache=read_cache(layout.embed_cache()))


def trial_device(gpus: float) -> Optional[str]:
    """``"cuda"`` when this process was given GPUs (``tune.gpus_per_trial``) and sees one."""
    import torch

    return "cuda" if gpus > 0 and torch.cuda.is_available() else None


def train_student(data: StudentData, cfg: PipelineConfig, *, seed: Optional[int] = None,
                  method: str = "pafo", device: Optional[str] = None):
    """Fit a student with ``cfg.distill``/``cfg.train``; returns (RewardModel, val metrics).

    ``method`` other than ``pafo`` (a baseline: reweight, groupdro, fairness_penalty) trains
    that objective with ``cfg.baselines`` on the labelled training rows instead: the baselines'
    own searches use the same data, model and trainer as the student's. ``device`` (e.g.
    ``"cuda"``) trains there: the rows stay on the CPU and each batch moves; the model comes
    back on the CPU.
    """
    from pafo_ray.train import jobs as J
    from pafo_ray.train.build import build_model_and_rows
    from pafo_ray.train.loop import Objective, PairScorer, fit
    from pafo_ray.train.targets import distill_targets, target_settings

    seed = cfg.run.seed if seed is None else seed
    names = J.names(cfg)
    if method == "pafo":
        targets = target_settings(cfg.distill, cfg.teachers.init, data.teacher_stats,
                                  cfg.margins.extra_pairs_per_user)
        frame = distill_targets(data.train, targets, names)
    else:
        frame = data.train
        if "labelled" in frame:
            frame = frame[frame["labelled"].fillna(True).astype(bool)]
    model, train_rows, val_rows = build_model_and_rows(
        cfg.model, data.users, data.cache, frame, data.val, group_names=names, seed=seed,
        label_margin=cfg.train.use_margin)
    scorer = PairScorer(model)
    if device is not None:
        scorer.to(device)
    metrics = fit(scorer, train_rows, val_rows, Objective(**J.objective_for(method, cfg)),
                  epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                  weight_decay=cfg.train.weight_decay, group_names=names, cache=data.cache,
                  seed=seed, device=device, user_updates=cfg.train.user_updates)
    return model.cpu(), metrics


def train_vanilla(cfg: PipelineConfig, *, weight_decay: float, user_shrinkage: float,
                  model_cfg=None) -> tuple:
    """Vanilla (BT on all prepared training rows) in-process on the embedding cache.

    ``model_cfg`` replaces ``cfg.model`` (the groups stage fits a lowrank head whatever the
    run's head is). Returns ``(model, validation metrics)``.
    """
    import dataclasses

    from pafo_ray.train import jobs as J
    from pafo_ray.train.arrays import read_cache
    from pafo_ray.train.build import build_model_and_rows
    from pafo_ray.train.loop import Objective, PairScorer, fit

    layout = RunLayout.of(cfg)
    cache = read_cache(layout.embed_cache())
    names = J.names(cfg)
    model_cfg = dataclasses.replace(model_cfg or cfg.model, mode="frozen",
                                    user_shrinkage=user_shrinkage)
    model, train, val = build_model_and_rows(
        model_cfg, layout.user_ids(), cache,
        read_frame(layout.prepared_rows("train"), skip=TEXTS),
        read_frame(layout.prepared_rows("val"), skip=TEXTS), group_names=names, seed=cfg.run.seed,
        label_margin=cfg.train.use_margin)
    objective = Objective(**{**J.objective_for("vanilla", cfg), "user_shrinkage": user_shrinkage})
    metrics = fit(PairScorer(model), train, val, objective, epochs=cfg.train.epochs,
                  batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=weight_decay,
                  group_names=names, cache=cache, seed=cfg.run.seed,
                  user_updates=cfg.train.user_updates)
    return model, metrics
