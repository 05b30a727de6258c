"""Run benchmark suites and print one table of their headline figures.

    python -m benchmarks [--smoke] [--timeout S] [suite ...]

Suites: prepare, train, embed, tune, quality, scaling, coldstart (``benchmarks/<suite>.py``, each with
``main(argv)``) and demo (the wall time of ``pafo-ray run`` on the built-in default
config). No suite named: all of them. Each suite runs in its own process (its own local
Ray, its own memory figures), imported only there; a suite module that is missing is
reported, not fatal to the others. ``--smoke`` passes ``--smoke`` on: tiny sizes for CI.
Exit 0 only when every suite exited 0 and printed something.

A suite adds rows to the final table with :func:`benchmarks.common.record`; a suite that
records nothing still gets a row saying it ran.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.common import FIGURES_ENV, Timer, fmt, load_average, quiet_env, record, table

SUITES = ("prepare", "train", "embed", "tune", "quality", "scaling", "coldstart", "demo")
DEMO_SMOKE = {"data.generator.num_users": 60, "data.generator.num_prompts": 40,
              "data.generator.raters_train": 3, "data.generator.raters_eval": 5,
              "train.epochs": 3, "train.num_workers": 0, "teachers.min_rows": 10,
              "tune.num_samples": 0, "evaluate.bootstrap": 50, "model.max_length": 64}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="*", metavar="suite", help=f"any of {', '.join(SUITES)}")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per suite before it is stopped (default: none; smoke 900)")
    p.add_argument("--storage", default="./pafo_runs", help="demo: run.storage_path")
    p.add_argument("--fresh", action="store_true",
                   help="demo: median of 3 fresh runs and the in-process ratio (benchmarks/demo.py)")
    p.add_argument("--run-suite", help=argparse.SUPPRESS)  # the child process's entry
    return p


def demo_main(argv) -> int:
    """Wall time of ``pafo-ray run`` (all stages, forced) on the built-in default; with
    ``--fresh``, :mod:`benchmarks.demo` (median of 3 fresh runs and the in-process ratio)."""
    smoke = "--smoke" in argv
    if "--fresh" in argv:
        from benchmarks import demo

        return demo.main(["--smoke"] if smoke else [])
    storage = os.path.abspath(next((a.split("=", 1)[1] for a in argv
                                    if a.startswith("--storage=")), "./pafo_runs"))
    values = {"run.storage_path": storage, "run.run_name": "bench-demo-smoke" if smoke
              else "bench-demo", "run.ray.progress_bars": False, **(DEMO_SMOKE if smoke else {})}
    command = [sys.executable, "-m", "pafo_ray.cli", "run", "--force",
               *(f"{k}={v}" for k, v in values.items())]
    print(f"demo: {' '.join(command[1:])}  ({load_average()})", flush=True)
    with Timer() as t:
        code = subprocess.call(command)
    print(f"demo: pafo-ray run exited {code} after {t.seconds:.1f} s ({load_average()})",
          flush=True)
    if code == 0:
        config = "tiny smoke config" if smoke else "built-in default config"
        record("demo", f"pafo-ray run wall s, all stages ({config})", t.seconds, unit="s")
    return code


def run_suite_here(name: str, argv: list) -> int:
    """In the child: import the suite lazily and call its ``main(argv)``."""
    if name == "demo":
        return demo_main(argv)
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{name}":
            raise
        print(f"benchmarks: suite {name!r} has no module (benchmarks/{name}.py is missing)",
              file=sys.stderr)
        return 3
    outcome = module.main(argv)
    if isinstance(outcome, list):  # a suite may return its figures instead of recording them
        for row in outcome:
            record(**{"suite": name, **row})
        return 0
    return int(outcome or 0)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a timed-out suite: its own process group (it was started in a new session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def run_suite(name: str, args, figures: str) -> dict:
    """Run one suite in a child process, echoing its output; -> status row."""
    if name != "demo" and importlib.util.find_spec(f"benchmarks.{name}") is None:
        message = f"benchmarks/{name}.py is missing"
        print(f"== {name}: skipped, {message}", flush=True)
        return {"suite": name, "ok": False, "status": message, "seconds": 0.0}
    argv = (["--smoke"] if args.smoke else []) + (
        [f"--storage={args.storage}"] + (["--fresh"] if args.fresh else []) if name == "demo"
        else [])
    command = [sys.executable, "-m", "benchmarks", "--run-suite", name, "--", *argv]
    timeout = args.timeout or (900.0 if args.smoke else None)
    print(f"== {name}: {' '.join(command[1:])}  ({load_average()})", flush=True)
    env = {**os.environ, FIGURES_ENV: figures}
    lines, began = 0, time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True, bufsize=1)
    timer = None
    if timeout:
        import threading

        timer = threading.Timer(timeout, _stop, args=(proc,))
        timer.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines += bool(line.strip())
        code = proc.wait()
    except BaseException:  # interrupted or terminated: take the suite (and its Ray) down too
        _stop(proc)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    seconds = time.perf_counter() - began
    timed_out = timeout is not None and seconds >= timeout
    ok = code == 0 and lines > 0
    status = ("ok" if ok else f"timed out after {timeout:.0f} s" if timed_out
              else f"exit {code}" if code else "printed nothing")
    print(f"== {name}: {status} in {seconds:.1f} s", flush=True)
    return {"suite": name, "ok": ok, "status": status, "seconds": seconds}


def summary_table(statuses: list, figures: list) -> str:
    rows = []
    for status in statuses:
        mine = [f for f in figures if f["suite"] == status["suite"]]
        for f in mine:
            unit = f" {f['unit']}" if f.get("unit") else ""
            rows.append([f["suite"], f["figure"], fmt(f["value"]) + unit,
                         fmt(f.get("baseline")) + (unit if f.get("baseline") is not None else ""),
                         fmt(f.get("ratio"))])
        note = "" if mine else " (no figures recorded)"
        rows.append([status["suite"], f"suite {status['status']}{note}, wall s",
                     fmt(status["seconds"], 1), "—", "—"])
    return table(["suite", "figure", "value", "baseline", "ratio"], rows)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--run-suite" in argv:  # child: `--run-suite NAME -- suite args`
        split = argv.index("--") if "--" in argv else len(argv)
        name = argv[argv.index("--run-suite") + 1]
        return run_suite_here(name, argv[split + 1:])
    args = make_parser().parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        print(f"benchmarks: unknown suite(s) {unknown}; suites are {', '.join(SUITES)}",
              file=sys.stderr)
        return 2
    quiet_env()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a suite running is stopped
    suites = args.suites or list(SUITES)
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", prefix="pafo-bench-") as fh:
        statuses = [run_suite(name, args, fh.name) for name in suites]
        figures = [json.loads(line) for line in fh.read().splitlines() if line.strip()]
    print(f"\n## Benchmarks{' (smoke)' if args.smoke else ''}: {', '.join(suites)}\n")
    print(summary_table(statuses, figures))
    print(f"\n{load_average()}")
    failed = [s["suite"] for s in statuses if not s["ok"]]
    if failed:
        print(f"\nbenchmarks: failed or missing: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
