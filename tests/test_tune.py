"""The tune stage: a real multi-objective Ray Tune + OptunaSearch run (no mocks of Ray).

The stage test runs the real pipeline on tiny data up to ``baselines`` once per module;
the search tests train on a hand-built StudentData so they do not depend on those stages.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_overrides

from pafo_ray.config import load_config
from pafo_ray.train.arrays import Cache
from pafo_ray.train.inmemory import StudentData
from tuning.pareto import OBJECTIVES

MAJORITY, MINORITY = OBJECTIVES


def synthetic_student_data(num_users=30, rows_per_user=10, dim=8, seed=0) -> StudentData:
    """Users of two types who rank texts by two different directions of the embedding;
    each row's teacher margins are the true utility gaps of both types."""
    rng = np.random.default_rng(seed)
    users = [f"u{i:03d}" for i in range(num_users)]
    n_texts = 120
    text_ids = np.sort(rng.choice(10**9, n_texts, replace=False)).astype(np.int64)
    vectors = rng.normal(size=(n_texts, dim)).astype(np.float32)
    direction = {"minority": rng.normal(size=dim), "majority": rng.normal(size=dim)}

    def rows(per_user):
        out = []
        for i, user in enumerate(users):
            group = "minority" if i < num_users // 5 else "majority"
            for a, b in (rng.choice(n_texts, 2, replace=False) for _ in range(per_user)):
                chosen, rejected = (a, b) if vectors[a] @ direction[group] > vectors[b] @ direction[group] else (b, a)
                gap = {f"margin_{g}": float((vectors[chosen] - vectors[rejected]) @ d)
                       for g, d in direction.items()}
                out.append({"user_id": user, "group": group, "user_group": group, "weight": 1.0,
                            "chosen_text_id": text_ids[chosen],
                            "rejected_text_id": text_ids[rejected], **gap})
        return pd.DataFrame(out)

    train = rows(rows_per_user)
    stats = {g: {"mean": float(train[f"margin_{g}"].mean()), "std": float(train[f"margin_{g}"].std())}
             for g in direction}
    return StudentData(train=train, val=rows(4), users=users, teacher_stats=stats,
                       cache=Cache(text_ids, torch.from_numpy(vectors)))


def test_student_on_an_explicit_device_matches_the_default_and_comes_back_on_cpu(tmp_path):
    """``tune.gpus_per_trial > 0`` trains trials on ``cuda``: the device path must be the same
    computation (here on ``cpu``, the device this machine has) and hand back a CPU model."""
    from pafo_ray.train.inmemory import train_student, trial_device

    cfg = load_config(None, small_overrides(tmp_path, **{"train.epochs": 2}))
    data = synthetic_student_data()
    plain, plain_metrics = train_student(data, cfg)
    moved, moved_metrics = train_student(data, cfg, device="cpu")
    timing = ("train_seconds",)
    assert ({k: v for k, v in plain_metrics.items() if k not in timing}
            == {k: v for k, v in moved_metrics.items() if k not in timing})
    assert plain_metrics["val_minority_accuracy"] > 0.5  # a trained student, not a no-op
    for a, b in zip(plain.state_dict().values(), moved.state_dict().values()):
        assert torch.equal(a, b)
    assert all(p.device.type == "cpu" for p in moved.parameters())
    assert trial_device(0.0) is None
    assert trial_device(0.5) == ("cuda" if torch.cuda.is_available() else None)


def test_default_reference_gives_the_default_students_point_and_clustered_se(tmp_path):
    """The SE the one_se / beat_default rules use: the default-weights student's validation
    minority accuracy, clustered by user (6 minority users × 4 rows here), and the point the
    beat_default rule compares with; ``rule_arguments`` passes them to the Pareto rule."""
    from pafo_ray.stages.tune import default_reference, rule_arguments
    from pafo_ray.train.inmemory import train_student
    from tuning.pareto import accuracy_se

    cfg = load_config(None, small_overrides(tmp_path, **{"train.epochs": 2,
                                                         "tune.selection": "beat_default"}))
    data = synthetic_student_data()
    fitted = train_student(data, cfg)
    reference = default_reference(cfg, data, fitted)
    assert reference["point"] == [fitted[1][MAJORITY], fitted[1][MINORITY]]
    assert reference["val_rows"] == {"minority": 24, "majority": 96}
    assert reference["val_users"] == {"minority": 6, "majority": 24}
    p = fitted[1][MINORITY]
    assert reference["minority_binomial_se"] == pytest.approx(accuracy_se([1] * round(24 * p)
                                                                          + [0] * round(24 * (1 - p))))
    assert math.isfinite(reference["minority_se"]) and reference["minority_se"] >= 0
    arguments = rule_arguments(cfg, reference, reference["point"])
    assert arguments == {"rule": "beat_default", "minority_se": reference["minority_se"],
                         "se_multiplier": 1.0, "default": tuple(reference["point"])}
    best = load_config(None, small_overrides(tmp_path))
    assert rule_arguments(best, reference, reference["point"]) == {}


def assert_non_dominated(front: list) -> None:
    points = [(p[MAJORITY], p[MINORITY]) for p in front]
    for i, a in enumerate(points):
        for j, b in enumerate(points):
            dominates = b[0] >= a[0] and b[1] >= a[1] and b != a
            assert i == j or not dominates, f"front point {a} is dominated by {b}"


def test_searcher_survives_nan_inf_and_errors():
    """The searcher run_search builds takes NaN, ±inf and failed trials and keeps suggesting."""
    from tuning.search import make_searcher
    from tuning.space import load_space

    for sampler in ("tpe", "nsga2", "random"):
        searcher = make_searcher(sampler, seed=0)
        assert searcher.set_search_properties(None, None, load_space())
        outcomes = [(math.nan, 0.6), (math.inf, 0.5), (0.7, -math.inf), None, (0.65, 0.55)]
        for i, values in enumerate(outcomes):
            params = searcher.suggest(f"t{i}")
            assert {"lam", "minority_weight", "loss"} <= set(params)
            result = None if values is None else dict(zip(OBJECTIVES, values))
            searcher.on_trial_complete(f"t{i}", result, error=values is None)
        assert searcher.suggest("after")["lam"] > 0
        states = [t.state.name for t in searcher._ot_study.trials]
        assert states[3] == "FAIL" and states[4] == "COMPLETE" and states[0] != "COMPLETE"


def test_params_come_back_from_a_table_row():
    from tuning.search import params_of

    row = {"trial_id": "a", MAJORITY: 0.7, "param_lam": 0.5, "param_loss": "kl",
           "param_clip": math.nan}  # clip fixed to null in the space: NaN in the table
    assert params_of(row) == {"lam": 0.5, "loss": "kl", "clip": None}


@pytest.mark.ray
def test_search_resumes_a_failed_run_without_retraining_finished_trials(ray_session, tmp_path):
    """Run 1: one trial raises on its first attempt. Run 2 on the same path restores the
    experiment, reruns only that trial and ends with 4 trials, not 8."""
    from tuning.search import run_search, train_trial

    cfg = load_config(None, small_overrides(tmp_path, **{"train.epochs": 2,
                                                         "tune.max_concurrent_trials": 2}))
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    failed_once = str(tmp_path / "failed-once")
    attempts_dir = str(attempts)

    def flaky_trial(params, data=None, cfg=None, method="pafo"):
        from ray import tune

        open(os.path.join(attempts_dir, f"{tune.get_context().get_trial_id()}-{os.getpid()}-"
                                        f"{len(os.listdir(attempts_dir))}"), "w").close()
        try:
            os.close(os.open(failed_once, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return train_trial(params, data=data, cfg=cfg)
        raise RuntimeError("injected failure on the first attempt")

    data = synthetic_student_data()
    where = dict(storage_path=str(tmp_path / "tune"), name="search-resume", num_samples=4,
                 trainable=flaky_trial)
    first = run_search(cfg, data, **where)
    assert not first.resumed and len(first.trials) == 4 and first.errors == 1
    assert len(os.listdir(attempts)) == 4

    second = run_search(cfg, data, **where)
    assert second.resumed and len(second.trials) == 4 and second.errors == 0
    assert list(second.trials["trial_id"]) == list(first.trials["trial_id"])
    assert len(os.listdir(attempts)) == 5, "finished trials were trained again"
    assert np.isfinite(second.trials[list(OBJECTIVES)].to_numpy()).all()
    # The three trials that finished in run 1 keep their results.
    done = first.trials["status"] == "TERMINATED"
    pd.testing.assert_frame_equal(first.trials.loc[done, list(OBJECTIVES)],
                                  second.trials.loc[done, list(OBJECTIVES)])

    third = run_search(cfg, data, **where)  # a finished experiment: nothing to train
    assert third.resumed and len(third.trials) == 4 and len(os.listdir(attempts)) == 5


@pytest.fixture(scope="module")
def pipeline(ray_session, tmp_path_factory):
    """The real stages before tune (input..baselines) on tiny data, once for the module."""
    from pafo_ray.stages.base import ORDER, StageContext, is_active, run_pipeline

    tmp_path = tmp_path_factory.mktemp("tune_pipeline")
    # One baseline and no regularisation grid: the stage only needs their outputs to exist.
    cfg = load_config(None, small_overrides(tmp_path, **{
        "tune.num_samples": 4, "tune.max_concurrent_trials": 2, "train.epochs": 3,
        "baselines.methods": "[reweight]", "train.select_regularization": False}))
    ctx = StageContext.create(cfg)
    run_pipeline(ctx, [s for s in ORDER[:ORDER.index("tune")] if is_active(cfg, s)])
    return ctx


@pytest.mark.ray
def test_tune_stage_writes_the_front_and_applies_the_rule(pipeline):
    from pafo_ray.stages import tune as tune_stage
    from pafo_ray.stages.base import run_stage

    summary = run_stage(pipeline, "tune")
    run_dir = pipeline.run_dir
    assert len(summary["trials"]) >= 4 and not summary["resumed"]
    for trial in summary["trials"]:
        assert math.isfinite(trial[MAJORITY]) and math.isfinite(trial[MINORITY]), trial
        assert {"lam", "minority_weight", "extra_pairs"} <= set(trial["params"])
    front = summary["front"]
    assert front and {p["trial_id"] for p in front} <= {t["trial_id"] for t in summary["trials"]}
    assert_non_dominated(front)
    # Every trial off the front is dominated by a front member.
    for trial in summary["trials"]:
        if trial["trial_id"] not in {p["trial_id"] for p in front}:
            assert any(p[MAJORITY] >= trial[MAJORITY] and p[MINORITY] >= trial[MINORITY]
                       for p in front), trial

    vanilla = run_dir.read_json("teachers", "summary.json")["jobs"]["vanilla"]["metrics"][MAJORITY]
    assert summary["baseline_majority"] == pytest.approx(vanilla)
    threshold = vanilla - pipeline.cfg.tune.epsilon
    eligible = [p for p in front if p[MAJORITY] >= threshold - 1e-12]
    if eligible:
        chosen = summary["chosen"]
        assert summary["met_constraint"] and chosen["trial_id"] in {p["trial_id"] for p in eligible}
        assert chosen[MINORITY] == max(p[MINORITY] for p in eligible)
        assert chosen["params"] == next(t["params"] for t in summary["trials"]
                                        if t["trial_id"] == chosen["trial_id"])
    else:
        assert summary["chosen"] is None and not summary["met_constraint"]
        assert "no trial met the constraint" in summary["message"]
    assert summary["hypervolume"] >= 0 and summary["plot"] == "pareto_front.png"

    for name in ("trials.parquet", "trials.csv", "front.csv", "pareto_front.png", "summary.json"):
        assert run_dir.exists("tune", name), name
    table = pd.read_parquet(run_dir.uri("tune", "trials.parquet"))
    assert len(table) == len(summary["trials"]) and {"param_lam", MAJORITY, MINORITY} <= set(table)
    assert run_dir.read_bytes("tune", "pareto_front.png")[:4] == b"\x89PNG"
    assert "\n" not in tune_stage.describe(summary) and "trials" in tune_stage.describe(summary)

    # The baseline's own search: the same budget and rule, over its own setting only.
    found = summary["baseline_searches"]["reweight"]
    assert found["trials"] == len(summary["trials"]) and set(found) >= {"chosen", "front", "model"}
    assert run_dir.exists("tune", "baselines_reweight.csv")
    if found["chosen"]:
        assert set(found["chosen"]["params"]) == {"reweight_power"}
        assert 0.0 <= found["chosen"]["params"]["reweight_power"] <= 2.0
        eligible = [p for p in found["front"] if p[MAJORITY] >= threshold - 1e-12]
        assert found["chosen"][MINORITY] == max(p[MINORITY] for p in eligible)
        assert run_dir.exists("tune", "baselines", "reweight", "model.safetensors")
    else:
        assert found["model"] is None and "no trial met the constraint" in found["message"]

    # A rerun after the stage folder is lost restores the Tune experiment instead of retraining.
    again = run_stage(pipeline, "tune", force=True)
    assert again["resumed"] and [t["trial_id"] for t in again["trials"]] == \
        [t["trial_id"] for t in summary["trials"]]


@pytest.mark.ray
def test_evaluate_compares_the_tuned_baseline(pipeline):
    """After tune, evaluate scores the baseline its own search chose (or says it kept the
    default setting)."""
    from pafo_ray.stages.base import run_stage
    from pafo_ray.stages.evaluate import method_models

    summary = run_stage(pipeline, "tune")  # done already: read back
    found = summary["baseline_searches"]["reweight"]
    models = method_models(pipeline)
    if found["chosen"]:
        assert models["reweight"] == pipeline.run_dir.uri("tune", "baselines", "reweight")
    else:
        assert models["reweight"] == pipeline.run_dir.uri("baselines", "reweight")
    assert models["vanilla"] == pipeline.run_dir.uri("teachers", "vanilla")


def test_every_sampler_pickles_as_ray_tune_saves_it():
    """Ray Tune pickles its searcher with the Tuner's state. Optuna 5.1's NSGA-II holds a
    threading.Lock: the sampler must still pickle (plain pickle, as Tuner.restore reads it)
    and come back with a lock it can use."""
    import pickle

    import ray.cloudpickle

    from tuning.search import SAMPLERS, make_sampler, make_searcher

    for name in SAMPLERS:
        ray.cloudpickle.dumps(make_searcher(name, 0, 8))
        sampler = pickle.loads(pickle.dumps(make_sampler(name, 0, 8)))
        lock = getattr(sampler, "_thread_lock", None)
        if name == "nsga2":
            with lock:  # a real lock again after the round trip
                pass


def _objective(params: dict) -> dict:
    """A deterministic result for a trial's params (no training): what each search learns from."""
    x = sum(float(v) for v in params.values() if isinstance(v, (int, float)))
    return {MAJORITY: 0.5 + 0.4 * math.sin(x), MINORITY: 0.5 + 0.4 * math.cos(3 * x)}


def _searchers(spaces: dict, budget: int) -> dict:
    from tuning.methods import split_space
    from tuning.search import make_searcher

    out = {}
    for method, space in spaces.items():
        sampled, constants = split_space(space)
        out[method] = (make_searcher("tpe", 0, budget, space=sampled) if sampled else None,
                       constants)
    return out


def test_searches_in_one_experiment_sample_as_each_would_alone():
    """MethodSearches hands out trials in turn, tags each with its method, merges the fixed
    values, routes each result to its own method's searcher only, and stops after every
    method's budget. With results arriving in the same order, each method samples exactly
    the params it samples alone (same sampler and seed)."""
    import pickle

    from ray.tune.search import Searcher

    from tuning.methods import METHOD_KEY, MethodSearches
    from tuning.space import domains, load_space, read_baseline_spaces

    budget = 6
    spaces = {"pafo": load_space(), **{m: domains(s) for m, s in read_baseline_spaces().items()},
              "fixed": {"reweight_power": 1.0}}
    alone = {}
    for method, (searcher, constants) in _searchers(spaces, budget).items():
        seq = []
        for i in range(budget):
            params = {**constants, **(searcher.suggest(f"{method}{i}") if searcher else {})}
            seq.append(params)
            if searcher:
                searcher.on_trial_complete(f"{method}{i}", _objective(params))
        alone[method] = seq

    combined = MethodSearches(_searchers(spaces, budget), budget)
    seen = {m: [] for m in spaces}
    for i in range(budget * len(spaces)):
        config = combined.suggest(f"t{i}")
        method = config.pop(METHOD_KEY)
        assert method == list(spaces)[i % len(spaces)], "not handed out in turn"
        seen[method].append(config)
        combined.on_trial_complete(f"t{i}", _objective(config))
        if i == 9:  # a save and restore mid-way changes nothing
            path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"methods-{os.getpid()}.pkl")
            combined.save(path)
            combined = MethodSearches({}, 1)
            combined.restore(path)
            os.remove(path)
            pickle.loads(pickle.dumps(combined))
    assert combined.suggest("after") == Searcher.FINISHED
    for method in spaces:
        assert seen[method] == alone[method], method
        searcher = combined.searches[method][0]
        if searcher is not None:  # each study was told its own trials' results only
            values = [t.values for t in searcher._ot_study.trials]
            assert values == [[_objective(p)[MAJORITY], _objective(p)[MINORITY]]
                              for p in seen[method]], method
    assert seen["fixed"] == [{"reweight_power": 1.0}] * budget
    assert set(seen["reweight"][0]) == {"reweight_power"}
    assert {"lam", "minority_weight"} <= set(seen["pafo"][0])


@pytest.mark.ray
def test_an_experiment_that_never_started_is_started_afresh(ray_session, tmp_path):
    """Ray writes tuner.pkl before it can fail to start a Tuner; over an empty one
    ``Tuner.can_restore`` is true and ``Tuner.restore`` raised EOFError. run_search starts
    such an experiment afresh, and both methods of a combined search get their budget."""
    from ray import tune

    from tuning.search import params_of, run_searches
    from tuning.space import apply_params, domains, read_baseline_spaces

    cfg = load_config(None, small_overrides(tmp_path, **{"train.epochs": 2,
                                                         "tune.max_concurrent_trials": 2}))
    folder = tmp_path / "tune" / "searches-empty"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"")
    assert tune.Tuner.can_restore(str(folder))
    spaces = {"pafo": None, "reweight": domains(read_baseline_spaces()["reweight"])}
    out = run_searches(cfg, synthetic_student_data(), spaces, storage_path=str(tmp_path / "tune"),
                       name="searches-empty", num_samples=2)
    assert set(out) == {"pafo", "reweight"}
    for method, outcome in out.items():
        assert not outcome.resumed and len(outcome.trials) == 2 and outcome.errors == 0, method
        assert np.isfinite(outcome.trials[list(OBJECTIVES)].to_numpy()).all(), method
    assert [c for c in out["reweight"].trials if c.startswith("param_")] == ["param_reweight_power"]
    assert "param_lam" in out["pafo"].trials and "method" not in out["pafo"].trials
    for outcome in out.values():  # each table's params apply as sampled (ints stay ints)
        for row in outcome.trials.to_dict("records"):
            apply_params(cfg, params_of(row))
    assert len(set(out["pafo"].trials["trial_id"]) & set(out["reweight"].trials["trial_id"])) == 0
