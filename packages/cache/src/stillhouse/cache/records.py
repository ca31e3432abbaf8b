"""The append-only record log a step store keeps its batches in.

Each record is framed as `MAGIC | kind | flags | a | b | rows | length | crc32 | payload`
(32 bytes of header, little endian); a remote store keeps one such record per object
(`frame` / `unframe`). The checksum covers the header (everything before
it) and the payload, so a changed batch index is caught like a changed byte of data.
The payload is data only (`codec.py`: Arrow IPC for batches, JSON for routes). A
step store's log starts with an `IDENTITY` record naming the store's generation, so a
log copied over from another step, or from another version of this one, is refused. Appending
a batch costs one write of that batch, whatever the size of the log, and opening a log
walks the headers only (`iter_headers`, also used read-only by `stillhouse cache
explain`). A torn last record (the process died mid-write) is cut off on open; any
other bad record is reported when read, never guessed at.

Durability: `append` returns once the record is in the OS (flushed), so it survives
the death of the process (SIGKILL) from then on. Against power loss, a background
thread (group commit) fsyncs every log within `SYNC_EVERY` seconds of its first
record not yet fsynced, whether or not more records follow, so the driver never waits
for the disk on the way; `sync()` (a step finishing, the run ending) fsyncs at once
and reports a failed background fsync.

Order: a log's `upstream` are the logs of the steps upstream of it, whose records its
batches were made from. Every fsync of a log, background or `sync()`, first fsyncs
those that are dirty, upstream first, so a batch never reaches the disk through us
before what it was made from (a rerun would recompute the upstream batch, with other
values for a nondeterministic step, while the downstream replayed the old ones). What
we cannot order: the OS may write a page back on its own before our fsync, and a
record appended to both logs while the group commit runs may reach the disk with the
downstream fsync before its upstream record does with the next one.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from stillhouse.cache.atomic import disk_errors
from stillhouse.core.errors import CorruptCacheError
from stillhouse.core.files import write_in_pieces

MAGIC = b"S2"
_HEADER = struct.Struct("<2sBBqqIII")
_CHECKED = _HEADER.size - 4  # the header bytes the checksum covers
HEADER_SIZE = _HEADER.size

SYNC_EVERY = 1.0
BATCH = 1
ROUTE = 2
BLOB = 3  # a column stored once per content (codec.Blob); `a` and `b` hold its digest
IDENTITY = 4  # a log's first record: whose it is (the store's generation, as JSON)
LAST = 1  # flags: the generator said this was its last batch
FAILED = 2  # flags: the batch recorded a failure (its rows hold None outputs)
FILE_MODE = 0o600


class Header(NamedTuple):
    """One record's header and where the record starts (`offset`) in its log."""

    kind: int
    flags: int
    a: int
    b: int
    rows: int
    offset: int
    length: int
    crc: int

    @property
    def end(self) -> int:
        return self.offset + _HEADER.size + self.length


def corrupt(path: Path, offset: int, why: str) -> CorruptCacheError:
    return CorruptCacheError(
        f"The cache file {path} is damaged at byte {offset} ({why}): it was not written by "
        f"this version of stillhouse, or the disk corrupted it. Delete {path.parent} or run "
        "with use_cache=False to recompute this step."
    )


def iter_headers(path: Path, *, check_last: bool = True) -> Iterator[Header]:
    """The headers of the whole records in `path`, in order, reading nothing else.

    Stops at a torn tail (a record longer than what is left, or, with `check_last`, a
    last record whose checksum fails); raises on a header that is not ours."""
    size = path.stat().st_size
    if size < _HEADER.size:
        return
    offset = 0
    unpack = _HEADER.unpack_from
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        while offset + _HEADER.size <= size:
            magic, kind, flags, a, b, rows, length, crc = unpack(view, offset)
            if magic != MAGIC:
                raise corrupt(path, offset, "bad record marker")
            end = offset + _HEADER.size + length
            if end > size:
                return  # torn tail: the writer died mid-record
            if check_last and end == size:
                record = view[offset:end]
                if _crc(record[: _HEADER.size], record[_HEADER.size:]) != crc:
                    return  # torn tail written out of order by the OS
            yield Header(kind, flags, a, b, rows, offset, length, crc)
            offset = end


def _crc(header: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(header[:_CHECKED]))


def _head(kind: int, a: int, b: int, parts: list[Any], rows: int, flags: int) -> tuple[Header, bytes]:
    """The `Header` (at offset 0) and header bytes of a record whose payload is `parts`
    (buffers, not joined), its checksum covering header and payload."""
    length = sum(memoryview(part).nbytes for part in parts)
    head = _HEADER.pack(MAGIC, kind, flags, a, b, rows, length, 0)[:_CHECKED]
    crc = zlib.crc32(head)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return Header(kind, flags, a, b, rows, 0, length, crc), head + struct.pack("<I", crc)


def frame(kind: int, a: int, b: int, payload: bytes, *, rows: int = 0, flags: int = 0) -> tuple[Header, bytes]:
    """A record (`Header`, bytes) for `payload`, its checksum covering header and payload."""
    header, head = _head(kind, a, b, [payload], rows, flags)
    return header, head + payload


def unframe(blob: bytes, where: str) -> tuple[Header, bytes]:
    """The header and payload of one framed record (a remote object), checked."""
    if len(blob) >= _HEADER.size:
        magic, kind, flags, a, b, rows, length, crc = _HEADER.unpack_from(blob)
        payload = blob[_HEADER.size:]
        if magic == MAGIC and len(payload) == length and _crc(blob, payload) == crc:
            return Header(kind, flags, a, b, rows, 0, length, crc), payload
    raise CorruptCacheError(
        f"The cache object {where} is damaged. Delete its step folder or run with "
        "use_cache=False to recompute this step."
    )


class _Syncer:
    """One background thread per process that fsyncs the logs `append` hands it.

    A log is handed over once per unsynced stretch, with the time it is due (a second
    after its last fsync at the latest: `RecordLog.append`). When the earliest is due,
    the thread takes every log handed over so far and fsyncs them all, each after its
    dirty upstream logs (`RecordLog.background_sync`): one group commit for the run.
    It holds them weakly: a log nobody holds any more (a store left unclosed by an error)
    is finalised where it would have been without us, not later on this thread."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # A lock held at the fork stays held in the child, and the thread is the
        # parent's: start afresh, and let the child's next append hand its logs over.
        pending = self._logs
        self._reset()
        for ref in pending:
            if (log := ref()) is not None:
                log._sync_queued = False

    def _reset(self) -> None:
        self._wake = threading.Condition()
        self._logs: list[weakref.ref[RecordLog]] = []
        self._due = math.inf
        self._thread: threading.Thread | None = None

    def submit(self, log: RecordLog, due: float) -> None:
        with self._wake:
            # After a fork the child has no thread: start one there too.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="stillhouse-fsync", daemon=True)
                self._thread.start()
            self._logs.append(weakref.ref(log))
            if due < self._due:
                self._due = due
                self._wake.notify()

    def _serve(self) -> None:
        while True:
            with self._wake:
                while (wait := self._due - time.monotonic()) > 0:
                    self._wake.wait(None if wait == math.inf else wait)
                refs, self._logs, self._due = self._logs, [], math.inf
            for ref in refs:
                if (log := ref()) is not None:
                    log.background_sync()
                    del log  # no reference to it while waiting for the next commit


_SYNCER = _Syncer()


class RecordLog:
    """Append framed records; index their headers; cut a torn tail on open.

    `repair=False` (a finished store) never cuts anything: a short log is reported.
    `upstream` gives the open logs of the steps upstream of this one, upstream first
    (`FileStepStore`): they are fsynced before this log, when dirty."""

    def __init__(
        self, path: Path, *, repair: bool = True, upstream: Callable[[], Iterable[RecordLog]] | None = None
    ) -> None:
        self.path = path
        self.upstream = upstream or tuple
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        self.index: list[Header] = list(iter_headers(path))
        end = self.index[-1].end if self.index else 0
        if end < path.stat().st_size:
            if not repair:
                raise corrupt(path, end, "a record is cut short")
            with path.open("r+b") as handle:
                handle.truncate(end)
        self._append = path.open("ab")
        self._read = path.open("rb")
        self.dirty = False
        self._synced_at = time.monotonic()
        self._sync_lock = threading.Lock()  # one fsync at a time; close waits for it
        self._sync_queued = False
        self._sync_error: OSError | None = None

    def append(
        self, kind: int, a: int, b: int, payload: bytes | list[Any], *, rows: int = 0, flags: int = 0
    ) -> Header:
        """Append one record; `payload` may come in pieces (buffers), written without
        joining them."""
        self._raise_sync_error()
        offset = self._append.tell()
        parts = [payload] if isinstance(payload, bytes) else payload
        header, head = _head(kind, a, b, parts, rows, flags)
        self._append.write(head)
        for part in parts:
            write_in_pieces(self._append, part)
        self._append.flush()  # in the OS now: survives the death of this process
        header = header._replace(offset=offset)
        self.index.append(header)
        self.dirty = True
        if not self._sync_queued:
            # Group commit, off this thread: due a second after the last fsync (at once
            # after a quiet second), so this record is durable within a second.
            self._sync_queued = True
            _SYNCER.submit(self, self._synced_at + SYNC_EVERY)
        return header

    def read(self, header: Header) -> bytes:
        """The payload of a record, checked against its header and checksum."""
        self._read.seek(header.offset)
        raw = self._read.read(_HEADER.size)
        data = self._read.read(header.length)
        if len(raw) < _HEADER.size or _HEADER.unpack(raw) != (
            MAGIC, header.kind, header.flags, header.a, header.b, header.rows, header.length, header.crc
        ) or len(data) != header.length or _crc(raw, data) != header.crc:
            raise corrupt(self.path, header.offset, "checksum mismatch")
        return data

    def sync(self) -> None:
        """fsync the dirty upstream logs, then this one (waiting for a background fsync in
        progress), and report a failed one, naming its file."""
        for log in self.upstream():
            with disk_errors(log.path):
                log._sync_open()
                log._raise_sync_error()
        self._sync_open()
        self._raise_sync_error()

    def background_sync(self) -> None:
        """The background thread's fsync, after the upstream logs'; an error waits for the
        next `append` or `sync` of its log, and leaves the logs after it dirty."""
        with self._sync_lock:
            self._sync_queued = False
        for log in (*self.upstream(), self):
            with log._sync_lock:
                if log.closed:
                    continue  # closed: fsynced then, or left unsynced after an upstream failure
                if log._sync_error is not None:
                    return  # a failed upstream fsync: nothing made from it goes first
                try:
                    log._sync()
                except OSError as exc:
                    log._sync_error = exc
                    return

    def _sync_open(self) -> None:
        with self._sync_lock:
            if not self.closed:
                self._sync()

    def _sync(self) -> None:
        # Called with the lock held. `dirty` is cleared before the fsync: a record appended
        # meanwhile sets it again, so the next sync covers it.
        if self.dirty:
            self.dirty = False
            try:
                os.fsync(self._append.fileno())
            except BaseException:
                self.dirty = True
                raise
        self._synced_at = time.monotonic()

    def _raise_sync_error(self) -> None:
        error, self._sync_error = self._sync_error, None
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        return self._append.closed

    def close(self, *, sync: bool = True) -> None:
        """fsync (with `sync`, after the dirty upstream logs) and close; the files are closed
        even when that fails. `sync=False` leaves the tail to the OS: a log closed after one
        upstream of it failed to close must not reach the disk before it."""
        with disk_errors(self.path):  # a full disk refuses the buffered tail: name the file
            try:
                if sync:
                    self.sync()
            finally:
                with self._sync_lock:  # no background fsync on a closed file
                    try:
                        self._append.close()
                    finally:
                        self._read.close()
