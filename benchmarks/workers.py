"""What one Ray Train worker group costs to start, by its number of workers.

    python -m benchmarks.workers [--workers 6 2 1] [--repeats 2]

A bare ``TorchTrainer`` whose workers only import torch, on the local Ray ``pafo-ray run``
starts (8 logical CPUs over this machine's cores), 1 CPU a worker: the wall time of ``fit()``
for each worker count, each repeated. The pooled trainers' one-worker-per-core default
(``train.pool_workers``) and the run's one worker group (``train.run_pool``) rest on it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def _bare(config: dict) -> None:
    import torch  # noqa: F401  (what a real worker imports first)


def main(argv=None) -> int:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from benchmarks.common import load_average, start_ray
    from pafo_ray.config import load_config

    p = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[6, 2, 1])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    start_ray(load_config(None, []))
    print(f"worker-group start-up, bare TorchTrainer; {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as storage:
        for n in args.workers:
            times = []
            for r in range(args.repeats):
                began = time.time()
                TorchTrainer(_bare, scaling_config=ScalingConfig(
                    num_workers=n, resources_per_worker={"CPU": 1}),
                    run_config=RunConfig(storage_path=storage, name=f"w{n}-{r}")).fit()
                times.append(time.time() - began)
            print(f"{n} worker(s): " + ", ".join(f"{t:.1f} s" for t in times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
