"""Where the concurrent trainers are: a small board of ``stage -> job -> epoch of epochs``.

Trainers run on Ray Train workers (other processes, maybe other nodes) or in this process
(``train.num_workers=0``). Each reports its epochs with :func:`epoch`; the console's status
line reads :func:`snapshot` and shows ``teachers 42 s (vanilla 3/10, minority 5/10)``.

With Ray running, the board is one named actor per run (0 CPUs, in its own namespace, so a
job's workers find it by name wherever they run; owned by the driver, so it ends with it);
without Ray it is a dict in this process.
Reporting never raises and never waits: a trainer must not fail or slow down because the
status line could not be updated. Only a stage's start waits (at most ``READY_WAIT_S``, once
per run in practice) for a new board to come up, so the first epochs are not lost.
"""

from __future__ import annotations

import threading
from typing import Optional

BOARD_NAME = "pafo_progress"
BOARD_NAMESPACE = "pafo_ray"

_LOCAL: dict = {}
_LOCK = threading.Lock()
_OWNED: dict = {}  # run -> the driver's handle: a named actor without one is collected
_ASKED: dict = {}  # run -> the board's pending answer (an ObjectRef)
_SEEN: dict = {}   # run -> its last answer
READY_WAIT_S = 15.0  # how long a stage's start waits for a new board to come up


class _Board:
    def __init__(self):
        self.jobs: dict = {}

    def set(self, stage: str, job: str, done: int, total: int) -> None:
        self.jobs.setdefault(stage, {})[job] = (int(done), int(total))

    def clear(self, stage: str) -> None:
        self.jobs.pop(stage, None)

    def snapshot(self) -> dict:
        return {stage: dict(jobs) for stage, jobs in self.jobs.items()}


def _actor(run: str, create: bool):
    import ray

    if not ray.is_initialized():
        return None
    name = f"{BOARD_NAME}:{run}"
    if create:
        remote = ray.remote(num_cpus=0, max_restarts=0)(_Board)
        return remote.options(name=name, namespace=BOARD_NAMESPACE,
                              get_if_exists=True).remote()
    try:
        return ray.get_actor(name, namespace=BOARD_NAMESPACE)
    except ValueError:
        return None


def start(run: str, stage: str) -> None:
    """Open ``stage``'s board in run ``run`` (the driver, before its trainers start)."""
    with _LOCK:
        _LOCAL.pop(stage, None)
        _SEEN.get(run, {}).pop(stage, None)
        _ASKED.pop(run, None)  # a question asked before the clear would bring old epochs back
    try:
        board = _actor(run, create=True)  # get_if_exists: this Ray's board, even after a restart
        if board is not None:
            _OWNED[run] = board
            # Wait for the board to be up before the trainers start: a report sent to an
            # actor still starting is queued in the sending worker, and is lost when Ray
            # retires that worker as idle first (seen on a 2-CPU CI machine).
            import ray

            ray.wait([board.clear.remote(stage)], timeout=READY_WAIT_S)
    except Exception:  # noqa: BLE001 - the status line is best effort
        pass


def epoch(run: str, stage: str, job: str, done: int, total: int) -> None:
    """``job`` of ``stage`` finished epoch ``done`` of ``total`` (from any process)."""
    with _LOCK:
        _LOCAL.setdefault(stage, {})[job] = (int(done), int(total))
    try:
        board = _actor(run, create=False)
        if board is not None:
            board.set.remote(stage, job, done, total)  # not awaited
    except Exception:  # noqa: BLE001
        pass


def snapshot(run: str, timeout: float = 0.2) -> dict:
    """Every stage's jobs and their ``(epoch, epochs)``: this process's, then the board's
    latest answer. Never blocks longer than ``timeout``: on a busy cluster the board may take
    seconds to answer, so a question stays pending across calls and the last answer is shown
    meanwhile."""
    with _LOCK:
        merged = {stage: dict(jobs) for stage, jobs in _LOCAL.items()}
    try:
        import ray

        ref = _ASKED.get(run)
        if ref is None:
            board = _actor(run, create=False)
            if board is not None:
                ref = _ASKED[run] = board.snapshot.remote()
        if ref is not None:
            ready, _ = ray.wait([ref], timeout=timeout)
            if ready:
                del _ASKED[run]
                _SEEN[run] = ray.get(ref)
    except Exception:  # noqa: BLE001 - a lost board: show what this process knows
        _ASKED.pop(run, None)
    for stage, jobs in _SEEN.get(run, {}).items():
        merged.setdefault(stage, {}).update(jobs)
    return merged


def describe(stage: str, jobs: Optional[dict]) -> str:
    """``" (vanilla 3/10, minority 5/10)"`` for the status line, or ``""``."""
    if not jobs:
        return ""
    parts = [f"{job} {done}/{total}" for job, (done, total) in sorted(jobs.items())]
    return f" ({', '.join(parts)})"
