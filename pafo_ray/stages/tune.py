"""Stage ``tune``: the multi-objective search of the student's distillation weights.

Ray Tune + ``OptunaSearch`` (see :mod:`tuning.search`) trains one student per trial on the
cached embeddings and teacher margins, with validation majority and minority accuracy as
the two objectives. Then the PAFO rule (:func:`tuning.pareto.select`): among the Pareto
front, the highest minority accuracy whose majority accuracy is at least vanilla's − ε.
When no trial meets it, nothing is chosen and the distill stage keeps its configured
weights; vanilla is never passed off as PAFO. ``tune.selection`` picks among the trials that
meet it (:data:`tuning.pareto.RULES`): the best validation minority accuracy, the one-SE rule,
or the default weights unless beaten by more than an SE — the SE being that of the
default-weights student's validation minority accuracy, clustered by user
(:func:`default_reference`). The baselines' searches use the same rule (their default is the
baselines stage's model at its configured setting).

With ``tune.tune_baselines`` each baseline gets its own search of its own setting
(``tuning/baselines.yaml``: reweight_power, groupdro_eta, fairness_alpha) with the same budget,
sampler and rule, run in the same Ray Tune experiment as the student's (one Optuna searcher a
method, trials handed out in turn: :mod:`tuning.methods`); its chosen setting is trained in-process and saved as
``tune/baselines/<method>/``, which evaluate compares instead of the default-setting baseline
(a baseline whose search meets no constraint keeps its default setting, and says so).

Outputs in ``tune/``: ``trials.parquet`` / ``trials.csv`` (every trial's params and
metrics), ``front.csv``, ``baselines_<method>.csv``, ``pareto_front.png``. The Tune experiment itself lives in
``_ray/tune/searches-<hash>`` — outside this folder, which the runner clears — so a rerun
after a kill restores it instead of training every trial again.
"""

from __future__ import annotations

import io
import math
import os
import tempfile

from pafo_ray.stages.base import StageContext, is_active, stage_hash

NAME = "tune"
SECTIONS = ("model", "train", "distill", "tune")


def hash_payload(cfg) -> str:
    """The config sections plus the search space the trials sample (the file's entries, not
    its path: editing the file reruns the search)."""
    import hashlib
    import json

    from tuning.search import space_overrides
    from tuning.space import read_baseline_spaces, read_space

    space = read_space(cfg.tune.space, space_overrides(cfg))
    if cfg.tune.tune_baselines and is_active(cfg, "baselines"):
        space = {"pafo": space, "baselines": read_baseline_spaces(cfg.tune.baseline_space),
                 "settings": cfg.section_hash("baselines")}
    payload = cfg.section_hash(*SECTIONS) + json.dumps(space, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Hypervolume reference: chance accuracy for both groups.
HYPERVOLUME_REFERENCE = (0.5, 0.5)


def validation_points(ctx: StageContext) -> dict:
    """``{method: (majority, minority)}`` validation accuracies of vanilla and each baseline."""
    from tuning.pareto import OBJECTIVES

    majority, minority = OBJECTIVES
    jobs = ctx.run_dir.teachers_summary().jobs
    points = {"vanilla": jobs["vanilla"]["metrics"]}
    baselines = ctx.run_dir.baselines_jobs() if is_active(ctx.cfg, "baselines") else None
    for method, info in (baselines or {}).items():
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
        ctx.run_dir.write_file(ctx.run_dir.tune_file(filename), buffer.getvalue())
    else:
        ctx.run_dir.write_file(ctx.run_dir.tune_file(filename), frame.to_csv(index=False).encode())


def _plot(ctx: StageContext, trials, front, chosen, points: dict, threshold: float) -> str:
    from tuning.plot import plot_front

    finite = {name: point for name, point in points.items() if all(map(math.isfinite, point))}
    with tempfile.TemporaryDirectory() as tmp:
        local = plot_front(trials, front, chosen, finite, os.path.join(tmp, "pareto_front.png"),
                           threshold=threshold)
        with open(local, "rb") as fh:
            ctx.run_dir.write_file(ctx.run_dir.tune_file("pareto_front.png"), fh.read())
    return "pareto_front.png"


def run(ctx: StageContext) -> dict:
    from pafo_ray.train.inmemory import load_student_data
    from tuning.pareto import hypervolume_2d, pareto_front, select
    from tuning.search import run_searches

    cfg = ctx.cfg
    if cfg.model.mode != "frozen":
        raise ValueError("the tune stage trains students in-process on the embedding cache: "
                         "it needs model.mode=frozen (or set tune.num_samples=0)")
    points = validation_points(ctx)
    baseline_majority = points["vanilla"][0]
    if not math.isfinite(baseline_majority):
        raise RuntimeError("teachers/summary.json has no finite vanilla val_majority_accuracy: "
                           "rerun `pafo-ray teachers --force`")
    data = load_student_data(cfg)
    # One Tune experiment for the student's search and each baseline's (tuning.methods).
    outcomes = run_searches(cfg, data, {"pafo": None, **baseline_spaces(cfg)},
                            storage_path=ctx.run_dir.ray_storage(NAME),
                            name=f"searches-{stage_hash(ctx, NAME)}")
    outcome = outcomes.pop("pafo")
    trials = outcome.trials
    reference = default_reference(cfg, data) if cfg.tune.selection != "best" else {}
    selection = select(trials, baseline_majority=baseline_majority, epsilon=cfg.tune.epsilon,
                       **rule_arguments(cfg, reference, reference.get("point")))
    front = pareto_front(trials)
    baselines = {}
    if outcomes:
        baselines = choose_baselines(ctx, data, outcomes, baseline_majority, reference, points)
        for method, found in baselines.items():
            if found["chosen"]:
                points[method] = (found["chosen"]["val_majority_accuracy"],
                                  found["chosen"]["val_minority_accuracy"])

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
        "baseline_searches": baselines,
        "selection": {"rule": cfg.tune.selection, "kept_default": selection.kept_default,
                      **{k: _clean(v) if not isinstance(v, list) else [_clean(x) for x in v]
                         for k, v in reference.items()}},
    }


def rule_arguments(cfg, reference: dict, default) -> dict:
    """Keyword arguments of :func:`tuning.pareto.select` for ``tune.selection``."""
    if cfg.tune.selection == "best":
        return {}
    return {"rule": cfg.tune.selection, "minority_se": reference["minority_se"],
            "se_multiplier": cfg.tune.selection_se_multiplier,
            "default": None if default is None else tuple(default)}


def default_reference(cfg, data, fitted: tuple | None = None) -> dict:
    """The default-weights student fitted in-process (as a trial would be, with the run's
    distill settings; ``fitted``: its ``(model, val metrics)`` when already trained): its
    validation ``point`` (majority, minority) and the standard errors of those accuracies,
    clustered by user (:func:`tuning.pareto.accuracy_se`)."""
    import numpy as np

    from pafo_ray.train import jobs as J
    from pafo_ray.train.arrays import build_rows, user_map
    from pafo_ray.train.inmemory import train_student
    from pafo_ray.train.loop import PairScorer, score_rows
    from tuning.pareto import OBJECTIVES, accuracy_se

    model, metrics = fitted or train_student(data, cfg)
    names = J.names(cfg)
    rows = build_rows(data.val, users=user_map(model.user_ids), group_names=names,
                      cache=data.cache)
    correct = score_rows(PairScorer(model), rows, data.cache) > 0
    group = rows.group_index.numpy()
    users = data.val["user_id"].astype(str).to_numpy()
    se = {name: accuracy_se(correct[group == i], users[group == i]) for i, name in enumerate(names)}
    majority, minority = OBJECTIVES
    return {"point": [_number(metrics.get(majority)), _number(metrics.get(minority))],
            "minority_se": se[names[0]], "majority_se": se[names[-1]],
            "minority_binomial_se": accuracy_se(correct[group == 0]),
            "val_rows": {name: int((group == i).sum()) for i, name in enumerate(names)},
            "val_users": {name: int(len(np.unique(users[group == i])))
                          for i, name in enumerate(names)}}


def baseline_spaces(cfg) -> dict:
    """``{method: param_space}`` of the baselines searched beside the student: with
    ``tune.tune_baselines`` and the baselines stage active, each method of
    ``baselines.methods`` that ``tune.baseline_space`` gives a space, in that order."""
    from tuning.space import domains, read_baseline_spaces

    if not (cfg.tune.tune_baselines and is_active(cfg, "baselines")):
        return {}
    spaces = read_baseline_spaces(cfg.tune.baseline_space)
    return {m: domains(spaces[m]) for m in cfg.baselines.methods if m in spaces}


def choose_baselines(ctx: StageContext, data, outcomes: dict, baseline_majority: float,
                     reference: dict | None = None, points: dict | None = None) -> dict:
    """Each baseline's own search (``outcomes``: ``{method: SearchOutcome}``, same budget,
    sampler, seed and rule as the student's): the rule's pick trained in-process and saved as
    ``tune/baselines/<method>``. Under the ``beat_default`` rule a baseline's default is its
    baselines-stage model (``points``)."""
    from pafo_ray.train.inmemory import train_student
    from tuning.pareto import select
    from tuning.space import apply_params

    cfg = ctx.cfg
    out = {}
    for method, outcome in outcomes.items():
        selection = select(outcome.trials, baseline_majority=baseline_majority,
                           epsilon=cfg.tune.epsilon,
                           **rule_arguments(cfg, reference or {}, (points or {}).get(method)))
        _write_table(ctx, outcome.trials, f"baselines_{method}.csv")
        found = {"trials": len(outcome.trials), "errors": outcome.errors,
                 "front": [trial_record(r) for r in selection.front],
                 "chosen": trial_record(selection.chosen) if selection.chosen else None,
                 "message": selection.message, "model": None,
                 "search_seconds": outcome.seconds}
        if selection.chosen:
            model, metrics = train_student(data, apply_params(cfg, found["chosen"]["params"]),
                                           method=method)
            found["model"] = ctx.run_dir.tuned_baseline_model(method)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                ctx.run_dir.save_folder(tmp, found["model"])
            found["val_metrics"] = {k: _clean(v) for k, v in metrics.items()}
        out[method] = found
    return out


def describe(summary: dict) -> str:
    chosen = summary.get("chosen")
    if chosen:
        pick = (f"chose trial {chosen['trial_id']} (majority "
                f"{chosen['val_majority_accuracy']:.3f}, minority {chosen['val_minority_accuracy']:.3f})")
    else:
        pick = "chose none (distill keeps its configured weights)"
    resumed = ", resumed" if summary.get("resumed") else ""
    tuned = summary.get("baseline_searches") or {}
    others = ""
    if tuned:
        others = "; baselines tuned: " + ", ".join(
            f"{m} {_setting(f['chosen']['params']) if f['chosen'] else 'default (none met the rule)'}"
            for m, f in tuned.items())
    return (f"{len(summary['trials'])} trials{resumed}, front of {len(summary['front'])}, {pick}; "
            f"rule: {summary['rule']}{others}")


def _setting(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
