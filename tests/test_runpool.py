"""The run's one worker group (pafo_ray.train.runpool): the mailbox's hand-out rules, and a
real Ray Train worker group serving two stages' jobs in turn.

The real-worker check lives in tests/test_teachers.py beside the other real-worker tests.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from pafo_ray.train.runpool import Mailbox


def test_the_mailbox_hands_each_rank_its_open_jobs_until_closed():
    async def scenario():
        box = Mailbox()
        await box.post([("0-0", 0, {"name": "a"}, {}), ("0-1", 1, {"name": "b"}, {}),
                        ("0-2", 0, {"name": "c"}, {})])
        first = await box.next(0)
        assert [key for key, _, _ in first] == ["0-0", "0-2"]
        assert [key for key, _, _ in await box.next(1)] == ["0-1"]
        await box.finish("0-0")
        assert not await box.wait_done(["0-0", "0-1"], timeout=0.05)  # 0-1 still open
        # A restarted worker of rank 0 asks again: only what is not done comes back.
        assert [key for key, _, _ in await box.next(0)] == ["0-2"]
        await box.finish("0-1")
        await box.finish("0-2")
        assert await box.wait_done(["0-0", "0-1", "0-2"], timeout=0.05)
        # Rank 1 has nothing open: it waits, and a later stage's post wakes it.
        waiting = asyncio.ensure_future(box.next(1))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await box.post([("1-0", 1, {"name": "d"}, {})])
        assert [key for key, _, _ in await asyncio.wait_for(waiting, 1.0)] == ["1-0"]
        # Closing sends every waiting worker home, open jobs or not.
        idle = asyncio.ensure_future(box.next(0))
        await asyncio.sleep(0.05)
        await box.close()
        assert await asyncio.wait_for(idle, 1.0) is None
        assert await box.next(1) is None

    asyncio.run(scenario())


@pytest.mark.ray
def test_a_run_pool_is_only_wanted_where_it_cannot_starve_later_stages(ray_session, tmp_path,
                                                                        monkeypatch):
    """On the test session's local Ray (4 CPUs, this machine's cores): one worker per core;
    none for DDP or GPU jobs, when switched off, when fewer than 2 CPUs would be left beside
    it, or on a cluster this process joined."""
    from conftest import small_overrides

    from pafo_ray import ray_session as session
    from pafo_ray.config import load_config
    from pafo_ray.train import runpool

    def width(**extra):
        return runpool.wanted(load_config(None, small_overrides(tmp_path, **{
            "train.num_workers": 1, **extra})))

    monkeypatch.setattr(session, "_LOCAL_CORES", 2)
    assert width() == 2 and width(**{"train.pool_workers": 1}) == 1
    assert width(**{"train.run_pool": False}) is None
    assert width(**{"train.num_workers": 2}) is None       # DDP jobs need their own groups
    assert width(**{"train.use_gpu": True}) is None
    assert width(**{"train.pool_workers": 3}) is None      # 4 CPUs - 3 workers < 2 of room
    monkeypatch.setattr(session, "_LOCAL_CORES", None)    # joined a cluster
    assert width() is None


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_trains_every_stage_on_one_worker_group(ray_session, tmp_path):
    """run_pipeline on the local Ray with real workers: teachers ‖ baselines and distill all
    train on the run's one worker group (one Ray Train experiment, ``runpool-*``), started
    after embed and closed after distill."""
    from conftest import small_overrides

    from pafo_ray.config import load_config
    from pafo_ray.stages.base import ORDER, StageContext, is_active, run_pipeline
    from pafo_ray.train import runpool

    cfg = load_config(None, small_overrides(tmp_path, **{
        "train.num_workers": 1, "train.epochs": 2, "train.checkpoint_every": 2,
        "baselines.methods": "[reweight]", "train.select_regularization": False}))
    ctx = StageContext.create(cfg)
    stages = [s for s in ORDER[:ORDER.index("distill") + 1] if is_active(cfg, s)]
    results = run_pipeline(ctx, stages)
    assert runpool.active() is None  # closed after distill
    metrics = [job["metrics"] for name in ("teachers", "baselines")
               for job in results[name]["jobs"].values()]
    metrics += [results["distill"]["student"]["metrics"]]
    assert len(metrics) == 5  # vanilla, 2 teachers, reweight, the student
    experiments = {m["experiment"] for m in metrics}
    assert len(experiments) == 1 and next(iter(experiments)).startswith("runpool-"), experiments
    folders = os.listdir(ctx.run_dir.ray_storage("teachers"))
    assert any(f.startswith("runpool-") for f in folders), folders
