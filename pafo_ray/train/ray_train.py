"""Ray Train: the per-worker ``train_func`` and a driver that runs several trainers at once.

:func:`run_jobs` is the entry of every stage that trains. With ``train.pool_jobs`` (default)
the jobs that fit at once share one ``TorchTrainer`` (:mod:`pafo_ray.train.pooled`,
:mod:`pafo_ray.train.cohort`): one worker-group start-up for all of them. Otherwise each
model (a teacher, vanilla, a baseline, the student) is one ``TorchTrainer`` with its own
``ScalingConfig``, fitted concurrently from one driver, each ``fit()`` in its own thread
(RAY_NOTES: faster than a task per fit). Data reaches those workers as Ray Data shards; a
restarted worker loads its last checkpoint and continues from the next epoch (Ray does not
resume the epoch for you).

``train.num_workers=0`` runs each fit in the driver (Ray Train's local mode, for tests). Local
mode keeps its state in one process-wide slot, so those fits run one at a time.

Test hook: env ``PAFO_RAY_FAIL_AT_EPOCH=<epoch>`` (every job) or ``<job>:<epoch>`` (one job),
read on the driver, makes rank 0 raise once right after reporting that epoch's checkpoint;
a marker file next to the Ray run keeps the retry from failing again. It exists so a test
can prove that a failed worker resumes from its checkpoint (``FailureConfig``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from pafo_ray.layout import RunLayout
from pafo_ray.train.runtime import (  # noqa: F401 - TrainJob, FAIL_ENV: re-exported
    FAIL_ENV,
    TrainJob,
    epoch_record,
    fail_once,
    is_startup_failure,
    job_payload,
    load_train_state,
    maybe_fail,
    startup_message,
    write_checkpoint_files,
)

# Ray Train's local mode (num_workers=0) keeps the running fit in a module global: two fits
# in threads of one process would read each other's datasets and checkpoints.
_LOCAL_MODE_LOCK = threading.Lock()


def train_func(config: dict) -> None:
    """One Ray Train worker: read the shard, train, report metrics and checkpoints."""
    import ray.train
    from ray.train import Checkpoint

    from pafo_ray.train.arrays import frame_from_shard
    from pafo_ray.train.frames import read_rows, skipped_columns
    from pafo_ray.train.loop import PairScorer, fit
    from pafo_ray.train.worker import EpochLog, set_up_job

    started_at = time.time()
    job = config["job"]

    def frames(cfg):
        if job.get("uris"):  # local mode: this process reads the parquet itself
            return tuple(read_rows(job["uris"][k], skip=skipped_columns(cfg))
                         for k in ("train", "val"))
        return (frame_from_shard(ray.train.get_dataset_shard("train")),
                frame_from_shard(ray.train.get_dataset_shard("val")))

    setup = set_up_job(config["pipeline"], job, frames)
    cfg, model, objective = setup.cfg, setup.model, setup.objective
    scorer = ray.train.torch.prepare_model(PairScorer(model))
    device = ray.train.torch.get_device()
    start_epoch, optimizer_state = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            from pafo_ray.models import RewardModel

            saved = RewardModel.from_pretrained(os.path.join(folder, "model"))
            model.load_state_dict(saved.state_dict())
            state = load_train_state(os.path.join(folder, "train_state.pt"))
            start_epoch, optimizer_state = state["epoch"], state["optimizer"]
            objective.load_state_dict(state.get("objective", {}))
    rank = ray.train.get_context().get_world_rank()
    epoch_log = EpochLog(setup, job, rank, start_epoch, started_at)

    def on_epoch(epoch: int, metrics: dict, optimizer) -> None:
        metrics = epoch_log.record(epoch, metrics)
        if metrics is None:
            return
        done = epoch + 1
        with _checkpoint_dir(job.get("checkpoint_root")) as tmp:
            if rank == 0:
                write_checkpoint_files(tmp, model, optimizer, objective, metrics, done)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
                maybe_fail(job.get("fail_once"), done)
            else:
                ray.train.report(metrics)

    fit(scorer, setup.train_rows, setup.val_rows, objective, epochs=setup.epochs,
        batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        group_names=setup.names, cache=setup.cache, seed=cfg.run.seed, device=device,
        start_epoch=start_epoch, optimizer_state=optimizer_state, on_epoch=on_epoch,
        user_updates=cfg.train.user_updates)


def _checkpoint_dir(root: Optional[str]):
    """Where a checkpoint is written before ``report``. A real worker uploads it during
    ``report``, so a temporary folder will do; local mode keeps only the path, so the
    folder (under ``root``) must live until the driver has copied the final model."""
    if root:
        return contextlib.nullcontext(tempfile.mkdtemp(dir=root))
    return tempfile.TemporaryDirectory()


def _fit_one(cfg, layout: RunLayout, stage: str, job: TrainJob, run_hash: str) -> dict:
    if cfg.train.num_workers > 0:
        return _fit_ray(cfg, layout, stage, job, run_hash)
    with _LOCAL_MODE_LOCK, tempfile.TemporaryDirectory() as root:
        return _fit_ray(cfg, layout, stage, job, run_hash, checkpoint_root=root)


def _read(uris: list, cfg):
    """A job's rows as a Ray Data dataset, without the texts in frozen mode (the cache holds
    their embeddings)."""
    import ray.data

    from pafo_ray.train.frames import skipped_columns

    ds = ray.data.read_parquet(uris)
    skip = skipped_columns(cfg)
    return ds.drop_columns(list(skip)) if skip else ds


def _fit_ray(cfg, layout: RunLayout, stage: str, job: TrainJob, run_hash: str,
             checkpoint_root: Optional[str] = None) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    started = time.time()
    local = checkpoint_root is not None
    # Real workers get Ray Data shards. Local mode (num_workers=0: tests, in-process benchmark
    # runs) has one process that reads the parquet itself: two Ray Data executions per fit
    # cost ~20 s on 2 cores, ten times the fit of a head on cached embeddings.
    datasets = None if local else {"train": _read(job.train, cfg), "val": _read(job.val, cfg)}
    scaling = ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                            resources_per_worker={"CPU": tc.cpus_per_worker}
                            if tc.num_workers else None)
    # controller_failure_limit bounds the worker-group start-ups that time out waiting for
    # resources (Ray's default: retry forever, a hang when they never come).
    run_config = RunConfig(
        name=f"{job.name}-{run_hash}", storage_path=layout.ray_storage(stage),
        failure_config=FailureConfig(max_failures=tc.max_failures,
                                     controller_failure_limit=tc.start_retries),
        checkpoint_config=CheckpointConfig(num_to_keep=2))
    payload = job_payload(job)
    payload["checkpoint_root"] = checkpoint_root
    payload["uris"] = {"train": job.train, "val": job.val} if local else None
    payload["fail_once"] = fail_once(layout, stage, job, run_hash)
    payload["stage"] = stage
    trainer = TorchTrainer(train_func, train_loop_config={"pipeline": job.config or cfg.to_dict(),
                                                          "job": payload},
                           scaling_config=scaling, run_config=run_config, datasets=datasets,
                           dataset_config=None if local else _data_config(tc.ingest_cpus))
    try:
        result = trainer.fit()
    except Exception as exc:
        if not is_startup_failure(exc):
            raise
        raise RuntimeError(startup_message(stage, job.name, tc)) from exc
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}/{job.name}: training ended without a checkpoint "
                           f"({result.error})")
    with tempfile.TemporaryDirectory() as tmp:
        result.checkpoint.to_directory(tmp)
        layout.save_folder(os.path.join(tmp, "model"), job.output)
    return {"name": job.name, "started": started, "finished": time.time(),
            "metrics": {k: v for k, v in (result.metrics or {}).items()
                        if isinstance(v, (int, float, str))},
            "model": job.output}


def _data_config(ingest_cpus: float):
    """Train splits ``train`` across workers; each trainer's Ray Data ingest may use at most
    ``ingest_cpus`` CPUs, the ones admission keeps free for it, so one trainer's reads cannot
    take the CPUs another trainer's reads wait for."""
    from ray.train import DataConfig

    if ingest_cpus <= 0:
        return DataConfig(datasets_to_split=["train"])
    options = DataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(cpu=ingest_cpus)
    return DataConfig(datasets_to_split=["train"], execution_options=options)


def run_jobs(cfg, layout: RunLayout, stage: str, jobs: list, run_hash: str) -> dict:
    """Fit the jobs of ``stage`` with the pipeline config ``cfg`` (or the job's own) in the run
    ``layout``, as many at once as the cluster holds (:mod:`pafo_ray.admission`; the budget is
    shared with any stage running beside this one), the rest queued; results by job name.

    ``train.pool_jobs`` (default): the jobs that fit at once share one ``TorchTrainer`` (one
    worker-group start-up, :mod:`pafo_ray.train.pooled`), in waves when not all fit. Off: one
    ``TorchTrainer`` per job, each ``fit()`` in its own thread, reading Ray Data shards."""
    if not jobs:
        return {}
    from pafo_ray import progress
    from pafo_ray.admission import infeasible, plan_line, trainer_demand
    from pafo_ray.console import say
    from pafo_ray.sizing import shared_budget

    tc = cfg.train
    progress.start(cfg.run.run_name, stage)
    pooled = tc.pool_jobs and tc.num_workers > 0
    # A pooled trainer's workers read their rows themselves: no Ray Data ingest to keep CPUs for.
    demand = trainer_demand(tc.num_workers, tc.cpus_per_worker, tc.use_gpu,
                            0.0 if pooled else tc.ingest_cpus)
    budget = shared_budget(cfg.run.ray) if tc.num_workers > 0 else None
    if budget is not None:
        error = infeasible(f"{stage}: each {'job' if pooled else 'trainer'}", demand,
                           budget.capacity, "Lower train.num_workers/cpus_per_worker, set "
                           "train.use_gpu=false, or add nodes.")
        if error:
            raise RuntimeError(error)
    if pooled:
        return _run_pooled(cfg, layout, stage, jobs, run_hash, demand, budget)
    if budget is not None:
        say(plan_line(stage, len(jobs), demand, budget.capacity))

    def admitted(job: TrainJob) -> dict:
        if budget is None:
            return _fit_one(cfg, layout, stage, job, run_hash)
        with budget.hold(demand):
            return _fit_one(cfg, layout, stage, job, run_hash)

    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix=stage) as pool:
        futures = {job.name: pool.submit(admitted, job) for job in jobs}
        return {name: future.result() for name, future in futures.items()}


def _run_pooled(cfg, layout: RunLayout, stage: str, jobs: list, run_hash: str, demand,
                budget) -> dict:
    """The jobs in pooled trainers (:mod:`pafo_ray.train.cohort`), with those of the stages
    running beside this one when they form a cohort."""
    from pafo_ray.train.cohort import Entry, cohort_for, run_waves

    entries = [Entry(stage, cfg, layout, job, run_hash) for job in jobs]
    cohort = cohort_for(stage)
    if cohort is not None:
        return cohort.submit(stage, entries, demand, budget)
    return run_waves(entries, demand, budget).get(stage, {})
