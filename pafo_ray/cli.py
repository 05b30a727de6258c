"""``pafo-ray``: the whole pipeline, any single stage, or the synthetic data.

    pafo-ray run [--config my.yaml] [section.key=value ...]
    pafo-ray prepare|embed|teachers|margins|baselines|tune|distill|evaluate [...]
    pafo-ray generate OUT_DIR [generator overrides ...]
    pafo-ray show-config [--config my.yaml] [overrides]
    pafo-ray serve [--config my.yaml] [serve.model=DIR serve.port=8000 ...]
    pafo-ray score MODEL INPUT OUTPUT [--cold-start mean|population] [...]

Nothing heavy is imported until a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

STAGE_HELP = {
    "prepare": "Ray Data: validate rows, support rates, groups, splits",
    "embed": "Ray Data actor pool: embed every distinct text once (frozen mode)",
    "regularize": "weight decay and user shrinkage chosen on vanilla's validation (frozen)",
    "groups": "the users' final groups (support or mixture) and the rows partitioned by them",
    "teachers": "Ray Train: one teacher per group, concurrently, plus vanilla",
    "margins": "Ray Data batch inference: each teacher's margins on every row",
    "baselines": "Ray Train: reweight, groupdro, fairness_penalty",
    "tune": "Ray Tune + Optuna: Pareto search of the distillation weights",
    "distill": "Ray Train: the unified student (no group input)",
    "evaluate": "metrics, report.md, metrics.json and plots for every method",
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pafo-ray", description="Pareto-fair personalized reward models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", help="YAML config (sections as in pafo_ray/config.py)")
        p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=5")
        p.add_argument("--force", action="store_true", help="rerun even if output is complete")
        return p

    add("run", "the whole pipeline (default: built-in synthetic data, local Ray)")
    for name, help in STAGE_HELP.items():
        add(name, help)
    gen = sub.add_parser("generate", help="write the built-in synthetic dataset as parquet")
    gen.add_argument("out_dir")
    gen.add_argument("overrides", nargs="*", help="generator fields, e.g. num_users=1000")
    add_use_commands(sub)
    show = sub.add_parser("show-config", help="print the bound config as YAML")
    show.add_argument("--config")
    show.add_argument("overrides", nargs="*")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from pafo_ray.config import ConfigError, load_config

    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "score":
            return _score(args)
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"pafo-ray: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "show-config":
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if args.command == "serve":
        return _serve(cfg)
    if getattr(args, "force", False):
        cfg.run.force = True
    return _run(cfg, args.command)


def _run(cfg, command: str) -> int:
    from pafo_ray.data.sources import DataValidationError
    from pafo_ray.ray_session import init_ray
    from pafo_ray.stages.base import StageContext, apply_upstream, run_pipeline, run_stage

    init_ray(cfg.run.ray)
    ctx = StageContext.create(cfg)
    try:
        if command == "run":
            results = run_pipeline(ctx, cfg.run.stages or None)
            report = results.get("evaluate", {}).get("report")
            if report:
                print(f"report: {report}")
        else:
            apply_upstream(ctx)
            run_stage(ctx, command, force=cfg.run.force)
    except (DataValidationError, RuntimeError, ValueError) as exc:
        print(f"pafo-ray {command}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_use_commands(sub) -> None:
    """``serve`` and ``score``: the trained student in use (pafo_ray.serve, pafo_ray.score)."""
    serve = sub.add_parser("serve", help="Ray Serve: the student behind HTTP (POST /score, "
                           "/get_reward); settings in the serve section")
    serve.add_argument("--config", help="YAML config (sections as in pafo_ray/config.py)")
    serve.add_argument("overrides", nargs="*", help="e.g. serve.model=DIR serve.num_replicas=2")
    score = sub.add_parser("score", help="Ray Data batch inference: a saved student scores a "
                           "parquet/jsonl file of (user_id, prompt, response) or pairs")
    score.add_argument("model", help="student folder, s3:// or gs:// URI, or hub id")
    score.add_argument("input", help="parquet file/folder or .jsonl; local or a URI")
    score.add_argument("output", help="parquet folder to write")
    score.add_argument("--cold-start", default="mean", choices=["mean", "population"],
                       help="unknown users: the mean user embedding, or the population (offset 0)")
    score.add_argument("--batch-size", type=int, default=64, help="rows per scoring batch")
    score.add_argument("--num-actors", type=int, default=1, help="scoring actors (capped by CPUs)")
    score.add_argument("--num-gpus-per-actor", type=float, default=0.0, help="0: CPU")
    score.add_argument("--ray-address", default=None, help="join this Ray (default: local)")


def _serve(cfg) -> int:
    from pafo_ray import serve

    serve.run(cfg, blocking=True)
    return 0


def _score(args) -> int:
    from pafo_ray.config import RayConfig
    from pafo_ray.ray_session import init_ray
    from pafo_ray.score import ScoreInputError, score_file

    try:
        init_ray(RayConfig(address=args.ray_address, progress_bars=False))
        out = score_file(args.model, args.input, args.output, cold_start=args.cold_start,
                         batch_size=args.batch_size, num_actors=args.num_actors,
                         num_gpus_per_actor=args.num_gpus_per_actor)
    except (ScoreInputError, FileNotFoundError) as exc:
        print(f"pafo-ray score: {exc}", file=sys.stderr)
        return 1
    print(f"scored {out['files']} file(s) ({out['mode']}) into {out['output']}")
    return 0


def _generate(args) -> int:
    from pafo_ray.config import GeneratorConfig, _bind, parse_override
    from pafo_ray.data.generate import write_generated

    values = dict(parse_override(text) for text in args.overrides)
    cfg = _bind(GeneratorConfig, values, "generator")
    files = write_generated(cfg, args.out_dir)
    print(f"wrote {len(files)} file(s) to {args.out_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
