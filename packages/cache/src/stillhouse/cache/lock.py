"""The one lock of a pipeline's local cache folder: `<cache_dir>/<name>/.lock`.

Held (an exclusive `flock`, released by the OS if the process dies) by a running
pipeline, and by `stillhouse cache remove` while it deletes. The file names the pid
that holds it, for the message of whoever finds it taken.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from stillhouse.cache.atomic import FILE_MODE, disk_errors, private_dirs
from stillhouse.core.errors import CacheLockedError

LOCK = ".lock"


def acquire(base: Path, busy: str) -> int:
    """Take the lock of `base` and return its descriptor for `release`.

    `busy` is the message of the `CacheLockedError` raised when another process holds
    it; `{pid}` in it is replaced by that process's pid."""
    path = base / LOCK
    with disk_errors(path):
        private_dirs(base)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CacheLockedError(busy.replace("{pid}", holder)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        with disk_errors(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        release(fd)
        raise
    return fd


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
