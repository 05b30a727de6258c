"""Start or join Ray the one way every command does.

``RAY_ADDRESS`` set (the job supervisor sets it for ``ray job submit``) or
``ray.address`` configured → join that cluster; otherwise start a local Ray with the
configured resources.
"""

from __future__ import annotations

import logging
import os
import time

from pafo_ray.config import RayConfig

log = logging.getLogger(__name__)

# One object per worker process, fetched from the object store once: Ray Data calls a map
# function per batch, and a user table passed by reference would be fetched for every batch.
_FETCHED: dict = {}


def fetch_once(ref):
    """``ray.get(ref)``, cached in this worker for as long as the same ``ref`` comes back."""
    import ray

    key = ref.hex()
    if key not in _FETCHED:
        if len(_FETCHED) >= 4:  # a later stage's refs replace an earlier one's
            _FETCHED.pop(next(iter(_FETCHED)))
        _FETCHED[key] = ray.get(ref)
    return _FETCHED[key]

# Train V2's preemption watcher and metrics cost ~6 s per fit on small machines
# (RAY_NOTES); a user's own environment still wins.
_QUIET_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


# Cores of the machine when this process started Ray itself (None: joined a cluster).
# Logical CPUs are raised to 8 locally so that trainers can wait side by side; data
# parallelism follows the real cores, since every shuffle partition is an aggregator actor
# (a new Python process, ~2 CPU-seconds to start) that 2 cores cannot run 8 of at once.
_LOCAL_CORES: "int | None" = None


def init_ray(cfg: RayConfig) -> None:
    import ray

    global _LOCAL_CORES

    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if not cfg.progress_bars:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if ray.is_initialized():
        _configure_data(cfg)
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        # No runtime_env here: a submitted job's own runtime_env would conflict with it.
        log.info("joining Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        # At least 8 logical CPUs: vanilla, two teachers and three baselines train at once,
        # each worker mostly waiting on Ray's fixed costs rather than computing.
        num_cpus = cfg.num_cpus or max(8, os.cpu_count() or 1)
        runtime_env = {"env_vars": {k: os.environ[k] for k in _QUIET_ENV}}
        # address="local": a new Ray even when `ray start` left a cluster on this machine,
        # which a bare ray.init() would try to join (and refuse num_cpus for).
        kwargs = dict(address="local", num_cpus=num_cpus, include_dashboard=False,
                      runtime_env=runtime_env)
        if cfg.num_gpus is not None:
            kwargs["num_gpus"] = cfg.num_gpus
        if cfg.object_store_memory_mb:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
        log.info("starting a local Ray with %d CPUs", num_cpus)
        _start_local(kwargs)
        _LOCAL_CORES = min(num_cpus, os.cpu_count() or 1)
    _configure_data(cfg)


# Ray 2.60 gives a new local raylet a fixed 30 s to register; on a busy machine (measured:
# load average 25-60 on 2 cores) that start fails now and then and a fresh try usually works.
START_ATTEMPTS = int(os.environ.get("PAFO_RAY_START_ATTEMPTS", "3"))


def _start_local(kwargs: dict) -> None:
    import ray

    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - only the start-up timeout is retried
            if "timed out during startup" not in str(exc) or attempt == START_ATTEMPTS:
                if attempt > 1:
                    raise RuntimeError(f"a local Ray did not start in {attempt} tries "
                                       f"(is the machine overloaded?): {exc}") from exc
                raise
            log.warning("local Ray start %d of %d failed (%s); trying again", attempt,
                        START_ATTEMPTS, exc)
            ray.shutdown()
            time.sleep(5 * attempt)


def _configure_data(cfg: RayConfig) -> None:
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    # hash_shuffle was 1.5-2x faster than 2.60's default for the support-rate shuffle.
    ctx.shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    ctx.max_hash_shuffle_aggregators = data_parallelism()
    # 2.60's DataSourceV2 read_parquet (ListFiles -> ReadFiles) cost 3-8 s per execution on
    # 2 cores even for 20k rows; the V1 reader 0.1-0.6 s (benchmarks/prepare.py, BENCHMARKS.md).
    ctx.use_datasource_v2 = cfg.parquet_reader_v2
    ctx.enable_progress_bars = cfg.progress_bars
    ctx.enable_operator_progress_bars = cfg.progress_bars


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def local_cores() -> "int | None":
    """This machine's cores (at most the local Ray's CPUs) when this process started a local
    Ray; None when it joined a cluster or started none."""
    return _LOCAL_CORES


def data_parallelism() -> int:
    """Shuffle partitions and aggregators: the cluster's CPUs, or the machine's cores when
    this process started a local Ray (whose logical CPUs may be raised above them)."""
    return min(cluster_cpus(), _LOCAL_CORES) if _LOCAL_CORES else cluster_cpus()
