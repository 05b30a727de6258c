"""Does the multi-objective Optuna search find a better Pareto front than random search?

    python -m benchmarks.tune [--trials N] [--seeds 0 1 2] [--regime builtin-80] [--smoke]
                              [section.key=value ...]

Runs the pipeline up to ``margins``/``baselines`` once into a bench run directory (stages
already complete there are skipped), loads the student data once, then runs
:func:`tuning.search.run_search` with the TPE and NSGA-II samplers and with Optuna's
RandomSampler — the same space, budget (N trials), max_concurrent_trials and sampler seeds
— and prints the hypervolume of each front after N trials, the median over seeds, and the
ratio against random search. Hypervolume is measured from two reference points: chance
(0.5, 0.5), and vanilla's validation point (the area of students that beat vanilla for
both groups). An experiment already present under ``_ray/bench-tune`` is restored, not rerun.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time

SAMPLERS = ("tpe", "nsga2", "random")
CHANCE = (0.5, 0.5)

# Tiny sizes for CI: a few users and prompts, 3 epochs, in-process trainers.
SMOKE = {
    "data.generator.num_users": 60, "data.generator.num_prompts": 40,
    "data.generator.raters_train": 3, "data.generator.raters_eval": 5,
    "train.epochs": 3, "train.num_workers": 0, "train.batch_size": 128,
    "teachers.min_rows": 10, "model.max_length": 64, "run.ray.progress_bars": False,
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=None, help="trials per search (24; smoke 4)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="sampler seeds (0 1 2; smoke 0)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--regime", default="default",
                        choices=["default", "builtin-60", "builtin-80", "builtin-95", "dsp"],
                        help="data: the built-in default, or one of the quality suite's biased "
                             "regimes with its settings (frozen minilm, 30 epochs, both inits)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--storage", default="./pafo_runs", help="run.storage_path of the bench run")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return parser


def build_config(args):
    from benchmarks.common import as_overrides
    from pafo_ray.config import load_config

    values = {"run.storage_path": args.storage,
              "run.run_name": "bench-tune-smoke" if args.smoke else "bench-tune"}
    if args.regime != "default":
        from benchmarks.quality import COMMON, DATASETS

        values.update({**DATASETS[args.regime], **COMMON,
                       "run.run_name": f"bench-tune-{args.regime}"})
    if args.smoke:
        values.update(SMOKE)
    return load_config(None, as_overrides(values) + list(args.overrides))


def prepare_inputs(cfg):
    """Stages input..baselines (skipped when complete) -> (StageContext, validation points).

    ``ctx.cfg`` then carries what upstream stages chose (e.g. regularize's weight decay).
    """
    from pafo_ray.stages.base import ORDER, StageContext, is_active, run_pipeline
    from pafo_ray.stages.tune import validation_points

    ctx = StageContext.create(cfg)
    upstream = [s for s in ORDER[:ORDER.index("tune")] if is_active(cfg, s)]
    run_pipeline(ctx, upstream)
    return ctx, validation_points(ctx)


def front_scores(trials, vanilla: tuple) -> dict:
    from tuning.pareto import OBJECTIVES, hypervolume_2d, pareto_front

    majority, minority = OBJECTIVES
    front = pareto_front(trials)
    fair = front[front[majority] >= vanilla[0]]
    return {"hv_chance": hypervolume_2d(front, reference=CHANCE),
            "hv_vanilla": hypervolume_2d(front, reference=vanilla),
            "best_minority": float(fair[minority].max()) if len(fair) else math.nan,
            "front": len(front), "errors": int((trials["status"] == "ERROR").sum())}


def _median(values: list) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if math.isfinite(a) and math.isfinite(b) and b > 0 else "n/a"


def render(rows: dict, trials: int, seeds: list, vanilla: tuple) -> str:
    """Markdown table: per sampler the medians over seeds and the ratio to random."""
    base = {key: _median([r[key] for r in rows.get("random", [])])
            for key in ("hv_chance", "hv_vanilla")}
    lines = [f"Pareto front after {trials} trials, median over seeds {seeds}; vanilla "
             f"validation point (majority, minority) = ({vanilla[0]:.4f}, {vanilla[1]:.4f})",
             "",
             "| sampler | HV ref (0.5,0.5) | per seed | ratio vs random | HV ref vanilla | "
             "ratio vs random | best minority (maj ≥ vanilla) | front size | s / search |",
             "|---|---|---|---|---|---|---|---|---|"]
    for sampler, results in rows.items():
        hv = _median([r["hv_chance"] for r in results])
        hv_v = _median([r["hv_vanilla"] for r in results])
        per_seed = " ".join(f"{r['hv_chance']:.4f}" for r in results)
        lines.append(
            f"| {sampler} | {hv:.4f} | {per_seed} | {_ratio(hv, base['hv_chance'])} | "
            f"{hv_v:.5f} | {_ratio(hv_v, base['hv_vanilla'])} | "
            f"{_median([r['best_minority'] for r in results]):.4f} | "
            f"{_median([r['front'] for r in results]):.0f} | "
            f"{_median([r['seconds'] for r in results]):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.smoke:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    trials = args.trials or (4 if args.smoke else 24)
    seeds = args.seeds if args.seeds is not None else ([0] if args.smoke else [0, 1, 2])

    from pafo_ray.ray_session import init_ray
    from pafo_ray.stages.base import stage_hash
    from pafo_ray.train.inmemory import load_student_data
    from tuning.search import run_search

    cfg = build_config(args)
    init_ray(cfg.run.ray)
    began = time.time()
    ctx, points = prepare_inputs(cfg)
    vanilla = points["vanilla"]
    if not all(map(math.isfinite, vanilla)):
        print(f"vanilla has no finite validation point {vanilla}: cannot benchmark", file=sys.stderr)
        return 1
    print(f"inputs ready in {time.time() - began:.1f} s at {ctx.run_dir.root}", flush=True)
    cfg = ctx.cfg
    data = load_student_data(cfg)
    digest = stage_hash(ctx, "tune")
    rows: dict = {}
    for sampler in args.samplers:
        for seed in seeds:
            outcome = run_search(cfg, data, storage_path=ctx.run_dir.uri("_ray", "bench-tune"),
                                 name=f"{sampler}-seed{seed}-n{trials}-{digest}",
                                 sampler=sampler, num_samples=trials, seed=seed)
            scores = {**front_scores(outcome.trials, vanilla), "seconds": outcome.seconds}
            rows.setdefault(sampler, []).append(scores)
            print(f"  {sampler} seed {seed}: HV {scores['hv_chance']:.4f} (vanilla ref "
                  f"{scores['hv_vanilla']:.5f}), front {scores['front']}, errors "
                  f"{scores['errors']}, {outcome.seconds:.1f} s"
                  f"{' (restored)' if outcome.resumed else ''}", flush=True)
    print()
    print(render(rows, trials, seeds, vanilla))
    return 0


if __name__ == "__main__":
    sys.exit(main())
