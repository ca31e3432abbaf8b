"""Crash-safe, private file writes, and disk errors that name the file and the fix.

Every file and folder of a run is private to the user (0600 / 0700): writes go to a
temporary file (`mkstemp` makes it 0600), are flushed, fsynced and renamed, and the
directory is fsynced. An `OSError` on the way (read-only disk, disk full, a file
where a folder should be) becomes a `CacheError` naming the path (`disk_errors`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stillhouse.core.errors import CacheDiskError, CacheError

DIR_MODE = 0o700
FILE_MODE = 0o600


@contextlib.contextmanager
def disk_errors(path: Path | str, doing: str = "write") -> Iterator[None]:
    """Turn an `OSError` about `path` into a `CacheError` saying what to do."""
    try:
        yield
    except CacheError:
        raise
    except OSError as exc:
        raise CacheDiskError.about(path, exc, f"{doing} the cache file") from exc


def private_dirs(directory: Path) -> None:
    """Create `directory` and any missing parent, each private to the user (0700)."""
    missing = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=DIR_MODE)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    with disk_errors(path):
        private_dirs(path.parent)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def private_file(path: Path) -> None:
    """Create `path` (empty) private to the user if it does not exist."""
    with disk_errors(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
