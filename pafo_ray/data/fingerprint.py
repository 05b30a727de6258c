"""A fingerprint of the input files: which files, how big, when last written.

``input``'s stage hash covers it, so a file rewritten at the same path (or a file added to
or removed from a folder or glob) makes ``input``, ``prepare`` and everything downstream run
again instead of reusing outputs made from other data. Local files give (path, size,
mtime in ns); object stores give (path, size, last-modified) through pyarrow's
``FileInfo``. pyarrow exposes no ETag, so an object rewritten with the same size within the
store's mtime resolution (1 s on S3) is not seen; neither is a local rewrite that keeps
size and mtime (``touch -r``). Contents are not hashed: reading terabytes to decide
whether to skip a stage would cost more than the stage.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Optional

from pafo_ray.redact import redact_uri


def input_files(path: str) -> list:
    """``[(path, size, mtime)]`` of every file under a file, folder or glob (sorted).

    Paths are recorded redacted (no query secrets): the fingerprint lands in summaries.
    A path that matches nothing gives ``[]``; the reader reports that, not this.
    """
    if "://" in path:
        return _remote_files(path)
    if os.path.isdir(path):
        found = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
    elif os.path.exists(path):
        found = [path]
    else:
        found = glob.glob(path)
    out = []
    for file in sorted(found):
        st = os.stat(file)
        out.append((os.path.abspath(file), st.st_size, st.st_mtime_ns))
    return out


def _remote_files(uri: str) -> list:
    from pyarrow import fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        infos = [info]
    elif info.type == pafs.FileType.Directory:
        infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                 if i.type == pafs.FileType.File]
    else:
        return []
    scheme = uri.split("://", 1)[0]
    return sorted((redact_uri(f"{scheme}://{i.path}"), i.size,
                   int(i.mtime.timestamp() * 1e9) if i.mtime else None) for i in infos)


def fingerprint(path: Optional[str]) -> dict:
    """``{"files", "bytes", "digest"}`` of the files under ``path`` (None: no files)."""
    files = input_files(path) if path else []
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    return {"files": len(files), "bytes": int(sum(f[1] or 0 for f in files)), "digest": digest}
