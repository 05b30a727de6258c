"""The contract every stage keeps: inputs, outputs, config, ``run()``.

A stage is a module with ``NAME``, ``SECTIONS`` (config sections it reads, or a
``hash_payload(cfg)``) and ``run(ctx) -> summary dict``; its order, when it is active and
the stages it reads are in :mod:`pafo_ray.stages.registry`. The runner hashes the sections
together with the hashes of the stages it depends on, skips the stage when
``<run>/<stage>/_SUCCESS.json`` carries that hash, and otherwise clears the folder, runs it,
writes ``summary.json`` and the marker last (paths: :mod:`pafo_ray.layout`).

A stage that runs (because its hash changed, its output is incomplete, or ``--force``)
first removes the markers of every stage that reads its output, directly or not, so they
rerun too: their outputs were made from what is about to be replaced. (A changed hash
alone would not catch ``--force``, which reruns with the same hash.) Summaries are
written and printed through :mod:`pafo_ray.redact`: no URI secret reaches them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import time
from dataclasses import dataclass, field

from pafo_ray.config import PipelineConfig
from pafo_ray.console import say, stage_finished, stage_started
from pafo_ray.layout import RunLayout
from pafo_ray.redact import redact_tree, redact_uri
from pafo_ray.stages.registry import CONCURRENT, ORDER, depends, is_active

__all__ = ["CONCURRENT", "ORDER", "StageContext", "apply_upstream", "is_active", "is_done",
           "run_pipeline", "run_stage", "stage_hash", "stage_module"]

log = logging.getLogger("pafo_ray")


@dataclass
class StageContext:
    cfg: PipelineConfig
    run_dir: RunLayout
    hashes: dict = field(default_factory=dict)
    # The config as the user gave it. Stages run on ``cfg``, which takes what upstream stages
    # chose (``config_updates``: regularize's weight decay, embed's tuned backbone); hashes are
    # computed from ``given`` alone, and each upstream stage's hash, which every later stage
    # includes, covers what it chose. So a full run, a rerun and a single stage on its own agree
    # on every hash, whenever each is computed.
    given: PipelineConfig | None = None

    def __post_init__(self) -> None:
        if self.given is None:
            self.given = self.cfg

    @classmethod
    def create(cls, cfg: PipelineConfig) -> "StageContext":
        """A relative local ``run.storage_path`` is made absolute here, on the driver: the
        config travels to Ray Train workers, which run in their own artifact folders."""
        import os

        if "://" not in cfg.run.storage_path:
            cfg.run.storage_path = os.path.abspath(cfg.run.storage_path)
        return cls(cfg, RunLayout(cfg.run.storage_path, cfg.run.run_name))


def stage_module(name: str):
    return importlib.import_module(f"pafo_ray.stages.{name}")


def stage_hash(ctx: StageContext, name: str) -> str:
    if name in ctx.hashes:
        return ctx.hashes[name]
    module = stage_module(name)
    cfg = ctx.given
    own = (module.hash_payload(cfg) if hasattr(module, "hash_payload")
           else cfg.section_hash(*module.SECTIONS))
    parts = [own, str(cfg.run.seed)]
    parts += [stage_hash(ctx, dep) for dep in depends(name) if is_active(cfg, dep)]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    ctx.hashes[name] = digest
    return digest


def is_done(ctx: StageContext, name: str) -> bool:
    return ctx.run_dir.is_complete(name, stage_hash(ctx, name))


def run_stage(ctx: StageContext, name: str, *, force: bool = False) -> dict:
    """Run one stage unless its complete output with the same hash exists."""
    module = stage_module(name)
    digest = stage_hash(ctx, name)
    if not force and ctx.run_dir.is_complete(name, digest):
        summary = ctx.run_dir.summary(name)
        say(f"[{name}] done already ({redact_uri(ctx.run_dir.stage_dir(name))}), skipped")
        _apply_updates(ctx, summary)
        return summary
    for dep in depends(name):
        if is_active(ctx.cfg, dep) and not is_done(ctx, dep):
            raise RuntimeError(f"stage '{name}' needs '{dep}', which has no complete output "
                               f"for this config: `pafo-ray {name}` runs the missing upstream "
                               "stages first (so does `pafo-ray run`)")
    invalidate_dependents(ctx, name)
    ctx.run_dir.start(name)
    began = time.time()
    stage_started(name)
    try:
        summary = module.run(ctx)
    finally:
        stage_finished(name)
    summary["seconds"] = round(time.time() - began, 2)
    recorded = redact_tree(summary)
    ctx.run_dir.write_summary(name, recorded)
    ctx.run_dir.mark_complete(name, digest)
    say(f"[{name}] {module.describe(recorded)} in {summary['seconds']:.1f} s "
        f"-> {redact_uri(ctx.run_dir.stage_dir(name))}")
    _apply_updates(ctx, summary)
    return summary


def dependents(name: str) -> list:
    """Every stage that reads ``name``'s output, directly or through others (ORDER order)."""
    found: set = {name}
    for stage in ORDER:  # DEPENDS only point backwards in ORDER
        if any(dep in found for dep in depends(stage)):
            found.add(stage)
    return [s for s in ORDER if s in found and s != name]


def invalidate_dependents(ctx: StageContext, name: str) -> None:
    """Remove the completion markers of the stages after ``name`` (see the module doc)."""
    for stage in dependents(name):
        ctx.run_dir.clear_marker(stage)


def _apply_updates(ctx: StageContext, summary: dict) -> None:
    """A stage may choose config values for the stages after it (``config_updates``)."""
    for section, values in (summary.get("config_updates") or {}).items():
        current = getattr(ctx.cfg, section)
        ctx.cfg = dataclasses.replace(ctx.cfg, **{section: dataclasses.replace(current, **values)})


def apply_upstream(ctx: StageContext, *, any_hash: bool = False) -> None:
    """Before running a single stage: take the updates of finished upstream stages (hashes
    do not change: they come from the config as given). ``any_hash``: of a stage finished
    under another hash too (a benchmark reading an old run as it was)."""
    for name in ("embed", "regularize"):  # embed: a tuned backbone (embed.tune_layers)
        done = ctx.run_dir.has_summary(name) if any_hash else is_done(ctx, name)
        if is_active(ctx.cfg, name) and done:
            _apply_updates(ctx, ctx.run_dir.summary(name))


def upstream(cfg: PipelineConfig, name: str) -> list[str]:
    """The active stages ``name`` reads, directly or not, in pipeline order (``name`` excluded)."""
    seen: set = set()
    todo = list(depends(name))
    while todo:
        dep = todo.pop()
        if dep in seen or not is_active(cfg, dep):
            continue
        seen.add(dep)
        todo += depends(dep)
    return [s for s in ORDER if s in seen]


def run_with_upstream(ctx: StageContext, name: str, *, force: bool = False) -> dict:
    """One stage by name on any run: its upstream stages first, in pipeline order, each
    skipped when its output is complete (as ``run`` does); only ``name`` is forced."""
    apply_upstream(ctx)
    for dep in upstream(ctx.cfg, name):
        run_stage(ctx, dep)
    return run_stage(ctx, name, force=force)



def run_pipeline(ctx: StageContext, stages: list | None = None) -> dict:
    chosen = stages or [s for s in ORDER if is_active(ctx.cfg, s)]
    unknown = [s for s in chosen if s not in ORDER]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages are {ORDER}")
    force = ctx.cfg.run.force
    results: dict = {}
    with _run_pool(ctx, chosen, force) as after_stage:
        for name in chosen:
            if name in results:
                continue
            _run_next(ctx, name, chosen, force, results)
            after_stage(results)
    return results


def _run_next(ctx: StageContext, name: str, chosen: list, force: bool, results: dict) -> None:
    """Run stage ``name`` (and the stages that run beside it) into ``results``."""
    from concurrent.futures import ThreadPoolExecutor

    together = [s for s in CONCURRENT if s in chosen] if name in CONCURRENT else [name]
    if len(together) == 1:
        results[name] = run_stage(ctx, name, force=force)
        return
    for s in together:
        stage_hash(ctx, s)  # fill the hash cache before threads share it
    _print_concurrent_plan(ctx, [s for s in together if force or not is_done(ctx, s)])
    with _side_by_side(ctx, together) as withdraw, \
            ThreadPoolExecutor(max_workers=len(together)) as pool:

        def run_one(stage: str) -> dict:
            try:
                return run_stage(ctx, stage, force=force)
            finally:
                withdraw(stage)

        futures = {s: pool.submit(run_one, s) for s in together}
        results.update({s: f.result() for s, f in futures.items()})


# Stages whose Ray resources the run's worker group must not take: it starts after them.
EARLY_STAGES = ("input", "prepare", "embed")


def _run_pool(ctx: StageContext, chosen: list, force: bool):
    """One worker group for the run's stages that train (:mod:`pafo_ray.train.runpool`) when
    at least two of them (teachers ‖ baselines counting as one) have work to do; it closes
    once the last of them is done. Yields ``after_stage(results)``."""
    import contextlib

    from pafo_ray.train import runpool

    todo = [s for s in chosen if s in runpool.TRAINING_STAGES
            and ctx.cfg.train.num_workers > 0 and (force or not is_done(ctx, s))]
    rounds = {("teachers" if s in CONCURRENT else s) for s in todo}
    if len(rounds) < 2:
        return contextlib.nullcontext(lambda results: None)

    before = [s for s in chosen if s in EARLY_STAGES and (force or not is_done(ctx, s))]

    @contextlib.contextmanager
    def scope():
        with runpool.opened(ctx.cfg) as mine:
            def after_stage(results: dict) -> None:
                pool = runpool.active()
                if mine and pool is not None and all(s in results for s in before):
                    # Its start-up overlaps the stages before the first that trains.
                    pool.start(ctx.run_dir.ray_storage(todo[0]))
                if mine and all(s in results for s in todo):
                    runpool.close()  # the later stages get its CPUs back
            after_stage({})
            yield after_stage

    return scope()


def _side_by_side(ctx: StageContext, stages: list):
    """Pooled trainers (train.pool_jobs): the stages' jobs share worker groups
    (:mod:`pafo_ray.train.cohort`); otherwise nothing to gather."""
    import contextlib

    if not (ctx.cfg.train.pool_jobs and ctx.cfg.train.num_workers > 0):
        return contextlib.nullcontext(lambda stage: None)
    from pafo_ray.train.cohort import side_by_side

    return side_by_side(stages)


def _print_concurrent_plan(ctx: StageContext, stages: list) -> None:
    """One line: how many of the concurrent stages' trainers run at once (they share one
    budget, :func:`pafo_ray.sizing.shared_budget`)."""
    if len(stages) < 2 or ctx.cfg.train.num_workers <= 0:
        return
    from pafo_ray.sizing import concurrent_plan_line, shared_budget

    say(concurrent_plan_line(ctx.cfg, stages, shared_budget(ctx.cfg.run.ray).capacity))
