"""Files behind a loader: which ones a path or glob names, and a fingerprint of them.

The fingerprint (each file's size and its mtime, ETag or creation stamp, whichever
the filesystem reports) goes into the loader's cache signature: a file written,
added or removed since the last run makes the loader read again.
"""

from __future__ import annotations

import os
from typing import Any

_STAMPS = ("ETag", "etag", "mtime", "LastModified", "last_modified", "created", "md5")


def open_fs(path: str | os.PathLike[str], storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of `path` (local path or URL) and the path inside it."""
    import fsspec  # here, not at the top: every run loads this plugin, few read files

    return fsspec.core.url_to_fs(os.fspath(path), **(storage_options or {}))


def list_files(fs: Any, root: str) -> list[str]:
    """Files a glob matches, every file under a folder, or the file itself (sorted)."""
    import fsspec

    if fsspec.core.has_magic(root):
        files = [p for p in fs.glob(root) if fs.isfile(p)]
    elif fs.isdir(root):
        files = fs.find(root)
    elif fs.exists(root):
        files = [root]
    else:
        files = []
    return sorted(files)


def fingerprint(fs: Any, files: list[str]) -> list[list[Any]]:
    """`[path, size, stamp]` per file; a changed file changes its entry."""
    entries = []
    for path in files:
        info = fs.info(path)
        stamp = next((str(info[key]) for key in _STAMPS if info.get(key) is not None), None)
        entries.append([path, info.get("size"), stamp])
    return entries
