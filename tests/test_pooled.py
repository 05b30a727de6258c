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
    my_jobs,
    rank_plan,
    save_checkpoint,
    world_size,
)


def test_rank_plan_gives_each_job_its_own_ranks():
    assert rank_plan([1, 1, 1]) == [[0], [1], [2]]
    assert rank_plan([2, 2]) == [[0, 1], [2, 3]]
    plan = rank_plan([1, 2, 1])
    assert plan == [[0], [1, 2], [3]]
    assert [my_jobs(plan, r) for r in range(4)] == [[(0, 0)], [(1, 0)], [(1, 1)], [(2, 0)]]
    assert world_size(plan) == 4
    with pytest.raises(ValueError, match="rank 4"):
        my_jobs(plan, 4)


def test_one_rank_jobs_share_at_most_the_workers_given():
    plan = rank_plan([1] * 6, workers=2)  # the demo: 6 models on 2 cores
    assert plan == [[0], [1], [0], [1], [0], [1]] and world_size(plan) == 2
    assert my_jobs(plan, 0) == [(0, 0), (2, 0), (4, 0)]
    assert my_jobs(plan, 1) == [(1, 0), (3, 0), (5, 0)]
    # No sharing when the jobs fit, when a job has several ranks, or with no cap.
    assert rank_plan([1, 1], workers=2) == rank_plan([1, 1], workers=8) == [[0], [1]]
    assert rank_plan([1, 2, 1], workers=2) == [[0], [1, 2], [3]]
    assert rank_plan([1, 1, 1], workers=None) == [[0], [1], [2]]


def test_a_wave_holds_the_demand_of_all_its_jobs():
    # ...and its largest piece is still one job's (what must fit on one node).
    assert scaled(Demand(1.0, 1.0, 1.2), 3) == Demand(3.0, 3.0, pytest.approx(3.6), 1.0)
    assert scaled(Demand(2.0, 0.0, 1.2, piece_cpus=1.5), 4).largest_piece == 1.5


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


def test_a_cohort_trains_the_stages_side_by_side_in_one_batch(monkeypatch):
    """teachers ‖ baselines: both stages' jobs reach ONE run_waves call; each stage gets its
    own results; a stage that withdraws (skipped) is not waited for; a failure reaches both."""
    import threading

    from pafo_ray.train import cohort as C

    calls = []

    def fake_waves(entries, demand, budget):
        calls.append(sorted(f"{e.stage}/{e.job}" for e in entries))
        if any(e.job == "boom" for e in entries):
            raise RuntimeError("teachers/boom: failed")
        out: dict = {}
        for e in entries:
            out.setdefault(e.stage, {})[e.job] = e.job.upper()
        return out

    monkeypatch.setattr(C, "run_waves", fake_waves)

    def entries(stage, *jobs):
        return [C.Entry(stage, None, None, job, "h") for job in jobs]

    def side_by_side(plan: dict, withdrawn=()) -> dict:
        results: dict = {}
        with C.side_by_side(list(plan) + list(withdrawn)) as withdraw:
            for stage in withdrawn:
                withdraw(stage)

            def stage_thread(stage):
                try:
                    results[stage] = C.cohort_for(stage).submit(stage, entries(stage, *plan[stage]),
                                                                None, None)
                except RuntimeError as exc:
                    results[stage] = str(exc)
                finally:
                    withdraw(stage)

            threads = [threading.Thread(target=stage_thread, args=(s,)) for s in plan]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        assert C.cohort_for("teachers") is None  # closed with the block
        return results

    got = side_by_side({"teachers": ["vanilla", "minority"], "baselines": ["reweight"]})
    assert calls == [["baselines/reweight", "teachers/minority", "teachers/vanilla"]]
    assert got == {"teachers": {"vanilla": "VANILLA", "minority": "MINORITY"},
                   "baselines": {"reweight": "REWEIGHT"}}
    calls.clear()
    assert side_by_side({"teachers": ["vanilla"]}, withdrawn=["baselines"]) == {
        "teachers": {"vanilla": "VANILLA"}}
    assert calls == [["teachers/vanilla"]]
    got = side_by_side({"teachers": ["boom"], "baselines": ["reweight"]})
    assert got == {"teachers": "teachers/boom: failed", "baselines": "teachers/boom: failed"}
