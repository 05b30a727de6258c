"""The contract every stage keeps: inputs, outputs, config, ``run()``.

A stage is a module with ``NAME``, ``DEPENDS`` (stages whose outputs it reads),
``SECTIONS`` (config sections it reads) and ``run(ctx) -> summary dict``. The runner
hashes the sections together with the hashes of the stages it depends on, skips the
stage when ``<run>/<stage>/_SUCCESS.json`` carries that hash, and otherwise clears the
folder, runs it, writes ``summary.json`` and the marker last.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from dataclasses import dataclass, field

from pafo_ray.config import PipelineConfig
from pafo_ray.console import say, stage_finished, stage_started
from pafo_ray.storage import RunDir

log = logging.getLogger("pafo_ray")

# Pipeline order. `embed` runs in frozen mode (or for mixture groups); `regularize` in frozen
# mode; `tune` only when num_samples > 0.
ORDER = ["input", "prepare", "embed", "regularize", "groups", "teachers", "margins", "baselines",
         "tune", "distill", "evaluate"]


@dataclass
class StageContext:
    cfg: PipelineConfig
    run_dir: RunDir
    hashes: dict = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: PipelineConfig) -> "StageContext":
        """A relative local ``run.storage_path`` is made absolute here, on the driver: the
        config travels to Ray Train workers, which run in their own artifact folders."""
        import os

        if "://" not in cfg.run.storage_path:
            cfg.run.storage_path = os.path.abspath(cfg.run.storage_path)
        return cls(cfg, RunDir(cfg.run.storage_path, cfg.run.run_name))


def stage_module(name: str):
    return importlib.import_module(f"pafo_ray.stages.{name}")


def stage_hash(ctx: StageContext, name: str) -> str:
    if name in ctx.hashes:
        return ctx.hashes[name]
    module = stage_module(name)
    own = (module.hash_payload(ctx.cfg) if hasattr(module, "hash_payload")
           else ctx.cfg.section_hash(*module.SECTIONS))
    parts = [own, str(ctx.cfg.run.seed)]
    parts += [stage_hash(ctx, dep) for dep in module.DEPENDS if is_active(ctx.cfg, dep)]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    ctx.hashes[name] = digest
    return digest


def is_active(cfg: PipelineConfig, name: str) -> bool:
    if name == "embed":  # the mixture groups score cached features in finetune mode too
        return cfg.model.mode == "frozen" or (cfg.groups.method == "mixture"
                                              and cfg.prepare.group_level == "user")
    if name == "regularize":
        return cfg.model.mode == "frozen" and cfg.train.select_regularization
    if name == "tune":
        return cfg.tune.num_samples > 0
    if name == "baselines":
        return bool(cfg.baselines.methods)
    return True


def is_done(ctx: StageContext, name: str) -> bool:
    return ctx.run_dir.is_complete(name, stage_hash(ctx, name))


def run_stage(ctx: StageContext, name: str, *, force: bool = False) -> dict:
    """Run one stage unless its complete output with the same hash exists."""
    module = stage_module(name)
    digest = stage_hash(ctx, name)
    if not force and ctx.run_dir.is_complete(name, digest):
        summary = ctx.run_dir.read_json(name, "summary.json")
        say(f"[{name}] done already ({ctx.run_dir.uri(name)}), skipped")
        _apply_updates(ctx, summary)
        return summary
    for dep in module.DEPENDS:
        if is_active(ctx.cfg, dep) and not is_done(ctx, dep):
            raise RuntimeError(f"stage '{name}' needs '{dep}', which has no complete output "
                               f"for this config: `pafo-ray {name}` runs the missing upstream "
                               "stages first (so does `pafo-ray run`)")
    ctx.run_dir.start(name)
    began = time.time()
    stage_started(name)
    try:
        summary = module.run(ctx)
    finally:
        stage_finished(name)
    summary["seconds"] = round(time.time() - began, 2)
    ctx.run_dir.write_json(summary, name, "summary.json")
    ctx.run_dir.mark_complete(name, digest)
    say(f"[{name}] {module.describe(summary)} in {summary['seconds']:.1f} s "
        f"-> {ctx.run_dir.uri(name)}")
    _apply_updates(ctx, summary)
    return summary


def _apply_updates(ctx: StageContext, summary: dict) -> None:
    """A stage may choose config values for the stages after it (``config_updates``)."""
    import dataclasses

    for section, values in (summary.get("config_updates") or {}).items():
        current = getattr(ctx.cfg, section)
        ctx.cfg = dataclasses.replace(ctx.cfg, **{section: dataclasses.replace(current, **values)})


def apply_upstream(ctx: StageContext) -> None:
    """Before running a single stage: take the updates of finished upstream stages.

    The upstream hash is computed first, from the config as given, as a full run does.
    """
    name = "regularize"
    if is_active(ctx.cfg, name):
        stage_hash(ctx, name)
        if is_done(ctx, name):
            _apply_updates(ctx, ctx.run_dir.read_json(name, "summary.json"))


def upstream(cfg: PipelineConfig, name: str) -> list[str]:
    """The active stages ``name`` reads, directly or not, in pipeline order (``name`` excluded)."""
    seen: set = set()
    todo = list(stage_module(name).DEPENDS)
    while todo:
        dep = todo.pop()
        if dep in seen or not is_active(cfg, dep):
            continue
        seen.add(dep)
        todo += stage_module(dep).DEPENDS
    return [s for s in ORDER if s in seen]


def run_with_upstream(ctx: StageContext, name: str, *, force: bool = False) -> dict:
    """One stage by name on any run: its upstream stages first, in pipeline order, each
    skipped when its output is complete (as ``run`` does); only ``name`` is forced."""
    apply_upstream(ctx)
    for dep in upstream(ctx.cfg, name):
        run_stage(ctx, dep)
    return run_stage(ctx, name, force=force)


# Stages that read the same inputs and nothing of each other: run side by side, so their
# Ray Train fixed costs overlap instead of adding up.
CONCURRENT = ("teachers", "baselines")


def run_pipeline(ctx: StageContext, stages: list | None = None) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    chosen = stages or [s for s in ORDER if is_active(ctx.cfg, s)]
    unknown = [s for s in chosen if s not in ORDER]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages are {ORDER}")
    force = ctx.cfg.run.force
    results: dict = {}
    for name in chosen:
        if name in results:
            continue
        together = [s for s in CONCURRENT if s in chosen] if name in CONCURRENT else [name]
        if len(together) == 1:
            results[name] = run_stage(ctx, name, force=force)
            continue
        for s in together:
            stage_hash(ctx, s)  # fill the hash cache before threads share it
        with ThreadPoolExecutor(max_workers=len(together)) as pool:
            futures = {s: pool.submit(run_stage, ctx, s, force=force) for s in together}
            results.update({s: f.result() for s, f in futures.items()})
    return results
