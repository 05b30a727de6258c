"""``POST /score`` on a local Ray Serve app against the in-process scorer, same machine.

    python -m benchmarks.serving [--requests 60] [--clients 4] [--replicas 1] [--backbone minilm]

A student with the chosen backbone (frozen, random head, 100 users) is saved and served by
:mod:`pafo_ray.serve` on 127.0.0.1; ``--clients`` threads send ``--requests`` requests of 1 and
of 32 responses each. The in-process figure is ``RewardModel.score`` on the same inputs, one
call per request, in this process. Reported: requests/s, p50 and p99 latency per request
size, and the ratio served / in-process. The app is shut down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _bodies(n: int, size: int) -> list:
    words = "hello world answer question short formal poem song movie".split()
    return [{"user_id": f"u{i % 120}", "prompt": f"{words[i % 9]} question {i}",
             "responses": [f"{words[(i + j) % 9]} answer {j}" for j in range(size)]}
            for i in range(n)]


def _post(url: str, body: dict) -> float:
    start = time.perf_counter()
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        json.loads(resp.read())
    return time.perf_counter() - start


def measure(args) -> list:
    import torch
    from ray import serve

    from pafo_ray.config import ModelConfig, ServeConfig
    from pafo_ray.models import RewardModel
    from pafo_ray.serve import application

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = RewardModel.from_config(ModelConfig(backbone=args.backbone, rank=8),
                                        [f"u{i}" for i in range(100)],
                                        input_dim=384 if args.backbone == "minilm" else 64)
        model.save_pretrained(tmp, include_backbone=True)
        model = RewardModel.from_pretrained(tmp).eval()
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            cfg = ServeConfig(num_replicas=args.replicas, max_batch_size=args.max_batch_size,
                              num_cpus_per_replica=1.0)
            serve.run(application(cfg, tmp), name="pafo-bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}/score"
            for size in (1, 32):
                bodies = _bodies(args.requests, size)
                _post(url, bodies[0])  # warm the replica
                began = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    served = list(pool.map(lambda b: _post(url, b), bodies))
                served_rps = len(bodies) / (time.perf_counter() - began)
                local = []
                model.score([bodies[0]["user_id"]] * size, [bodies[0]["prompt"]] * size,
                            bodies[0]["responses"])
                began = time.perf_counter()
                for b in bodies:
                    start = time.perf_counter()
                    model.score([b["user_id"]] * size, [b["prompt"]] * size, b["responses"])
                    local.append(time.perf_counter() - start)
                local_rps = len(bodies) / (time.perf_counter() - began)
                rows.append({"responses_per_request": size, "served_rps": served_rps,
                             "served_p50_ms": 1e3 * statistics.median(served),
                             "served_p99_ms": 1e3 * _percentile(served, 0.99),
                             "inprocess_rps": local_rps,
                             "inprocess_p50_ms": 1e3 * statistics.median(local),
                             "inprocess_p99_ms": 1e3 * _percentile(local, 0.99),
                             "ratio_rps": served_rps / local_rps})
        finally:
            serve.shutdown()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--smoke", action="store_true", help="builtin-tiny, 10 requests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.requests = "builtin-tiny", 10
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from benchmarks.common import load_average, record
    from pafo_ray.config import RayConfig
    from pafo_ray.ray_session import init_ray

    init_ray(RayConfig(num_cpus=4, progress_bars=False))
    rows = measure(args)
    print(f"backbone {args.backbone}, {args.replicas} replica(s), {args.clients} clients, "
          f"{args.requests} requests per size, @serve.batch max {args.max_batch_size} "
          f"({load_average()})")
    print("| responses/request | served req/s | p50 ms | p99 ms | in-process req/s | p50 ms "
          "| p99 ms | served/in-process |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['responses_per_request']} | {r['served_rps']:.1f} | "
              f"{r['served_p50_ms']:.0f} | {r['served_p99_ms']:.0f} | {r['inprocess_rps']:.1f} | "
              f"{r['inprocess_p50_ms']:.0f} | {r['inprocess_p99_ms']:.0f} | "
              f"{r['ratio_rps']:.2f} |")
        record("serving", f"/score req/s, {r['responses_per_request']} responses/request, "
               f"{args.replicas} replica(s)", r["served_rps"], baseline=r["inprocess_rps"],
               ratio=r["ratio_rps"], unit="req/s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
