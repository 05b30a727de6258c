"""The teachers stage: one Bradley–Terry teacher per group plus vanilla, on Ray Train.

input..embed run once for the module on tiny synthetic data; each test copies that run under
its own run_name and trains teachers on it. Trainers run in-process (``train.num_workers=0``)
except in the test whose point is real workers: concurrency and resume after a failure.
"""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import small_overrides

from pafo_ray.config import load_config

pytestmark = pytest.mark.ray

GROUPS = ["minority", "majority"]
CHANCE_PLUS = 0.58  # validation accuracy every model must beat (chance is 0.5)

# Deterministic labels, ~10 training rows per user. Measured on this data (model seeds 0-3):
# vanilla 0.69-0.80 and the majority teacher 0.68-0.76 validation accuracy with either head
# after 10 epochs at lr 0.03; 6 epochs at lr 0.01 stopped at 0.56 (under-trained).
# The regularize stage has its own tests: off here, so each teachers run is only teachers.
DATA = {"data.generator.num_users": 80, "data.generator.num_prompts": 60,
        "data.generator.label_beta": "null", "train.epochs": 10, "train.checkpoint_every": 5,
        "train.lr": 0.03, "train.select_regularization": False}
FAIL_AFTER = 5  # the epoch whose checkpoint the failed worker resumes from


def _overrides(tmp, **extra) -> list:
    return small_overrides(tmp, **{**DATA, **extra})


def _stages_through(cfg, last: str) -> list:
    from pafo_ray.stages.base import ORDER, is_active

    active = [s for s in ORDER if is_active(cfg, s)]
    return active[:active.index(last) + 1]


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    """input..groups once; returns a function that trains teachers on a copy."""
    from pafo_ray.stages.base import StageContext, run_pipeline

    tmp = tmp_path_factory.mktemp("teachers")
    cfg = load_config(None, _overrides(tmp))
    base = StageContext.create(cfg)
    run_pipeline(base, _stages_through(cfg, "groups"))
    done: dict = {}

    def train(name: str, **extra):
        """The teachers stage on a copy of the prepared run named ``name`` (memoised)."""
        if name in done:
            return done[name]
        shutil.copytree(base.run_dir.root, tmp / "runs" / name,
                        ignore=shutil.ignore_patterns("_ray", "teachers"))
        ctx = StageContext.create(load_config(None, _overrides(tmp, **{"run.run_name": name,
                                                                       **extra})))
        run_pipeline(ctx, _stages_through(ctx.cfg, "teachers"))
        done[name] = ctx, ctx.run_dir.read_json("teachers", "summary.json")
        return done[name]

    train.base = base
    return train


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """In-process training on 2 shared cores: one intra-op thread (two threads spin against
    Ray's processes and ran tiny fits 10-100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------- learning


VARIANTS = {
    "lowrank": {},
    "mlp": {"model.head": "mlp"},
    # End to end through the tiny builtin backbone (measured: vanilla 0.72, majority 0.80).
    "finetune": {"model.mode": "finetune", "train.epochs": 4, "train.lr": 0.003,
                 "train.batch_size": 64},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_teachers_learn_above_chance(prepared, variant):
    ctx, summary = prepared(variant, **VARIANTS[variant])
    jobs = summary["jobs"]
    assert set(jobs) == {"vanilla", *GROUPS} and not summary["fallbacks"]
    assert summary["init"] == "scratch"
    for name, info in jobs.items():
        m = info["metrics"]
        assert m["epoch"] == ctx.cfg.train.epochs and m["started_epoch"] == 0, (name, m)
        assert math.isfinite(m["train_loss"]), (name, m)
    assert jobs["vanilla"]["metrics"]["val_accuracy"] > CHANCE_PLUS, jobs["vanilla"]["metrics"]
    # A teacher is validated on its own group's rows only: the other group's accuracy is NaN.
    majority = jobs["majority"]["metrics"]
    assert majority["val_accuracy"] > CHANCE_PLUS, majority
    assert majority["val_accuracy"] == majority["val_majority_accuracy"]
    assert math.isnan(majority["val_minority_accuracy"])
    minority = jobs["minority"]["metrics"]
    assert minority["val_accuracy"] == minority["val_minority_accuracy"]
    assert math.isnan(minority["val_majority_accuracy"])
    # Each teacher trained on its own group's rows, which the groups stage counted.
    counts = ctx.run_dir.read_json("groups", "summary.json")["groups"]["train"]
    assert summary["train_rows"] == counts and all(counts[g] > 0 for g in GROUPS)
    for name in ("vanilla", *GROUPS):
        assert ctx.run_dir.exists("teachers", name, "config.json")
        assert ctx.run_dir.exists("teachers", name, "model.safetensors")
        saved = ctx.run_dir.read_json("teachers", name, "margin_stats.json")
        assert saved["epoch"] == ctx.cfg.train.epochs
        assert saved["val_margin_mean"] == pytest.approx(jobs[name]["metrics"]["val_margin_mean"])


# ----------------------------------------------------------------- save / load


def _val_margins(ctx, model, group: str) -> np.ndarray:
    """The saved model's margins on the validation rows it was validated on."""
    from pafo_ray.train.arrays import read_cache
    from pafo_ray.train.frames import read_frame

    rows = read_frame(ctx.run_dir.uri("groups", "data", "split=val", f"group={group}"))
    users = rows["user_id"].astype(str).tolist()
    if ctx.cfg.model.mode == "frozen":
        cache = read_cache(ctx.run_dir.uri("embed", "cache"))
        phi = {s: cache.vectors[cache.index_of(rows[f"{s}_text_id"].to_numpy(np.int64))].numpy()
               for s in ("chosen", "rejected")}
        blank = [""] * len(rows)
        return (model.score(users, blank, blank, embeddings=phi["chosen"])
                - model.score(users, blank, blank, embeddings=phi["rejected"]))
    prompts = rows["prompt"].tolist()
    return (model.score(users, prompts, rows["chosen"].tolist())
            - model.score(users, prompts, rows["rejected"].tolist()))


@pytest.mark.parametrize("variant", ["lowrank", "finetune"])
def test_saved_teacher_is_the_trained_teacher(prepared, variant, tmp_path):
    """The checkpoint reproduces the margin statistics and accuracy measured on the trained
    model in the worker; saving and loading it again gives identical scores."""
    from pafo_ray.models import RewardModel

    ctx, summary = prepared(variant, **VARIANTS[variant])
    teacher = RewardModel.from_pretrained(ctx.run_dir.uri("teachers", "majority"))
    margins = _val_margins(ctx, teacher, "majority")
    saved = ctx.run_dir.read_json("teachers", "majority", "margin_stats.json")
    assert margins.mean() == pytest.approx(saved["val_margin_mean"], abs=1e-4)
    assert margins.std() == pytest.approx(saved["val_margin_std"], rel=1e-4, abs=1e-5)
    metrics = summary["jobs"]["majority"]["metrics"]
    assert float((margins > 0).mean()) == pytest.approx(metrics["val_accuracy"])

    again = RewardModel.from_pretrained(teacher.save_pretrained(tmp_path / "copy"))
    users = teacher.user_ids[:5] + ["someone-new"]
    prompts = ["How do I boil an egg?"] * 3 + ["Name a colour.", "Hi", "What is 2+2?"]
    responses = ["Boil it for nine minutes.", "Crack it into a pan.", "Ask a chef.",
                 "Blue.", "Hello there, how can I help?", "Four."]
    first = teacher.score(users, prompts, responses)
    second = again.score(users, prompts, responses)
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all() and np.ptp(first) > 0
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


# ----------------------------------------------------------------- real workers


@pytest.fixture(scope="module")
def real_workers(prepared):
    """Teachers with one real Ray Train worker each; vanilla's worker fails once after its
    epoch-5 checkpoint (the PAFO_RAY_FAIL_AT_EPOCH test hook) and Ray Train restarts it."""
    from pafo_ray.train.ray_train import FAIL_ENV

    os.environ[FAIL_ENV] = f"vanilla:{FAIL_AFTER}"
    try:
        # No ingest reserve: the session's 4 CPUs then admit all three trainers at once (with
        # the default 1 CPU each, admission runs two at once and the teachers may not overlap).
        # A worker each (train.pool_workers=3): by default a 2-core machine gives 2 workers.
        return prepared("workers", **{"train.num_workers": 1, "train.max_failures": 1,
                                      "train.ingest_cpus": 0, "train.pool_workers": 3})
    finally:
        del os.environ[FAIL_ENV]


def test_teachers_train_concurrently(real_workers):
    _, summary = real_workers
    jobs = summary["jobs"]
    minority, majority = jobs["minority"], jobs["majority"]
    # Driver side: both fits were in flight at once, and the stage reports the overlap.
    assert max(minority["started"], majority["started"]) < min(minority["finished"],
                                                               majority["finished"])
    assert summary["overlap_seconds"] > 0
    # Worker side: both workers were training at the same time (from the time each worker
    # entered train_func to its last report).
    spans = {g: (jobs[g]["metrics"]["worker_started_at"], jobs[g]["metrics"]["reported_at"])
             for g in GROUPS}
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans


def test_one_worker_group_trains_all_three_jobs(real_workers):
    """train.pool_jobs (default): vanilla and both teachers trained in ONE Ray Train run:
    Ray's train context gave every job the same experiment, a world of 3 workers and its own
    rank, and Ray Train wrote one run folder for the stage."""
    ctx, summary = real_workers
    metrics = {name: info["metrics"] for name, info in summary["jobs"].items()}
    assert set(metrics) == {"vanilla", *GROUPS}
    assert len({m["experiment"] for m in metrics.values()}) == 1, metrics
    assert {m["world_size"] for m in metrics.values()} == {3}, metrics
    assert sorted(m["world_rank"] for m in metrics.values()) == [0, 1, 2], metrics
    runs = [f for f in os.listdir(ctx.run_dir.uri("_ray", "teachers")) if f.startswith("pool-")]
    assert runs == [next(iter(metrics.values()))["experiment"]], runs
    # vanilla's injected failure was retried inside its worker; the others ran once.
    assert metrics["vanilla"]["attempt"] == 1
    assert all(metrics[g]["attempt"] == 0 for g in GROUPS)
    # Each worker told the driver's progress board (the status line) its last epoch.
    from pafo_ray import progress

    epochs = ctx.cfg.train.epochs
    board = progress.snapshot(ctx.cfg.run.run_name, timeout=10).get("teachers", {})
    assert board == {name: (epochs, epochs) for name in ("vanilla", *GROUPS)}, board


@pytest.mark.slow
def test_pooled_results_equal_one_trainer_per_job(prepared, real_workers):
    """The same seed gives the same models whether the jobs share one worker group (a worker
    each, or one worker for all) or each has its own TorchTrainer reading Ray Data shards
    (train.pool_jobs=false)."""
    _, pooled = real_workers
    _, per_job = prepared("per_job", **{"train.num_workers": 1, "train.pool_jobs": False,
                                        "train.ingest_cpus": 0})
    # ...or all three share one worker that trains them in turn (train.pool_workers=1).
    _, shared = prepared("one_worker", **{"train.num_workers": 1, "train.pool_workers": 1})
    for name in ("vanilla", *GROUPS):
        a, b = pooled["jobs"][name]["metrics"], per_job["jobs"][name]["metrics"]
        c = shared["jobs"][name]["metrics"]
        assert "world_size" not in b  # it did take the per-job path
        assert (c["world_size"], c["world_rank"]) == (1, 0), c
        for key in ("train_loss", "val_accuracy", "val_margin_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (name, key)
            assert c[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (name, key)


@pytest.mark.slow
def test_one_run_pool_trains_two_stages_in_turn(prepared, real_workers):
    """train.run_pool: two runs' teachers stages trained by ONE Ray Train worker group that
    stays up between them (pafo_ray.train.runpool); vanilla's injected failure is retried in
    its worker from its checkpoint; the models equal the pooled trainer's (same seed); the
    group ends when the pool closes."""
    import dataclasses

    from pafo_ray.train import runpool
    from pafo_ray.train.ray_train import FAIL_ENV

    _, pooled = real_workers
    extra = {"train.num_workers": 1, "train.max_failures": 1, "train.pool_workers": 2,
             "train.ingest_cpus": 0}
    base = prepared.base.cfg
    cfg = dataclasses.replace(base, train=dataclasses.replace(
        base.train, num_workers=1, max_failures=1, pool_workers=2, ingest_cpus=0))
    with runpool.opened(cfg):
        pool = runpool.active()
        assert pool is not None and pool.width == 2 and pool.thread is None  # started lazily
        os.environ[FAIL_ENV] = f"vanilla:{FAIL_AFTER}"
        try:
            _, first = prepared("runpool_a", **extra)
        finally:
            del os.environ[FAIL_ENV]
        assert pool.thread.is_alive() and not pool.ended.is_set()  # up between the stages
        _, second = prepared("runpool_b", **extra)
    assert pool.ended.wait(60) and pool.error is None, pool.error
    assert runpool.active() is None
    metrics = {(run, name): summary["jobs"][name]["metrics"]
               for run, summary in (("a", first), ("b", second)) for name in ("vanilla", *GROUPS)}
    experiments = {m["experiment"] for m in metrics.values()}
    assert len(experiments) == 1 and next(iter(experiments)).startswith("runpool-"), experiments
    assert {m["world_size"] for m in metrics.values()} == {2}
    assert (metrics["a", "vanilla"]["attempt"], metrics["a", "vanilla"]["started_epoch"]) == \
        (1, FAIL_AFTER)
    assert metrics["b", "vanilla"]["attempt"] == 0
    for (run, name), m in metrics.items():
        expected = pooled["jobs"][name]["metrics"]
        for key in ("train_loss", "val_accuracy", "val_margin_mean"):
            assert m[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), (run, name, key)


def test_failed_worker_resumes_from_its_checkpoint(prepared, real_workers):
    ctx, summary = real_workers
    epochs = ctx.cfg.train.epochs
    vanilla = summary["jobs"]["vanilla"]["metrics"]
    # The retry loaded the epoch-5 checkpoint and trained epochs 6..10 only.
    assert vanilla["started_epoch"] == FAIL_AFTER and vanilla["epoch"] == epochs, vanilla
    # ...and ended where an uninterrupted run of the same model ends (weights, optimizer state
    # and the epoch's shuffle all resumed; a restart from scratch or a skipped epoch would not).
    _, uninterrupted = prepared("lowrank", **VARIANTS["lowrank"])
    expected = uninterrupted["jobs"]["vanilla"]["metrics"]
    for key in ("train_loss", "val_accuracy", "val_margin_mean", "val_margin_std"):
        assert vanilla[key] == pytest.approx(expected[key], rel=1e-5), key
    assert vanilla["val_accuracy"] > CHANCE_PLUS, vanilla
    failed = [f for f in os.listdir(ctx.run_dir.uri("_ray", "teachers")) if f.endswith(".failed_once")]
    assert len(failed) == 1 and failed[0].startswith("vanilla-")
    for g in GROUPS:  # the others were not disturbed
        m = summary["jobs"][g]["metrics"]
        assert m["started_epoch"] == 0 and m["epoch"] == epochs, (g, m)
    saved = ctx.run_dir.read_json("teachers", "vanilla", "margin_stats.json")
    assert saved["epoch"] == epochs


# ----------------------------------------------------------------- small groups


def _minority_rows(prepared) -> tuple:
    counts = prepared.base.run_dir.read_json("groups", "summary.json")["groups"]["train"]
    assert counts["minority"] < counts["majority"]
    return counts["minority"], counts["majority"]


def test_small_group_falls_back_to_vanilla(prepared):
    minority_rows, _ = _minority_rows(prepared)
    ctx, summary = prepared("fallback", **{"teachers.min_rows": minority_rows + 1})
    assert set(summary["jobs"]) == {"vanilla", "majority"}
    note = summary["fallbacks"]["minority"]
    assert f"{minority_rows} training rows" in note and "vanilla" in note
    assert f"min_rows={minority_rows + 1}" in note
    run_dir = ctx.run_dir
    for name in ("model.safetensors", "config.json", "user_ids.json", "margin_stats.json"):
        assert (run_dir.read_bytes("teachers", "minority", name)
                == run_dir.read_bytes("teachers", "vanilla", name)), name
    # Same data, model and training settings as the lowrank run: the same vanilla, bit for bit
    # (seeded init, rows in row_id order whatever order Ray Data delivers them in).
    _, lowrank = prepared("lowrank", **VARIANTS["lowrank"])
    assert summary["jobs"]["vanilla"]["metrics"]["val_accuracy"] == \
        lowrank["jobs"]["vanilla"]["metrics"]["val_accuracy"]
    assert summary["jobs"]["vanilla"]["metrics"]["train_loss"] == \
        lowrank["jobs"]["vanilla"]["metrics"]["train_loss"]


def test_small_group_policy_error_names_the_group(prepared, tmp_path):
    from pafo_ray.stages.base import StageContext, run_stage

    minority_rows, majority_rows = _minority_rows(prepared)
    base = prepared.base
    shutil.copytree(base.run_dir.root, tmp_path / "runs" / "t",
                    ignore=shutil.ignore_patterns("_ray", "teachers"))
    cfg = load_config(None, _overrides(tmp_path, **{"teachers.min_rows": minority_rows + 1,
                                                    "teachers.small_group_policy": "error"}))
    ctx = StageContext.create(cfg)
    with pytest.raises(ValueError) as info:
        run_stage(ctx, "teachers")
    message = str(info.value)
    assert "'minority'" in message and str(minority_rows) in message
    assert "majority" not in message.split("training rows")[0]
    assert "teachers.min_rows" in message and "small_group_policy" in message
    assert not ctx.run_dir.exists("teachers", "_SUCCESS.json")
    assert majority_rows >= minority_rows + 1


def test_both_teacher_sets_train_and_get_scored(prepared):
    """teachers.init=both: the scratch teachers and the vanilla-initialised ``<g>_ft`` set;
    the ``_ft`` teachers start at vanilla (after 2 epochs they are still nearer to it than
    the scratch ones), and the margins stage scores every row with all four."""
    from pafo_ray.models import RewardModel
    from pafo_ray.stages.base import run_stage
    from pafo_ray.train.frames import read_frame

    ctx, summary = prepared("both", **{"teachers.init": "both", "teachers.finetune_epochs": 2})
    assert set(summary["jobs"]) == {"vanilla", *GROUPS, *(g + "_ft" for g in GROUPS)}

    def weights(name):
        model = RewardModel.from_pretrained(ctx.run_dir.uri("teachers", name))
        return torch.cat([p.detach().flatten() for p in model.head.parameters()])

    vanilla = weights("vanilla")
    for g in GROUPS:
        assert (weights(g + "_ft") - vanilla).norm() < (weights(g) - vanilla).norm(), g
    run_stage(ctx, "margins")
    stats = ctx.run_dir.read_json("margins", "teacher_stats.json")
    assert set(stats) == {*GROUPS, *(g + "_ft" for g in GROUPS)}
    frame = read_frame(ctx.run_dir.uri("margins", "rows", "split=train"))
    # Frozen mode scores cached vectors by text id: the texts are neither read nor written.
    assert ctx.cfg.model.mode == "frozen"
    assert {"chosen_text_id", "rejected_text_id"} <= set(frame.columns)
    assert not {"prompt", "chosen", "rejected"} & set(frame.columns)
    for g in GROUPS:
        assert np.isfinite(frame[f"margin_{g}_ft"]).all()
        assert not np.allclose(frame[f"margin_{g}_ft"], frame[f"margin_{g}"])
