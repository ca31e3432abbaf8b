"""The one lock of a pipeline's local cache folder: `<cache_dir>/<name>/.lock`.

Held (an exclusive `flock`, released by the OS if the process dies) by a running
pipeline, and by `stillhouse cache remove` while it deletes. The file names the pid
that holds it, for the message of whoever finds it taken.

A forked worker closes its copy of the descriptor at once (`os.register_at_fork`): a
`flock` lasts while any process holds the file open, so a worker that outlived its
SIGKILLed driver by the second it takes to notice kept the lock, and a rerun started
at once was refused. Closing (never unlocking) leaves the driver's lock as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from stillhouse.cache.atomic import FILE_MODE, disk_errors, private_dirs
from stillhouse.core.errors import CacheLockedError

LOCK = ".lock"

_held: set[int] = set()
"""Descriptors of the locks this process holds."""


def _close_in_child() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def acquire(base: Path, busy: str) -> int:
    """Take the lock of `base` and return its descriptor for `release`.

    `busy` is the message of the `CacheLockedError` raised when another process holds
    it; `{pid}` in it is replaced by that process's pid. A lock file removed (or
    replaced) while this process waited for it is not the lock any more: the file now at
    the path is taken instead (`remove_locked` removes it last)."""
    path = base / LOCK
    while True:
        fd = _open_lock(base, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CacheLockedError(busy.replace("{pid}", holder)) from None
        except BaseException:
            os.close(fd)
            raise
        if _is_at(fd, path):
            break
        release(fd)  # unlinked since we opened it: whoever takes the path's file holds it
    try:
        with disk_errors(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        release(fd)
        raise
    _held.add(fd)
    return fd


def _open_lock(base: Path, path: Path) -> int:
    """The lock file's descriptor, making it and its folder as needed: a folder removed
    between the two (`remove_locked` ending as this run starts) is made again."""
    with disk_errors(path):
        for _ in range(_OPEN_ATTEMPTS - 1):
            private_dirs(base)
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            except FileNotFoundError:
                continue
        private_dirs(base)
        return os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)


_OPEN_ATTEMPTS = 5


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file at `path` now."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def remove_locked(base: Path) -> None:
    """Delete `base`, whose lock this process holds, keeping the lock file to the last:
    a run that starts meanwhile finds the lock taken instead of making a new lock file
    in a folder being deleted. A run that starts after that may begin `base` again."""
    for entry in sorted(base.iterdir()):
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (base / LOCK).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # a run began it again meanwhile: its folder now
        base.rmdir()


def release(fd: int) -> None:
    _held.discard(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
