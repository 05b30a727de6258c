"""Which lever moves minority-type accuracy on a finished run's cache: a group-level prior or
a fitted GELU layer under the lowrank head? In-process, full-batch Adam, no Ray.

    python -m benchmarks.heads_check RUN_DIR [RUN_DIR ...]

RUN_DIR is a pipeline run folder with ``embed/cache`` and ``groups/data`` (e.g. the runs of
``python -m benchmarks.coldstart --dataset dsp``). Models, each with rank x user shrinkage x
weight decay chosen on validation, test accuracy by the simulator's true type:

* lowrank            r = (g + e_u)·Wφ  (vanilla's form)
* prior (estimated)  r = (g + h_G(u) + e_u)·Wφ, G(u) the groups stage's group of the user
* prior (true type)  the same with the true types as groups (a diagnostic, never a default)
* gelu               r = (g + e_u)·W gelu(A·std(φ)), φ standardized per feature (32 wide)
* gelu layer-norm    the same with a per-text layer norm in place of the standardization
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def load(run: str) -> dict:
    import pyarrow.dataset as ds

    from pafo_ray.train.arrays import read_cache

    cache = read_cache(f"{run}/embed/cache")
    t = ds.dataset(f"{run}/groups/data", format="parquet", partitioning="hive").to_table(
        columns=["user_id", "chosen_text_id", "rejected_text_id", "split", "user_type",
                 "group"]).to_pandas()
    users = sorted(t.user_id.astype(str).unique())
    t["u"] = t.user_id.astype(str).map({u: i for i, u in enumerate(users)})
    at = lambda col: cache.vectors[np.searchsorted(cache.text_ids, t[col].to_numpy())]  # noqa: E731
    mode = t[t.split == "train"].groupby("u")["group"].agg(lambda s: s.astype(str).mode()[0])
    names = {g: i for i, g in enumerate(sorted(t.group.astype(str).unique()))}
    estimated = torch.zeros(len(users), dtype=torch.long)
    for u, g in mode.items():
        estimated[u] = names[g]
    kind = t.groupby("u")["user_type"].first()
    true = torch.tensor([int(kind[i] == "minority") for i in range(len(users))])
    return {"chosen": at("chosen_text_id"), "rejected": at("rejected_text_id"),
            "user": torch.tensor(t.u.to_numpy()), "users": len(users), "estimated": estimated,
            "true": true, "type": t.user_type.to_numpy(),
            "split": {s: (t.split == s).to_numpy() for s in ("train", "val", "test")}}


def fit(d: dict, *, rank: int, shrink: float, wd: float, groups=None, hidden: int = 0,
        norm: str = "std", steps: int = 400, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    c, r = d["chosen"], d["rejected"]
    if hidden and norm == "std":
        mu, sd = c.mean(0), c.std(0).clamp_min(1e-6)
        c, r = (c - mu) / sd, (r - mu) / sd
    elif hidden:
        c, r = (torch.nn.functional.layer_norm(x, x.shape[1:]) for x in (c, r))
    else:  # the linear model sees the difference, scaled per feature
        c, r = c / (c - r).std(0).clamp_min(1e-6), r / (c - r).std(0).clamp_min(1e-6)
    layer = torch.nn.Linear(c.shape[1], hidden) if hidden else None
    W = torch.nn.Parameter(torch.randn(rank, hidden or c.shape[1]) * (0.05 if hidden else 0.01))
    g, e = torch.nn.Parameter(torch.zeros(rank)), torch.nn.Parameter(torch.zeros(d["users"], rank))
    h = torch.nn.Parameter(torch.zeros(2, rank))
    params = [W, g, e] + ([h] if groups is not None else []) + (
        list(layer.parameters()) if layer else [])
    opt = torch.optim.Adam(params, lr=0.01 if hidden else 0.02)
    feat = (lambda x: torch.nn.functional.gelu(layer(x))) if layer else (lambda x: x)  # noqa: E731
    U = d["user"]

    def margins(rows):
        v = g + e[U[rows]] + (h[groups[U[rows]]] if groups is not None else 0)
        return (((feat(c[rows]) - feat(r[rows])) @ W.T) * v).sum(1)

    train = torch.from_numpy(d["split"]["train"])
    for _ in range(steps):
        opt.zero_grad()
        extra = (layer.weight ** 2).sum() if layer else 0
        loss = (torch.nn.functional.softplus(-margins(train)).mean()
                + wd * ((W ** 2).sum() + extra) + shrink * (e ** 2).sum(1).mean())
        loss.backward()
        opt.step()
    with torch.no_grad():
        hit = (margins(torch.ones(len(U), dtype=torch.bool)) > 0).numpy()
    out = {}
    for s in ("val", "test"):
        m = d["split"][s]
        out[s] = tuple(float(hit[m & sel].mean()) for sel in
                       (np.ones_like(m), d["type"] == "majority", d["type"] == "minority"))
    return out


def best(d: dict, **model) -> tuple:
    grid = [(rank, shrink, wd) for rank in ((8,) if model.get("hidden") else (8, 32))
            for shrink in (1e-3, 1e-2, 1e-1) for wd in (1e-4, 1e-3)]
    runs = [(cfg, fit(d, rank=cfg[0], shrink=cfg[1], wd=cfg[2], **model)) for cfg in grid]
    return max(runs, key=lambda run: run[1]["val"][0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.heads_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders with embed/cache and groups/data")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | model | chosen (rank, shrinkage, wd) | val | majority | minority | gap |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        d = load(run)
        for name, model in (("lowrank", {}), ("prior (estimated)", {"groups": d["estimated"]}),
                            ("prior (true type)", {"groups": d["true"]}),
                            ("gelu", {"hidden": 32}), ("gelu layer-norm", {"hidden": 32,
                                                                            "norm": "ln"})):
            cfg, r = best(d, **model)
            maj, mino = 100 * r["test"][1], 100 * r["test"][2]
            print(f"| {run.rstrip('/').split('/')[-1]} | {name} | {cfg} | {r['val'][0]:.3f} | "
                  f"{maj:.1f} | {mino:.1f} | {maj - mino:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
