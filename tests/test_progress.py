"""The status line says where each concurrent trainer is: epochs reported from any process
reach the driver's board, and the ticker draws them beside the stage's seconds."""

from __future__ import annotations

import io
import time

import pytest

from pafo_ray import console, progress


def test_local_epochs_are_described_per_job():
    progress.start("r-local", "teachers")
    progress.epoch("r-local", "teachers", "vanilla", 3, 10)
    progress.epoch("r-local", "teachers", "minority", 5, 10)
    progress.epoch("r-local", "teachers", "vanilla", 4, 10)  # the latest epoch wins
    jobs = progress.snapshot("r-local")["teachers"]
    assert jobs == {"vanilla": (4, 10), "minority": (5, 10)}
    assert progress.describe("teachers", jobs) == " (minority 5/10, vanilla 4/10)"
    assert progress.describe("teachers", None) == ""
    progress.start("r-local", "teachers")  # a new start clears the stage's old jobs
    assert progress.snapshot("r-local").get("teachers", {}) == {}


@pytest.mark.ray
def test_epochs_reported_by_a_ray_worker_reach_the_driver(ray_session):
    ray = ray_session
    progress.start("r-ray", "baselines")

    @ray.remote(num_cpus=0)
    def trainer(done: int) -> int:
        from pafo_ray import progress as worker_progress

        worker_progress.epoch("r-ray", "baselines", "reweight", done, 7)
        return done

    assert ray.get(trainer.remote(2)) == 2
    # Generous: on a busy 2-CPU CI machine a new worker process (the board) can take tens
    # of seconds to start. The check is that the report arrives, not how fast.
    deadline = time.time() + 90
    seen = {}
    while time.time() < deadline:  # the worker's report is not awaited: poll for it
        seen = progress.snapshot("r-ray", timeout=5).get("baselines", {})
        if seen:
            break
        time.sleep(0.2)
    pending = "r-ray" in progress._ASKED  # the board never answered, or answered without it
    assert seen == {"reweight": (2, 7)}, f"board question still pending: {pending}"
    # Another run's board is another actor: it does not see this run's trainers.
    assert "baselines" not in progress.snapshot("r-other", timeout=5)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_status_line_shows_each_trainers_epoch():
    term = _Tty()
    progress.start("r-tick", "teachers")
    progress.epoch("r-tick", "teachers", "majority", 6, 10)
    console.stage_started("teachers")
    ticker = console._Ticker(term, "r-tick", every=0.05)
    try:
        time.sleep(0.5)
    finally:
        ticker.stop()
        console.stage_finished("teachers")
    drawn = term.getvalue()
    assert "running: teachers " in drawn, drawn
    assert "(majority 6/10)" in drawn, drawn
