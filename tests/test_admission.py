"""Admission arithmetic (no Ray): hand-worked numbers for trainers, trials, pools and plans."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import REPO

from pafo_ray.admission import (
    Budget,
    Capacity,
    Demand,
    actor_cpus,
    actor_threads,
    capacity_from,
    fits_at_once,
    infeasible,
    plan_line,
    pool_size,
    trainer_demand,
    trials_at_once,
)


def test_trainer_demand_counts_workers_and_their_ingest():
    # 2 workers x 1.5 CPU + 1 CPU kept for the reads = 4 CPUs; GPU: one per worker.
    assert trainer_demand(2, 1.5, False, 1.0) == Demand(4.0, 0.0, 2.4, piece_cpus=1.5)
    assert trainer_demand(2, 1.5, True, 1.0).gpus == 2.0
    assert trainer_demand(0, 4.0, True, 1.0) == Demand()  # local mode holds nothing


def test_the_issue_repro_six_trainers_on_four_cpus_fit_two_at_once():
    # 1 worker x 1 CPU + 1 ingest CPU = 2 CPUs each; 4 // 2 = 2 (before: all 6 launched).
    demand = trainer_demand(1, 1.0, False, 1.0)
    assert fits_at_once(demand, Capacity(cpus=4)) == 2
    assert fits_at_once(demand, Capacity(cpus=2)) == 1
    assert fits_at_once(demand, Capacity(cpus=3)) == 1
    assert (plan_line("teachers ‖ baselines", 6, demand, Capacity(cpus=4))
            == "teachers ‖ baselines: 2 of 6 at once on 4 CPUs (2 CPU each); the rest queued")
    assert plan_line("teachers", 2, demand, Capacity(cpus=8)).startswith("teachers: all 2 at once")


def test_gpus_bound_what_fits_and_autoscaling_raises_the_ceiling():
    demand = trainer_demand(1, 4.0, True, 1.0)           # 5 CPUs + 1 GPU
    assert fits_at_once(demand, Capacity(cpus=32, gpus=2)) == 2
    assert fits_at_once(demand, Capacity(cpus=8, gpus=2)) == 1
    assert fits_at_once(demand, Capacity(cpus=32, gpus=0)) == 0
    assert fits_at_once(demand, Capacity(cpus=8, gpus=0, max_cpus=16, max_gpus=4)) == 3


def test_infeasible_names_what_was_asked_and_what_the_cluster_has():
    demand = trainer_demand(1, 1.0, True, 1.0)
    message = infeasible("teachers: each trainer", demand, Capacity(cpus=4))
    assert message is not None
    assert "2 CPU + 1 GPU" in message and "4 CPUs, 0 GPUs" in message
    assert "1 GPU can never be granted" in message and "no autoscaling" in message
    assert infeasible("x", demand, Capacity(cpus=4, gpus=0, max_gpus=2)) is None
    too_big = trainer_demand(4, 2.0, False, 1.0)          # 9 CPUs on an 8-CPU cluster
    assert "9 CPUs can never be granted" in infeasible("x", too_big, Capacity(cpus=8))


def test_a_worker_bigger_than_every_node_is_infeasible_though_the_total_fits():
    # 2 workers x 6 CPUs (+1 ingest) = 13 of a 16-CPU cluster of four 4-CPU nodes: the total
    # fits, but no node holds one worker, so Ray would wait forever.
    demand = trainer_demand(2, 6.0, False, 1.0)
    nodes = Capacity(cpus=16, node_cpus=4)
    assert fits_at_once(demand, nodes) == 1
    message = infeasible("teachers: each trainer", demand, nodes, "Lower it.")
    assert message == ("teachers: each trainer needs 6 CPUs on one node, but the largest node "
                       "has 4 (the cluster has 16 CPUs, 0 GPUs in all): it can never be "
                       "placed. Lower it.")
    assert infeasible("x", demand, Capacity(cpus=16, node_cpus=8)) is None   # a node holds it
    assert infeasible("x", demand, Capacity(cpus=16)) is None          # nodes unknown
    # An autoscaler may add bigger nodes: admission waits instead of failing.
    assert infeasible("x", demand, Capacity(cpus=16, node_cpus=4, max_cpus=64)) is None
    # A trial or an actor is one piece: its whole demand must fit on a node.
    assert "needs 6 CPUs on one node" in infeasible("tune: each trial", Demand(6.0),
                                                    Capacity(cpus=16, node_cpus=4))


def test_pools_leave_a_cpu_for_their_reads_and_trials_are_capped():
    assert pool_size(4, 1.0, 0.0, Capacity(cpus=4)) == 3   # (4 - 1) // 1
    assert pool_size(4, 2.0, 0.0, Capacity(cpus=4)) == 1   # (4 - 1) // 2
    assert pool_size(8, 1.0, 1.0, Capacity(cpus=16, gpus=2)) == 2
    assert pool_size(2, 1.0, 0.0, Capacity(cpus=1)) == 1   # never below one actor
    assert trials_at_once(8, 1.0, 0.25, Capacity(cpus=16, gpus=1)) == 4
    assert trials_at_once(8, 1.0, 0.0, Capacity(cpus=3)) == 3
    assert trials_at_once(2, 1.0, 0.0, Capacity(cpus=16)) == 2


def test_an_unset_actor_takes_a_node_less_the_reads_and_its_threads_follow_its_cpus():
    assert actor_cpus(2.0, 0.0, Capacity(cpus=8)) == 2.0                   # configured: as given
    assert actor_cpus(None, 0.0, Capacity(cpus=8)) == 7.0                  # one node, less 1 read
    assert actor_cpus(None, 0.0, Capacity(cpus=64, node_cpus=16)) == 15.0  # the largest node
    assert actor_cpus(None, 1.0, Capacity(cpus=8, gpus=2)) == 1.0          # the GPU does the work
    assert actor_cpus(None, 0.0, Capacity(cpus=1)) == 1.0                  # never below 1
    assert actor_threads(7.0, cores=2) == 2   # a local Ray's 8 logical CPUs on a 2-core machine
    assert actor_threads(3.0, cores=16) == 3
    assert actor_threads(0.5, cores=4) == 1


def test_the_embed_pool_follows_the_config_else_the_cluster():
    from pafo_ray.config import load_config
    from pafo_ray.stages.embed import embed_pool

    auto = load_config(None, [])
    assert embed_pool(auto, Capacity(cpus=8)) == {"actors": 1, "cpus": 7.0}
    # 4 nodes of 16 CPUs: one 15-CPU actor per node (63 // 15 = 4).
    assert embed_pool(auto, Capacity(cpus=64, node_cpus=16)) == {"actors": 4, "cpus": 15.0}
    set_ = load_config(None, ["embed.num_actors=3", "embed.cpus_per_actor=2"])
    assert embed_pool(set_, Capacity(cpus=8)) == {"actors": 3, "cpus": 2.0}
    assert embed_pool(set_, Capacity(cpus=4)) == {"actors": 1, "cpus": 2.0}  # 1 CPU for reads


def test_capacity_from_ray_resources():
    cap = capacity_from({"CPU": 4.0, "memory": 8 * 2**30, "object_store_memory": 1.0})
    assert (cap.cpus, cap.gpus, cap.memory_gib) == (4.0, 0.0, 8.0)
    assert not cap.autoscales
    assert capacity_from({"CPU": 4.0}, max_gpus=2).autoscales


def test_budget_runs_at_most_what_fits_across_callers():
    # Two "stages" (threads) of three trainers each share one 4-CPU budget: never more than
    # two 2-CPU trainers hold it at once, and everyone finishes.
    budget = Budget(Capacity(cpus=4))
    demand = Demand(cpus=2.0)
    alive, peak, lock = [0], [0], threading.Lock()

    def trainer():
        with budget.hold(demand):
            with lock:
                alive[0] += 1
                peak[0] = max(peak[0], alive[0])
            time.sleep(0.02)
            with lock:
                alive[0] -= 1

    threads = [threading.Thread(target=trainer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] == 2 and budget.peak == 2 and budget.running == 0


def test_budget_admits_one_oversized_unit_when_idle():
    budget = Budget(Capacity(cpus=1))
    with budget.hold(Demand(cpus=2.0)):
        assert budget.running == 1


# Pooled (train.pool_jobs, the default) a job holds its 1 worker CPU, no ingest reserve: as
# many jobs as CPUs share worker groups; one trainer per job holds 2 CPUs (worker + ingest).
@pytest.mark.parametrize("cpus, pooled, teachers_at_once",
                         [(2, True, 2), (4, True, 4), (8, True, 6),
                          (2, False, 1), (4, False, 2), (8, False, 4)])
def test_plan_of_the_shipped_local_config(cpus, pooled, teachers_at_once):
    from pafo_ray.config import load_config
    from pafo_ray.sizing import stage_rows

    cfg = load_config(str(REPO / "cluster" / "local.yaml"), [f"train.pool_jobs={pooled}"])
    stages = ["prepare", "embed", "teachers", "baselines", "margins", "tune", "distill"]
    rows = {row.stage: row for row in stage_rows(cfg, stages, Capacity(cpus=cpus))}
    assert rows["teachers ‖ baselines"].units == 6
    assert rows["teachers ‖ baselines"].at_once == teachers_at_once
    assert rows["embed"].at_once == 1 and rows["margins"].at_once == 1
    assert rows["tune"].at_once == min(2, cpus)
    assert not any(row.error for row in rows.values())


@pytest.mark.parametrize("overrides, stages, cpus, width", [
    ([], ["teachers", "baselines", "distill"], 8, 2),           # the demo: 2 of 8 CPUs
    (["train.pool_workers=3"], ["teachers", "distill"], 8, 3),  # its width is the pool's
    ([], ["teachers", "baselines"], 8, None),                   # one round: nothing to share
    (["train.run_pool=false"], ["teachers", "distill"], 8, None),
    (["train.num_workers=2"], ["teachers", "distill"], 8, None),  # DDP jobs: one group each
    (["train.pool_workers=7"], ["teachers", "distill"], 8, None),  # < 2 CPUs left beside it
])
def test_plan_says_when_the_run_pool_is_used_and_how_wide(overrides, stages, cpus, width):
    """`pafo-ray plan` against the local Ray: the run pool's line, with the width
    `pafo-ray run` would start (train.pool_workers, here set, or one per core)."""
    from pafo_ray.config import load_config
    from pafo_ray.sizing import format_plan, run_pool_line

    cfg = load_config(None, ["train.pool_workers=2", *overrides])
    line = run_pool_line(cfg, stages, Capacity(cpus=cpus))
    if width is None:
        assert line is None
    else:
        assert f"ONE Ray Train worker group of {width} worker(s)" in line
        assert line in format_plan(cfg, stages, Capacity(cpus=cpus), "here", local=True)
        assert "run pool" not in format_plan(cfg, stages, Capacity(cpus=cpus), "there")


def test_preflight_refuses_a_gpu_trainer_on_a_cpu_cluster():
    from pafo_ray.config import load_config
    from pafo_ray.sizing import preflight

    cfg = load_config(str(REPO / "cluster" / "local.yaml"), ["train.use_gpu=true"])
    with pytest.raises(RuntimeError, match="teachers: each trainer .* 1 GPU can never be granted"):
        preflight(cfg, ["teachers", "baselines"], Capacity(cpus=4))
    preflight(cfg, ["teachers"], Capacity(cpus=4, max_gpus=2))  # an autoscaler may add them


def test_a_start_up_timeout_inside_ray_trains_controller_error_is_recognised():
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    from pafo_ray.train.runtime import is_startup_failure

    assert is_startup_failure(ControllerError(WorkerGroupStartupTimeoutError(1)))
    assert not is_startup_failure(ControllerError(ValueError("a bug in train_func")))
    assert not is_startup_failure(RuntimeError("boom"))
