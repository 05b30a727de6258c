"""The pooled trainer's pure parts: ranks per job, checkpoints in storage, the wave's demand.

The real-worker checks (one worker group for a stage's jobs, results equal to one trainer per
job) are in tests/test_teachers.py, beside the other real-worker tests.
"""

from __future__ import annotations

import pytest

from pafo_ray.admission import Demand, scaled
from pafo_ray.train.pooled import (
    COMPLETE,
    latest_checkpoint,
    my_job,
    rank_plan,
    save_checkpoint,
)


def test_rank_plan_gives_each_job_its_own_ranks():
    assert rank_plan([1, 1, 1]) == [[0], [1], [2]]
    assert rank_plan([2, 2]) == [[0, 1], [2, 3]]
    plan = rank_plan([1, 2, 1])
    assert plan == [[0], [1, 2], [3]]
    assert [my_job(plan, r) for r in range(4)] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    with pytest.raises(ValueError, match="rank 4"):
        my_job(plan, 4)


def test_a_wave_holds_the_demand_of_all_its_jobs():
    assert scaled(Demand(1.0, 1.0, 1.2), 3) == Demand(3.0, 3.0, pytest.approx(3.6))


def test_checkpoints_keep_the_last_two_complete_ones(tmp_path):
    folder = str(tmp_path / "job-abc")
    assert latest_checkpoint(folder) is None  # nothing yet (the folder does not exist)
    source = tmp_path / "src"
    source.mkdir()
    for epoch in (5, 10, 15):
        (source / "train_state.pt").write_text(str(epoch))
        save_checkpoint(folder, epoch, str(source))
    kept = sorted(p.name for p in (tmp_path / "job-abc").iterdir())
    assert kept == ["checkpoint_000010", "checkpoint_000015"]
    assert latest_checkpoint(folder).endswith("checkpoint_000015")
    # A checkpoint cut short (no completion marker) is never resumed from.
    (tmp_path / "job-abc" / "checkpoint_000020").mkdir()
    assert latest_checkpoint(folder).endswith("checkpoint_000015")
    (tmp_path / "job-abc" / "checkpoint_000015" / COMPLETE).unlink()
    assert latest_checkpoint(folder).endswith("checkpoint_000010")
    assert (tmp_path / "job-abc" / "checkpoint_000010" / "train_state.pt").read_text() == "10"
