"""What a person sees: one line per stage, a live status line, the result; the rest in a log.

Ray, Ray Data, Train and Tune write to this process's stdout and stderr from Python and from
C++ (and a local Ray's processes inherit them), and forwarded worker output arrives the same
way. :func:`quiet` therefore redirects file descriptors 1 and 2 to ``<run>/logs/pafo.log``
for the length of a command; the lines meant for a person go through :func:`say` to a copy
of the original stdout. With ``verbose`` the descriptors go to ``tee``: the log file still
gets everything and the terminal shows it too (today's detail).

On a terminal a status line (running stages, seconds) is redrawn in place under the stage
lines; in a pipe nothing is redrawn, so ``pafo-ray run | wc -l`` counts the stage lines only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Optional, TextIO

_TERM: Optional[TextIO] = None     # the person's stdout while quiet() is active
_ERR: Optional[TextIO] = None      # and their stderr
_VERBOSE = False
_RUNNING: dict = {}                 # stage -> start time (stages may run in threads)
_LOCK = threading.Lock()


def log_path(storage_path: str, run_name: str) -> str:
    """``<storage>/<run>/logs/pafo.log`` for local storage; for s3:// or gs:// a local file
    ``./pafo_logs/<run>/pafo.log`` (the log is written while Ray runs, not uploaded)."""
    if "://" in storage_path:
        return os.path.abspath(os.path.join("pafo_logs", run_name, "pafo.log"))
    return os.path.join(os.path.abspath(storage_path), run_name, "logs", "pafo.log")


def _writer(stream: TextIO) -> TextIO:
    """A line-buffered copy of ``stream``'s descriptor, or ``stream`` itself when it has none
    (a test's captured stdout)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    stream.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def quiet(path: str, verbose: bool = False, restore: bool = True, run: str = ""):
    """Route descriptors 1 and 2 to the log file at ``path`` (and, verbose, to the terminal).

    ``restore=False`` (the command line) leaves them on the log until the process exits:
    Ray's exit handlers and tqdm_ray's driver-side bars still write after the command ends
    (measured: ~740 lines of worker progress bars after the report)."""
    global _TERM, _ERR, _VERBOSE

    os.makedirs(os.path.dirname(path), exist_ok=True)
    term = _writer(sys.stdout)
    err = _writer(sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    tee = None
    if verbose:
        tee = subprocess.Popen(["tee", "-a", path], stdin=subprocess.PIPE, stdout=saved[0])
        target = tee.stdin.fileno()
    else:
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    if not verbose:
        os.close(target)
    _TERM, _ERR, _VERBOSE = term, err, verbose
    ticker = _Ticker(term, run) if not verbose and _isatty(term) else None
    try:
        yield term
    finally:
        if ticker:
            ticker.stop()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if restore:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if tee is not None:
            tee.stdin.close()
            tee.wait(timeout=30)
        _TERM, _ERR, _VERBOSE = None, None, False
        for stream, original in ((term, sys.stdout), (err, sys.stderr)):
            if stream is not original:
                stream.flush()
                if restore:
                    stream.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def say(line: str, err: bool = False) -> None:
    """A line for the person: on their stdout (``err``: stderr), and in the log (descriptor
    1, redirected)."""
    if _TERM is None or _VERBOSE:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
        return
    sys.stdout.flush()
    os.write(1, (line + "\n").encode("utf-8", "replace"))  # descriptor 1 is the log file
    out = _ERR if err else _TERM
    with _LOCK:
        if _isatty(_TERM):
            _TERM.write("\r\033[K")
            _TERM.flush()
        out.write(line + "\n")
        out.flush()


def stage_started(name: str) -> None:
    with _LOCK:
        _RUNNING[name] = time.time()


def stage_finished(name: str) -> None:
    with _LOCK:
        _RUNNING.pop(name, None)


class _Ticker:
    """The live status line on a terminal, redrawn: running stages, their seconds and where
    each of their trainers is (:mod:`pafo_ray.progress`), cut to the terminal's width."""

    def __init__(self, term: TextIO, run: str = "", every: float = 0.5):
        self.term, self.run, self.every = term, run, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pafo-status", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        frames = "|/-\\"
        tick = 0
        from pafo_ray import progress

        width = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
        while not self.done.wait(self.every):
            with _LOCK:
                running = dict(_RUNNING)
            if not running:
                continue
            jobs = progress.snapshot(self.run)  # outside the lock: it may wait on Ray
            now = time.time()
            parts = [f"{name} {now - began:.0f} s{progress.describe(name, jobs.get(name))}"
                     for name, began in running.items()]
            line = f"{frames[tick % 4]} running: {', '.join(parts)}"[:width]
            with _LOCK:
                self.term.write(f"\r\033[K{line}")
                self.term.flush()
            tick += 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)
        with _LOCK:
            self.term.write("\r\033[K")
            self.term.flush()


def headline_lines(summary: dict) -> list[str]:
    """evaluate's ``headline``, one line per method: ``vanilla: accuracy 0.649 | groups:
    minority 0.595, majority 0.677 (gap 0.082) | user types: minority 0.521, majority 0.680``
    (user types only where the data knows them: the simulators)."""
    head = summary.get("headline") or {}
    lines = []
    for method in ("vanilla", "pafo"):
        m = head.get(method)
        if not m:
            continue
        parts = [f"accuracy {_value(m.get('overall')):.3f}"]
        for key, label in (("by_group", "groups"), ("by_user_type", "user types")):
            values = m.get(key) or {}
            if not values:
                continue
            text = ", ".join(f"{name} {_value(values[name]):.3f}" for name in _lowest_first(values))
            if key == "by_group" and m.get("gap") is not None:
                text += f" (gap {_value(m['gap']):.3f})"
            parts.append(f"{label}: {text}")
        lines.append(f"{method:>8}: " + " | ".join(parts))
    return lines


def _lowest_first(values: dict) -> list:
    """Group and type names lowest support first, as a run prints them and as they come back
    from the summary's JSON (keys sorted there): minority, bucket_0.., majority."""
    rank = {"minority": 0, "majority": 2}
    return sorted(values, key=lambda name: (rank.get(name, 1), name))


def _value(v) -> float:
    if isinstance(v, dict):
        v = v.get("value")
    return float("nan") if v is None else float(v)
