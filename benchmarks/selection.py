"""Which selection rule can validation trust? Every trial of finished quality runs, on test.

    python -m benchmarks.selection --out bench_out/quality --datasets builtin-80 --seeds 0 1 2

Reads the runs ``python -m benchmarks.quality`` left under ``--out`` (same datasets, seeds and
``--trials``). For each run it refits in-process, with the trial code (``train_student``), the
default-weights student and every finished trial of the tune stage's search, and scores each on
the test split by the simulator's true user type (row accuracy). Then it applies each rule of
``tune.selection`` (:data:`tuning.pareto.RULES`) to the *validation* table, exactly as the tune
stage would, and reports the test accuracies of the pick beside the default weights'.
Nothing chosen on test: the test figures only score the rules' picks.
Also, per run, vanilla, fairness_penalty and Faro DP / EO at their configured settings
(``--skip baselines`` to leave out), and the groups' purity (share of minority-type users in the lowest group) with
``groups.sizes=quantile`` and ``estimate`` on the same grouping model (``--group-sizes``).
Writes ``selection.md`` and ``selection.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks.quality import read_run


def test_by_type(model, cfg, test, cache) -> dict:
    """Test row accuracy by the simulator's user type: ``{"minority": a, "majority": b}``."""
    from pafo_ray.train import jobs as J
    from pafo_ray.train.arrays import build_rows, user_map
    from pafo_ray.train.loop import PairScorer, score_rows

    rows = build_rows(test, users=user_map(model.user_ids), group_names=J.names(cfg), cache=cache)
    correct = score_rows(PairScorer(model), rows, cache) > 0
    types = test["user_type"].astype(str).to_numpy()
    return {t: float(correct[types == t].mean()) for t in ("minority", "majority")}


def evaluate_rules(cfg, run_dir) -> dict:
    import pandas as pd

    from pafo_ray.stages.tune import default_reference
    from pafo_ray.train.inmemory import (
        STUDENT_COLUMNS,
        load_student_data,
        read_frame,
        train_student,
    )
    from tuning.pareto import RULES, select
    from tuning.search import params_of
    from tuning.space import apply_params

    data = load_student_data(cfg)
    test = read_frame(run_dir.grouped_rows("test")[0], STUDENT_COLUMNS + ["user_type"])
    summary = run_dir.tune_summary().data
    trials = pd.read_parquet(run_dir.local_path(run_dir.tune_file("trials.parquet")))
    trials = trials[trials["status"] == "TERMINATED"].reset_index(drop=True)
    fitted = train_student(data, cfg)
    reference = default_reference(cfg, data, fitted)
    default_test = test_by_type(fitted[0], cfg, test, data.cache)
    tested, val_drift = {}, []
    for record in trials.to_dict("records"):
        model, metrics = train_student(data, apply_params(cfg, params_of(record)))
        tested[record["trial_id"]] = test_by_type(model, cfg, test, data.cache)
        val_drift.append(abs(metrics["val_minority_accuracy"] - record["val_minority_accuracy"]))
    picks = {}
    for rule in RULES:
        extra = {} if rule == "best" else {"rule": rule, "minority_se": reference["minority_se"],
                                           "default": tuple(reference["point"])}
        chosen = select(trials, baseline_majority=summary["baseline_majority"],
                        epsilon=cfg.tune.epsilon, **extra).chosen
        pick = tested[chosen["trial_id"]] if chosen else default_test
        picks[rule] = {"trial": chosen["trial_id"] if chosen else "default",
                       "val": [chosen["val_majority_accuracy"], chosen["val_minority_accuracy"]]
                       if chosen else reference["point"],
                       "test": pick,
                       "d_minority": pick["minority"] - default_test["minority"],
                       "d_majority": pick["majority"] - default_test["majority"]}
    val_min = [r["val_minority_accuracy"] for r in trials.to_dict("records")]
    test_min = [tested[t]["minority"] for t in trials["trial_id"]]
    return {"default": {"val": reference["point"], "test": default_test},
            "per_trial": [{"trial": t, "val": [a, b], "test": tested[t]} for t, a, b in zip(
                trials["trial_id"], trials["val_majority_accuracy"], val_min)],
            "test_best": best_on_test(tested, default_test),
            "val_test_rank_corr": rank_corr(val_min, test_min),
            "minority_se": reference["minority_se"],
            "minority_binomial_se": reference["minority_binomial_se"],
            "val_rows": reference["val_rows"], "val_users": reference["val_users"],
            "trials": len(trials), "max_val_drift": max(val_drift, default=math.nan),
            "picks": picks}


def best_on_test(tested: dict, default_test: dict, slack: float = 0.005) -> dict:
    """The trial with the highest *test* minority accuracy among those whose test majority is
    within ``slack`` of the default weights' (or the default): not a rule (it reads test), the
    most any rule could gain over the default weights on this run's trials."""
    keep = {t: v for t, v in tested.items() if v["majority"] >= default_test["majority"] - slack}
    trial, pick = max(keep.items(), key=lambda kv: kv[1]["minority"], default=("default", default_test))
    if pick["minority"] <= default_test["minority"]:
        trial, pick = "default", default_test
    return {"trial": trial, "test": pick, "d_minority": pick["minority"] - default_test["minority"],
            "d_majority": pick["majority"] - default_test["majority"]}


def rank_corr(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); nan under 3 points or no spread."""
    import pandas as pd

    if len(a) < 3:
        return math.nan
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


BASELINES = ("vanilla", "fairness_penalty", "faro_dp", "faro_eo")


def baselines_at_default(cfg, run_dir) -> dict:
    """Test accuracy by user type of vanilla and the fairness baselines at their configured
    settings, fitted in-process on the run's rows (no search): a check that Faro's constraint
    moves the groups' accuracies, not the suite's tuned comparison."""
    import time

    from pafo_ray.train.inmemory import (
        STUDENT_COLUMNS,
        load_student_data,
        read_frame,
        train_student,
    )

    if run_dir.has_margin_rows("train"):
        data = load_student_data(cfg)
    else:  # the baselines need only the labelled rows of the groups stage
        from pafo_ray.train.arrays import read_cache
        from pafo_ray.train.inmemory import StudentData

        data = StudentData(
            train=read_frame(run_dir.grouped_rows("train")[0], STUDENT_COLUMNS),
            val=read_frame(run_dir.grouped_rows("val")[0], STUDENT_COLUMNS),
            users=run_dir.user_ids(), teacher_stats={}, cache=read_cache(run_dir.embed_cache()))
    test = read_frame(run_dir.grouped_rows("test")[0], STUDENT_COLUMNS + ["user_type"])
    out = {}
    for method in BASELINES:
        began = time.perf_counter()
        model, metrics = train_student(data, cfg, method=method)
        out[method] = {"test": test_by_type(model, cfg, test, data.cache),
                       "val": [metrics["val_majority_accuracy"], metrics["val_minority_accuracy"]],
                       "seconds": round(time.perf_counter() - began, 1)}
    return out


def group_purity(cfg, ctx) -> dict:
    """Share of minority-type users in the lowest group, and its size, by support and by the
    mixture with each ``groups.sizes``."""
    from pafo_ray.stages.groups import mixture
    from pafo_ray.train.inmemory import read_frame

    users = ctx.run_dir.users("prepare").rename(columns={"group": "support_group"})
    rows = read_frame(ctx.run_dir.prepared_rows("train"), ["user_id", "user_type"])
    types = rows.assign(user_id=rows["user_id"].astype(str)).groupby("user_id")["user_type"].first()
    lowest = "minority"
    out = {}

    def measure(groups):
        members = groups == lowest
        kinds = types.reindex(users["user_id"][members]).to_numpy()
        return {"users": int(members.sum()), "purity": float((kinds == "minority").mean()),
                "recall": float((kinds == "minority").sum() / max(1, (types == "minority").sum()))}

    out["support"] = measure(users["support_group"].to_numpy())
    for sizes in ("quantile", "estimate"):
        variant = dataclasses.replace(ctx, cfg=dataclasses.replace(
            cfg, groups=dataclasses.replace(cfg.groups, sizes=sizes)))
        grouped, details = mixture(variant, users)
        out[sizes] = {**measure(grouped["group"].to_numpy()),
                      "mixing": (details.get("mixing_per_round") or [None])[-1]}
    out["minority_type_users"] = int((types == "minority").sum())
    return out


def bound_cell(sel: dict) -> str:
    bound = sel.get("test_best")
    if not bound:
        return "–"
    return f"{100 * bound['d_minority']:+.1f} / {100 * bound['d_majority']:+.1f}"


def render(results: list, command: str) -> str:
    from tuning.pareto import RULES

    lines = ["# Selection rules on test, and group sizes", "", f"Command: `{command}`", "",
             "Test row accuracy by true user type (%); Δ = pick − default weights. "
             "SE = user-clustered SE of the default student's validation minority accuracy.", "",
             "`best on test` is not a rule: the trial with the highest test minority accuracy "
             "at no more than 0.5 points of test majority below the default's, i.e. the most "
             "any rule could gain on these trials. `rank corr` = Spearman correlation of the "
             "trials' validation and test minority accuracies.", "",
             "| dataset | seed | trials | SE (binomial) | default min / maj | "
             + " | ".join(f"{r}: pick, Δmin / Δmaj" for r in RULES)
             + " | best on test: Δmin / Δmaj | rank corr |",
             "|---|---|---|---|---|" + "---|" * len(RULES) + "---|---|"]
    for r in results:
        sel = r.get("selection")
        if not sel:
            continue
        d = sel["default"]["test"]
        cells = [f"{p['trial']}, {100 * p['d_minority']:+.1f} / {100 * p['d_majority']:+.1f}"
                 for p in (sel["picks"][rule] for rule in RULES)]
        lines.append(f"| {r['dataset']} | {r['seed']} | {sel['trials']} | "
                     f"{100 * sel['minority_se']:.1f} ({100 * sel['minority_binomial_se']:.1f}) | "
                     f"{100 * d['minority']:.1f} / {100 * d['majority']:.1f} | " + " | ".join(cells)
                     + f" | {bound_cell(sel)} | {sel.get('val_test_rank_corr', math.nan):+.2f} |")
    lines += ["", "| rule | runs where the pick beats the default on test minority-type | "
              "mean Δmin | mean Δmaj |", "|---|---|---|---|"]
    for rule in RULES:
        picks = [r["selection"]["picks"][rule] for r in results if r.get("selection")]
        if picks:
            wins = sum(p["d_minority"] > 0 for p in picks)
            lines.append(f"| {rule} | {wins} of {len(picks)} | "
                         f"{100 * np.mean([p['d_minority'] for p in picks]):+.2f} | "
                         f"{100 * np.mean([p['d_majority'] for p in picks]):+.2f} |")
    bounds = [r["selection"]["test_best"] for r in results
              if r.get("selection") and r["selection"].get("test_best")]
    if bounds:
        lines.append(f"| best on test (a bound, not a rule) | "
                     f"{sum(b['d_minority'] > 0 for b in bounds)} of {len(bounds)} | "
                     f"{100 * np.mean([b['d_minority'] for b in bounds]):+.2f} | "
                     f"{100 * np.mean([b['d_majority'] for b in bounds]):+.2f} |")
    groups = [r for r in results if r.get("groups")]
    if groups:
        lines += ["", "Lowest group: users, purity (share minority-type), recall (share of the "
                  "minority-type users it holds).", "",
                  "| dataset | seed | minority-type users | support | mixture, sizes=quantile | "
                  "mixture, sizes=estimate (π_min) |", "|---|---|---|---|---|---|"]
        for r in groups:
            g = r["groups"]

            def cell(v):
                return f"{v['users']}, {100 * v['purity']:.1f}%, {100 * v['recall']:.0f}%"

            mixing = g["estimate"].get("mixing")
            pi = f" ({mixing[0]:.3f})" if mixing else ""
            lines.append(f"| {r['dataset']} | {r['seed']} | {g['minority_type_users']} | "
                         f"{cell(g['support'])} | {cell(g['quantile'])} | {cell(g['estimate'])}{pi} |")
    fitted = [r for r in results if r.get("baselines")]
    if fitted:
        lines += ["", "Baselines at their configured settings (no search), fitted in-process: "
                  "test minority-type / majority-type % (validation minority / majority groups %).",
                  "", "| dataset | seed | " + " | ".join(BASELINES) + " |",
                  "|---|---|" + "---|" * len(BASELINES)]
        for r in fitted:
            b = r["baselines"]
            lines.append(f"| {r['dataset']} | {r['seed']} | " + " | ".join(
                f"{100 * b[m]['test']['minority']:.1f} / {100 * b[m]['test']['majority']:.1f} "
                f"({100 * b[m]['val'][1]:.1f} / {100 * b[m]['val'][0]:.1f})" for m in BASELINES) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from benchmarks.quality import DATASETS, DEFAULT_OUT

    parser = argparse.ArgumentParser(prog="python -m benchmarks.selection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["builtin-80"], choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--trials", type=int, default=48, help="the quality runs' --trials")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the quality runs' --out")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the quality runs' --set overrides")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["rules", "group-sizes", "baselines"])
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    results = []
    for dataset in args.datasets:
        for seed in args.seeds:
            ctx, stale = read_run(dataset, seed, args.trials, out, args.set)
            cfg = ctx.cfg
            result = {"dataset": dataset, "seed": seed, "stale_stages": stale}
            if "rules" not in args.skip:
                result["selection"] = evaluate_rules(cfg, ctx.run_dir)
            if "group-sizes" not in args.skip:
                result["groups"] = group_purity(cfg, ctx)
            if "baselines" not in args.skip:
                result["baselines"] = baselines_at_default(cfg, ctx.run_dir)
            results.append(result)
            print(json.dumps(result, default=str), flush=True)
            (out / f"selection-{dataset}-s{seed}.json").write_text(json.dumps(result, default=str))
    command = "python -m benchmarks.selection " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(results, command.strip())
    (out / "selection.md").write_text(text)
    (out / "selection.json").write_text(json.dumps(results, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
