"""``pafo-ray``: the whole pipeline, any single stage, or the synthetic data.

    pafo-ray run [--config my.yaml] [section.key=value ...]
    pafo-ray <stage> [...]      (one stage, its missing upstream stages first;
                                 pafo_ray/stages/registry.py lists them, in order)
    pafo-ray generate OUT_DIR [generator overrides ...]
    pafo-ray show-config [--config my.yaml] [overrides]
    pafo-ray plan [--config my.yaml] [overrides]   # resources per stage vs the cluster
    pafo-ray serve [--config my.yaml] [serve.model=DIR serve.port=8000 ...]
    pafo-ray score MODEL INPUT OUTPUT [--cold-start mean|population] [...]
    pafo-ray adapt MODEL ANSWERS OUTPUT [--user ID] [--vectors-only] [...]   # new users

Nothing heavy is imported until a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

# Commands that are not pipeline stages (every other subcommand is one, from the registry).
TOOLS = ("run", "generate", "plan", "show-config", "serve", "score", "adapt")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pafo-ray", description="Pareto-fair personalized reward models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", help="YAML config (sections as in pafo_ray/config.py)")
        p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=5")
        p.add_argument("--force", action="store_true", help="rerun even if output is complete "
                       "(the stages that read this output rerun too)")
        p.add_argument("--wait", type=float, metavar="SECONDS", default=None,
                       help="another run holds this run directory: wait up to SECONDS for it "
                       "(default run.lock_wait_s=0: fail at once, naming the holder)")
        p.add_argument("-v", "--verbose", action="store_true", help="show Ray's, Ray Data's, "
                       "Train's and Tune's output too (always in <run>/logs/pafo.log)")
        return p

    from pafo_ray.stages.registry import STAGES

    add("run", "the whole pipeline (default: built-in synthetic data, local Ray)")
    for stage in STAGES:
        add(stage.name, stage.help)
    gen = sub.add_parser("generate", help="write the built-in synthetic dataset as parquet")
    gen.add_argument("out_dir")
    gen.add_argument("overrides", nargs="*", help="generator fields, e.g. num_users=1000")
    plan = sub.add_parser("plan", help="what each stage needs (CPUs, GPUs, memory) against "
                          "the cluster, and what runs at once")
    plan.add_argument("--config")
    plan.add_argument("overrides", nargs="*")
    add_use_commands(sub)
    show = sub.add_parser("show-config", help="print the bound config as YAML, each key "
                          "with its help as a comment")
    show.add_argument("--config")
    show.add_argument("overrides", nargs="*")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from pafo_ray.config import ConfigError, load_config
    from pafo_ray.redact import redact_text

    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "score":
            return _score(args)
        if args.command == "adapt":
            return _adapt(args)
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"pafo-ray: config error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    if args.command == "show-config":
        from pafo_ray.config_checks import annotated_yaml

        print(redact_text(annotated_yaml(cfg)), end="")
        return 0
    if args.command == "plan":
        return _plan(cfg)
    if args.command == "serve":
        return _serve(cfg)
    if getattr(args, "force", False):
        cfg.run.force = True
    if getattr(args, "wait", None) is not None:
        cfg.run.lock_wait_s = args.wait
    from pafo_ray import console

    log = console.log_path(cfg.run.storage_path, cfg.run.run_name)
    # From the shell (argv None) 1 and 2 stay on the log until exit; a caller's are restored.
    with console.quiet(log, verbose=args.verbose, restore=argv is not None,
                       run=cfg.run.run_name):
        console.say(f"pafo-ray {args.command}: run {cfg.run.run_name}, log {log}")
        code, error, last = _run(cfg, args.command)
        if error:  # on the person's stderr, inside the redirection (see console.quiet)
            console.say(f"pafo-ray {args.command}: {redact_text(error)}\n(details: {log})",
                        err=True)
        for line in last:
            console.say(redact_text(line))
    return code


def _run(cfg, command: str) -> tuple:
    """(exit code, error message or None, the lines to print last)."""
    import ray

    from pafo_ray.console import headline_lines
    from pafo_ray.data.sources import DataValidationError
    from pafo_ray.ray_session import init_ray
    from pafo_ray.redact import install_log_filter
    from pafo_ray.runlock import RunLocked, hold
    from pafo_ray.stages.base import StageContext, run_pipeline, run_with_upstream

    install_log_filter()
    ctx = StageContext.create(cfg)
    started = not ray.is_initialized()
    last: list = []
    try:
        # One writer per run directory, taken before Ray starts so a second run fails fast.
        with hold(ctx.run_dir, cfg.run, f"pafo-ray {command}"):
            init_ray(cfg.run.ray)
            install_log_filter("ray")  # Ray's own loggers have their own handlers
            _preflight(cfg, command)
            if command == "run":
                results = run_pipeline(ctx, cfg.run.stages or None)
                evaluate = results.get("evaluate", {})
                if evaluate.get("report"):
                    last = headline_lines(evaluate) + [f"report: {evaluate['report']}"]
            else:
                run_with_upstream(ctx, command, force=cfg.run.force)
    except RunLocked as exc:
        return 3, str(exc), last
    except (DataValidationError, RuntimeError, ValueError) as exc:
        return 1, str(exc), last
    except Exception as exc:  # noqa: BLE001 - said to the person; the traceback goes to the log
        import traceback

        os.write(2, traceback.format_exc().encode())  # descriptor 2: the log (console.quiet)
        return 1, f"{type(exc).__name__}: {exc}", last
    finally:
        if started and ray.is_initialized():  # inside the redirection: shutdown lines go to the log
            ray.shutdown()
    return 0, None, last


def _stages(cfg, command: str) -> list:
    from pafo_ray.stages.base import ORDER, is_active

    if command not in ("run", "plan"):
        return [command]
    return cfg.run.stages or [s for s in ORDER if is_active(cfg, s)]


def _preflight(cfg, command: str) -> None:
    """Fail before any stage when one of them asks for what the cluster can never give."""
    from pafo_ray.sizing import cluster_capacity, preflight

    preflight(cfg, _stages(cfg, command), cluster_capacity(cfg.run.ray))


def _plan(cfg) -> int:
    """Per stage: what the config asks for against the connected cluster (``RAY_ADDRESS`` or
    ``run.ray.address``), or against the local Ray ``run`` would start."""
    import os

    from pafo_ray.sizing import cluster_capacity, format_plan, local_capacity

    address = cfg.run.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        ray.init(address=address, log_to_driver=False)
        capacity, where = cluster_capacity(cfg.run.ray), f"connected: {address}"
    else:
        capacity, where = local_capacity(cfg.run.ray), "the local Ray `pafo-ray run` would start"
    text = format_plan(cfg, _stages(cfg, "plan"), capacity, where, local=not address)
    print(text)
    return 1 if "\nerror: " in text else 0


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
    adapt = sub.add_parser("adapt", help="fair cold start: add new users to a saved student "
                           "from their answered comparisons (pafo_ray.adapt)")
    adapt.add_argument("model", help="student folder, s3:// or gs:// URI, or hub id")
    adapt.add_argument("answers", help="parquet/jsonl with prompt, chosen, rejected "
                       "(+ user_id, or --user)")
    adapt.add_argument("output", help="student folder to write (or a .json with --vectors-only)")
    adapt.add_argument("--user", default=None, help="the new user's id when the file has no "
                       "user_id column")
    adapt.add_argument("--place", default="group", choices=["group", "population", "mean"],
                       help="start: the group posterior's group (fair), offset 0, or the mean user")
    adapt.add_argument("--prior", default="share", choices=["share", "flat"],
                       help="placement prior: each group's share of the trained users, or flat "
                       "(1/G: a small group's size does not count against its members; on "
                       "builtin-80, 5 seeds pooled, it cut the type gap after 5 answers from "
                       "6.6 to 1.7 points at 1.5 points to the majority: BENCHMARKS.md)")
    adapt.add_argument("--shrinkage", type=float, default=None,
                       help="pull of the offset towards its start (default: the cold-start "
                       "default, pafo_ray.coldstart.DEFAULT_SHRINKAGE)")
    adapt.add_argument("--vectors-only", action="store_true", help="write the users' vectors, "
                       "groups and posteriors as JSON instead of a student folder")


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


def _adapt(args) -> int:
    from pafo_ray.adapt import AdaptInputError, adapt
    from pafo_ray.coldstart import DEFAULT_SHRINKAGE

    shrinkage = DEFAULT_SHRINKAGE if args.shrinkage is None else args.shrinkage
    try:
        summary = adapt(args.model, args.answers, args.output, user=args.user, place=args.place,
                        shrinkage=shrinkage, prior=args.prior, vectors_only=args.vectors_only)
    except (AdaptInputError, FileNotFoundError, ValueError) as exc:
        print(f"pafo-ray adapt: {exc}", file=sys.stderr)
        return 1
    for uid, row in summary.items():
        print(f"{uid}: {row['answers']} answers, group {row['group']}")
    print(f"wrote {args.output}")
    return 0


def _generate(args) -> int:
    from pafo_ray.config import generator_config
    from pafo_ray.data.generate import write_generated

    cfg = generator_config(args.overrides)
    files = write_generated(cfg, args.out_dir)
    print(f"wrote {len(files)} file(s) to {args.out_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
