"""What a pooled trainer's driver does around its workers, whichever trainer runs them (one a
stage, :func:`pafo_ray.train.cohort.fit_pooled`, or the run's, :mod:`pafo_ray.train.runpool`):
how many workers (:func:`pool_width`), each job's payload (:func:`job_payloads`) and, after
the workers ran, each job's error or final model (:func:`collect_results`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Optional

from pafo_ray.storage import join
from pafo_ray.train.pooled import ERROR, job_dir, latest_checkpoint, read_text, remove_file

ROOM_CPUS = 2.0  # CPUs the run pool (pafo_ray.train.runpool) leaves for actor pools and trials


def pool_width(tc, cores: Optional[int] = None) -> Optional[int]:
    """Workers one pooled trainer of one-rank jobs starts at most (:func:`rank_plan`):
    ``train.pool_workers``, or when 0 one per core the cluster has (a local Ray: this
    machine's cores, not its raised logical CPUs; ``cores`` when given) per
    ``train.cpus_per_worker``; None (one worker a job) with GPUs, where each job has a GPU of
    its own."""
    if tc.pool_workers:
        return tc.pool_workers
    if tc.use_gpu:
        return None
    if cores is None:
        from pafo_ray.ray_session import data_parallelism

        cores = data_parallelism()
    return max(1, int(cores // max(1.0, tc.cpus_per_worker)))


def width_for(tc, cpus: float, cores: Optional[int] = None) -> Optional[int]:
    """The run pool's width on a local Ray of ``cpus`` CPUs (``cores`` cores: see
    :func:`pool_width`) for ``train`` settings ``tc``, or None:
    one-rank CPU jobs, pooled, and at least :data:`ROOM_CPUS` CPUs left beside it."""
    if not (tc.run_pool and tc.pool_jobs and tc.num_workers == 1 and not tc.use_gpu):
        return None
    width = pool_width(tc, cores) or 1
    return None if cpus - width * tc.cpus_per_worker < ROOM_CPUS else width


def job_payloads(entries: list) -> tuple:
    """``(payloads, pipelines)`` of ``entries``: what a pooled worker needs of each job (its
    rows, stage, checkpoint folder — its old error file removed — and failure settings), and
    each job's pipeline config."""
    from pafo_ray.train.runtime import fail_once, job_payload

    payloads, pipelines = [], []
    for e in entries:
        payload = job_payload(e.job)
        payload["uris"] = {"train": e.job.train, "val": e.job.val}
        payload["stage"] = e.stage
        payload["dir"] = job_dir(e.layout.ray_storage(e.stage), e.job.name, e.run_hash)
        payload["max_failures"] = e.cfg.train.max_failures
        payload["fail_once"] = fail_once(e.layout, e.stage, e.job, e.run_hash)
        remove_file(join(payload["dir"], ERROR))
        payloads.append(payload)
        pipelines.append(e.job.config or e.cfg.to_dict())
    return payloads, pipelines


def collect_results(entries: list, payloads: list, pipelines: list, started: float) -> dict:
    """After the workers ran ``entries``: each job's error (raised, naming the jobs) or its
    final checkpoint's model copied to its output; ``{stage: {job: result}}``."""
    tc = entries[0].cfg.train
    failed = [(e, read_text(join(p["dir"], ERROR))) for e, p in zip(entries, payloads)]
    failed = [(e, text) for e, text in failed if text]
    if failed:
        raise RuntimeError("; ".join(f"{e.stage}/{e.job.name}: failed {tc.max_failures + 1} "
                                     f"time(s), last: {text.splitlines()[0]}"
                                     for e, text in failed))
    finished = time.time()
    results: dict = {}
    for e, payload, pipeline in zip(entries, payloads, pipelines):
        epochs = e.job.epochs or pipeline["train"]["epochs"]
        results.setdefault(e.stage, {})[e.job.name] = _collect(e, payload["dir"], epochs,
                                                               started, finished)
    return results


def _collect(e, folder: str, epochs: int, started: float, finished: float) -> dict:
    """The final checkpoint of ``e`` (a cohort Entry): its model copied to the job's output, its
    metrics."""
    from pafo_ray.storage import local_copy

    last = latest_checkpoint(folder)
    metrics = json.loads(read_text(join(last, "metrics.json")) or "{}") if last else {}
    if not last or metrics.get("epoch") != epochs:
        raise RuntimeError(f"{e.stage}/{e.job.name}: training ended without its final "
                           f"checkpoint (epoch {epochs}; last: {last})")
    with tempfile.TemporaryDirectory() as tmp:
        local = local_copy(last, tmp)
        e.layout.save_folder(os.path.join(local, "model"), e.job.output)
    return {"name": e.job.name, "started": started, "finished": finished,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            "model": e.job.output}
