"""The driver of pooled trainers (:mod:`pafo_ray.train.pooled`): waves and stages side by side.

:func:`run_waves` fits jobs in as few worker groups as admission allows: as many jobs as the
cluster holds at once share one ``TorchTrainer``; the rest wait for the next wave. Each wave
holds its whole demand in the shared budget (:func:`pafo_ray.sizing.shared_budget`).

Stages that run side by side (teachers ‖ baselines) would each start their own worker group.
Inside :func:`side_by_side` they form a :class:`Cohort`: each stage's ``run_jobs`` hands its
jobs over and waits until every stage of the cohort has handed its jobs over or finished
without (skipped, failed before training, or trained already); then one thread fits all of
them together in one wave (or several, when not all fit) and each stage gets its own results.
A failure of the shared trainer fails every stage in it, with the job named.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Optional

from pafo_ray.train.pooled import pooled_train_func, rank_plan, world_size
from pafo_ray.train.pooljobs import collect_results, job_payloads, pool_width


@dataclass
class Entry:
    """One job of a stage: what the pooled trainer needs of it."""

    stage: str
    cfg: object      # the stage's PipelineConfig
    layout: object   # RunLayout
    job: object      # TrainJob
    run_hash: str


def fit_pooled(entries: list) -> dict:
    """Fit ``entries`` in one ``TorchTrainer``: ``train.num_workers`` ranks a job, or, for
    one-rank jobs, at most :func:`pool_width` workers that train their jobs in turn;
    ``{stage: {job: result}}``, each result as a per-job trainer gives it."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pafo_ray.train.runtime import is_startup_failure, startup_message

    first = entries[0]
    tc = first.cfg.train
    started = time.time()
    payloads, pipelines = job_payloads(entries)
    plan = rank_plan([tc.num_workers] * len(entries), pool_width(tc))
    scaling = ScalingConfig(num_workers=world_size(plan), use_gpu=tc.use_gpu,
                            resources_per_worker={"CPU": tc.cpus_per_worker})
    # controller_failure_limit bounds the worker-group start-ups that time out waiting for
    # resources (Ray's default: retry forever, a hang when they never come).
    run_config = RunConfig(
        name=f"pool-{first.run_hash}-{first.job.name}",
        storage_path=first.layout.ray_storage(first.stage),
        failure_config=FailureConfig(max_failures=tc.max_failures,
                                     controller_failure_limit=tc.start_retries))
    trainer = TorchTrainer(pooled_train_func, scaling_config=scaling, run_config=run_config,
                           train_loop_config={"jobs": payloads, "pipelines": pipelines,
                                              "ranks": plan})
    names = ", ".join(f"{e.stage}/{e.job.name}" for e in entries)
    try:
        trainer.fit()
    except Exception as exc:
        if not is_startup_failure(exc):
            raise RuntimeError(f"the pooled trainer of [{names}] failed: {exc}") from exc
        raise RuntimeError(startup_message(first.stage, f"[{names}] (one pooled trainer)",
                                            tc)) from exc
    return collect_results(entries, payloads, pipelines, started)


def run_waves(entries: list, demand, budget) -> dict:
    """Waves of as many entries as the cluster holds at once, each one pooled trainer that
    holds the wave's whole demand in the shared budget while it runs; ``{stage: {job: ...}}``."""
    from pafo_ray.admission import fits_at_once, scaled
    from pafo_ray.console import say
    from pafo_ray.train import runpool

    pool = runpool.active()
    stages = " ‖ ".join(dict.fromkeys(e.stage for e in entries))
    if pool is not None and pool.fits(entries):
        say(f"{stages}: {len(entries)} job(s) on the run's Ray Train worker group "
            f"({pool.width} worker(s), {'started now' if pool.thread is None else 'running'})")
        return pool.submit(entries)
    at_once = max(1, min(len(entries), fits_at_once(demand, budget.capacity)))
    waves = [entries[i:i + at_once] for i in range(0, len(entries), at_once)]
    tc = entries[0].cfg.train
    width = world_size(rank_plan([tc.num_workers] * at_once, pool_width(tc)))
    say(f"{stages}: {len(entries)} job(s) in {len(waves)} Ray Train worker group(s) of up to "
        f"{at_once} job(s) on {width} worker(s) ({demand.describe()} a job, "
        f"{budget.capacity.plan_cpus:g} CPUs)")
    results: dict = {}
    for wave in waves:
        with budget.hold(scaled(demand, len(wave))):
            for stage, found in fit_pooled(wave).items():
                results.setdefault(stage, {}).update(found)
    return results


class Cohort:
    """Stages side by side whose jobs share pooled trainers (see the module doc)."""

    def __init__(self, stages: list):
        self.order = list(stages)     # the pipeline's order: the plan line names them so
        self.expected = set(stages)   # stages that may still hand jobs over
        self.pending: list = []       # entries handed over, not yet started
        self.done: dict = {}          # stage -> its results, or the exception that failed it
        self.running = False
        self.cond = threading.Condition()

    def withdraw(self, stage: str) -> None:
        """``stage`` will hand no (more) jobs over."""
        with self.cond:
            self.expected.discard(stage)
            self.cond.notify_all()

    def submit(self, stage: str, entries: list, demand, budget) -> dict:
        """Hand ``stage``'s entries over; its results once they (and the others') trained."""
        with self.cond:
            self.pending += entries
            self.expected.discard(stage)
            self.cond.notify_all()
            while stage not in self.done:
                if not self.expected and not self.running and self.pending:
                    rank = {s: i for i, s in enumerate(self.order)}
                    batch = sorted(self.pending, key=lambda e: rank.get(e.stage, len(rank)))
                    self.pending, self.running = [], True
                    break
                self.cond.wait()
            else:
                return self._outcome(stage)
        stages = {e.stage for e in batch}
        try:
            outcome = run_waves(batch, demand, budget)
            found = {s: outcome.get(s, {}) for s in stages}
        except Exception as exc:  # every stage of the batch fails with it
            found = {s: exc for s in stages}
        with self.cond:
            self.done.update(found)
            self.running = False
            self.cond.notify_all()
            return self._outcome(stage)

    def _outcome(self, stage: str) -> dict:
        value = self.done.pop(stage)
        if isinstance(value, BaseException):
            raise value
        return value


_ACTIVE: Optional[Cohort] = None
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def side_by_side(stages: list):
    """While open, the pooled jobs of ``stages`` gather into shared trainers; call the
    yielded ``withdraw(stage)`` when a stage ends (whether it handed jobs over or not)."""
    global _ACTIVE
    cohort = Cohort(stages)
    with _ACTIVE_LOCK:
        _ACTIVE = cohort
    try:
        yield cohort.withdraw
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE = None


def cohort_for(stage: str) -> Optional[Cohort]:
    """The open cohort that still expects ``stage``'s jobs, if any."""
    with _ACTIVE_LOCK:
        cohort = _ACTIVE
    if cohort is None:
        return None
    with cohort.cond:
        return cohort if stage in cohort.expected else None
