"""One Ray Train worker group for every stage of a run that trains (``train.run_pool``).

A pooled trainer (:mod:`pafo_ray.train.cohort`) starts a worker group per stage: on the
2-core demo, teachers ‖ baselines and distill each paid ~11 s of worker-group start-up for
seconds of training. With a run pool the first stage that trains starts ONE ``TorchTrainer``
whose workers stay up between stages: each worker asks a mailbox (a Ray actor) for its next
jobs, trains them (:func:`pafo_ray.train.pooled._run_job`: the same checkpoints, retries and
progress reports as a pooled trainer) and says each is done; the driver's stage posts its jobs
and waits for them, then collects the models as a pooled trainer's driver does. The pool closes
after the run's last stage that trains, or when the run ends (a failure included). In a run,
its worker group starts as soon as ``embed`` is done (:meth:`RunPool.start`), so that its
start-up overlaps ``regularize`` and ``groups`` (not before: embed's actor pool may want every
CPU but one).

Only where it cannot starve later stages: a local Ray started by this process (its logical CPUs
are raised to at least 8 over the cores), one-rank CPU jobs (``train.num_workers=1``, no GPU),
and at least 2 CPUs left beside the pool for the actor pools and Tune trials that run while it
waits. Elsewhere (a cluster, GPUs, DDP jobs) every stage starts its own pooled trainer.

A worker that dies takes the worker group with it: Ray Train restarts the group
(``train.max_failures``) and the new workers ask the mailbox again, which hands them every job
of their rank not yet done (each resumes from its own last checkpoint). When the group is gone
for good the waiting stage fails with its error instead of waiting on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Optional

log = logging.getLogger("pafo_ray")

TRAINING_STAGES = ("teachers", "baselines", "distill")
WAIT_S = 5.0      # how long one wait on the mailbox lasts before the driver checks the group


class Mailbox:
    """Jobs by worker rank (a Ray actor, async): ``post`` hands jobs out, a worker's ``next``
    waits for jobs of its rank not yet done (all of them again after a restart), ``finish``
    marks one done, ``wait_done`` waits for a stage's jobs, ``close`` sends the workers home."""

    def __init__(self):
        self.items: dict = {}      # key -> (rank, job payload, pipeline)
        self.finished: set = set()
        self.closed = False
        self._cond = None

    def _condition(self):
        import asyncio

        if self._cond is None:  # made inside the actor's event loop
            self._cond = asyncio.Condition()
        return self._cond

    def _open(self, rank: int) -> list:
        return [(key, job, pipeline) for key, (r, job, pipeline) in self.items.items()
                if r == rank and key not in self.finished]

    async def post(self, items: list) -> None:
        async with self._condition():
            for key, rank, job, pipeline in items:
                self.items[key] = (rank, job, pipeline)
            self._condition().notify_all()

    async def next(self, rank: int):
        async with self._condition():
            await self._condition().wait_for(lambda: self.closed or self._open(rank))
            return None if self.closed else self._open(rank)

    async def finish(self, key: str) -> None:
        async with self._condition():
            self.finished.add(key)
            self._condition().notify_all()

    async def wait_done(self, keys: list, timeout: float) -> bool:
        import asyncio

        async with self._condition():
            try:
                await asyncio.wait_for(self._condition().wait_for(
                    lambda: self.finished.issuperset(keys)), timeout)
            except asyncio.TimeoutError:
                return False
            return True

    async def close(self) -> None:
        async with self._condition():
            self.closed = True
            self._condition().notify_all()


def run_pool_func(config: dict) -> None:
    """A run pool's worker: train the jobs the mailbox hands its rank until it closes."""
    import ray
    import ray.train
    import ray.train.torch  # noqa: F401  (get_device)

    from pafo_ray.train.pooled import _run_job

    mailbox = config["mailbox"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    info = {"world_rank": rank, "world_size": context.get_world_size(),
            "experiment": context.get_experiment_name()}
    while True:
        items = ray.get(mailbox.next.remote(rank))
        if items is None:
            return
        for key, job, pipeline in items:
            _run_job({"ranks": [[rank]], "jobs": [job], "pipelines": [pipeline]}, 0, 0, None,
                     info)
            ray.get(mailbox.finish.remote(key))


class RunPool:
    """The run's worker group: started on the first :meth:`submit`, closed by :meth:`close`."""

    def __init__(self, tc, width: int):
        self.tc, self.width = tc, width
        self.started_at: Optional[float] = None
        self.mailbox = None
        self.thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None
        self.ended = threading.Event()
        self.batches = 0
        self.lock = threading.Lock()

    def fits(self, entries: list) -> bool:
        """Whether ``entries`` can train on this pool (one-rank CPU jobs of its worker size)."""
        return all(e.cfg.train.num_workers == 1 and not e.cfg.train.use_gpu
                   and e.cfg.train.cpus_per_worker == self.tc.cpus_per_worker for e in entries)

    def start(self, storage_path: str) -> None:
        """Start the worker group now (experiment folder under ``storage_path``), if not yet:
        its ~11 s start-up then overlaps the driver's work before the first stage that trains."""
        with self.lock:
            if self.thread is None:
                self._start(storage_path)

    def _start(self, storage_path: str) -> None:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        self.mailbox = ray.remote(Mailbox).options(num_cpus=0).remote()
        trainer = TorchTrainer(
            run_pool_func, train_loop_config={"mailbox": self.mailbox},
            scaling_config=ScalingConfig(num_workers=self.width, use_gpu=False,
                                         resources_per_worker={"CPU": self.tc.cpus_per_worker}),
            run_config=RunConfig(
                name=f"runpool-{int(time.time() * 1000)}", storage_path=storage_path,
                failure_config=FailureConfig(max_failures=self.tc.max_failures,
                                             controller_failure_limit=self.tc.start_retries)))
        self.started_at = time.time()

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting stage
                self.error = exc
            finally:
                self.ended.set()

        self.thread = threading.Thread(target=fit, name="run-pool", daemon=True)
        self.thread.start()

    def submit(self, entries: list) -> dict:
        """Train ``entries`` on the pool's workers (rank ``i mod width``); ``{stage: {job:
        result}}`` as :func:`pafo_ray.train.cohort.fit_pooled` gives it."""
        import ray

        from pafo_ray.train.pooljobs import collect_results, job_payloads
        from pafo_ray.train.runtime import is_startup_failure, startup_message

        with self.lock:
            if self.thread is None:
                self._start(entries[0].layout.ray_storage(entries[0].stage))
            batch, self.batches = self.batches, self.batches + 1
        started = time.time()
        payloads, pipelines = job_payloads(entries)
        keys = [f"{batch}-{i}" for i in range(len(entries))]
        ray.get(self.mailbox.post.remote([(key, i % self.width, payload, pipeline)
                                          for i, (key, payload, pipeline)
                                          in enumerate(zip(keys, payloads, pipelines))]))
        names = ", ".join(f"{e.stage}/{e.job.name}" for e in entries)
        while not ray.get(self.mailbox.wait_done.remote(keys, WAIT_S)):
            if self.ended.is_set():
                exc = self.error or RuntimeError("its trainer returned")
                if is_startup_failure(exc):
                    raise RuntimeError(startup_message(entries[0].stage, f"[{names}] (the run's "
                                                       "worker group)", self.tc)) from exc
                raise RuntimeError(f"the run's worker group stopped before [{names}] were "
                                   f"trained: {exc}") from exc
        return collect_results(entries, payloads, pipelines, started)

    def close(self, timeout: float = 60.0) -> None:
        if self.thread is None:
            return
        import ray

        try:
            ray.get(self.mailbox.close.remote(), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the group may be gone already
            log.warning("closing the run's worker group: %s", exc)
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("the run's worker group did not stop within %.0f s", timeout)


_ACTIVE: Optional[RunPool] = None
_ACTIVE_LOCK = threading.Lock()


def wanted(cfg) -> Optional[int]:
    """The run pool's width (workers) when ``cfg`` may use one here, else None."""
    from pafo_ray import ray_session
    from pafo_ray.sizing import cluster_capacity
    from pafo_ray.train.pooljobs import width_for

    if ray_session.local_cores() is None:  # not a local Ray of this process: a cluster
        return None
    return width_for(cfg.train, cluster_capacity(cfg.run.ray).cpus)


@contextlib.contextmanager
def opened(cfg):
    """While open, pooled trainers of one-rank CPU jobs run on one worker group (started by
    the first of them); a no-op when one is open already or :func:`wanted` says no. Yields
    whether this scope opened the pool (only then may its owner :func:`close` it early)."""
    global _ACTIVE
    width = wanted(cfg)
    with _ACTIVE_LOCK:
        mine = _ACTIVE is None and width is not None
        if mine:
            _ACTIVE = RunPool(cfg.train, width)
    try:
        yield mine
    finally:
        if mine:
            close()


def close() -> None:
    """Close the open run pool (if any): its workers return, its trainer ends."""
    global _ACTIVE
    with _ACTIVE_LOCK:
        pool, _ACTIVE = _ACTIVE, None
    if pool is not None:
        pool.close()


def active() -> Optional[RunPool]:
    with _ACTIVE_LOCK:
        return _ACTIVE
