"""Stage ``tune``: the multi-objective search of the student's distillation weights.

Ray Tune + ``OptunaSearch`` (see :mod:`tuning.search`) trains one student per trial on the
cached embeddings and teacher margins, with validation majority and minority accuracy as
the two objectives. Then the PAFO rule (:func:`tuning.pareto.select`): among the Pareto
front, the highest minority accuracy whose majority accuracy is at least vanilla's − ε.
When no trial meets it, nothing is chosen and the distill stage keeps its configured
weights; vanilla is never passed off as PAFO.

Outputs in ``tune/``: ``trials.parquet`` / ``trials.csv`` (every trial's params and
metrics), ``front.csv``, ``pareto_front.png``. The Tune experiment itself lives in
``_ray/tune/search-<hash>`` — outside this folder, which the runner clears — so a rerun
after a kill restores it instead of training every trial again.
"""

from __future__ import annotations

import io
import math
import os
import tempfile

from pafo_ray.stages.base import StageContext, is_active, stage_hash

NAME = "tune"
DEPENDS = ["margins", "baselines"]
SECTIONS = ("model", "train", "distill", "tune")

def hash_payload(cfg) -> str:
    """The config sections plus the search space the trials sample (the file's entries, not
    its path: editing the file reruns the search)."""
    import hashlib
    import json

    from tuning.search import space_overrides
    from tuning.space import read_space

    space = read_space(cfg.tune.space, space_overrides(cfg))
    payload = cfg.section_hash(*SECTIONS) + json.dumps(space, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Hypervolume reference: chance accuracy for both groups.
HYPERVOLUME_REFERENCE = (0.5, 0.5)


def validation_points(ctx: StageContext) -> dict:
    """``{method: (majority, minority)}`` validation accuracies of vanilla and each baseline."""
    from tuning.pareto import OBJECTIVES

    majority, minority = OBJECTIVES
    jobs = dict(ctx.run_dir.read_json("teachers", "summary.json")["jobs"])
    points = {"vanilla": jobs["vanilla"]["metrics"]}
    if is_active(ctx.cfg, "baselines") and ctx.run_dir.exists("baselines", "summary.json"):
        for method, info in ctx.run_dir.read_json("baselines", "summary.json")["jobs"].items():
            points[method] = info["metrics"]
    return {name: (_number(m.get(majority)), _number(m.get(minority)))
            for name, m in points.items()}


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def trial_record(row: dict) -> dict:
    """A table row as the summary shows it: id, objectives, status and ``params``."""
    from tuning.pareto import OBJECTIVES
    from tuning.search import params_of

    keys = ("trial_number", "trial_id", "status", *OBJECTIVES, "val_accuracy")
    record = {key: _clean(row.get(key)) for key in keys if key in row}
    record["params"] = {k: _clean(v) for k, v in params_of(row).items()}
    return record


def _write_table(ctx: StageContext, frame, filename: str) -> None:
    if filename.endswith(".parquet"):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        ctx.run_dir.write_bytes(buffer.getvalue(), NAME, filename)
    else:
        ctx.run_dir.write_bytes(frame.to_csv(index=False).encode(), NAME, filename)


def _plot(ctx: StageContext, trials, front, chosen, points: dict, threshold: float) -> str:
    from tuning.plot import plot_front

    finite = {name: point for name, point in points.items() if all(map(math.isfinite, point))}
    with tempfile.TemporaryDirectory() as tmp:
        local = plot_front(trials, front, chosen, finite, os.path.join(tmp, "pareto_front.png"),
                           threshold=threshold)
        with open(local, "rb") as fh:
            ctx.run_dir.write_bytes(fh.read(), NAME, "pareto_front.png")
    return "pareto_front.png"


def run(ctx: StageContext) -> dict:
    from pafo_ray.train.inmemory import load_student_data
    from tuning.pareto import hypervolume_2d, pareto_front, select
    from tuning.search import run_search

    cfg = ctx.cfg
    if cfg.model.mode != "frozen":
        raise ValueError("the tune stage trains students in-process on the embedding cache: "
                         "it needs model.mode=frozen (or set tune.num_samples=0)")
    points = validation_points(ctx)
    baseline_majority = points["vanilla"][0]
    if not math.isfinite(baseline_majority):
        raise RuntimeError("teachers/summary.json has no finite vanilla val_majority_accuracy: "
                           "rerun `pafo-ray teachers --force`")
    outcome = run_search(cfg, load_student_data(cfg),
                         storage_path=ctx.run_dir.uri("_ray", "tune"),
                         name=f"search-{stage_hash(ctx, NAME)}")
    trials = outcome.trials
    selection = select(trials, baseline_majority=baseline_majority, epsilon=cfg.tune.epsilon)
    front = pareto_front(trials)

    _write_table(ctx, trials, "trials.parquet")
    _write_table(ctx, trials, "trials.csv")
    _write_table(ctx, front, "front.csv")
    plot = _plot(ctx, trials, front, selection.chosen, points, selection.threshold)

    return {
        "trials": [trial_record(r) for r in trials.to_dict("records")],
        "front": [trial_record(r) for r in selection.front],
        "chosen": trial_record(selection.chosen) if selection.chosen else None,
        "closest": trial_record(selection.closest) if selection.closest else None,
        "rule": selection.rule,
        "met_constraint": selection.met_constraint,
        "message": selection.message,
        "threshold": _clean(selection.threshold),
        "excluded": selection.excluded,
        "baseline_majority": baseline_majority,
        "baselines": {name: [_clean(v) for v in point] for name, point in points.items()},
        "hypervolume": hypervolume_2d(front, reference=HYPERVOLUME_REFERENCE),
        "hypervolume_reference": list(HYPERVOLUME_REFERENCE),
        "errors": outcome.errors,
        "sampler": outcome.sampler,
        "experiment_path": outcome.path,
        "search_seconds": outcome.seconds,
        "plot": plot,
        "resumed": outcome.resumed,
    }


def describe(summary: dict) -> str:
    chosen = summary.get("chosen")
    if chosen:
        pick = (f"chose trial {chosen['trial_id']} (majority "
                f"{chosen['val_majority_accuracy']:.3f}, minority {chosen['val_minority_accuracy']:.3f})")
    else:
        pick = "chose none (distill keeps its configured weights)"
    resumed = ", resumed" if summary.get("resumed") else ""
    return (f"{len(summary['trials'])} trials{resumed}, front of {len(summary['front'])}, {pick}; "
            f"rule: {summary['rule']}")
