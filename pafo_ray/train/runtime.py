"""What the driver and the Ray Train workers both need of a training job: its spec
(:class:`TrainJob`, :func:`job_payload`), checkpoint state loading, the failure-injection test
hook (``PAFO_RAY_FAIL_AT_EPOCH``) and the reading of worker-group start-up failures. Shared by
the per-job trainers (:mod:`pafo_ray.train.ray_train`) and the pooled ones
(:mod:`pafo_ray.train.cohort`, :mod:`pafo_ray.train.pooled`), so neither imports the other's
module for them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from pafo_ray.layout import RunLayout
from pafo_ray.storage import split_uri

FAIL_ENV = "PAFO_RAY_FAIL_AT_EPOCH"


@dataclass
class TrainJob:
    name: str
    objective: dict
    train: list                      # parquet URIs of training rows
    val: list                        # parquet URIs of validation rows
    output: str                      # the final model's folder (a RunLayout path)
    init_from: Optional[str] = None  # a saved model folder to start from
    epochs: Optional[int] = None
    targets: Optional[dict] = None   # distillation target settings (pafo)
    config: Optional[dict] = None    # this job's pipeline config (None: the stage's)
    info: dict = field(default_factory=dict)



def load_train_state(path: str) -> dict:
    """A checkpoint's ``train_state.pt`` (epoch, optimizer and objective state): tensors and
    plain containers only (``weights_only=True``). A checkpoint comes from storage that
    others may write; a pickled object in it must not run code on the worker."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise RuntimeError(f"{path}: refused: it holds more than tensors and plain values, "
                           "which only a crafted file does (loaded with weights_only=True). "
                           "Delete that checkpoint to start the job afresh.") from None



def maybe_fail(fail_once: Optional[dict], epoch: int) -> None:
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



def fail_once(layout: RunLayout, stage: str, job: TrainJob, run_hash: str) -> Optional[dict]:
    value = os.environ.get(FAIL_ENV, "").strip()
    if not value:
        return None
    name, _, epoch = value.rpartition(":")
    if name and name != job.name:
        return None
    return {"epoch": int(epoch), "marker": layout.fail_marker(stage, job.name, run_hash)}



def job_payload(job: TrainJob) -> dict:
    """What a worker needs of a job (its rows, output and config travel separately)."""
    return {k: v for k, v in asdict(job).items()
            if k not in ("train", "val", "output", "info", "config")}



STARTUP_ERRORS = ("WorkerGroupStartupTimeoutError", "WorkerGroupStartupFailedError",
                   "InsufficientClusterResourcesError")


def is_startup_failure(exc: BaseException) -> bool:
    """Ray Train gave up starting the worker group (V2 raises ``ControllerError`` whose
    ``controller_failure`` is the start-up error)."""
    todo, seen = [exc], set()
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if type(err).__name__ in STARTUP_ERRORS or "worker group startup timed out" in str(err):
            return True
        todo += [err.__cause__, err.__context__, getattr(err, "controller_failure", None)]
    return False


def startup_message(stage: str, name: str, tc) -> str:
    import ray

    from pafo_ray.admission import capacity_from

    total = capacity_from(ray.cluster_resources())
    free = capacity_from(ray.available_resources())
    timeout = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    asked = (f"{tc.num_workers} worker(s) × {tc.cpus_per_worker:g} CPU"
             + (" + 1 GPU" if tc.use_gpu else ""))
    return (f"{stage}/{name}: Ray Train could not start its workers ({asked}) in "
            f"{tc.start_retries + 1} tries of {timeout} s (train.start_retries="
            f"{tc.start_retries}, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S); the cluster has "
            f"{total.describe()}, {free.cpus:g} CPUs and {free.gpus:g} GPUs free now. Something "
            "else holds them, or no node can hold one worker: see `pafo-ray plan`.")


EPOCH_KEYS = ("epoch", "train_loss", "train_seconds", "steps", "val_accuracy")


def epoch_record(metrics: dict) -> dict:
    """What ``epoch_history`` keeps of one epoch's metrics."""
    return {k: metrics[k] for k in EPOCH_KEYS if k in metrics}


def write_checkpoint_files(folder: str, model, optimizer, objective, metrics: dict,
                           done: int) -> None:
    """A checkpoint's files in ``folder``: ``model/`` (with its margin stats) and
    ``train_state.pt`` (epoch, optimizer and objective state)."""
    import json

    import torch

    model.save_pretrained(os.path.join(folder, "model"))
    torch.save({"epoch": done, "optimizer": optimizer.state_dict(),
                "objective": objective.state_dict()}, os.path.join(folder, "train_state.pt"))
    stats = {"val_margin_mean": metrics["val_margin_mean"],
             "val_margin_std": metrics["val_margin_std"], "epoch": done,
             "val_accuracy": metrics.get("val_accuracy")}
    with open(os.path.join(folder, "model", "margin_stats.json"), "w") as fh:
        json.dump(stats, fh)
