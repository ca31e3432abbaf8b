"""Small filesystem helpers shared by the writer, the reader and `Distiset`.

Every location may be a local path, a `pathlib.Path` or an fsspec URL. Local paths
go through `os` so that writes can be fsynced; everything else goes through fsspec.
Local files and folders are created private to the user (0600 / 0700), and a failed
local write is a `CacheError` naming the file. Nothing here knows about Parquet,
datasets or the Hub.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import queue
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import fsspec
import xxhash
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from stillhouse.core.errors import CacheDiskError
from stillhouse.core.files import write_in_pieces

PathLike = str | os.PathLike[str]
FILE_MODE = 0o600
DIR_MODE = 0o700
"""Results are private to the user, like the rest of a run's cache."""


def resolve(
    location: PathLike, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """`(filesystem, path inside it)` for a local path or an fsspec URL."""
    fs, path = url_to_fs(os.fspath(location), **(storage_options or {}))
    return fs, path.rstrip("/") or path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(*parts: str) -> str:
    return posixpath.join(*parts)


def public(fs: fsspec.AbstractFileSystem, path: str) -> Path | str:
    """How a location is shown to users: a `Path` when local, else a URL."""
    return Path(path) if is_local(fs) else fs.unstrip_protocol(path)


def atomic_write(
    fs: fsspec.AbstractFileSystem,
    path: str,
    write: Callable[[IO[bytes]], None],
    *,
    durable: bool = True,
) -> None:
    """Write a file so that readers see either nothing or all of it.

    The bytes go to a hidden temporary name in the same folder (so the rename stays on
    one filesystem), are flushed and fsynced, then renamed over `path`. A crash leaves
    at most a `.*.tmp` file behind, which no reader ever lists. `durable=False` skips
    the fsyncs (the rename is still atomic): for files made durable later in one go.
    """
    directory, name = posixpath.split(path)
    tmp = join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    if is_local(fs):
        try:
            make_dirs(fs, directory)
            try:
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as handle:
                    write(handle)
                    handle.flush()
                    if durable:
                        os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            if durable:
                _fsync_dir(directory)
        except OSError as exc:
            raise CacheDiskError.about(path, exc, "write the result file") from exc
        return
    fs.makedirs(directory, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as handle:
            write(handle)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def make_dirs(fs: fsspec.AbstractFileSystem, directory: str) -> None:
    """`directory` and its missing parents; local ones private to the user (0700)."""
    if not is_local(fs):
        fs.makedirs(directory, exist_ok=True)
        return
    missing = []
    current = directory
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)


def _fsync_dir(directory: str) -> None:
    # The rename is durable only once the directory entry is; Windows cannot open dirs.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_entries(
    fs: fsspec.AbstractFileSystem, directory: str, *, hidden: bool = False
) -> list[dict[str, Any]]:
    """The entries of a folder (`[]` when it does not exist); `.`-names only if `hidden`."""
    try:
        entries = fs.ls(directory, detail=True, refresh=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except TypeError:  # filesystems whose `ls` takes no `refresh`
        try:
            entries = fs.ls(directory, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
    if hidden:
        return entries
    return [e for e in entries if not posixpath.basename(e["name"].rstrip("/")).startswith(".")]


def subdirectories(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """Names of the folders directly inside `directory`, sorted."""
    return sorted(
        posixpath.basename(e["name"].rstrip("/"))
        for e in list_entries(fs, directory)
        if e.get("type") == "directory"
    )


def read_bytes(location: PathLike, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = resolve(location, storage_options)
    return fs.cat_file(path)


def copy_file(
    source: PathLike,
    fs: fsspec.AbstractFileSystem,
    target: str,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Copy `source` (read with `storage_options`) to `target` on `fs`, atomically, streamed."""
    source_fs, source_path = resolve(source, storage_options)
    with source_fs.open(source_path, "rb") as handle:
        atomic_write(fs, target, lambda out: shutil.copyfileobj(handle, out))


def exists(location: PathLike, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = resolve(location, storage_options)
    return fs.exists(path)


def files_under(
    location: PathLike, storage_options: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """`(path relative to location, file location)` of every file below `location`."""
    fs, root = resolve(location, storage_options)
    if not fs.isdir(root):
        return []
    return [
        (path[len(root) :].lstrip("/"), str(public(fs, path)))
        for path in sorted(fs.find(root))
        if not posixpath.basename(path).startswith(".")
    ]


class HashingWriter:
    """A binary file wrapper that hashes what goes through `write`."""

    def __init__(self, handle: IO[bytes], digest: Any) -> None:
        self.handle, self.digest = handle, digest

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return write_in_pieces(self.handle, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def file_digest(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The xxh3 (64-bit) checksum of a file, read in chunks."""
    digest = xxhash.xxh3_64()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class _Writeback:
    """One background thread that fsyncs result files as they are written, so the disk
    writes them while the run goes on, and `make_durable` at the leaf's end finds little
    left to wait for. It guarantees nothing: `make_durable` still fsyncs every file (and
    reports what fails); a file already deleted is skipped."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, path: str) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # also in a forked child
                self._thread = threading.Thread(target=self._serve, name="stillhouse-writeback", daemon=True)
                self._thread.start()
        self._queue.put(path)

    def _serve(self) -> None:
        while True:
            path = self._queue.get()
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


_WRITEBACK = _Writeback()


def start_writeback(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Have the disk start writing a file written with `durable=False` (local files only)."""
    if is_local(fs):
        _WRITEBACK.submit(path)


def make_durable(fs: fsspec.AbstractFileSystem, paths: list[str]) -> None:
    """fsync files written with `durable=False`, and their folders (local files only)."""
    if not is_local(fs):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in {posixpath.dirname(path) for path in paths}:
        _fsync_dir(directory)
