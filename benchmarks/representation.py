"""Representation levers on DSP-dev, screened in one process (no Ray): which features let a
personalized Bradley–Terry model serve minority-type users.

    python -m benchmarks.representation [--seeds 0] [--max-length 256] [--out DIR]

MiniLM runs once per ``--max-length`` over every DSP text (prompt + response) with all hidden
states kept; each variant pools from that one pass: the last layer (the default), the mean of
layers 1-6, layers 1-6 concatenated, and each of those followed by the feature adapter of
``embed.adapt=mlp`` (fitted on the training rows only). For each variant and seed: a vanilla
lowrank model (``r = (g + e_u)·Wφ``, weight decay and user shrinkage chosen on validation
from the suite's grid) is fitted on the simulated users' training rows and measured on test by
true user type, beside the DSP-domain probe and the seconds each step took. A screen to choose
the lever; the suite (``python -m benchmarks.quality --set ...``) measures the chosen one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import DSP

LAYERS = list(range(7))  # MiniLM-L6: 0 = token embeddings, 1..6 = transformer layers


def embed_all(max_length: int, out: Path, max_prompts=None) -> tuple[np.ndarray, list, list, float]:
    """Mean-pooled hidden states of every layer ``[N, 7, 384]`` for every DSP text (cached)."""
    from pafo_ray.data.convert import read_dsp
    from pafo_ray.models.backbone import TextEncoder

    queries, responses = read_dsp(DSP, max_prompts)
    prompts = [q for q in queries for _ in range(len(responses) // len(queries))]
    path = out / f"minilm_layers_{max_length}_{len(queries)}q.npz"
    if path.exists():
        saved = np.load(path)
        return saved["features"], prompts, responses, float(saved["seconds"])
    torch.set_num_threads(2)
    encoder = TextEncoder("minilm", max_length=max_length, pooling_layers=LAYERS,
                          layer_combine="concat")
    began = time.time()
    flat = encoder.embed(prompts, responses, batch_size=32)
    seconds = time.time() - began
    features = flat.reshape(len(prompts), len(LAYERS), -1)
    np.savez(path, features=features, seconds=seconds)
    return features, prompts, responses, seconds


def variants(features: np.ndarray) -> dict:
    return {"last": features[:, 6], "mean1-6": features[:, 1:7].mean(1),
            "concat1-6": features[:, 1:7].reshape(len(features), -1)}


def pairs_of(rows, index: dict, users: dict, split: str):
    from pafo_ray.models.adapter import Pairs

    part = rows[rows["split"] == split]
    chosen = np.array([index[(p, r)] for p, r in zip(part["prompt"], part["chosen"])])
    rejected = np.array([index[(p, r)] for p, r in zip(part["prompt"], part["rejected"])])
    return (Pairs(chosen, rejected, part["user_id"].map(users).to_numpy(),
                  np.unique(part["prompt"], return_inverse=True)[1]),
            (part["user_type"] == "minority").to_numpy())


def fit_vanilla(x: torch.Tensor, train, num_users: int, weight_decay: float, shrinkage: float,
                epochs: int = 30, seed: int = 0):
    """The suite's vanilla in miniature: lowrank head with the population term, BT, AdamW."""
    from pafo_ray.losses import bradley_terry_loss
    from pafo_ray.models.heads import RewardHead

    torch.manual_seed(seed)
    head = RewardHead(x.shape[1], num_users, head="lowrank", rank=8, population_term=True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=weight_decay)
    c, r, u = (torch.from_numpy(np.asarray(a, dtype=np.int64))
               for a in (train.chosen, train.rejected, train.user))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(c), generator=generator)
        for start in range(0, len(c), 256):
            b = order[start:start + 256]
            loss = bradley_terry_loss(head(x[c[b]], u[b]) - head(x[r[b]], u[b])).mean()
            loss = loss + shrinkage * head.user_embedding(u[b]).pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head


@torch.no_grad()
def accuracy(head, x: torch.Tensor, pairs, minority: np.ndarray) -> dict:
    u = torch.from_numpy(np.asarray(pairs.user, dtype=np.int64))
    m = head(x[torch.from_numpy(pairs.chosen)], u) - head(x[torch.from_numpy(pairs.rejected)], u)
    correct = (m > 0).numpy()
    return {"all": float(correct.mean()), "majority": float(correct[~minority].mean()),
            "minority": float(correct[minority].mean())}


def screen(seed: int, feats: dict, prompts, responses, adapt: bool, num_users: int = 500,
           max_prompts=None) -> list:
    from benchmarks.diagnostics import probe
    from pafo_ray.data.convert import simulate_dsp
    from pafo_ray.models.adapter import fit_adapter

    sim = simulate_dsp(DSP, num_users=num_users, minority_fraction=0.2, seed=seed,
                       max_prompts=max_prompts)
    rows = sim.rows.to_pandas()
    index = {(p, r): i for i, (p, r) in enumerate(zip(prompts, responses))}
    users = {u: i for i, u in enumerate(sorted(rows["user_id"].unique()))}
    train, _ = pairs_of(rows, index, users, "train")
    val, val_min = pairs_of(rows, index, users, "val")
    test, test_min = pairs_of(rows, index, users, "test")
    domains = np.tile(np.arange(5), len(prompts) // 5)
    queries = np.repeat(np.arange(len(prompts) // 5), 5)
    results = []
    for name, phi in feats.items():
        for adapted in ([False, True] if adapt else [False]):
            began = time.time()
            x = phi
            info = {}
            if adapted:
                fit = fit_adapter(phi, train, len(users), seed=seed)
                x = fit.features
                info = {"adapt_seconds": fit.seconds, "adapt_epoch": fit.epoch,
                        "holdout": fit.holdout_accuracy, "frozen_holdout": fit.frozen_holdout_accuracy}
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            mean, std = xt.mean(0), xt.std(0).clamp(min=1e-6)
            xt = (xt - mean) / std
            fits = {}
            for wd, shrink in itertools.product([1e-4, 1e-2], [1e-3, 1e-1]):
                t0 = time.time()
                head = fit_vanilla(xt, train, len(users), wd, shrink, seed=seed)
                fits[(wd, shrink)] = (accuracy(head, xt, val, val_min)["all"], head,
                                      time.time() - t0)
            (wd, shrink), (val_acc, head, fit_s) = max(fits.items(), key=lambda kv: kv[1][0])
            results.append({"seed": seed, "features": name + (" +adapt" if adapted else ""),
                            "dim": int(x.shape[1]), "val": val_acc, "wd": wd, "shrink": shrink,
                            "test": accuracy(head, xt, test, test_min),
                            "probe": probe(np.asarray(x), domains, queries),
                            "fit_seconds": round(fit_s, 2),
                            "seconds": round(time.time() - began, 1), **info})
            print(json.dumps(results[-1]), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.representation",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-adapt", action="store_true")
    parser.add_argument("--max-prompts", type=int, default=None,
                        help="first N DSP queries only (a cheaper screen; pair with --users)")
    parser.add_argument("--users", type=int, default=500, help="simulated users")
    parser.add_argument("--out", default="bench_out/representation")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    features, prompts, responses, seconds = embed_all(args.max_length, out, args.max_prompts)
    print(f"embedded {len(prompts)} texts at {args.max_length} tokens in {seconds:.0f} s", flush=True)
    results = [r for s in args.seeds
               for r in screen(s, variants(features), prompts, responses, not args.no_adapt,
                               args.users, args.max_prompts)]
    name = f"representation_{args.max_length}_{len(prompts) // 5}q_{args.users}u.json"
    (out / name).write_text(json.dumps(
        {"embed_seconds": seconds, "texts": len(prompts), "results": results}, indent=2))
    print("| seed | features | dim | vanilla test majority / minority | probe | fit s |")
    for r in results:
        print(f"| {r['seed']} | {r['features']} | {r['dim']} | {100 * r['test']['majority']:.1f} / "
              f"{100 * r['test']['minority']:.1f} | {100 * r['probe']:.1f} | {r['fit_seconds']} |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
