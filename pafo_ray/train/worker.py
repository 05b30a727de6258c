"""What every Ray Train worker does for a job, whichever trainer runs it (one per job,
:mod:`pafo_ray.train.ray_train`, or pooled, :mod:`pafo_ray.train.pooled`): build the job's
model, rows and objective (:func:`set_up_job`) and keep its epoch log, the status line and
the checkpoint cadence (:class:`EpochLog`). The trainers differ only in where the rows come
from and how a checkpoint is stored."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Optional

from pafo_ray.train.runtime import epoch_record


@dataclass
class JobSetup:
    cfg: object          # the job's PipelineConfig
    names: list          # group names
    cache: object        # the embedding cache (frozen mode) or None
    model: object        # the RewardModel to train
    train_rows: object
    val_rows: object
    objective: object    # pafo_ray.train.loop.Objective
    epochs: int


def set_up_job(pipeline: dict, job: dict, frames: Callable) -> JobSetup:
    """The job's config, cache, rows (``frames(cfg)`` -> ``(train, val)`` DataFrames, with the
    distillation targets added when the job has them), model and objective."""
    from pafo_ray.config import config_from_dict
    from pafo_ray.data.schema import group_names
    from pafo_ray.layout import RunLayout
    from pafo_ray.train.arrays import read_cache
    from pafo_ray.train.build import build_model_and_rows
    from pafo_ray.train.loop import Objective
    from pafo_ray.train.targets import distill_targets

    cfg = config_from_dict(pipeline)
    layout = RunLayout.of(cfg)
    names = group_names(cfg.prepare.num_groups)
    cache = read_cache(layout.embed_cache()) if cfg.model.mode == "frozen" else None
    train_frame, val_frame = frames(cfg)
    if job.get("targets") is not None:
        train_frame = distill_targets(train_frame, job["targets"], names)
    model, train_rows, val_rows = build_model_and_rows(
        cfg.model, layout.user_ids(), cache, train_frame, val_frame, group_names=names,
        seed=cfg.run.seed, init_from=job.get("init_from"), label_margin=cfg.train.use_margin)
    return JobSetup(cfg, names, cache, model, train_rows, val_rows,
                    Objective(**job["objective"]), job.get("epochs") or cfg.train.epochs)


class EpochLog:
    """Each epoch's record, the status line (rank 0) and the checkpoint cadence.

    :meth:`record` returns the metrics a checkpoint carries when the epoch is one to
    checkpoint (every ``train.checkpoint_every`` epochs and the last), else None. A report
    is a round trip to the controller (~1-2 s with several trainers on 2 cores, where an
    epoch of a head takes milliseconds): every epoch's metrics go with the next checkpoint
    (``epoch_history``), with the worker's wall-clock start and report times.
    """

    def __init__(self, setup: JobSetup, job: dict, rank: int, start_epoch: int,
                 started_at: float, extra: Optional[dict] = None):
        self.setup, self.job, self.rank = setup, job, rank
        self.start_epoch = start_epoch
        self.started_at = started_at  # when this attempt at the job began, on the worker
        self.extra = dict(extra or {})
        self.history: list = []

    def record(self, epoch: int, metrics: dict) -> Optional[dict]:
        from pafo_ray import progress

        done, cfg = epoch + 1, self.setup.cfg
        self.history.append(epoch_record(metrics))
        if self.rank == 0:  # the status line: where this job is (never waits, never raises)
            progress.epoch(cfg.run.run_name, self.job.get("stage", ""), self.job["name"], done,
                           self.setup.epochs)
        if done % cfg.train.checkpoint_every and done != self.setup.epochs:
            return None
        out = {**metrics, **self.extra, "started_epoch": self.start_epoch,
               "epoch_history": json.dumps(self.history),
               "worker_started_at": self.started_at, "reported_at": time.time()}
        self.history = []
        return out
