"""One writer per run directory: ``<run>/_LOCK.json``, an owner and a lease.

The lock names its owner (host, pid, start time, command) and carries a random token. A
daemon thread renews ``renewed_at`` every ``lease_s / 4`` seconds. A lock counts as dead,
and is taken over with a message, when its lease has not been renewed for ``lease_s``
seconds, or when it was taken on this host by a pid that no longer exists (a crashed or
killed run never blocks the directory for longer than one lease). A second ``pafo-ray``
on a live lock fails at once naming the holder, or polls up to ``wait_s`` seconds.

What is guaranteed where:

* **Local disk (and NFS v3+ / POSIX filesystems):** the lock is created with
  ``O_CREAT | O_EXCL``, which is atomic: of two processes exactly one gets it. A takeover
  renames the dead lock aside (atomic) and checks that what it moved is the lock it judged
  dead; if it moved a fresh one it puts it back with ``link`` (which never overwrites).
* **Object stores (``s3://``, ``gs://``):** pyarrow has no create-if-absent (S3's
  ``If-None-Match: *`` conditional write exists, but pyarrow does not expose it), and the
  last writer of an object wins. The lock is written, then read back after
  :data:`SETTLE_S` seconds: a writer that finds another token there has lost and backs off.
  This catches races wider than the settle time; two writers within it can both believe
  they hold the lock. It is a guard against the common mistake (a second run started by
  hand or by a retrying scheduler), not a distributed mutex. Leases compare clocks of
  different hosts, so keep them in sync (NTP) or choose a lease well above the skew.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

from pafo_ray.redact import redact_uri
from pafo_ray.storage import RunDir

LOCK_NAME = "_LOCK.json"
SETTLE_S = 1.0        # object stores: wait this long before reading the lock back
POLL_S = 0.5          # while waiting for a held lock
_YOUNG_S = 10.0       # an unreadable lock younger than this is being written, not dead

log = logging.getLogger("pafo_ray")


class RunLocked(RuntimeError):
    """The run directory is held by another live process."""

    def __init__(self, message: str, holder: Optional[dict]):
        super().__init__(message)
        self.holder = holder


def describe_holder(holder: Optional[dict], now: Optional[float] = None) -> str:
    if not holder:
        return "a process that is still writing the lock"
    now = time.time() if now is None else now
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started_at", 0)))
    renewed = now - float(holder.get("renewed_at", 0))
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {started} "
            f"(`{holder.get('command') or 'pafo-ray'}`, lease renewed {renewed:.0f} s ago)")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def dead_reason(holder: dict, lease_s: float, now: Optional[float] = None) -> Optional[str]:
    """Why ``holder`` no longer holds the lock, or None when it is alive."""
    now = time.time() if now is None else now
    age = now - float(holder.get("renewed_at", 0))
    if age > lease_s:
        return f"its lease expired {age:.0f} s ago (lease {lease_s:g} s)"
    if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1))):
        return f"pid {holder.get('pid')} no longer runs on this host"
    return None


class RunLock:
    """``with RunLock(run_dir, lease_s=60, wait_s=0, command="pafo-ray run"):`` holds the
    run directory for the block, and releases it on exit, exceptions included."""

    def __init__(self, run_dir: RunDir, *, lease_s: float = 60.0, wait_s: float = 0.0,
                 command: str = ""):
        if lease_s <= 0:
            raise ValueError(f"run.lock_lease_s must be > 0, got {lease_s}")
        self.run_dir = run_dir
        self.lease_s = float(lease_s)
        self.wait_s = max(0.0, float(wait_s))
        self.token = uuid.uuid4().hex
        self.local = run_dir.local_dir() is not None
        self.path = run_dir.fs_path(LOCK_NAME)
        now = time.time()
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now,
                      "renewed_at": now, "token": self.token, "command": command,
                      "lease_s": self.lease_s}
        self.lost: Optional[str] = None  # set when another process took the lock from us
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._held = False

    # public -----------------------------------------------------------------
    def acquire(self) -> "RunLock":
        deadline = time.time() + self.wait_s
        while True:
            holder = self._try_acquire()
            if holder is None:
                self._held = True
                self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                                name="pafo-ray-lock")
                self._thread.start()
                return self
            if time.time() >= deadline:
                where = redact_uri(self.run_dir.root)
                waited = f" (waited {self.wait_s:g} s)" if self.wait_s else ""
                raise RunLocked(
                    f"the run directory {where} is in use by {describe_holder(holder)}"
                    f"{waited}. Wait for it (--wait SECONDS or run.lock_wait_s), or use "
                    "another run.run_name. A holder that died is taken over once "
                    f"its lease ({self.lease_s:g} s) runs out.", holder)
            time.sleep(min(POLL_S, max(0.0, deadline - time.time())) or POLL_S)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._held:
            self._held = False
            current = self._read()
            if current and current.get("token") == self.token:
                self._delete()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # one attempt --------------------------------------------------------------
    def _try_acquire(self) -> Optional[dict]:
        """None when we now hold the lock, else the live holder (``{}``: unreadable)."""
        holder = self._read()
        if holder is not None:
            reason = dead_reason(holder, self.lease_s) if holder else self._unreadable_dead()
            if reason is None:
                return holder
            if not self._take_over(holder):
                return self._read() or {}
            print(f"[lock] took over {redact_uri(self.run_dir.uri(LOCK_NAME))} from "
                  f"{describe_holder(holder) if holder else 'an unreadable lock'}: {reason}",
                  flush=True)
        return None if self._create() else (self._read() or {})

    def _unreadable_dead(self) -> Optional[str]:
        """A lock file that is not valid JSON: being written (young) or a crash's leftover."""
        age = self._age()
        return None if age is None or age < _YOUNG_S else f"unreadable for {age:.0f} s"

    def _create(self) -> bool:
        self.owner["renewed_at"] = time.time()
        data = json.dumps(self.owner, indent=2).encode()
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        self.run_dir.write_bytes(data, LOCK_NAME)  # last writer wins: read back after a pause
        time.sleep(SETTLE_S)
        current = self._read()
        return bool(current) and current.get("token") == self.token

    def _take_over(self, judged: dict) -> bool:
        """Remove the dead lock ``judged``; False when someone else moved first."""
        if not self.local:
            current = self._read()
            if current != judged:
                return False
            self._delete()
            return True
        aside = f"{self.path}.{self.token}.dead"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # gone already: try to create it
        moved = _read_local(aside)
        if (moved or {}).get("token") != (judged or {}).get("token"):
            # We moved a lock that a faster taker had just created: give it back.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    # heartbeat ------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                current = self._read()
                if not current or current.get("token") != self.token:
                    self.lost = f"taken by {describe_holder(current)}"
                    log.error("the run lock %s was lost: %s",
                              redact_uri(self.run_dir.uri(LOCK_NAME)), self.lost)
                    return
                self.owner["renewed_at"] = time.time()
                self._write_replace(json.dumps(self.owner, indent=2).encode())
            except OSError as exc:  # a storage hiccup: try again at the next beat
                log.warning("could not renew the run lock: %s", exc)

    def _write_replace(self, data: bytes) -> None:
        if not self.local:
            self.run_dir.write_bytes(data, LOCK_NAME)
            return
        tmp = f"{self.path}.{self.token}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.path)  # readers never see a half-written lock

    # storage ------------------------------------------------------------------
    def _read(self) -> Optional[dict]:
        """The lock's content; None when absent, ``{}`` when unreadable."""
        if self.local:
            return _read_local(self.path)
        from pyarrow import fs as pafs

        try:
            if self.run_dir.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None
            return json.loads(self.run_dir.read_bytes(LOCK_NAME).decode()) or {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _age(self) -> Optional[float]:
        info = self.run_dir.fs.get_file_info(self.path)
        return None if info.mtime is None else time.time() - info.mtime.timestamp()

    def _delete(self) -> None:
        try:
            self.run_dir.fs.delete_file(self.path)
        except FileNotFoundError:
            pass


def _read_local(path: str) -> Optional[dict]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw.decode()) or {}
    except ValueError:
        return {}


def hold(run_dir: RunDir, run_cfg, command: str) -> RunLock:
    """The lock of ``run_dir`` as ``run_cfg`` (``RunConfig``) asks: lease and wait."""
    return RunLock(run_dir, lease_s=run_cfg.lock_lease_s, wait_s=run_cfg.lock_wait_s,
                   command=command)
