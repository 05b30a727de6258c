"""embed.tune_layers through the whole pipeline: the tuned backbone is saved in the run, the
cache and the saved student use it, and a rerun (full or one stage) reuses every stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_overrides

from pafo_ray.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def tuned_run(ray_session, tmp_path_factory):
    from pafo_ray.stages.base import StageContext, run_pipeline

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    overrides = small_overrides(tmp_path_factory.mktemp("tuned"), **{
        "embed.tune_layers": 1, "embed.tune_epochs": 2, "embed.adapt_holdout": 0.0,
        "train.epochs": 3, "baselines.methods": "[reweight]"})
    ctx = StageContext.create(load_config(None, overrides))
    results = run_pipeline(ctx)
    yield {"ctx": ctx, "results": results, "overrides": overrides}
    torch.set_num_threads(before)


def test_the_cache_and_the_student_use_the_tuned_backbone(tuned_run):
    import pyarrow.dataset as pads

    from pafo_ray.models import RewardModel
    from pafo_ray.models.backbone import TextEncoder

    ctx, results = tuned_run["ctx"], tuned_run["results"]
    tune = results["embed"]["tune"]
    tuned_dir = ctx.run_dir.local_path(ctx.run_dir.embed_backbone())
    assert tune["backbone_dir"] == tuned_dir and tune["epoch"] == 2  # no holdout: the last
    assert ctx.cfg.model.backbone == tuned_dir  # what the later stages were given
    cache = pads.dataset(ctx.run_dir.embed_cache(), format="parquet").to_table().sort_by("text_id")
    rows = pads.dataset(ctx.run_dir.prepared_rows(), format="parquet").to_table(
        columns=["prompt", "chosen", "chosen_text_id"]).to_pandas().drop_duplicates("chosen_text_id")
    rows = rows.sort_values("chosen_text_id").head(8)
    at = np.searchsorted(cache.column("text_id").to_numpy(), rows["chosen_text_id"].to_numpy())
    cached = np.stack(cache.column("embedding").to_numpy(zero_copy_only=False))[at]
    m = ctx.cfg.model
    own = TextEncoder(tuned_dir, max_length=m.max_length).embed(rows["prompt"].tolist(),
                                                               rows["chosen"].tolist())
    untuned = TextEncoder("builtin-tiny", max_length=m.max_length).embed(
        rows["prompt"].tolist(), rows["chosen"].tolist())
    np.testing.assert_allclose(cached, own, rtol=1e-4, atol=1e-4)
    assert np.abs(cached - untuned).max() > 1e-3  # the option changed the features
    student = RewardModel.from_pretrained(ctx.run_dir.uri("distill", "student"))
    assert student.model_cfg.backbone == tuned_dir
    users = [student.user_ids[0]] * len(rows)
    by_text = student.score(users, rows["prompt"].tolist(), rows["chosen"].tolist())
    by_cache = student.score(users, rows["prompt"].tolist(), rows["chosen"].tolist(),
                             embeddings=cached)
    np.testing.assert_allclose(np.asarray(by_text), np.asarray(by_cache), rtol=1e-4, atol=1e-4)


def test_rerun_and_one_stage_reuse_everything(tuned_run, capsys):
    from pafo_ray.cli import main
    from pafo_ray.stages.base import StageContext, run_pipeline

    ctx, overrides = tuned_run["ctx"], tuned_run["overrides"]
    markers = {s: ctx.run_dir.marker(s) for s in tuned_run["results"]}
    capsys.readouterr()
    again = StageContext.create(load_config(None, overrides))
    run_pipeline(again)
    out = capsys.readouterr().out
    for stage in markers:
        assert f"[{stage}] done already" in out, stage
        assert ctx.run_dir.marker(stage) == markers[stage], stage
    assert again.cfg.model.backbone == ctx.cfg.model.backbone
    assert main(["distill", *overrides]) == 0  # one stage: embed's backbone applied first
    assert "[distill] done already" in capsys.readouterr().out
    assert ctx.run_dir.marker("distill") == markers["distill"]
