"""The multi-objective Ray Tune + Optuna search over the student's distillation weights.

Each trial trains one student in-process on the cached embeddings (frozen mode: seconds
per trial, see RAY_NOTES "Ray Tune with Train V2") and reports both objectives of
:data:`tuning.pareto.OBJECTIVES` once, at the end. ``OptunaSearch`` holds metric and mode
(the Tuner does not); there is no scheduler, since nothing may be pruned in a
multi-objective search. The experiment lives at ``<storage_path>/<name>``: when a
restorable experiment is already there (a killed run), it is restored rather than started
over, and the finished trials are not trained again.

Independent of the stage contract: :mod:`pafo_ray.stages.tune` and ``benchmarks/tune.py``
both call :func:`run_search`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import optuna
import pandas as pd

from pafo_ray.config import PipelineConfig
from tuning.pareto import OBJECTIVES

log = logging.getLogger(__name__)

SAMPLERS = ("nsga2", "tpe", "random")
PARAM_PREFIX = "param_"
# The config key naming a trial's search (tuning.methods.METHOD_KEY; not imported from
# there: that module imports Ray Tune, which this one leaves to the functions that run it).
METHOD_KEY = "method"
# Reported beside the objectives, so the table shows how each student did overall.
EXTRA_METRICS = ("val_accuracy", "epoch", "train_loss")


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that pickles: Optuna 5.1's genetic samplers (``BaseGASampler``) hold a
    ``threading.Lock`` and no ``__getstate__``, so Ray Tune could not save a Tuner with an
    NSGA-II searcher (``cannot pickle '_thread.lock' object``). The lock is left out of the
    pickle and a new one made on load (harmless where Optuna has none)."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(name: str, seed: int, budget: Optional[int] = None):
    """The seeded Optuna sampler called ``name`` (one of :data:`SAMPLERS`).

    ``budget`` (the number of trials) sizes the random start: Optuna's defaults (TPE: 10
    random startup trials; NSGA-II: a first generation of 50) would make a search of a few
    dozen trials plain random search, trial for trial, under the same seed. With a budget,
    TPE starts from ``budget // 4`` random trials (3 to 10) and NSGA-II breeds generations
    of ``budget // 4`` (4 to 50).
    """
    import optuna

    quarter = None if budget is None else budget // 4
    if name == "nsga2":
        size = 50 if quarter is None else min(50, max(4, quarter))
        return PicklableNSGAIISampler(population_size=size, seed=seed)
    if name == "tpe":
        # TPESampler handles several objectives; multivariate models the joint density of
        # the parameters (λ and the minority weight interact).
        startup = 10 if quarter is None else min(10, max(3, quarter))
        return optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; expected one of {list(SAMPLERS)}")


def make_searcher(sampler: str, seed: int, budget: Optional[int] = None,
                  space: Optional[dict] = None):
    """Multi-objective ``OptunaSearch`` maximising both :data:`OBJECTIVES`.

    Metric and mode live here only (not on the Tuner). ``space``: the Tune domains it
    samples (converted to Optuna distributions here); without it, the space comes through
    ``set_search_properties``.
    """
    from ray.tune.search.optuna import OptunaSearch

    if space:
        space = OptunaSearch.convert_search_space(space)
    return OptunaSearch(space=space or None, metric=list(OBJECTIVES),
                        mode=["max"] * len(OBJECTIVES), sampler=make_sampler(sampler, seed, budget))


def _finite_or_nan(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def train_trial(params: dict, data=None, cfg: Optional[PipelineConfig] = None,
                method: str = "pafo") -> None:
    """One Tune trial: a student (or the baseline ``method``) trained with the sampled
    ``params``; reports once.

    ``data`` (a :class:`~pafo_ray.train.inmemory.StudentData`) and ``cfg`` arrive through
    ``tune.with_parameters`` (the object store), not in the trial's config; the config's
    ``method`` key (:data:`METHOD_KEY`), when there, overrides ``method``. Both objectives
    are always reported (a result without them stops Tune), as NaN when undefined (no
    validation rows of a group, a diverged model): Optuna refuses NaN values, OptunaSearch
    logs a warning and leaves that Optuna trial unfinished, so the sampler learns nothing
    from it and the search goes on; the table shows NaN and the front leaves it out.
    """
    from ray import tune

    from pafo_ray.train.inmemory import train_student, trial_device
    from tuning.space import apply_params

    params = dict(params)
    method = params.pop(METHOD_KEY, method)
    _, metrics = train_student(data, apply_params(cfg, params), method=method,
                               device=trial_device(cfg.tune.gpus_per_trial))
    report = {name: _finite_or_nan(metrics.get(name)) for name in OBJECTIVES + EXTRA_METRICS}
    tune.report({**report, "params": dict(params)})


@dataclass
class SearchOutcome:
    """What :func:`run_search` hands back."""

    trials: pd.DataFrame   # one row per trial: trial_id, status, objectives, param_<key>...
    resumed: bool          # True when an existing experiment was restored
    path: str              # the Tune experiment folder
    sampler: str
    seconds: float

    @property
    def errors(self) -> int:
        return int((self.trials["status"] == "ERROR").sum()) if len(self.trials) else 0


def params_of(record: dict) -> dict:
    """The trial's params from a table row (``param_lam`` -> ``lam``).

    Every trial has every key of the space; a NaN can only be a ``None`` the table turned
    into a float (``clip: null`` fixed in the space), so it comes back as ``None``.
    """
    return {key[len(PARAM_PREFIX):]: None if _is_nan(value) else value
            for key, value in record.items() if key.startswith(PARAM_PREFIX)}


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def trial_dirname(trial) -> str:
    """``trial_<number>_<trial_id>``: short, and in the order the searcher created trials.

    The number is the counter that starts the trial's experiment tag (``"3_lam=..."``).
    """
    number = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(number):04d}_{trial.trial_id}" if number.isdigit() else f"trial_{trial.trial_id}"


def _number_and_id(result) -> tuple:
    name = str(result.path).rstrip("/").rsplit("/", 1)[-1].split("_")
    if len(name) == 3 and name[1].isdigit():
        return int(name[1]), name[2]
    return math.nan, str((result.metrics or {}).get("trial_id", name[-1]))


def trials_table(result_grid, method: Optional[str] = None) -> pd.DataFrame:
    """Every trial of a ``ResultGrid`` (of ``method``'s search only, when given) as a row, in
    the order the searcher created them."""
    rows = []
    for result in result_grid:
        if method is not None and (result.config or {}).get(METHOD_KEY, "pafo") != method:
            continue  # another search's: its own table keeps its columns' types
        metrics = result.metrics or {}
        number, trial_id = _number_and_id(result)
        row = {"trial_number": number, "trial_id": trial_id,
               "status": "ERROR" if result.error is not None else "TERMINATED"}
        row.update({name: _finite_or_nan(metrics.get(name)) for name in OBJECTIVES + EXTRA_METRICS})
        row["seconds"] = _finite_or_nan(metrics.get("time_total_s"))
        row["error"] = "" if result.error is None else f"{type(result.error).__name__}: {result.error}"[:500]
        config = dict(result.config or {})
        row[METHOD_KEY] = config.pop(METHOD_KEY, "pafo")
        row.update({f"{PARAM_PREFIX}{key}": value for key, value in config.items()})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["trial_number", "trial_id", "status", *OBJECTIVES,
                                     *EXTRA_METRICS, "seconds", "error", METHOD_KEY])
    return pd.DataFrame(rows).sort_values(["trial_number", "trial_id"]).reset_index(drop=True)


def space_overrides(cfg: PipelineConfig) -> dict:
    """Entries the run's config forces: ``teacher_init`` can only be searched when the
    teachers stage trained both sets (``teachers.init=both``); otherwise it is fixed.
    ``extra_pairs`` cannot exceed what the margins stage scored
    (``margins.extra_pairs_per_user``): its upper bound is cut there (fixed to 0 when none)."""
    from tuning.space import read_space

    space = read_space(cfg.tune.space)
    out = {}
    if cfg.teachers.init != "both" and "teacher_init" in space:
        out["teacher_init"] = {"type": "fixed", "value": "auto"}
    spec = space.get("extra_pairs")
    scored = cfg.margins.extra_pairs_per_user
    if spec is not None and spec["type"] == "int" and spec["high"] > scored:
        if spec["low"] >= scored:
            out["extra_pairs"] = {"type": "fixed", "value": scored}
        else:
            step = spec.get("step", 1)
            out["extra_pairs"] = {**spec, "high": scored - (scored - spec["low"]) % step}
    elif spec is not None and spec["type"] in ("fixed", "choice"):
        values = [spec["value"]] if spec["type"] == "fixed" else spec["values"]
        if any(v > scored for v in values):
            raise ValueError(f"search space: extra_pairs {values} exceeds "
                             f"margins.extra_pairs_per_user={scored}")
    return out


def concurrent_trials(cfg: PipelineConfig, label: str = "tune trials",
                      count: Optional[int] = None) -> int:
    """``tune.max_concurrent_trials`` capped by how many trials the cluster holds at once
    (:mod:`pafo_ray.admission`); fails at once when not even one fits. Prints the plan."""
    from pafo_ray.admission import Demand, infeasible, plan_line, trials_at_once
    from pafo_ray.console import say
    from pafo_ray.sizing import cluster_capacity

    t = cfg.tune
    capacity = cluster_capacity(cfg.run.ray)
    demand = Demand(t.cpus_per_trial, t.gpus_per_trial)
    error = infeasible("tune: each trial", demand, capacity,
                       "Lower tune.cpus_per_trial / tune.gpus_per_trial, or add nodes.")
    if error:
        raise ValueError(error)
    at_once = trials_at_once(t.max_concurrent_trials, t.cpus_per_trial, t.gpus_per_trial, capacity)
    say(plan_line(label, t.num_samples if count is None else count, demand, capacity,
                  at_once=at_once))
    return at_once


def run_search(cfg: PipelineConfig, data, *, storage_path: str, name: str,
               sampler: Optional[str] = None, num_samples: Optional[int] = None,
               seed: Optional[int] = None, trainable: Callable = train_trial,
               verbose: int = 0, method: str = "pafo",
               param_space: Optional[dict] = None) -> SearchOutcome:
    """One search: :func:`run_searches` with ``{method: param_space}``."""
    return run_searches(cfg, data, {method: param_space}, storage_path=storage_path, name=name,
                        sampler=sampler, num_samples=num_samples, seed=seed,
                        trainable=trainable, verbose=verbose)[method]


def run_searches(cfg: PipelineConfig, data, spaces: dict, *, storage_path: str, name: str,
                 sampler: Optional[str] = None, num_samples: Optional[int] = None,
                 seed: Optional[int] = None, trainable: Callable = train_trial,
                 verbose: int = 0) -> dict:
    """Search, for each method of ``spaces``, students that are good for both groups: one
    Ray Tune experiment for all of them (:class:`tuning.methods.MethodSearches`), each
    method with its own Optuna searcher, ``num_samples`` trials, sampler and seed.

    cfg: the pipeline config; trials apply their params to it (``apply_params``).
    data: the :class:`~pafo_ray.train.inmemory.StudentData` every trial trains on, loaded
      once by the caller and shared through the object store.
    spaces: ``{method: param_space}`` in the order trials are handed out; ``"pafo"`` is the
      student, any other a baseline (``tuning/baselines.yaml`` domains); ``None`` = the
      student's space ``cfg.tune.space``.
    storage_path, name: the experiment is ``<storage_path>/<name>`` (local or a URI);
      restored when ``Tuner.can_restore`` finds one there (``resumed=True``).
    sampler, num_samples, seed: default ``cfg.tune.sampler``, ``cfg.tune.num_samples``,
      ``cfg.run.seed`` (the benchmark varies them over the same data).
    trainable: the trial function ``(params, data=, cfg=, method=)``; default :func:`train_trial`
      (the method arrives in ``params[METHOD_KEY]``).

    Returns ``{method: SearchOutcome}``; the outcomes share the experiment's path, seconds and
    ``resumed``. A restored experiment keeps the budget it was started with (Tune cannot add
    samples to it): a different ``num_samples`` needs a different ``name``.
    """
    from ray import tune

    from pafo_ray.storage import join
    from tuning.methods import MethodSearches, split_space
    from tuning.space import load_space

    if cfg.prepare.num_groups != 2:
        raise ValueError("the tune stage's two objectives (majority, minority accuracy) need "
                         f"prepare.num_groups=2, got {cfg.prepare.num_groups}")
    if not spaces:
        raise ValueError("run_searches needs at least one method to search")
    sampler = sampler or cfg.tune.sampler
    num_samples = cfg.tune.num_samples if num_samples is None else num_samples
    seed = cfg.run.seed if seed is None else seed
    if num_samples < 1:
        raise ValueError(f"tune.num_samples must be ≥ 1 to search, got {num_samples}")
    resources = {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial}
    others = [m for m in spaces if m != "pafo"]
    label = "tune trials" + (f" ({', '.join(others)})" if others and "pafo" not in spaces
                             else f" (pafo + {', '.join(others)})" if others else "")
    at_once = concurrent_trials(cfg, label, count=num_samples * len(spaces))
    fn = tune.with_resources(tune.with_parameters(trainable, data=data, cfg=cfg), resources)
    path = join(storage_path, name)
    began = time.time()

    spaces = {method: load_space(cfg.tune.space, space_overrides(cfg)) if space is None
              else space for method, space in spaces.items()}
    tuner = _restored(path, fn)
    resumed = tuner is not None
    if not resumed:
        searches = {}
        for method, space in spaces.items():
            sampled, constants = split_space(space)
            searches[method] = (make_searcher(sampler, seed, num_samples, space=sampled)
                                if sampled else None, constants)
        tune_config = tune.TuneConfig(
            search_alg=MethodSearches(searches, num_samples, metric=list(OBJECTIVES),
                                      mode=["max"] * len(OBJECTIVES)),
            num_samples=num_samples * len(spaces), max_concurrent_trials=at_once,
            reuse_actors=True, trial_dirname_creator=trial_dirname)
        run_config = tune.RunConfig(name=name, storage_path=storage_path, verbose=verbose,
                                    failure_config=tune.FailureConfig(max_failures=0))
        tuner = tune.Tuner(fn, param_space={}, tune_config=tune_config, run_config=run_config)
    grid = tuner.fit()
    seconds = round(time.time() - began, 2)
    out = {}
    for method in spaces:
        mine = trials_table(grid, method).drop(columns=[METHOD_KEY])
        if resumed and len(mine) != num_samples:
            log.warning("the restored experiment at %s has %d %s trials, not the %d asked for; "
                        "use another name to search with a new budget", path, len(mine),
                        method, num_samples)
        out[method] = SearchOutcome(trials=mine, resumed=resumed, path=path, sampler=sampler,
                                    seconds=seconds)
    return out


def _restored(path: str, trainable):
    """The Tuner restored from ``path``, or None when there is nothing there to restore.

    Ray writes ``tuner.pkl`` before it can fail to start an experiment (an unpicklable
    searcher, a killed driver), so ``can_restore`` can be true over an empty or cut file,
    which ``Tuner.restore`` then fails to read (``EOFError``): such an experiment never ran a
    trial and is started afresh, with a warning."""
    import pickle

    from ray import tune

    if not tune.Tuner.can_restore(path):
        return None
    log.info("restoring the Tune experiment at %s", path)
    try:
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    except (EOFError, pickle.UnpicklingError) as exc:
        log.warning("the Tune experiment at %s cannot be restored (%s: %s); starting it "
                    "afresh", path, type(exc).__name__, exc)
        return None
