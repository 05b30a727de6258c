"""Stage hashes come from the config as given: what an upstream stage chooses for the stages
after it (regularize's weight decay and user shrinkage, embed's tuned backbone) reaches the
stages' config but never their hashes, so a full run — which may hash every stage before
regularize runs — and a single stage started after it agree, and `pafo-ray distill` on a
finished run reruns nothing (it reran groups to distill before)."""

from __future__ import annotations

from conftest import small_overrides

from pafo_ray.config import load_config
from pafo_ray.stages.base import ORDER, StageContext, _apply_updates, stage_hash

REGULARIZE = {"config_updates": {"train": {"weight_decay": 0.37},
                                 "model": {"user_shrinkage": 0.21}}}
EMBED = {"config_updates": {"model": {"backbone": "/runs/t/embed/backbone"}}}


def _context(tmp_path, *extra) -> StageContext:
    return StageContext.create(load_config(None, small_overrides(tmp_path) + list(extra)))


def test_hashes_ignore_what_upstream_stages_chose(tmp_path):
    before = _context(tmp_path)
    hashes = {s: stage_hash(before, s) for s in ORDER}  # a full run hashing ahead of regularize
    after = _context(tmp_path)
    _apply_updates(after, EMBED)
    _apply_updates(after, REGULARIZE)  # a single stage: upstream updates applied first
    assert after.cfg.train.weight_decay == 0.37 and after.cfg.model.user_shrinkage == 0.21
    assert after.cfg.model.backbone == "/runs/t/embed/backbone"  # the stages run with them
    assert {s: stage_hash(after, s) for s in ORDER} == hashes


def test_hashes_still_follow_the_given_config(tmp_path):
    """The upstream stage's hash covers its choice: a new grid changes every stage after it."""
    base = _context(tmp_path)
    other = _context(tmp_path, "train.weight_decay_grid=[0.5]")
    for stage in ("input", "prepare", "embed"):
        assert stage_hash(other, stage) == stage_hash(base, stage), stage
    for stage in ("regularize", "groups", "teachers", "margins", "baselines", "distill",
                  "evaluate"):
        assert stage_hash(other, stage) != stage_hash(base, stage), stage


def test_apply_upstream_any_hash_reads_a_stale_runs_own_choices(tmp_path):
    """A benchmark rereading an old run takes its recorded regularisation even when the
    stage's hash went stale (e.g. its input file was touched); a pipeline run does not."""
    from pafo_ray.stages.base import apply_upstream

    ctx = _context(tmp_path)
    ctx.run_dir.write_summary("regularize", REGULARIZE)  # a summary, no success marker
    given = (ctx.cfg.train.weight_decay, ctx.cfg.model.user_shrinkage)
    apply_upstream(ctx)
    assert (ctx.cfg.train.weight_decay, ctx.cfg.model.user_shrinkage) == given
    apply_upstream(ctx, any_hash=True)
    assert (ctx.cfg.train.weight_decay, ctx.cfg.model.user_shrinkage) == (0.37, 0.21)
