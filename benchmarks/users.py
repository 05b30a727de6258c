"""Milliseconds per training step against the number of users: dense vs sparse user updates.

    python -m benchmarks.users [--users 10000 50000] [--steps 2000]

For each user count, the same synthetic rows (256-row batches, 64-d cached features, lowrank
rank 8 with the population term and user shrinkage, as the scaling run's builtin-tiny models)
are trained in this process by :func:`pafo_ray.train.loop.fit` twice, side by side:
``train.user_updates=dense`` (every user's offset, moments and decay each step) and ``sparse``
(the batch's users only: :class:`pafo_ray.train.lazyadam.LazyAdamW`). Printed: ms per step of
each and their ratio. Dense grows with the users; sparse should not.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.common import fmt, load_average, record, table

SUITE = "users"


def step_ms(users: int, steps: int, updates: str, batch: int = 256, texts: int = 20_000) -> float:
    import numpy as np
    import torch

    from pafo_ray.config import ModelConfig
    from pafo_ray.models import RewardModel
    from pafo_ray.train.arrays import Cache, Rows
    from pafo_ray.train.loop import Objective, PairScorer, fit

    rng = np.random.default_rng(0)
    n = steps * batch
    cache = Cache(np.arange(texts, dtype=np.int64),
                  torch.as_tensor(rng.normal(size=(texts, 64)).astype(np.float32)))

    def rows(count: int) -> Rows:
        return Rows(user_index=torch.as_tensor(rng.integers(0, users, count)),
                    group_index=torch.as_tensor(rng.integers(0, 2, count)),
                    weight=torch.ones(count),
                    chosen_index=torch.as_tensor(rng.integers(0, texts, count)),
                    rejected_index=torch.as_tensor(rng.integers(0, texts, count)))

    torch.manual_seed(0)
    model = RewardModel.from_config(ModelConfig(head="lowrank", rank=8, user_shrinkage=1e-3),
                                    [f"u{i}" for i in range(users)], input_dim=64)
    metrics = fit(PairScorer(model), rows(n), rows(1024), Objective(kind="bt", user_shrinkage=1e-3),
                  epochs=1, batch_size=batch, lr=3e-3, weight_decay=1e-4,
                  group_names=["minority", "majority"], cache=cache, seed=0,
                  user_updates=updates)
    return 1000 * metrics["train_seconds"] / metrics["steps"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.users", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[10_000, 50_000])
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args(argv)
    import torch

    print(f"users benchmark: {args.steps} steps of 256 rows, {torch.get_num_threads()} torch "
          f"threads; {load_average()}", flush=True)
    lines = []
    for users in args.users:
        dense = step_ms(users, args.steps, "dense")
        sparse = step_ms(users, args.steps, "sparse")
        lines.append([f"{users:,}", fmt(dense, 3), fmt(sparse, 3), fmt(sparse / dense)])
        record(SUITE, f"ms a step at {users:,} users, sparse vs dense [ratio = sparse/dense]",
               sparse, dense, sparse / dense, "ms")
    print(table(["users", "dense ms/step", "sparse ms/step", "sparse ÷ dense"], lines))
    print(load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
