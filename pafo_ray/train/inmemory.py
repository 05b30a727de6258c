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
from pafo_ray.storage import RunDir


@dataclass
class StudentData:
    """Everything a student needs, loaded once and shared by every trial."""

    train: pd.DataFrame          # margins/rows split=train (teacher margins per row)
    val: pd.DataFrame            # prepared validation rows
    users: list                  # sorted user ids (the embedding table's order)
    teacher_stats: dict          # {group: {"mean", "std"}}
    cache: Optional[object] = None  # arrays.Cache in frozen mode


def read_frame(uri: str, columns: Optional[list] = None) -> pd.DataFrame:
    """Parquet rows under ``uri`` as one frame; ``columns`` limits what is read (names the
    files lack are skipped).

    Files written by different Ray Data tasks can disagree on a column's type (an all-null
    block written as ``null``, ``string`` next to ``large_string``): the files' schemas are
    unified first, promoting such columns, instead of trusting the first file's."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from pafo_ray.storage import split_uri

    fs, path = split_uri(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    schemas = [dataset.schema] + [f.physical_schema for f in dataset.get_fragments()]
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    if not unified.equals(dataset.schema):
        dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive",
                               schema=unified)
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns).to_pandas()


# What a frozen-mode student reads of the rows: ids, weights, groups and every teacher margin,
# not the texts (the cache holds their embeddings). At millions of rows the texts would be most
# of the memory, and every trial receives this data through the object store.
_STUDENT_COLUMNS = ["row_id", "user_id", "chosen_text_id", "rejected_text_id", "weight",
                    "group", "user_group", "labelled", "extra_rank", "margin"]


def _student_frame(uri: str) -> pd.DataFrame:
    import pyarrow.dataset as pads

    from pafo_ray.storage import split_uri

    fs, path = split_uri(uri)
    names = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive").schema.names
    margins = [c for c in names if c.startswith("margin_") and not c.endswith("_unknown_user")]
    return read_frame(uri, _STUDENT_COLUMNS + margins)


def load_student_data(cfg: PipelineConfig) -> StudentData:
    from pafo_ray.train.arrays import read_cache
    from pafo_ray.train.ray_train import load_users

    run_dir = RunDir(cfg.run.storage_path, cfg.run.run_name)
    if cfg.model.mode != "frozen":
        raise ValueError("in-process students need model.mode=frozen (finetune trains in Ray Train)")
    train = _student_frame(run_dir.uri("margins", "rows", "split=train"))
    if run_dir.exists("margins", "rows", "split=extra"):  # the trials choose how many to use
        extra = _student_frame(run_dir.uri("margins", "rows", "split=extra"))
        train = pd.concat([train, extra], ignore_index=True)
    val = read_frame(run_dir.uri("groups", "data", "split=val"), _STUDENT_COLUMNS)
    return StudentData(train=train, val=val, users=load_users(run_dir),
                       teacher_stats=run_dir.read_json("margins", "teacher_stats.json"),
                       cache=read_cache(run_dir.uri("embed", "cache")))


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
    import torch

    from pafo_ray.models import RewardModel
    from pafo_ray.train import jobs as J
    from pafo_ray.train.arrays import build_rows, user_map
    from pafo_ray.train.loop import Objective, PairScorer, fit
    from pafo_ray.train.targets import distill_targets, target_settings

    seed = cfg.run.seed if seed is None else seed
    torch.manual_seed(seed)
    names = J.names(cfg)
    if method == "pafo":
        targets = target_settings(cfg.distill, cfg.teachers.init, data.teacher_stats,
                                  cfg.margins.extra_pairs_per_user)
        frame = distill_targets(data.train, targets, names)
    else:
        frame = data.train
        if "labelled" in frame:
            frame = frame[frame["labelled"].fillna(True).astype(bool)]
    model = RewardModel.from_config(cfg.model, data.users, input_dim=int(data.cache.vectors.shape[1]))
    umap = user_map(model.user_ids)
    train_rows = build_rows(frame, users=umap, group_names=names, cache=data.cache,
                            label_margin=cfg.train.use_margin)
    val_rows = build_rows(data.val, users=umap, group_names=names, cache=data.cache)
    scorer = PairScorer(model)
    if device is not None:
        scorer.to(device)
    metrics = fit(scorer, train_rows, val_rows, Objective(**J.objective_for(method, cfg)),
                  epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                  weight_decay=cfg.train.weight_decay, group_names=names, cache=data.cache,
                  seed=seed, device=device)
    return model.cpu(), metrics


def train_vanilla(cfg: PipelineConfig, *, weight_decay: float, user_shrinkage: float,
                  model_cfg=None) -> tuple:
    """Vanilla (BT on all prepared training rows) in-process on the embedding cache.

    ``model_cfg`` replaces ``cfg.model`` (the groups stage fits a lowrank head whatever the
    run's head is). Returns ``(model, validation metrics)``.
    """
    import dataclasses

    import torch

    from pafo_ray.models import RewardModel
    from pafo_ray.train import jobs as J
    from pafo_ray.train.arrays import build_rows, read_cache, user_map
    from pafo_ray.train.loop import Objective, PairScorer, fit
    from pafo_ray.train.ray_train import load_users

    run_dir = RunDir(cfg.run.storage_path, cfg.run.run_name)
    cache = read_cache(run_dir.uri("embed", "cache"))
    names = J.names(cfg)
    torch.manual_seed(cfg.run.seed)
    model_cfg = dataclasses.replace(model_cfg or cfg.model, mode="frozen",
                                    user_shrinkage=user_shrinkage)
    model = RewardModel.from_config(model_cfg, load_users(run_dir),
                                    input_dim=int(cache.vectors.shape[1]))
    umap = user_map(model.user_ids)
    train = build_rows(read_frame(run_dir.uri("prepare", "data", "split=train")), users=umap,
                       group_names=names, cache=cache, label_margin=cfg.train.use_margin)
    val = build_rows(read_frame(run_dir.uri("prepare", "data", "split=val")), users=umap,
                     group_names=names, cache=cache)
    objective = Objective(**{**J.objective_for("vanilla", cfg), "user_shrinkage": user_shrinkage})
    metrics = fit(PairScorer(model), train, val, objective, epochs=cfg.train.epochs,
                  batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=weight_decay,
                  group_names=names, cache=cache, seed=cfg.run.seed)
    return model, metrics
