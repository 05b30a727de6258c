"""Ray Train: the per-worker ``train_func`` and a driver that runs several trainers at once.

Each model (a teacher, vanilla, a baseline, the student) is one ``TorchTrainer`` with its
own ``ScalingConfig``; :func:`run_jobs` fits them concurrently from one driver, each
``fit()`` in its own thread (RAY_NOTES: faster than a task per fit). Data reaches the
workers as Ray Data shards; a restarted worker loads its last checkpoint and continues
from the next epoch (Ray does not resume the epoch for you).

``train.num_workers=0`` runs each fit in the driver (Ray Train's local mode, for tests). Local
mode keeps its state in one process-wide slot, so those fits run one at a time.

Test hook: env ``PAFO_RAY_FAIL_AT_EPOCH=<epoch>`` (every job) or ``<job>:<epoch>`` (one job),
read on the driver, makes rank 0 raise once right after reporting that epoch's checkpoint;
a marker file next to the Ray run keeps the retry from failing again. It exists so a test
can prove that a failed worker resumes from its checkpoint (``FailureConfig``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

import pandas as pd

from pafo_ray.stages.base import StageContext
from pafo_ray.storage import RunDir, download_dir, split_uri, upload_dir

FAIL_ENV = "PAFO_RAY_FAIL_AT_EPOCH"
# Ray Train's local mode (num_workers=0) keeps the running fit in a module global: two fits
# in threads of one process would read each other's datasets and checkpoints.
_LOCAL_MODE_LOCK = threading.Lock()


@dataclass
class TrainJob:
    name: str
    objective: dict
    train: list                      # parquet URIs of training rows
    val: list                        # parquet URIs of validation rows
    output: list                     # path parts under the run for the final model
    init_from: Optional[str] = None  # a saved model folder to start from
    epochs: Optional[int] = None
    targets: Optional[dict] = None   # distillation target settings (pafo)
    config: Optional[dict] = None    # this job's pipeline config (None: the stage's)
    info: dict = field(default_factory=dict)


def load_users(run_dir: RunDir) -> list:
    import pyarrow.parquet as pq

    with run_dir.fs.open_input_file(run_dir.fs_path("prepare", "users.parquet")) as fh:
        users = pq.read_table(fh, columns=["user_id"]).column("user_id").to_pylist()
    return sorted(str(u) for u in users)


def build_model(cfg, users: list, cache, init_from: Optional[str]):
    from pafo_ray.models import RewardModel

    if init_from:
        with tempfile.TemporaryDirectory() as tmp:
            local = _local_model(init_from, tmp)
            return RewardModel.from_pretrained(local)
    dim = int(cache.vectors.shape[1]) if cache is not None else None
    return RewardModel.from_config(cfg.model, users, input_dim=dim)


def _local_model(uri: str, tmp: str) -> str:
    if "://" not in uri:
        return uri
    from pyarrow import fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return tmp


def train_func(config: dict) -> None:
    """One Ray Train worker: read the shard, train, report metrics and checkpoints."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    from pafo_ray.config import config_from_dict
    from pafo_ray.data.schema import group_names
    from pafo_ray.train.arrays import build_rows, frame_from_shard, read_cache, user_map
    from pafo_ray.train.loop import Objective, PairScorer, fit
    from pafo_ray.train.targets import distill_targets

    worker_started_at = time.time()
    cfg = config_from_dict(config["pipeline"])
    job = config["job"]
    run_dir = RunDir(cfg.run.storage_path, cfg.run.run_name)
    names = group_names(cfg.prepare.num_groups)
    users = load_users(run_dir)
    cache = read_cache(run_dir.uri("embed", "cache")) if cfg.model.mode == "frozen" else None
    if job.get("uris"):  # local mode: this process reads the parquet itself
        train_frame, val_frame = (read_rows(job["uris"][k]) for k in ("train", "val"))
    else:
        train_frame = frame_from_shard(ray.train.get_dataset_shard("train"))
        val_frame = frame_from_shard(ray.train.get_dataset_shard("val"))
    if job.get("targets") is not None:
        train_frame = distill_targets(train_frame, job["targets"], names)
    torch.manual_seed(cfg.run.seed)  # the same init on every worker and every rerun
    model = build_model(cfg, users, cache, job.get("init_from"))
    umap = user_map(model.user_ids)
    train_rows = build_rows(train_frame, users=umap, group_names=names, cache=cache,
                            encoder=model.encoder, label_margin=cfg.train.use_margin)
    val_rows = build_rows(val_frame, users=umap, group_names=names, cache=cache,
                          encoder=model.encoder)
    scorer = ray.train.torch.prepare_model(PairScorer(model))
    device = ray.train.torch.get_device()
    objective = Objective(**job["objective"])
    epochs = job.get("epochs") or cfg.train.epochs
    start_epoch, optimizer_state = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            from pafo_ray.models import RewardModel

            saved = RewardModel.from_pretrained(os.path.join(folder, "model"))
            model.load_state_dict(saved.state_dict())
            state = torch.load(os.path.join(folder, "train_state.pt"), weights_only=False)
            start_epoch, optimizer_state = state["epoch"], state["optimizer"]
            objective.load_state_dict(state.get("objective", {}))
    rank = ray.train.get_context().get_world_rank()

    history: list = []

    def on_epoch(epoch: int, metrics: dict, optimizer) -> None:
        done = epoch + 1
        history.append({k: metrics[k] for k in ("epoch", "train_loss", "train_seconds", "steps",
                                                "val_accuracy") if k in metrics})
        if done % cfg.train.checkpoint_every and done != epochs:
            # A report is a round trip to the controller (~1-2 s with several trainers on 2
            # cores, where an epoch of a head takes milliseconds): every epoch's metrics go
            # with the next checkpoint's report instead (``epoch_history``).
            return
        # Wall-clock times on the worker: when this attempt started and when it reported.
        metrics = {**metrics, "started_epoch": start_epoch, "epoch_history": json.dumps(history),
                   "worker_started_at": worker_started_at, "reported_at": time.time()}
        history.clear()
        with _checkpoint_dir(job.get("checkpoint_root")) as tmp:
            if rank == 0:
                model.save_pretrained(os.path.join(tmp, "model"))
                torch.save({"epoch": done, "optimizer": optimizer.state_dict(),
                            "objective": objective.state_dict()}, os.path.join(tmp, "train_state.pt"))
                stats = {"val_margin_mean": metrics["val_margin_mean"],
                         "val_margin_std": metrics["val_margin_std"], "epoch": done}
                with open(os.path.join(tmp, "model", "margin_stats.json"), "w") as fh:
                    json.dump(stats, fh)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
                _maybe_fail(job.get("fail_once"), done)
            else:
                ray.train.report(metrics)

    fit(scorer, train_rows, val_rows, objective, epochs=epochs, batch_size=cfg.train.batch_size,
        lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, group_names=names, cache=cache,
        seed=cfg.run.seed, device=device, start_epoch=start_epoch,
        optimizer_state=optimizer_state, on_epoch=on_epoch)


def read_rows(uris: list) -> pd.DataFrame:
    """Prepared (or margin) rows under ``uris`` as one frame in ``row_id`` order, with the
    hive partition values of each URI's own path (``.../split=train/group=minority``) as
    columns, as Ray Data's ``read_parquet`` gives them."""
    from pafo_ray.train.inmemory import read_frame

    parts = []
    for uri in uris:
        frame = read_frame(uri)
        for part in uri.rstrip("/").split("?")[0].split("/"):
            key, eq, value = part.partition("=")
            if eq and key not in frame:
                frame[key] = value
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if "row_id" in frame:
        frame = frame.sort_values("row_id", kind="stable", ignore_index=True)
    return frame


def _checkpoint_dir(root: Optional[str]):
    """Where a checkpoint is written before ``report``. A real worker uploads it during
    ``report``, so a temporary folder will do; local mode keeps only the path, so the
    folder (under ``root``) must live until the driver has copied the final model."""
    if root:
        return contextlib.nullcontext(tempfile.mkdtemp(dir=root))
    return tempfile.TemporaryDirectory()


def _maybe_fail(fail_once: Optional[dict], epoch: int) -> None:
    """The ``PAFO_RAY_FAIL_AT_EPOCH`` test hook: raise once after ``epoch``'s checkpoint."""
    if not fail_once or fail_once["epoch"] != epoch:
        return
    from pyarrow import fs as pafs

    fs, path = split_uri(fail_once["marker"])
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return  # failed once already: this is the retry
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(str(epoch).encode())
    raise RuntimeError(f"{FAIL_ENV}: injected worker failure after the checkpoint of epoch {epoch}")


def _fail_once(ctx: StageContext, stage: str, job: TrainJob, run_hash: str) -> Optional[dict]:
    value = os.environ.get(FAIL_ENV, "").strip()
    if not value:
        return None
    name, _, epoch = value.rpartition(":")
    if name and name != job.name:
        return None
    return {"epoch": int(epoch),
            "marker": ctx.run_dir.uri("_ray", stage, f"{job.name}-{run_hash}.failed_once")}


def _fit_one(ctx: StageContext, stage: str, job: TrainJob, run_hash: str) -> dict:
    if ctx.cfg.train.num_workers > 0:
        return _fit_ray(ctx, stage, job, run_hash)
    with _LOCAL_MODE_LOCK, tempfile.TemporaryDirectory() as root:
        return _fit_ray(ctx, stage, job, run_hash, checkpoint_root=root)


def _fit_ray(ctx: StageContext, stage: str, job: TrainJob, run_hash: str,
             checkpoint_root: Optional[str] = None) -> dict:
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = ctx.cfg.train
    started = time.time()
    local = checkpoint_root is not None
    # Real workers get Ray Data shards. Local mode (num_workers=0: tests, in-process benchmark
    # runs) has one process that reads the parquet itself: two Ray Data executions per fit
    # cost ~20 s on 2 cores, ten times the fit of a head on cached embeddings.
    datasets = None if local else {"train": ray.data.read_parquet(job.train),
                                   "val": ray.data.read_parquet(job.val)}
    scaling = ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                            resources_per_worker={"CPU": tc.cpus_per_worker}
                            if tc.num_workers else None)
    run_config = RunConfig(
        name=f"{job.name}-{run_hash}", storage_path=ctx.run_dir.uri("_ray", stage),
        failure_config=FailureConfig(max_failures=tc.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2))
    payload = {k: v for k, v in asdict(job).items()
               if k not in ("train", "val", "output", "info", "config")}
    payload["checkpoint_root"] = checkpoint_root
    payload["uris"] = {"train": job.train, "val": job.val} if local else None
    payload["fail_once"] = _fail_once(ctx, stage, job, run_hash)
    trainer = TorchTrainer(train_func, train_loop_config={"pipeline": job.config or ctx.cfg.to_dict(),
                                                          "job": payload},
                           scaling_config=scaling, run_config=run_config, datasets=datasets,
                           dataset_config=None if local else DataConfig(datasets_to_split=["train"]))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}/{job.name}: training ended without a checkpoint "
                           f"({result.error})")
    with tempfile.TemporaryDirectory() as tmp:
        result.checkpoint.to_directory(tmp)
        upload_dir(os.path.join(tmp, "model"), ctx.run_dir, *job.output)
    return {"name": job.name, "started": started, "finished": time.time(),
            "metrics": {k: v for k, v in (result.metrics or {}).items()
                        if isinstance(v, (int, float, str))},
            "model": ctx.run_dir.uri(*job.output)}


def run_jobs(ctx: StageContext, stage: str, jobs: list, run_hash: str) -> dict:
    """Fit every job concurrently (one thread per TorchTrainer); results by job name."""
    if not jobs:
        return {}
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix=stage) as pool:
        futures = {job.name: pool.submit(_fit_one, ctx, stage, job, run_hash) for job in jobs}
        return {name: future.result() for name, future in futures.items()}


def local_model_dir(run_dir: RunDir, tmp: str, *parts: str) -> str:
    return download_dir(run_dir, tmp, *parts)
