"""Fair cold start: accuracy of users the student never saw, by answered comparisons and type.

    python -m benchmarks coldstart            (or python -m benchmarks.coldstart [--smoke])
    python -m benchmarks.coldstart --dataset builtin-80 --holdout 0.25 --seed 0

The quality suite's builtin-80 regime (or ``--dataset dsp``: DSP-dev's queries with simulated
users, as the quality suite's dsp) (500 users, 20% minority-type, 2 raters per training
comparison, frozen MiniLM) is generated, a share of the users of each true type is held out,
and the pipeline (input..distill, pafo's default weights, no tune, no baselines) trains on the
rest. Each held-out user then answers k of its own training comparisons (k = 0, 1, 2, 5, 10;
a seeded random order, or the active choice) and is scored on its own test comparisons:

* mean        start from the mean user embedding (today's unknown-user rule), fit the offset
* population  start from offset 0 (the shared population g), fit the offset
* group       placed by the mixture posterior over the student's group vectors (each group's
              population fitted through the student's W: group_vectors.json), start there, or
              at the start validation chose for that group (group_starts.json: the shared
              population or the mean user, when it beat the group vector by more than an SE
              on the group's seen users' validation rows)
* group-active  the same, asking the comparisons the groups disagree on most, one at a time
              (pafo_ray.active.ActiveSession, the API a user drives)
* group-flat, group-active-flat  group and group-active with a flat placement prior (1/G)
              in place of the groups' user shares
* group-vector  the same as group, always starting at the group's vector (the rule before
              starts were chosen on validation)
* group-meanoff the same as group with each group's mean user offset as its vector (the first
              rule, kept for comparison)

Accuracy is pooled over the held-out users' test rows, by true type (the simulator's
user_type, never an input). ``placed`` is the share of minority-type users placed in the
student's lowest-support group. After each table: the type gap (majority − minority) at k = 5
for each method with a 95% interval from 1,000 resamples of the held-out users (the same draws
for every method), and each method's majority-type accuracy minus the fallback's on the same
users (paired interval). Writes ``coldstart.md`` and ``coldstart.json`` (with each held-out
user's k = 5 counts) under ``--out``. ``--pool A/coldstart.json B/coldstart.json ...`` runs
nothing: it pools those seeds' users for the same two figures (``coldstart_pooled.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = "bench_out/coldstart"
KS = (0, 1, 2, 5, 10)
GOAL_K = 5  # issue 19's goal: the type gap after this many answers, with a user-bootstrap interval
METHODS = ("mean", "population", "group", "group-active", "group-flat", "group-active-flat",
           "group-vector", "group-meanoff")


def _config(args, data_dir: str):
    from benchmarks.common import as_overrides
    from benchmarks.quality import COMMON, DATASETS, SMOKE
    from pafo_ray.config import load_config

    values = {**DATASETS[args.dataset], **COMMON, "run.storage_path": str(Path(args.out) / "runs"),
              "run.run_name": f"coldstart-{args.dataset}-s{args.seed}", "run.seed": args.seed,
              "data.generator.seed": args.seed, "tune.num_samples": 0, "baselines.methods": [],
              "teachers.init": "scratch", "train.epochs": args.epochs,
              "train.checkpoint_every": args.epochs}
    if args.backbone:
        values["model.backbone"] = args.backbone
    if args.smoke:
        values.update({**SMOKE, "train.checkpoint_every": 3})
        if args.dataset == "dsp":  # the generator's sizes above do not apply to DSP
            values.update({"data.sim_num_users": 60, "data.sim_max_prompts": 40})
    values.update(dict(o.split("=", 1) for o in args.overrides))
    cfg = load_config(None, as_overrides(values))
    source = cfg.data
    cfg = load_config(None, as_overrides({**values, "data.source": "parquet",
                                          "data.path": data_dir}))
    return cfg, source


def _write_all(source, seed: int, out_dir: Path) -> None:
    """Every user's rows (with the simulator's ``user_type``): generated, or DSP simulated."""
    if source.source == "builtin":
        from pafo_ray.data.generate import write_generated

        write_generated(source.generator, str(out_dir))
        return
    import pyarrow.parquet as pq

    from pafo_ray.data.convert import dsp_to_table

    out_dir.mkdir(parents=True, exist_ok=True)
    table = dsp_to_table(source.path, num_users=source.sim_num_users,
                         minority_fraction=source.sim_minority_fraction,
                         raters_train=source.sim_raters_train, raters_eval=source.sim_raters_eval,
                         label_beta=source.sim_label_beta, max_prompts=source.sim_max_prompts,
                         seed=seed)
    pq.write_table(table, str(out_dir / "part-00000.parquet"))


def _split_users(frame, holdout: float, seed: int) -> set:
    """A ``holdout`` share of each true type's users, seeded."""
    rng = np.random.default_rng(seed)
    held = set()
    for _, users in frame.groupby("user_type")["user_id"]:
        ids = sorted(set(users.astype(str)))
        held |= set(rng.choice(ids, size=max(1, round(holdout * len(ids))), replace=False))
    return held


def _phi(model, cache, prompts, responses):
    """φ from the run's embedding cache; texts it lacks through the student's backbone."""
    from pafo_ray.data.schema import text_ids

    ids = text_ids(list(prompts), list(responses))
    pos = np.clip(np.searchsorted(cache.text_ids, ids), 0, len(cache.text_ids) - 1)
    found = cache.text_ids[pos] == ids
    out = np.zeros((len(ids), cache.vectors.shape[1]), dtype=np.float32)
    out[found] = cache.vectors[pos[found]].numpy()
    if (~found).any():
        miss = np.flatnonzero(~found)
        out[miss] = model.embed_texts([prompts[i] for i in miss],
                                      [responses[i] for i in miss]).cpu().numpy()
    return out


def _accuracy(model, vector, phi_c, phi_r) -> np.ndarray:
    import torch

    with torch.no_grad():
        users = vector.reshape(1, -1).expand(len(phi_c), -1)
        m = (model.head.score_vectors(torch.from_numpy(phi_c), users)
             - model.head.score_vectors(torch.from_numpy(phi_r), users))
    return (m > 0).numpy()


def evaluate_user(model, pool, test, *, ks, shrinkage, rng, lowest: str,
                  meanoff=None) -> dict:
    """{method: {k: (correct test rows, test rows, placed lowest)}} for one held-out user.
    ``meanoff``: (names, [G, K] mean user offsets, prior) for ``group-meanoff``."""
    import torch

    from pafo_ray.active import ActiveSession
    from pafo_ray.coldstart import fit_offset, group_margins, group_vectors, place_user, posterior

    names, vectors, _ = group_vectors(model)
    order = rng.permutation(len(pool[0]))
    out: dict = {m: {} for m in METHODS}
    for k in ks:
        k_eff = min(k, len(order))
        chosen_rows = order[:k_eff]
        for method, place, kind in (("mean", "mean", "share"),
                                    ("population", "population", "share"),
                                    ("group", "group", "share"), ("group-flat", "group", "flat")):
            placed = place_user(model, pool[0][chosen_rows], pool[1][chosen_rows],
                                place=place, shrinkage=shrinkage, prior=kind)
            hits = _accuracy(model, placed.vector, *test)
            out[method][k] = (int(hits.sum()), len(hits), placed.group == lowest)
            if method == "group":
                pc, pr = (torch.from_numpy(a[chosen_rows]) for a in pool)
                best = names.index(placed.group)
                vector = fit_offset(model, pc, pr, vectors[best], shrinkage)
                hits = _accuracy(model, vector, *test)
                out["group-vector"][k] = (int(hits.sum()), len(hits), placed.group == lowest)
        if meanoff is not None:
            m_names, m_vectors, m_prior = meanoff
            pc, pr = (torch.from_numpy(a[chosen_rows]) for a in pool)
            best = int(posterior(group_margins(model, pc, pr, m_vectors), m_prior).argmax())
            vector = fit_offset(model, pc, pr, m_vectors[best], shrinkage)
            hits = _accuracy(model, vector, *test)
            out["group-meanoff"][k] = (int(hits.sum()), len(hits), m_names[best] == lowest)
    # The active rules through the library's session (pafo_ray.active): the pool's pairs are
    # the user's own comparisons, a = the response it chose, so every answer is "a".
    for method, kind in (("group-active", "share"), ("group-active-flat", "flat")):
        session = ActiveSession(model, pool[0], pool[1], prior=kind, shrinkage=shrinkage)
        for k in sorted(ks):
            while len(session.asked) < min(k, len(session)):
                session.answer(session.next(), prefers_a=True)
            placed = session.place()
            hits = _accuracy(model, placed.vector, *test)
            out[method][k] = (int(hits.sum()), len(hits), placed.group == lowest)
    return out


def run(args) -> dict:
    import pandas as pd

    from pafo_ray.data.schema import group_names
    from pafo_ray.models import RewardModel
    from pafo_ray.stages.base import ORDER, StageContext, is_active, is_done, run_pipeline
    from pafo_ray.train.arrays import read_cache

    out = Path(args.out)
    data_all, data_train = out / "data" / "all", out / "data" / "train"
    cfg, source = _config(args, str(data_train))
    _write_all(source, args.seed, data_all)
    frame = pd.read_parquet(data_all)
    frame["user_id"] = frame["user_id"].astype(str)
    held = _split_users(frame, args.holdout, args.seed)
    data_train.mkdir(parents=True, exist_ok=True)
    train_file, train_rows = data_train / "part-00000.parquet", frame[~frame["user_id"].isin(held)]
    # Rewritten only when it changed: its mtime is part of the input fingerprint, so a rewrite
    # would rerun the whole pipeline of an --out that already holds the run.
    if not train_file.exists() or not pd.read_parquet(train_file).reset_index(drop=True).equals(
            train_rows.reset_index(drop=True)):
        train_rows.to_parquet(train_file, index=False)
    heldout = frame[frame["user_id"].isin(held)]

    ctx = StageContext.create(cfg)
    began = time.time()
    stages = [s for s in ORDER[:ORDER.index("distill") + 1] if is_active(cfg, s)]
    if not all(is_done(ctx, s) for s in stages):  # a finished run is scored without Ray
        from pafo_ray.config import RayConfig
        from pafo_ray.ray_session import init_ray

        init_ray(RayConfig(progress_bars=False))
    run_pipeline(ctx, stages)
    train_seconds = time.time() - began
    student_uri = ctx.run_dir.uri("distill", "student")
    model = RewardModel.from_pretrained(student_uri)
    if not model.group_vectors:  # a run distilled before group_vectors.json existed
        from pafo_ray.stages.distill import write_group_vectors

        write_group_vectors(ctx, [student_uri], model.user_groups)
        model = RewardModel.from_pretrained(student_uri)
    from pafo_ray.coldstart import group_vectors

    stored, model.group_vectors = model.group_vectors, {}
    meanoff = group_vectors(model)  # each group's mean user offset: the first rule
    model.group_vectors = stored
    cache = read_cache(ctx.run_dir.uri("embed", "cache"))
    from pafo_ray.coldstart import choose_group_starts
    from pafo_ray.stages.distill import split_comparisons

    # The seen users' validation rows: what the distill stage chose each group's start on.
    chosen_starts = choose_group_starts(
        model, *split_comparisons(ctx, "val", model.user_groups, cache))
    if not model.group_starts:  # a run distilled before group_starts.json existed
        model.set_group_starts({g: c["start"] for g, c in chosen_starts.items()
                                if c["source"] != "group"})
    starts = {g: {k: v for k, v in c.items() if k != "start"} for g, c in chosen_starts.items()}
    lowest = group_names(cfg.prepare.num_groups)[0]
    users = []
    for user, rows in heldout.groupby("user_id"):
        pool_rows, test_rows = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
        if test_rows.empty:
            continue
        pool = tuple(_phi(model, cache, pool_rows["prompt"].tolist(), pool_rows[s].tolist())
                     for s in ("chosen", "rejected"))
        test = tuple(_phi(model, cache, test_rows["prompt"].tolist(), test_rows[s].tolist())
                     for s in ("chosen", "rejected"))
        users.append((user, rows["user_type"].iloc[0], pool, test))
    tables, gaps, per_user, majority = {}, {}, {}, {}
    for shrinkage in args.shrinkage:
        rng = np.random.default_rng(args.seed)  # the same answer orders for every shrinkage
        tallies: dict = {}
        at_goal: dict = {}  # method -> [(user, type, hits, rows)] at k = GOAL_K
        for user, kind, pool, test in users:
            result = evaluate_user(model, pool, test, ks=args.ks, shrinkage=shrinkage, rng=rng,
                                   lowest=lowest, meanoff=meanoff)
            for method, by_k in result.items():
                for k, (hits, n, placed) in by_k.items():
                    t = tallies.setdefault((kind, method, k), [0, 0, 0, 0])
                    t[0] += hits
                    t[1] += n
                    t[2] += placed
                    t[3] += 1
                    if k == GOAL_K:
                        at_goal.setdefault(method, []).append((user, kind, hits, n))
        tables[str(shrinkage)] = {
            f"{kind}|{method}|{k}": {"accuracy": t[0] / t[1], "rows": t[1],
                                     "placed_lowest": t[2] / t[3], "users": t[3]}
            for (kind, method, k), t in sorted(tallies.items())}
        gaps[str(shrinkage)] = {m: gap_interval(rows, seed=args.seed) for m, rows in at_goal.items()}
        per_user[str(shrinkage)] = at_goal
        majority[str(shrinkage)] = {m: majority_difference(rows, at_goal["mean"], seed=args.seed)
                                    for m, rows in at_goal.items() if m != "mean"}
    return {"dataset": args.dataset, "seed": args.seed, "holdout": args.holdout,
            "held_out_users": len(held), "train_seconds": round(train_seconds, 1),
            "backbone": cfg.model.backbone, "starts": starts,
            "run": str(ctx.run_dir.root), "tables": tables, "gaps_at_goal": gaps,
            "majority_vs_fallback": majority, "users_at_goal": per_user}


def gap_interval(per_user: list, seed: int = 0, resamples: int = 1000) -> dict:
    """Majority-type minus minority-type accuracy, rows pooled, and its 95% percentile
    interval over resamples of the users (pafo_ray.bootstrap, the evaluate stage's user
    bootstrap). ``per_user``: ``[(user_id, user_type, correct rows, rows)]``."""
    from pafo_ray.bootstrap import bootstrap_by_user, gap_stat

    frame = _frame(per_user)
    if frame.empty or frame["user_type"].nunique() < 2:
        return {"gap": None, "low": None, "high": None}
    stat = gap_stat("user_type", "minority", "majority")
    low, high = bootstrap_by_user(frame, stat, n=resamples, seed=seed)
    return {"gap": stat.point(frame), "low": low, "high": high}


def _frame(per_user: list):
    """One row per test comparison: ``user_id``, ``user_type``, ``row_id`` and a margin of
    +1 (correct) or −1, from ``[(user_id, user_type, correct rows, rows)]``."""
    import pandas as pd

    return pd.DataFrame([{"user_id": u, "user_type": t, "row_id": f"{u}:{i}",
                          "margin": 1.0 if i < hits else -1.0}
                         for u, t, hits, n in per_user for i in range(n)])


def majority_difference(per_user: list, fallback: list, seed: int = 0,
                        resamples: int = 1000) -> dict:
    """Majority-type accuracy of a method minus the mean-user fallback's on the same users
    and test rows, with a 95% paired user-bootstrap interval (the goal's second half: the
    majority no worse than the fallback). ``{"diff", "low", "high"}``; ``None``s without
    majority-type users."""
    from pafo_ray.bootstrap import accuracy_stat, paired_difference

    def majority(rows):
        return _frame([r for r in rows if r[1] == "majority"])

    a, b = majority(per_user), majority(fallback)
    if a.empty:
        return {"diff": None, "low": None, "high": None}
    out = paired_difference(a, b, accuracy_stat("user_type", "majority"), n=resamples, seed=seed)
    return {"diff": out["diff"], "low": out["lo"], "high": out["hi"]}


def pool(results: list, resamples: int = 1000) -> dict:
    """The k = 5 goal over several runs' held-out users together (each run's users are
    distinct people: ids are prefixed with the run's seed): per shrinkage and method, the
    pooled type gap and the majority's difference from the fallback, each with its 95%
    user-bootstrap interval, and the number of users of each type."""
    out: dict = {}
    shrinkages = set.intersection(*(set(r.get("users_at_goal") or {}) for r in results))
    for shrinkage in sorted(shrinkages, key=float):
        rows: dict = {}
        for r in results:
            for method, users in r["users_at_goal"][shrinkage].items():
                rows.setdefault(method, []).extend(
                    (f"s{r['seed']}:{u}", t, hits, n) for u, t, hits, n in users)
        out[shrinkage] = {
            method: {"gap": gap_interval(users, resamples=resamples),
                     "majority_vs_fallback": majority_difference(users, rows["mean"],
                                                                 resamples=resamples),
                     "users": {t: sum(1 for u in users if u[1] == t)
                               for t in ("majority", "minority")}}
            for method, users in rows.items()}
    return {"seeds": [r["seed"] for r in results], "dataset": results[0]["dataset"],
            "pooled": out}


def render_pool(pooled: dict, command: str) -> str:
    lines = [f"## Cold start pooled over seeds {pooled['seeds']}, {pooled['dataset']}", "",
             f"Command: `{command}`", "",
             f"At k={GOAL_K} answers: the type gap (majority − minority accuracy, rows pooled) and "
             "the majority-type difference from the mean-user fallback on the same users, each "
             "with a 95% user-bootstrap interval.", ""]
    for shrinkage, methods in pooled["pooled"].items():
        lines += [f"Offset shrinkage {shrinkage}:", "",
                  "| method | users (maj / min) | gap | majority − fallback |", "|---|---|---|---|"]
        for method in METHODS:
            c = methods.get(method)
            if c is None:
                continue
            lines.append(f"| {method} | {c['users']['majority']} / {c['users']['minority']} | "
                         f"{_points(c['gap'], 'gap')} | {_points(c['majority_vs_fallback'], 'diff')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _points(c: dict, key: str) -> str:
    if c.get(key) is None:
        return "—"
    if c.get("low") is None:
        return f"{100 * c[key]:+.1f}"
    return f"{100 * c[key]:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"


def render(result: dict, command: str) -> str:
    lines = [f"## Cold start, {result['dataset']} (seed {result['seed']}, "
             f"{result['held_out_users']} held-out users, backbone {result['backbone']}, "
             f"pipeline {result['train_seconds']} s)", "", f"Command: `{command}`", "",
             "Test accuracy of held-out users after k answered comparisons (pooled rows); "
             "in brackets: share of those users placed in the lowest-support group.", ""]
    for group, c in (result.get("starts") or {}).items():
        accuracy = ", ".join(f"{k} {100 * v:.1f}" for k, v in c["val_accuracy"].items())
        se = "" if c.get("se") is None else f"; one SE by user {100 * c['se']:.2f}"
        lines.append(f"- start of group {group}: **{c['source']}** (validation accuracy of its "
                     f"seen users, each start alone, {c['val_rows']} rows: {accuracy}{se})")
    lines.append("")
    for shrinkage, table in result["tables"].items():
        lines += _render_table(table, shrinkage)
        gaps = (result.get("gaps_at_goal") or {}).get(shrinkage) or {}
        cells = [f"{m} {100 * g['gap']:+.1f} [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]"
                 for m in METHODS if (g := gaps.get(m)) and g["gap"] is not None
                 and g["low"] is not None]
        if cells:
            lines += [f"Type gap (majority − minority) at k={GOAL_K}, 95% user-bootstrap "
                      "interval: " + "; ".join(cells), ""]
        diffs = (result.get("majority_vs_fallback") or {}).get(shrinkage) or {}
        cells = [f"{m} {_points(d, 'diff')}" for m in METHODS
                 if (d := diffs.get(m)) and d["diff"] is not None]
        if cells:
            lines += [f"Majority-type accuracy minus the mean-user fallback's at k={GOAL_K} "
                      "(same users, paired 95% interval): " + "; ".join(cells), ""]
    return "\n".join(lines) + "\n"


def _render_table(table: dict, shrinkage: str) -> list:
    ks = sorted({int(key.split("|")[2]) for key in table})
    lines = [f"Offset shrinkage {shrinkage}:", "",
             "| type | method | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    result = {"table": table}
    for kind in ("majority", "minority"):
        for method in METHODS:
            cells = []
            for k in ks:
                row = result["table"].get(f"{kind}|{method}|{k}")
                if row is None:
                    cells.append("—")
                    continue
                placed = f" [{row['placed_lowest']:.2f}]" if method.startswith("group") else ""
                cells.append(f"{100 * row['accuracy']:.1f}{placed}")
            users = result["table"].get(f"{kind}|{method}|{ks[0]}", {}).get("users", 0)
            lines.append(f"| {kind} ({users}) | {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> int:
    from benchmarks.quality import DATASETS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.coldstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin-80",
                        choices=[d for d in DATASETS if d.startswith("builtin") or d == "dsp"])
    parser.add_argument("--holdout", type=float, default=0.25, help="share of each type held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--shrinkage", type=float, nargs="+", default=[1.0, 3.0],
                        help="ridge pulls of a new user's offset towards its start (each "
                             "reported; none chosen on the test rows)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--backbone", default=None,
                        help="model.backbone (default: the quality suite's minilm)")
    parser.add_argument("--smoke", action="store_true", help="tiny data (CI)")
    parser.add_argument("--pool", nargs="+", metavar="COLDSTART_JSON", default=None,
                        help="no run: pool the k=5 goal over these runs' coldstart.json "
                             "(one per seed) and write coldstart_pooled.md/.json under --out")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.coldstart " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.pool:
        return _main_pool(args, command.strip())
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.smoke and args.out == DEFAULT_OUT:
        args.out = DEFAULT_OUT + "-smoke"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from benchmarks.common import record

    result = run(args)
    text = render(result, command.strip())
    (Path(args.out) / "coldstart.md").write_text(text)
    (Path(args.out) / "coldstart.json").write_text(json.dumps(result, indent=2))
    print(text)
    for shrinkage, table in result["tables"].items():
        for method in METHODS:
            row = table.get(f"minority|{method}|5")
            if row:
                record("coldstart", f"minority-type unseen users, acc after 5 answers "
                       f"({method}, shrinkage {shrinkage})", 100 * row["accuracy"], unit="%")
    return 0


def _main_pool(args, command: str) -> int:
    results = []
    for path in args.pool:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: cannot read it as a coldstart.json: {exc}") from exc
        if not isinstance(result, dict) or not result.get("users_at_goal"):
            raise SystemExit(f"{path}: no per-user results (users_at_goal); rescore the run with "
                             "this version of benchmarks.coldstart (a finished run rescoring "
                             "needs no pipeline)")
        results.append(result)
    if len({r["seed"] for r in results}) != len(results):
        raise SystemExit("--pool: two runs share a seed; pool distinct seeds (distinct users)")
    common = set.intersection(*(set(r["users_at_goal"]) for r in results))
    if not common:
        raise SystemExit("--pool: no offset shrinkage is in every file (" + "; ".join(
            f"{p}: {sorted(r['users_at_goal'])}" for p, r in zip(args.pool, results))
            + "); score the runs with a common --shrinkage")
    pooled = pool(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = render_pool(pooled, command)
    (out / "coldstart_pooled.md").write_text(text)
    (out / "coldstart_pooled.json").write_text(json.dumps(pooled, indent=2))
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
