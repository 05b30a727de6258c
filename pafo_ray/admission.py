"""Admission by resources: how many trainers, trials and actors a cluster holds at once.

A stage that launches trainers side by side (teachers ‖ baselines: one ``TorchTrainer`` per
model) must never ask for more than the cluster has: Ray then waits for resources that may
never come (worker groups time out and retry, or the trainers that did start hold every CPU
their own Ray Data reads wait for). Here, in small pure functions (no Ray):

- :func:`trainer_demand`: what one trainer holds (its workers' CPUs/GPUs) plus the CPUs kept
  free for its Ray Data ingest (``train.ingest_cpus``, which no worker takes);
- :class:`Capacity`: what the cluster has, or may autoscale to (``run.ray.max_cpus`` /
  ``max_gpus``);
- :func:`fits_at_once`, :class:`Budget`: how many fit, and a blocking budget every
  concurrently running stage draws from, so the queue covers all trainers alive at once;
- :func:`infeasible`: a demand no amount of waiting can meet, named with the cluster's
  resources, so the run fails at once instead of hanging;
- :func:`pool_size`, :func:`trials_at_once`: Ray Data actor pools and Tune trials capped by
  what fits (a pool never takes every CPU: its reads need one);
- :func:`actor_cpus`, :func:`actor_threads`: an inference actor's CPUs when not configured
  (a whole node less the reads' CPU) and the torch threads that use them.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

# Rough resident memory, for `pafo-ray plan` only (measured on the 2-core machine, RAY_NOTES:
# one real trainer ≈ 2.8 GiB peak RSS with the driver; a Ray Train worker alone ≈ 1.2 GiB).
WORKER_MEMORY_GIB = 1.2
ACTOR_MEMORY_GIB = 1.0
TRIAL_MEMORY_GIB = 0.6


@dataclass(frozen=True)
class Demand:
    """Resources one unit (a trainer, a trial, an actor) holds while it runs."""

    cpus: float = 0.0
    gpus: float = 0.0
    memory_gib: float = 0.0
    # The largest piece that must land on ONE node (a trainer's worker, a trial, an actor);
    # None: the whole unit (``cpus``).
    piece_cpus: Optional[float] = None

    @property
    def largest_piece(self) -> float:
        return self.cpus if self.piece_cpus is None else self.piece_cpus

    def describe(self) -> str:
        parts = [f"{_num(self.cpus)} CPU"]
        if self.gpus:
            parts.append(f"{_num(self.gpus)} GPU")
        return " + ".join(parts)


@dataclass(frozen=True)
class Capacity:
    """What the cluster has now (``cpus``/``gpus``) and what it may autoscale to (``max_*``;
    equal to the present values when no autoscaling is configured)."""

    cpus: float
    gpus: float = 0.0
    memory_gib: float = 0.0
    max_cpus: Optional[float] = None
    max_gpus: Optional[float] = None
    node_cpus: Optional[float] = None  # the largest node's CPUs (None: one node holds them all)

    @property
    def largest_node_cpus(self) -> float:
        return self.node_cpus if self.node_cpus is not None else self.plan_cpus

    @property
    def plan_cpus(self) -> float:
        return max(self.cpus, self.max_cpus or 0.0)

    @property
    def plan_gpus(self) -> float:
        return max(self.gpus, self.max_gpus or 0.0)

    @property
    def autoscales(self) -> bool:
        return self.plan_cpus > self.cpus or self.plan_gpus > self.gpus

    def describe(self) -> str:
        text = f"{_num(self.cpus)} CPUs, {_num(self.gpus)} GPUs"
        if self.autoscales:
            text += f" (autoscaling to {_num(self.plan_cpus)} CPUs, {_num(self.plan_gpus)} GPUs)"
        return text


def capacity_from(resources: dict, max_cpus: Optional[float] = None,
                  max_gpus: Optional[float] = None) -> Capacity:
    """A :class:`Capacity` from ``ray.cluster_resources()``'s dict (memory in bytes)."""
    return Capacity(cpus=float(resources.get("CPU", 0.0)), gpus=float(resources.get("GPU", 0.0)),
                    memory_gib=float(resources.get("memory", 0.0)) / 2**30,
                    max_cpus=max_cpus, max_gpus=max_gpus)


def trainer_demand(num_workers: int, cpus_per_worker: float, use_gpu: bool,
                   ingest_cpus: float) -> Demand:
    """One ``TorchTrainer``: ``num_workers`` × (``cpus_per_worker`` CPUs, 1 GPU if
    ``use_gpu``) plus ``ingest_cpus`` kept free for its Ray Data reads. ``num_workers=0``
    fits in the driver (local mode, no Ray Data): it holds nothing."""
    if num_workers <= 0:
        return Demand()
    return Demand(cpus=num_workers * cpus_per_worker + ingest_cpus,
                  gpus=float(num_workers) if use_gpu else 0.0,
                  memory_gib=num_workers * WORKER_MEMORY_GIB,
                  piece_cpus=cpus_per_worker)


def scaled(demand: Demand, count: int) -> Demand:
    """``count`` units of ``demand`` held as one (a pooled trainer of ``count`` jobs)."""
    return Demand(cpus=demand.cpus * count, gpus=demand.gpus * count,
                  memory_gib=demand.memory_gib * count, piece_cpus=demand.largest_piece)


def fits_at_once(demand: Demand, capacity: Capacity) -> int:
    """How many units of ``demand`` the capacity holds side by side (0: not even one)."""
    limits = []
    if demand.cpus > 0:
        limits.append(math.floor(capacity.plan_cpus / demand.cpus + 1e-9))
    if demand.gpus > 0:
        limits.append(math.floor(capacity.plan_gpus / demand.gpus + 1e-9))
    return min(limits) if limits else 1_000_000


def infeasible(what: str, demand: Demand, capacity: Capacity, hint: str = "") -> Optional[str]:
    """The error for a ``demand`` one unit of which can never run on ``capacity``, or None:
    more than the cluster has, or (no autoscaling) a piece bigger than its largest node."""
    node = capacity.node_cpus
    if (fits_at_once(demand, capacity) >= 1 and node is not None and not capacity.autoscales
            and demand.largest_piece > node + 1e-9):
        return (f"{what} needs {_num(demand.largest_piece)} CPUs on one node, but the largest "
                f"node has {_num(node)} (the cluster has {capacity.describe()} in all): it can "
                f"never be placed" + (f". {hint}" if hint else ""))
    if fits_at_once(demand, capacity) >= 1:
        return None
    short = []
    if demand.gpus > capacity.plan_gpus:
        short.append(f"{_num(demand.gpus)} GPU")
    if demand.cpus > capacity.plan_cpus:
        short.append(f"{_num(demand.cpus)} CPUs")
    scaling = ("" if capacity.autoscales else
               "; no autoscaling is configured (run.ray.max_cpus / run.ray.max_gpus)")
    return (f"{what} asks for {demand.describe()} per unit, but the cluster has "
            f"{capacity.describe()}{scaling}: {' and '.join(short)} can never be granted"
            + (f". {hint}" if hint else ""))


def plan_line(label: str, count: int, demand: Demand, capacity: Capacity,
              at_once: Optional[int] = None) -> str:
    """``teachers: 3 of 6 at once on 4 CPUs (2 CPU each); the rest queued``."""
    fit = fits_at_once(demand, capacity) if at_once is None else at_once
    on = f"{_num(capacity.plan_cpus)} CPUs" + (
        f", {_num(capacity.plan_gpus)} GPUs" if demand.gpus else "")
    each = f"{demand.describe()} each"
    if fit >= count:
        return f"{label}: all {count} at once on {on} ({each})"
    return f"{label}: {fit} of {count} at once on {on} ({each}); the rest queued"


def pool_size(wanted: int, cpus_per_actor: float, gpus_per_actor: float,
              capacity: Capacity, reserve_cpus: float = 1.0) -> int:
    """Actors of a Ray Data pool: at most ``wanted``, and never so many that the pool leaves
    less than ``reserve_cpus`` for the read tasks feeding it (a full pool starves them)."""
    room = Capacity(cpus=max(0.0, capacity.plan_cpus - reserve_cpus), gpus=capacity.plan_gpus)
    return max(1, min(wanted, fits_at_once(Demand(cpus_per_actor, gpus_per_actor), room)))


def actor_cpus(cpus_per_actor: Optional[float], gpus_per_actor: float, capacity: Capacity,
               reserve_cpus: float = 1.0) -> float:
    """CPUs one inference actor asks for: ``cpus_per_actor`` when set; else 1 beside a GPU (the
    GPU does the work); else the largest node's CPUs less ``reserve_cpus`` for the reads, at
    least 1: one actor per node whose torch threads use all its cores (one process of N
    threads keeps one copy of the model and gets every core even when few blocks are queued)."""
    if cpus_per_actor is not None:
        return float(cpus_per_actor)
    if gpus_per_actor > 0:
        return 1.0
    return max(1.0, math.floor(capacity.largest_node_cpus - reserve_cpus))


def actor_threads(cpus: float, cores: Optional[int] = None) -> int:
    """Torch threads for a process given ``cpus`` CPUs: ``int(cpus)``, at most the ``cores``
    this process may run on (default: its CPU affinity), at least 1. Ray's logical CPUs may
    exceed the cores (a local Ray starts with at least 8), and threads beyond the cores
    only contend."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
    return max(1, min(int(cpus), cores))


def trials_at_once(wanted: int, cpus_per_trial: float, gpus_per_trial: float,
                   capacity: Capacity) -> int:
    """Tune's ``max_concurrent_trials``: at most ``wanted``, at most what fits, at least 1."""
    return max(1, min(wanted, fits_at_once(Demand(cpus_per_trial, gpus_per_trial), capacity)))


class Budget:
    """CPUs and GPUs shared by every trainer alive at once (both stages of teachers ‖
    baselines draw from one). :meth:`hold` blocks until the demand fits, so a trainer
    starts only when its workers and its reads have room."""

    def __init__(self, capacity: Capacity):
        self.capacity = capacity
        self._free_cpus = capacity.plan_cpus
        self._free_gpus = capacity.plan_gpus
        self._cond = threading.Condition()
        self.running = 0
        self.peak = 0

    def _fits(self, demand: Demand) -> bool:
        # Nothing running: one unit always starts (a demand above capacity was refused before).
        return self.running == 0 or (demand.cpus <= self._free_cpus + 1e-9
                                     and demand.gpus <= self._free_gpus + 1e-9)

    @contextmanager
    def hold(self, demand: Demand):
        with self._cond:
            self._cond.wait_for(lambda: self._fits(demand))
            self._free_cpus -= demand.cpus
            self._free_gpus -= demand.gpus
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            with self._cond:
                self._free_cpus += demand.cpus
                self._free_gpus += demand.gpus
                self.running -= 1
                self._cond.notify_all()


def _num(value: float) -> str:
    return f"{value:g}"
