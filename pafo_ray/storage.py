"""The run directory: ``<storage_path>/<run_name>/<stage>/`` on any pyarrow filesystem.

A stage's output counts as complete only when its ``_SUCCESS.json`` exists and carries
the stage's config hash. The marker is written last, so a stage killed halfway leaves a
folder that the next run clears and redoes instead of trusting.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
from typing import Any, Optional

SUCCESS = "_SUCCESS.json"
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=-]*")


def run_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` cannot be a run name (a folder name, not a path), or None when it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty name"
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        return f"{name!r} is a path; give a plain folder name (no '/', '\\', '..', not absolute)"
    if not _RUN_NAME.fullmatch(name):
        return (f"{name!r} must be letters, digits and . _ - + = only, not starting with "
                "'.' or '-'")
    return None


class ContainmentError(ValueError):
    """A deletion that would reach outside ``<storage_path>/<run_name>/``."""


def split_uri(uri: str):
    """(pyarrow filesystem, path in its terms) of a URI or local path."""
    from pyarrow import fs as pafs

    if "://" not in uri:
        uri = os.path.abspath(uri)
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    if "://" in base:
        # Keep a query (``s3://b/p?endpoint_override=host:port&scheme=http``) at the end.
        path, sep, query = base.partition("?")
        joined = posixpath.join(path, *parts)
        return f"{joined}?{query}" if sep else joined
    return os.path.join(os.path.abspath(base), *parts)


class RunDir:
    """Paths and completion markers of one run."""

    def __init__(self, storage_path: str, run_name: str):
        problem = run_name_problem(run_name)
        if problem:
            raise ContainmentError(f"run.run_name: {problem}")
        self.storage_path = storage_path if "://" in storage_path else os.path.abspath(storage_path)
        self.run_name = run_name
        self.root = join(self.storage_path, run_name)
        self.fs, self._root_path = split_uri(self.root)

    # paths ------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        """Full URI (or absolute local path) under the run."""
        return join(self.root, *parts)

    def resolve(self, recorded: str) -> str:
        """A URI read back from a summary (recorded without query secrets) as a usable one:
        under this run's root it gets the root's real query back."""
        from pafo_ray.redact import redact_uri

        path = recorded.partition("?")[0]
        shown = redact_uri(self.root).partition("?")[0]
        if "://" not in path or not (path == shown or path.startswith(shown + "/")):
            return recorded
        root_path, sep, query = self.root.partition("?")
        return root_path + path[len(shown):] + (f"?{query}" if sep else "")

    def fs_path(self, *parts: str) -> str:
        """Path in ``self.fs`` terms (no scheme), for pyarrow calls."""
        return posixpath.join(self._root_path, *parts) if parts else self._root_path

    # files ------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self.fs_path(*parts)).type != pafs.FileType.NotFound

    def write_json(self, obj: Any, *parts: str) -> None:
        path = self.fs_path(*parts)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, *parts: str) -> Any:
        with self.fs.open_input_stream(self.fs_path(*parts)) as src:
            return json.loads(src.read().decode())

    def write_bytes(self, data: bytes, *parts: str) -> None:
        path = self.fs_path(*parts)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.fs_path(*parts)) as src:
            return src.read()

    def inside(self, *parts: str) -> str:
        """``fs_path(*parts)``, checked to lie strictly inside the run directory (symlinks
        resolved on a local disk); :class:`ContainmentError` otherwise."""
        from pyarrow import fs as pafs

        path = posixpath.normpath(self.fs_path(*parts))
        root = posixpath.normpath(self._root_path)
        if isinstance(self.fs, pafs.LocalFileSystem):
            path, root = os.path.realpath(path), os.path.realpath(root)
        if not parts or not path.startswith(root.rstrip("/") + "/"):
            raise ContainmentError(f"refusing to touch {path}: not inside the run directory "
                                   f"{root}")
        return path

    def remove(self, *parts: str) -> None:
        """Delete a file or folder under the run; nothing outside it (see :meth:`inside`)."""
        from pyarrow import fs as pafs

        path = self.inside(*parts)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)

    # completion -------------------------------------------------------
    def is_complete(self, stage: str, config_hash: str) -> bool:
        if not self.exists(stage, SUCCESS):
            return False
        try:
            marker = self.read_json(stage, SUCCESS)
        except (OSError, ValueError):
            return False
        return marker.get("config_hash") == config_hash

    def marker(self, stage: str) -> Optional[dict]:
        if not self.exists(stage, SUCCESS):
            return None
        return self.read_json(stage, SUCCESS)

    def mark_complete(self, stage: str, config_hash: str, **extra: Any) -> None:
        self.write_json({"config_hash": config_hash, "finished_at": time.time(), **extra},
                        stage, SUCCESS)

    def clear_marker(self, stage: str) -> None:
        """Forget that ``stage`` is complete (its output stays until it reruns)."""
        try:
            self.remove(stage, SUCCESS)
        except FileNotFoundError:  # removed meanwhile by a stage running alongside
            pass

    def start(self, stage: str) -> None:
        """Clear a stage's folder before writing it anew (stale or partial output)."""
        self.remove(stage)
        self.fs.create_dir(self.inside(stage), recursive=True)

    def local_dir(self, *parts: str) -> Optional[str]:
        """The local path when the run lives on the local filesystem, else None."""
        from pyarrow import fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            return self.fs_path(*parts)
        return None


def upload_dir(local_dir: str, run_dir: RunDir, *parts: str) -> None:
    """Copy a local folder to ``run_dir/parts`` (a no-op copy on the same local path)."""
    from pyarrow import fs as pafs

    target = run_dir.fs_path(*parts)
    if isinstance(run_dir.fs, pafs.LocalFileSystem) and os.path.abspath(local_dir) == target:
        return
    run_dir.fs.create_dir(target, recursive=True)
    pafs.copy_files(local_dir, target, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=run_dir.fs)


def download_dir(run_dir: RunDir, local_dir: str, *parts: str) -> str:
    """A local copy of ``run_dir/parts`` (the path itself when the run is local)."""
    from pyarrow import fs as pafs

    source = run_dir.fs_path(*parts)
    if isinstance(run_dir.fs, pafs.LocalFileSystem):
        return source
    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(source, local_dir, source_filesystem=run_dir.fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return local_dir


def local_copy(uri: str, local_dir: str) -> str:
    """A local path holding the folder at ``uri``: the path itself when it is local, else a
    copy in ``local_dir`` (a saved model read from object storage)."""
    if "://" not in uri:
        return uri
    from pyarrow import fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(path, local_dir, source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return local_dir
