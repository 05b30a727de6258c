"""The run directory: ``<storage_path>/<run_name>/<stage>/`` on any pyarrow filesystem.

A stage's output counts as complete only when its ``_SUCCESS.json`` exists and carries
the stage's config hash. The marker is written last, so a stage killed halfway leaves a
folder that the next run clears and redoes instead of trusting.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from typing import Any, Optional

SUCCESS = "_SUCCESS.json"


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
        self.storage_path = storage_path if "://" in storage_path else os.path.abspath(storage_path)
        self.run_name = run_name
        self.root = join(self.storage_path, run_name)
        self.fs, self._root_path = split_uri(self.root)

    # paths ------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        """Full URI (or absolute local path) under the run."""
        return join(self.root, *parts)

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

    def remove(self, *parts: str) -> None:
        from pyarrow import fs as pafs

        path = self.fs_path(*parts)
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

    def start(self, stage: str) -> None:
        """Clear a stage's folder before writing it anew (stale or partial output)."""
        self.remove(stage)
        self.fs.create_dir(self.fs_path(stage), recursive=True)

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
