"""What every benchmark suite shares: figures for the summary table, timing, memory, Ray.

A suite calls :func:`record` for each headline figure; ``python -m benchmarks`` collects
them (through the JSON-lines file named by ``$PAFO_BENCH_FIGURES``) into one table.
:class:`TreeUsage` samples the summed PSS, and counts the CPU seconds, of a process tree
(the driver and every Ray process it started: GCS, raylet, workers).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
# Real data beside the checkout (never copied into it): ../shared/data.
DSP = REPO.parent / "shared" / "data" / "dsp" / "dsp_dev.json"

FIGURES_ENV = "PAFO_BENCH_FIGURES"
GIB = 1024 ** 3


def record(suite: str, figure: str, value: float, baseline: Optional[float] = None,
           ratio: Optional[float] = None, unit: str = "") -> dict:
    """One row of the summary table: ``value`` against ``baseline`` (``ratio`` as the suite
    defines it, stated in ``figure``). Appended to ``$PAFO_BENCH_FIGURES`` when set."""
    row = {"suite": suite, "figure": figure, "value": value, "baseline": baseline,
           "ratio": ratio, "unit": unit}
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


def as_overrides(values: dict) -> list:
    """``{"section.key": value}`` -> ``["section.key=value", ...]`` as the CLI takes them: strings
    as they are, everything else (None, lists, numbers, booleans) as JSON."""
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]


def median(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(headers: list, rows: list) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def quiet_env() -> None:
    """Environment every suite runs under (CI sets these too)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _psutil():
    import importlib

    try:
        return importlib.import_module("psutil")
    except ImportError:  # Ray ships a copy: importing ray puts it on sys.path
        importlib.import_module("ray")
        return importlib.import_module("psutil")


def _tree(root_pid: int) -> list:
    psutil = _psutil()
    try:
        root = psutil.Process(root_pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def tree_memory(root_pid: int, procs: list | None = None) -> int:
    """Summed PSS (RSS where PSS cannot be read) of ``root_pid`` and all its descendants
    (``procs``: the tree already listed by ``_tree``)."""
    psutil, total = _psutil(), 0
    for proc in _tree(root_pid) if procs is None else procs:
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", 0) or info.rss
        except psutil.Error:
            continue
    return total


def tree_cpu_by_pid(root_pid: int, procs: list | None = None) -> dict:
    """``{(pid, create_time): CPU seconds}`` of each process of the tree (own time only)."""
    psutil, out = _psutil(), {}
    for proc in _tree(root_pid) if procs is None else procs:
        try:
            t = proc.cpu_times()
            out[(proc.pid, proc.create_time())] = t.user + t.system
        except psutil.Error:
            continue
    return out


def cpu_used(start: dict, last: dict) -> float:
    """CPU seconds the tree used between two :func:`tree_cpu_by_pid` views: each process's
    last seen time less its time at the start (0 for one started since). A process that
    exits between samples keeps its last sample instead of dropping out of a plain sum of
    the living (which made the total negative when Ray workers exited)."""
    return sum(max(0.0, cpu - start.get(key, 0.0)) for key, cpu in last.items())


class TreeUsage:
    """``with TreeUsage() as use: ...`` -> peak and starting PSS sum (bytes) and CPU seconds
    of this process and every process it started (a local Ray: GCS, raylet, workers); a
    process that exits counts up to its last sample (:func:`cpu_used`).

    CPU seconds hardly move with the machine's load, unlike wall time. Reading PSS walks each
    process's page tables (~3-5 ms a Ray process here), so the sampler waits ``interval`` or
    ten times its last sample's cost, whichever is longer: at most a tenth of a core.
    """

    def __init__(self, root_pid: Optional[int] = None, interval: float = 0.2):
        self.root_pid = root_pid or os.getpid()
        self.interval = interval
        self.start = self.peak = self.samples = 0
        self.cpu_seconds = math.nan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        began = time.thread_time()  # CPU, not wall: a loaded machine must not thin the samples
        procs = _tree(self.root_pid)  # one walk of the process tree for both readings
        self.peak = max(self.peak, tree_memory(self.root_pid, procs))
        self._last_cpu.update(tree_cpu_by_pid(self.root_pid, procs))
        self.samples += 1
        return time.thread_time() - began

    def _run(self) -> None:
        while not self._stop.wait(max(self.interval, 10 * self._cost)):
            self._cost = self._sample()

    def __enter__(self) -> "TreeUsage":
        self._began = time.perf_counter()
        self._last_cpu: dict = {}
        self._cost = self._sample()
        self.start = self.peak
        self._cpu = dict(self._last_cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpu_seconds = cpu_used(self._cpu, self._last_cpu)
        self.mean_interval = (time.perf_counter() - self._began) / max(1, self.samples - 1)


class Timer:
    """``with Timer() as t: ...`` -> ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self.began = time.perf_counter()
        self.seconds = math.nan
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.began


def start_ray(cfg) -> None:
    """Start (or join) Ray exactly as the CLI does, without progress bars."""
    quiet_env()
    cfg.run.ray.progress_bars = False
    from pafo_ray.ray_session import init_ray

    init_ray(cfg.run.ray)


_KILLED = re.compile(r"(\d+) worker\(s\) were killed due to the node running low on memory")


def memory_kills() -> int:
    """Workers Ray's memory monitor has killed in this Ray session so far: the sum of the
    raylet's ``N worker(s) were killed due to the node running low on memory`` lines (0 when
    the session's logs cannot be found: Ray not started here)."""
    try:
        import ray

        logs = ray._private.worker._global_node.get_logs_dir_path()  # private: hence the guard
    except Exception:  # noqa: BLE001
        return 0
    total = 0
    for path in Path(logs).glob("raylet*.out"):
        with open(path, errors="replace") as fh:
            total += sum(int(m.group(1)) for m in _KILLED.finditer(fh.read()))
    return total
