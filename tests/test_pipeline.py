"""The whole pipeline on tiny data, once: every stage's output, the report with every method,
and a second run that finds every stage complete and redoes nothing."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import small_overrides

from pafo_ray.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

METHODS = {"vanilla", "reweight", "groupdro", "fairness_penalty", "pafo"}
PLOTS = ("bias_curve.png", "per_user_accuracy.png", "minority_vs_majority.png")


@pytest.fixture(scope="module")
def pipeline(ray_session, tmp_path_factory):
    from pafo_ray.stages.base import ORDER, StageContext, is_active, run_pipeline

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # in-process trainers on 2 shared cores (see test_teachers)
    tmp = tmp_path_factory.mktemp("pipeline")
    # The data and training of tests/test_teachers.py, where vanilla reaches ~0.7 validation
    # accuracy (the small_overrides defaults leave every model near chance).
    overrides = small_overrides(tmp, **{
        "data.generator.num_users": 80, "data.generator.num_prompts": 60,
        "data.generator.label_beta": "null", "train.epochs": 10, "train.checkpoint_every": 5,
        "train.lr": 0.03})
    cfg = load_config(None, overrides)
    assert cfg.tune.num_samples == 0
    ctx = StageContext.create(cfg)
    results = run_pipeline(ctx)
    yield {"ctx": ctx, "results": results, "overrides": overrides,
           "stages": [s for s in ORDER if is_active(cfg, s)]}
    torch.set_num_threads(before)


def test_every_active_stage_ran_and_is_marked_complete(pipeline):
    ctx, results, stages = pipeline["ctx"], pipeline["results"], pipeline["stages"]
    assert "tune" not in stages and {"input", "prepare", "embed", "teachers", "margins",
                                     "baselines", "distill", "evaluate"} <= set(stages)
    assert set(results) == set(stages)  # teachers and baselines run side by side
    for stage in stages:
        marker = ctx.run_dir.marker(stage)
        assert marker is not None, stage
        assert ctx.run_dir.read_json(stage, "summary.json")["seconds"] >= 0
    assert not ctx.run_dir.exists("tune")


def test_report_has_every_method(pipeline):
    ctx = pipeline["ctx"]
    run_dir = ctx.run_dir
    summary = pipeline["results"]["evaluate"]
    assert set(summary["methods"]) == METHODS
    test_rows = run_dir.read_json("prepare", "summary.json")["groups"]["test"]
    assert summary["rows"] == sum(test_rows.values()) > 0

    metrics = json.loads(run_dir.read_bytes("evaluate", "metrics.json"))
    assert set(metrics["methods"]) == METHODS
    for name, m in metrics["methods"].items():
        assert 0.0 <= m["overall"]["value"] <= 1.0, name
        by_group = m["by"]["group"]["by_group"]
        assert {"minority", "majority"} <= set(by_group), (name, by_group)
        assert "user_type" in m["by"], name  # the generator's ground truth is reported
    # Every method is compared with vanilla on the same rows.
    assert set(metrics["differences"]) == METHODS - {"vanilla"}
    # Trained models, not coin flips (test accuracy; ~0.7 measured).
    for name in METHODS:
        assert metrics["methods"][name]["overall"]["value"] > 0.58, name

    report = run_dir.read_bytes("evaluate", "report.md").decode()
    assert report.startswith("# pafo_ray report: t")
    for name in METHODS:
        assert re.search(rf"\b{name}\b", report), name
    for plot in PLOTS:
        assert run_dir.read_bytes("evaluate", plot)[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"({plot})" in report
    assert "pafo student weights from distill config" in report


def test_student_and_teachers_are_saved(pipeline):
    from pafo_ray.models import RewardModel

    run_dir = pipeline["ctx"].run_dir
    for parts in (("teachers", "vanilla"), ("teachers", "minority"), ("teachers", "majority"),
                  ("baselines", "reweight"), ("baselines", "groupdro"),
                  ("baselines", "fairness_penalty"), ("distill", "student")):
        model = RewardModel.from_pretrained(run_dir.uri(*parts))
        assert model.user_ids, parts
    distill = pipeline["results"]["distill"]
    assert distill["student"]["metrics"]["epoch"] == pipeline["ctx"].cfg.train.epochs


def test_second_run_skips_every_stage(pipeline, capsys):
    from pafo_ray.stages.base import StageContext, run_pipeline

    ctx, stages = pipeline["ctx"], pipeline["stages"]
    markers = {s: ctx.run_dir.marker(s) for s in stages}
    report = ctx.run_dir.read_bytes("evaluate", "report.md")
    capsys.readouterr()
    again = run_pipeline(StageContext.create(load_config(None, pipeline["overrides"])))
    out = capsys.readouterr().out
    for stage in stages:
        assert f"[{stage}] done already" in out, stage
        assert ctx.run_dir.marker(stage) == markers[stage], stage
    first = pipeline["results"]["evaluate"]
    assert {k: again["evaluate"][k] for k in ("methods", "rows", "report", "files")} == \
        {k: first[k] for k in ("methods", "rows", "report", "files")}
    assert ctx.run_dir.read_bytes("evaluate", "report.md") == report


def test_cli_stage_command_on_a_finished_run_skips(pipeline, capsys):
    from pafo_ray.cli import main

    ctx = pipeline["ctx"]
    marker = ctx.run_dir.marker("distill")
    capsys.readouterr()
    assert main(["distill", *pipeline["overrides"]]) == 0
    out = capsys.readouterr().out
    from pafo_ray.stages.base import upstream

    for stage in upstream(ctx.cfg, "distill") + ["distill"]:
        assert f"[{stage}] done already" in out, stage
    assert ctx.run_dir.marker("distill") == marker


def test_changing_a_setting_reruns_only_what_depends_on_it(pipeline, capsys):
    """A new evaluate setting reruns evaluate only; everything upstream is reused."""
    from pafo_ray.stages.base import StageContext, run_pipeline

    ctx, stages = pipeline["ctx"], pipeline["stages"]
    markers = {s: ctx.run_dir.marker(s) for s in stages}
    overrides = pipeline["overrides"] + ["evaluate.support_buckets=3"]
    capsys.readouterr()
    results = run_pipeline(StageContext.create(load_config(None, overrides)))
    out = capsys.readouterr().out
    for stage in stages[:-1]:
        assert f"[{stage}] done already" in out and ctx.run_dir.marker(stage) == markers[stage]
    assert "[evaluate] done already" not in out
    assert ctx.run_dir.marker("evaluate")["config_hash"] != markers["evaluate"]["config_hash"]
    metrics = json.loads(ctx.run_dir.read_bytes("evaluate", "metrics.json"))
    assert len(metrics["methods"]["pafo"]["bias_curve"]) == 3
    assert set(results["evaluate"]["methods"]) == METHODS


def test_evaluate_scores_the_same_in_the_driver_as_in_ray_data(pipeline):
    """A small split is scored in the driver (evaluate.inline_rows); Ray Data's actor pool
    (inline_rows=0) gives the same rows in the same order with the same margins."""
    import dataclasses

    import numpy as np

    from pafo_ray.stages.evaluate import method_models, score_split

    ctx = pipeline["ctx"]
    models = method_models(ctx)
    here = score_split(ctx, models, "test")
    cfg = dataclasses.replace(ctx.cfg, evaluate=dataclasses.replace(ctx.cfg.evaluate,
                                                                    inline_rows=0))
    there = score_split(dataclasses.replace(ctx, cfg=cfg), models, "test")
    assert len(here) == len(there) > 0 and list(here.columns) == list(there.columns)
    assert (here["row_id"].to_numpy() == there["row_id"].to_numpy()).all()
    assert (here["group"].astype(str).to_numpy() == there["group"].astype(str).to_numpy()).all()
    for m in models:
        np.testing.assert_allclose(here[f"margin_{m}"], there[f"margin_{m}"], rtol=1e-5,
                                   atol=1e-6)


def test_embed_writes_the_same_cache_in_the_driver_as_in_ray_data(pipeline, tmp_path):
    """A small run embeds in the driver (embed.inline_texts); the actor pool
    (inline_texts=0) gives the same text ids with the same vectors and truncation flags."""
    import dataclasses

    import numpy as np
    import pyarrow.dataset as pads

    from pafo_ray.stages import embed

    ctx = pipeline["ctx"]
    summary = ctx.run_dir.read_json("embed", "summary.json")
    assert summary["where"] == "driver" and summary["actors"] == 0  # the small run's default
    assert "in the driver" in embed.describe(summary)
    here_uri, there_uri = str(tmp_path / "here"), str(tmp_path / "there")
    count, truncated, dim = embed.embed_here(ctx, here_uri)
    assert (count, truncated, dim) == (summary["texts"], summary["truncated_texts"],
                                       summary["dim"])
    cfg = dataclasses.replace(ctx.cfg, embed=dataclasses.replace(ctx.cfg.embed, inline_texts=0))
    assert not embed.embeds_inline(cfg, ctx.run_dir.prepare_summary(), 1)
    assert embed.embeds_inline(ctx.cfg, ctx.run_dir.prepare_summary(), 1)
    assert not embed.embeds_inline(ctx.cfg, ctx.run_dir.prepare_summary(), 2)  # a cluster
    embed._embed_with_pool(dataclasses.replace(ctx, cfg=cfg), {"actors": 1, "cpus": 1.0},
                           there_uri)

    def table(uri):
        t = pads.dataset(uri, format="parquet").to_table().sort_by("text_id")
        return (t.column("text_id").to_numpy(), t.column("truncated").to_numpy(),
                np.stack(t.column("embedding").to_numpy(zero_copy_only=False)))

    (ids_h, cut_h, vec_h), (ids_t, cut_t, vec_t) = table(here_uri), table(there_uri)
    assert len(ids_h) == count and (ids_h == ids_t).all() and (cut_h == cut_t).all()
    np.testing.assert_allclose(vec_h, vec_t, rtol=1e-5, atol=1e-6)
