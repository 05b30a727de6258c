"""A stage whose actor pool leaves the cluster one CPU must still finish.

Found on a 2-CPU `ray start --head` (cluster/local.yaml through cluster/submit.sh): embed's
pool took 1 CPU, its de-duplicating hash shuffle's aggregators 0.5, and the shuffle's tasks
(1 CPU each) waited forever. The test session's Ray has 4 CPUs; an actor of 3 CPUs gives the
same shape (pool 3 + aggregators ~1 = every CPU). A hang fails the test after a bound instead
of blocking the suite.
"""

from __future__ import annotations

import threading

import pytest
from conftest import small_overrides

from pafo_ray.config import load_config

pytestmark = [pytest.mark.ray]

BOUND_S = 420


def test_embed_finishes_when_its_pool_leaves_one_cpu(ray_session, tmp_path):
    from pafo_ray.stages.base import StageContext, run_pipeline

    cpus = ray_session.cluster_resources()["CPU"]
    overrides = small_overrides(tmp_path, **{"embed.cpus_per_actor": cpus - 1,
                                             "embed.num_actors": 1,
                                             "embed.inline_texts": 0})  # the pool, always
    ctx = StageContext.create(load_config(None, overrides))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["results"] = run_pipeline(ctx, ["input", "prepare", "embed"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(BOUND_S)
    assert not worker.is_alive(), (
        f"embed did not finish in {BOUND_S} s with a {cpus - 1:g}-CPU actor on {cpus:g} CPUs "
        "(the pool and the shuffle's aggregators hold every CPU the shuffle's tasks need)")
    assert "error" not in outcome, outcome.get("error")
    summary = ctx.run_dir.read_json("embed", "summary.json")
    assert summary["texts"] > 0 and summary["actors"] == 1
    assert summary["where"] == "actor pool"
