"""One ``TorchTrainer`` for several jobs of a stage: one worker group, each job on its own ranks.

A Ray Train worker group costs ~15-25 s to start on 2 cores whatever it then trains (RAY_NOTES),
and the heads of the built-in demo train in about a second. Six trainers of one worker each
paid six start-ups; here the jobs of a wave share one: rank ``r`` trains the jobs whose ranks
hold ``r``, one after another (one-rank jobs share at most ``train.pool_workers`` workers, by
default one per core: :func:`rank_plan`; ``train.num_workers`` ranks per job; a job with more than one gets its own
``torch.distributed`` group via ``new_group``, wrapped in DDP on it, and each of its ranks
trains on every n-th row). Workers read their job's parquet rows themselves (no Ray Data
ingest: ``train.ingest_cpus`` is not reserved for a pooled trainer).

Per job, as with one trainer each: checkpoints every ``train.checkpoint_every`` epochs under
``<run>/_ray/<stage>/<job>-<hash>/checkpoint_<epoch>/`` (model, ``train_state.pt``,
``metrics.json``, then a ``_COMPLETE`` marker; the last two kept), resume from the last one
(a rerun of the stage, or a retry), the final model copied to the job's output by the driver
and its metrics read from the final checkpoint. The driver side (waves, stages side by side)
is :mod:`pafo_ray.train.cohort`.

Failures: an exception inside a one-rank job is retried in its worker from the job's last
checkpoint, up to ``train.max_failures`` times, so the other jobs of the group go on
undisturbed; after that it is written to ``<job>-<hash>/error.txt`` and the driver raises it,
naming the job. A lost worker process (or a failing job with several ranks) fails the
group: Ray Train restarts it (``FailureConfig``) and every job resumes from its own last
checkpoint (a finished job trains no further epoch).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from typing import Optional

from pafo_ray.storage import join, split_uri

CHECKPOINT = "checkpoint_"
COMPLETE = "_COMPLETE"
ERROR = "error.txt"
KEEP = 2  # checkpoints kept per job (the per-job trainers' CheckpointConfig(num_to_keep=2))

log = logging.getLogger("pafo_ray")


# ----------------------------------------------------------------- checkpoints in storage


def job_dir(ray_storage: str, name: str, run_hash: str) -> str:
    """A pooled job's folder: its checkpoints and error (``<ray_storage>/<job>-<hash>``)."""
    return join(ray_storage, f"{name}-{run_hash}")


def _checkpoints(folder: str) -> list:
    """Complete checkpoint folder names under ``folder``, oldest first."""
    from pyarrow import fs as pafs

    fs, path = split_uri(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT))
    return [n for n in names
            if fs.get_file_info(split_uri(join(folder, n, COMPLETE))[1]).type == pafs.FileType.File]


def latest_checkpoint(folder: str) -> Optional[str]:
    names = _checkpoints(folder)
    return join(folder, names[-1]) if names else None


def save_checkpoint(folder: str, epoch: int, local_dir: str, keep: int = KEEP) -> str:
    """Upload ``local_dir`` as ``checkpoint_<epoch>``, mark it complete, drop the oldest."""
    from pyarrow import fs as pafs

    target = join(folder, f"{CHECKPOINT}{epoch:06d}")
    fs, path = split_uri(target)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    write_text(join(target, COMPLETE), str(epoch))
    for name in _checkpoints(folder)[:-keep]:
        fs.delete_dir(split_uri(join(folder, name))[1])
    return target


def write_text(uri: str, text: str) -> None:
    fs, path = split_uri(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(uri: str) -> Optional[str]:
    from pyarrow import fs as pafs

    fs, path = split_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as src:
        return src.read().decode()


def remove_file(uri: str) -> None:
    from pyarrow import fs as pafs

    fs, path = split_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


# ----------------------------------------------------------------- the worker


def rank_plan(sizes: list, workers: Optional[int] = None) -> list:
    """Ranks of each job: ``[1, 1, 2] -> [[0], [1], [2, 3]]``.

    ``workers``: when every job has one rank and there are more jobs than that, the jobs
    share ``workers`` ranks in turn (``[1, 1, 1]``, 2 -> ``[[0], [1], [0]]``); a rank then
    trains its jobs one after another. A worker process costs ~5 s of start-up on 2 cores
    (torch and Ray Train imports), a small head's 20 epochs about a second: on the demo's 2
    cores six workers took 21-22 s to start and run nothing, two 12-13 s
    (``python -m benchmarks.workers``).
    """
    if workers and all(size == 1 for size in sizes) and 0 < workers < len(sizes):
        return [[index % workers] for index in range(len(sizes))]
    plan, start = [], 0
    for size in sizes:
        plan.append(list(range(start, start + size)))
        start += size
    return plan


def world_size(plan: list) -> int:
    """Workers a plan needs."""
    return 1 + max(rank for ranks in plan for rank in ranks)


def my_jobs(plan: list, rank: int) -> list:
    """``[(job index, rank within the job), ...]`` of world rank ``rank``, in plan order."""
    mine = [(index, ranks.index(rank)) for index, ranks in enumerate(plan) if rank in ranks]
    if not mine:
        raise ValueError(f"rank {rank} is in no job of {plan}")
    return mine


def pooled_train_func(config: dict) -> None:
    """One worker of a pooled trainer: train the jobs its rank holds, one after another."""
    import ray.train
    import ray.train.torch  # noqa: F401  (get_device)

    context = ray.train.get_context()
    rank = context.get_world_rank()
    plan = config["ranks"]
    groups = _job_groups(plan)
    for index, sub_rank in my_jobs(plan, rank):
        _run_job(config, index, sub_rank, groups[index],
                 info={"world_rank": rank, "world_size": context.get_world_size(),
                       "experiment": context.get_experiment_name()})


def _run_job(config: dict, index: int, sub_rank: int, group, info: dict) -> None:
    """One job, retried in this worker from its last checkpoint (one-rank jobs) up to its
    ``max_failures``; then its error is written for the driver and the worker goes on."""
    plan = config["ranks"]
    job = config["jobs"][index]
    attempts = 0
    while True:
        try:
            _train_job(config["pipelines"][index], job, sub_rank, len(plan[index]), group,
                       info={**info, "attempt": attempts})
            return
        except Exception as exc:
            attempts += 1
            if len(plan[index]) > 1:
                raise  # its other ranks wait in collectives: Ray Train restarts the group
            if attempts > job["max_failures"]:
                write_text(join(job["dir"], ERROR),
                           f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
                return
            log.warning("%s: attempt %d failed (%s); resuming from its last checkpoint",
                        job["name"], attempts, exc)


def _job_groups(plan: list) -> list:
    """A ``torch.distributed`` group per job with more than one rank (every rank creates
    every group, in the same order, as ``new_group`` requires); None for one-rank jobs."""
    if all(len(ranks) == 1 for ranks in plan):
        return [None] * len(plan)
    import torch.distributed as dist

    return [dist.new_group(ranks) if len(ranks) > 1 else None for ranks in plan]


def _train_job(pipeline: dict, job: dict, sub_rank: int, size: int, group, info: dict) -> None:
    import ray.train

    from pafo_ray.train.frames import read_rows, skipped_columns
    from pafo_ray.train.loop import PairScorer, fit
    from pafo_ray.train.runtime import load_train_state, maybe_fail, write_checkpoint_files
    from pafo_ray.train.worker import EpochLog, set_up_job

    def frames(cfg):
        train_frame, val_frame = (read_rows(job["uris"][k], skip=skipped_columns(cfg))
                                  for k in ("train", "val"))
        if size > 1:  # this rank's share of the job's rows
            train_frame = train_frame.iloc[sub_rank::size].reset_index(drop=True)
        return train_frame, val_frame

    started_at = time.time()
    setup = set_up_job(pipeline, job, frames)
    cfg, model, objective, epochs = setup.cfg, setup.model, setup.objective, setup.epochs
    device = ray.train.torch.get_device()
    scorer = PairScorer(model).to(device)
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        scorer = DistributedDataParallel(scorer, process_group=group,
                                         device_ids=[device] if device.type == "cuda" else None)
    start_epoch, optimizer_state = 0, None
    last = latest_checkpoint(job["dir"])
    if last:
        from pafo_ray.models import RewardModel
        from pafo_ray.storage import local_copy

        with tempfile.TemporaryDirectory() as tmp:
            folder = local_copy(last, tmp)
            saved = RewardModel.from_pretrained(os.path.join(folder, "model"))
            model.load_state_dict(saved.state_dict())
            state = load_train_state(os.path.join(folder, "train_state.pt"))
        start_epoch, optimizer_state = state["epoch"], state["optimizer"]
        objective.load_state_dict(state.get("objective", {}))
    epoch_log = EpochLog(setup, job, sub_rank, start_epoch, started_at, extra=info)

    def on_epoch(epoch: int, metrics: dict, optimizer) -> None:
        metrics = epoch_log.record(epoch, metrics)
        if metrics is None or sub_rank != 0:
            return
        done = epoch + 1
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint_files(tmp, model, optimizer, objective, metrics, done)
            with open(os.path.join(tmp, "metrics.json"), "w") as fh:
                json.dump(metrics, fh)
            save_checkpoint(job["dir"], done, tmp)
        maybe_fail(job.get("fail_once"), done)

    fit(scorer, setup.train_rows, setup.val_rows, objective, epochs=epochs,
        batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        group_names=setup.names, cache=setup.cache,
        seed=cfg.run.seed, device=device, start_epoch=start_epoch,
        optimizer_state=optimizer_state, on_epoch=on_epoch, user_updates=cfg.train.user_updates)

