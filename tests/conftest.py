"""Shared fixtures: one local Ray per test session, small configs, tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DSP_FILE = SHARED / "data" / "dsp" / "dsp_dev.json"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pafo_ray import ray_session
    from pafo_ray.config import RayConfig

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 1024 * 1024)
        # As init_ray does for a Ray it starts: shuffles sized to the real cores.
        ray_session._LOCAL_CORES = min(4, os.cpu_count() or 1)
    ray_session.init_ray(RayConfig(progress_bars=False))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _tiny_backbone_cache(tmp_path_factory):
    """builtin-tiny is built once per session into a private cache folder."""
    cache = tmp_path_factory.mktemp("pafo_cache")
    os.environ.setdefault("PAFO_RAY_CACHE", str(cache))
    yield


def small_overrides(tmp_path, **extra) -> list:
    """A pipeline small enough for a test: tiny data, few epochs, in-process trainers."""
    values = {
        "run.storage_path": str(tmp_path / "runs"), "run.run_name": "t",
        "run.ray.progress_bars": False,
        "data.generator.num_users": 60, "data.generator.num_prompts": 40,
        "data.generator.raters_train": 3, "data.generator.raters_eval": 5,
        "train.epochs": 6, "train.num_workers": 0, "train.batch_size": 128,
        "train.checkpoint_every": 3, "teachers.min_rows": 10,
        "tune.num_samples": 0, "evaluate.bootstrap": 50, "model.max_length": 64,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
