"""``pafo-ray``: the whole pipeline, any single stage, or the synthetic data.

    pafo-ray run [--config my.yaml] [section.key=value ...]
    pafo-ray input|prepare|embed|...|evaluate [...]   (missing upstream stages run first)
    pafo-ray generate OUT_DIR [generator overrides ...]
    pafo-ray show-config [--config my.yaml] [overrides]

Nothing heavy is imported until a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

STAGE_HELP = {
    "input": "record the input files, or write the built-in / DSP / PersonalLLM rows",
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
        p.add_argument("-v", "--verbose", action="store_true", help="show Ray's, Ray Data's, "
                       "Train's and Tune's output too (always in <run>/logs/pafo.log)")
        return p

    add("run", "the whole pipeline (default: built-in synthetic data, local Ray)")
    for name, help in STAGE_HELP.items():
        add(name, help)
    gen = sub.add_parser("generate", help="write the built-in synthetic dataset as parquet")
    gen.add_argument("out_dir")
    gen.add_argument("overrides", nargs="*", help="generator fields, e.g. num_users=1000")
    show = sub.add_parser("show-config", help="print the bound config as YAML, each key "
                          "with its help as a comment")
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
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"pafo-ray: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "show-config":
        from pafo_ray.config_checks import annotated_yaml

        print(annotated_yaml(cfg), end="")
        return 0
    if getattr(args, "force", False):
        cfg.run.force = True
    from pafo_ray import console

    log = console.log_path(cfg.run.storage_path, cfg.run.run_name)
    # From the shell (argv None) 1 and 2 stay on the log until exit; a caller's are restored.
    with console.quiet(log, verbose=args.verbose, restore=argv is not None):
        console.say(f"pafo-ray {args.command}: run {cfg.run.run_name}, log {log}")
        code, error, last = _run(cfg, args.command)
        if error:
            console.say(f"pafo-ray {args.command}: {error}\n(details: {log})")
        for line in last:
            console.say(line)
    return code


def _run(cfg, command: str) -> tuple:
    """(exit code, error message or None, the lines to print last)."""
    import ray

    from pafo_ray.console import headline_lines
    from pafo_ray.data.sources import DataValidationError
    from pafo_ray.ray_session import init_ray
    from pafo_ray.stages.base import StageContext, run_pipeline, run_with_upstream

    started = not ray.is_initialized()
    init_ray(cfg.run.ray)
    ctx = StageContext.create(cfg)
    last: list = []
    try:
        if command == "run":
            results = run_pipeline(ctx, cfg.run.stages or None)
            evaluate = results.get("evaluate", {})
            if evaluate.get("report"):
                last = headline_lines(evaluate) + [f"report: {evaluate['report']}"]
        else:
            run_with_upstream(ctx, command, force=cfg.run.force)
    except (DataValidationError, RuntimeError, ValueError) as exc:
        return 1, str(exc), last
    finally:
        if started:  # inside the redirection: Ray's shutdown messages go to the log too
            ray.shutdown()
    return 0, None, last


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
