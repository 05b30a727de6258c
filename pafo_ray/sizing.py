"""What a config asks of the cluster, per stage, and the one budget concurrent trainers share.

Built on the pure arithmetic of :mod:`pafo_ray.admission`: :func:`stage_rows` (the table of
``pafo-ray plan``), :func:`preflight` (a run fails at once, before any stage, when one unit
of some stage can never be scheduled), :func:`shared_budget` (teachers ‖ baselines draw from
one) and :func:`cluster_capacity` (``ray.cluster_resources()`` plus the configured autoscaling
ceiling). Only :func:`cluster_capacity` and :func:`shared_budget` touch Ray.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional

from pafo_ray.admission import (
    ACTOR_MEMORY_GIB,
    TRIAL_MEMORY_GIB,
    Budget,
    Capacity,
    Demand,
    actor_cpus,
    capacity_from,
    fits_at_once,
    infeasible,
    plan_line,
    pool_size,
    trainer_demand,
    trials_at_once,
)

_BUDGET: Optional[Budget] = None
_BUDGET_LOCK = threading.Lock()


@dataclass
class StageRow:
    """One line of the plan: ``units`` of ``demand`` of which ``at_once`` run side by side."""

    stage: str
    what: str
    units: int
    demand: Demand
    at_once: int
    error: Optional[str] = None

    def cells(self, capacity: Capacity) -> list:
        cpus, gpus = self.demand.cpus * self.at_once, self.demand.gpus * self.at_once
        memory = self.demand.memory_gib * self.at_once
        when = ("cannot run" if self.error else
                "all at once" if self.at_once >= self.units else f"{self.at_once} at once, rest queued")
        return [self.stage, f"{self.units} {self.what}", self.demand.describe(),
                f"{cpus:g}", f"{gpus:g}", f"{memory:.1f}", when]


def cluster_capacity(ray_cfg) -> Capacity:
    """The connected cluster's CPUs/GPUs/memory, with ``run.ray.max_cpus``/``max_gpus``."""
    import dataclasses

    import ray

    nodes = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    return dataclasses.replace(capacity_from(ray.cluster_resources(), ray_cfg.max_cpus,
                                             ray_cfg.max_gpus),
                               node_cpus=max(nodes) if nodes else None)


def local_capacity(ray_cfg) -> Capacity:
    """The local Ray that ``init_ray`` would start (without starting it)."""
    cpus = ray_cfg.num_cpus or max(8, os.cpu_count() or 1)
    return Capacity(cpus=float(cpus), gpus=float(ray_cfg.num_gpus or 0),
                    max_cpus=ray_cfg.max_cpus, max_gpus=ray_cfg.max_gpus, node_cpus=float(cpus))


def shared_budget(ray_cfg) -> Budget:
    """The process-wide budget every concurrent trainer holds while it runs. Rebuilt from the
    cluster when idle (an autoscaled cluster may have grown between stages)."""
    global _BUDGET
    with _BUDGET_LOCK:
        if _BUDGET is None or _BUDGET.running == 0:
            capacity = cluster_capacity(ray_cfg)
            if _BUDGET is None or _BUDGET.capacity != capacity:
                _BUDGET = Budget(capacity)
        return _BUDGET


def embed_pool_size(e, cpus: float, capacity: Capacity) -> int:
    """Actors of the embed pool: ``embed.num_actors`` when set, else as many actors of
    ``cpus`` CPUs as the cluster holds beside the reads' CPU (Ray Data starts them as blocks
    queue up)."""
    wanted = e.num_actors if e.num_actors is not None else 1_000_000
    return pool_size(wanted, cpus, e.num_gpus_per_actor, capacity)


def teacher_count(cfg) -> int:
    """Trainers of the teachers stage alive at once: vanilla + one per group (init=scratch or
    both); init=vanilla fits vanilla, then the groups' teachers."""
    groups = cfg.prepare.num_groups
    return groups if cfg.teachers.init == "vanilla" else groups + 1


def trainers_of(cfg, stage: str) -> int:
    if stage == "teachers":
        return teacher_count(cfg)
    if stage == "baselines":
        return len(cfg.baselines.methods)
    if stage == "distill":
        return 2 if cfg.distill.use_tuned and cfg.tune.num_samples > 0 else 1
    return 0


def _trainer_demand(cfg) -> Demand:
    """One model's demand; pooled jobs (train.pool_jobs) read their rows without Ray Data, so
    no ingest CPUs are kept for them."""
    t = cfg.train
    return trainer_demand(t.num_workers, t.cpus_per_worker, t.use_gpu,
                          0.0 if t.pool_jobs else t.ingest_cpus)


def _trainer_row(cfg, stage: str, units: int, capacity: Capacity) -> StageRow:
    demand = _trainer_demand(cfg)
    hint = ("Set train.use_gpu=false, add GPU nodes, or set run.ray.max_gpus for an autoscaler."
            if demand.gpus else "Lower train.num_workers / train.cpus_per_worker / train.ingest_cpus.")
    error = infeasible(f"{stage}: each trainer ({cfg.train.num_workers} worker(s) × "
                       f"{cfg.train.cpus_per_worker:g} CPU{' + 1 GPU' if demand.gpus else ''}"
                       + ("" if cfg.train.pool_jobs else
                          f", + {cfg.train.ingest_cpus:g} CPU for its reads") + ")",
                       demand, capacity, hint)
    return StageRow(stage, "trainer(s)", units, demand,
                    0 if error else min(units, fits_at_once(demand, capacity)), error)


def stage_rows(cfg, stages: list, capacity: Capacity) -> list:
    """One :class:`StageRow` per stage of ``stages`` that holds cluster resources."""
    rows = []
    if "prepare" in stages:
        cpus = max(1.0, min(capacity.plan_cpus, float(cfg.prepare.num_partitions or capacity.plan_cpus)))
        rows.append(StageRow("prepare", "Ray Data tasks", int(cpus), Demand(1.0, 0.0, 0.25), int(cpus)))
    if "embed" in stages:
        e = cfg.embed
        cpus = actor_cpus(e.cpus_per_actor, e.num_gpus_per_actor, capacity)
        demand = Demand(cpus, e.num_gpus_per_actor, ACTOR_MEMORY_GIB)
        error = infeasible("embed: each actor", demand, capacity,
                           "Set embed.num_gpus_per_actor=0 or add GPU nodes.")
        actors = embed_pool_size(e, cpus, capacity)
        rows.append(StageRow("embed", "actor(s)", actors, demand, 0 if error else actors, error))
    concurrent = [s for s in ("teachers", "baselines") if s in stages]
    for stage in concurrent:
        rows.append(_trainer_row(cfg, stage, trainers_of(cfg, stage), capacity))
    if len(concurrent) == 2:
        units = sum(trainers_of(cfg, s) for s in concurrent)
        rows.append(_trainer_row(cfg, "teachers ‖ baselines", units, capacity))
    if "margins" in stages:
        m = cfg.margins
        demand = Demand(1.0, m.num_gpus_per_actor, ACTOR_MEMORY_GIB)
        error = infeasible("margins: each actor", demand, capacity,
                           "Set margins.num_gpus_per_actor=0 or add GPU nodes.")
        rows.append(StageRow("margins", "actor(s)", m.num_actors, demand,
                             0 if error else pool_size(m.num_actors, 1.0, m.num_gpus_per_actor,
                                                       capacity), error))
    if "tune" in stages:
        t = cfg.tune
        demand = Demand(t.cpus_per_trial, t.gpus_per_trial, TRIAL_MEMORY_GIB)
        error = infeasible("tune: each trial", demand, capacity,
                           "Set tune.gpus_per_trial=0 or add GPU nodes.")
        rows.append(StageRow("tune", "trial(s)", t.num_samples, demand,
                             0 if error else trials_at_once(t.max_concurrent_trials, t.cpus_per_trial,
                                                            t.gpus_per_trial, capacity), error))
    if "distill" in stages:
        rows.append(_trainer_row(cfg, "distill", trainers_of(cfg, "distill"), capacity))
    return rows


def preflight(cfg, stages: list, capacity: Capacity) -> None:
    """Raise ``RuntimeError`` (every reason, one per line) when some stage can never run."""
    errors = [row.error for row in stage_rows(cfg, stages, capacity) if row.error]
    if errors:
        raise RuntimeError("this config cannot run on this cluster:\n  " + "\n  ".join(errors))


def concurrent_plan_line(cfg, stages: list, capacity: Capacity) -> str:
    """``teachers ‖ baselines: 2 of 6 at once on 4 CPUs (2 CPU each); the rest queued``."""
    units = sum(trainers_of(cfg, s) for s in stages)
    return plan_line(" ‖ ".join(stages), units, _trainer_demand(cfg), capacity)


def run_pool_line(cfg, stages: list, capacity: Capacity) -> Optional[str]:
    """What ``train.run_pool`` does for these stages on the local Ray ``pafo-ray run`` starts:
    the stages that train share one worker group when two rounds or more of them run."""
    from pafo_ray.train.pooljobs import width_for

    rounds = [s for s in ("teachers ‖ baselines", "distill")
              if any(part in stages for part in s.split(" ‖ "))]
    width = width_for(cfg.train, capacity.cpus, cores=int(min(capacity.cpus, os.cpu_count() or 1)))
    if len(rounds) < 2 or width is None:
        return None
    return (f"run pool: {' and then '.join(rounds)} train on ONE Ray Train worker group of "
            f"{width} worker(s) ({cfg.train.cpus_per_worker:g} CPU each), started after embed "
            "and closed after the last stage that trains (train.run_pool; a local Ray only)")


def format_plan(cfg, stages: list, capacity: Capacity, where: str, local: bool = False) -> str:
    """The plan table; ``local``: against the local Ray ``pafo-ray run`` would start (then the
    run pool's line too)."""
    rows = stage_rows(cfg, stages, capacity)
    header = ["stage", "units", "each", "CPUs", "GPUs", "mem GiB", "at once"]
    table = [header] + [row.cells(capacity) for row in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = [f"cluster: {capacity.describe()}, {capacity.memory_gib:.1f} GiB memory ({where})"
             if capacity.memory_gib else f"cluster: {capacity.describe()} ({where})"]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines += [f"error: {row.error}" for row in rows if row.error]
    pool = run_pool_line(cfg, stages, capacity) if local else None
    if pool:
        lines.append(pool)
    lines.append("CPUs/GPUs/mem: what the units running at once hold; a trainer's CPUs include "
                 "train.ingest_cpus for its Ray Data reads. Stages run one after another "
                 "(teachers ‖ baselines side by side).")
    return "\n".join(lines)
