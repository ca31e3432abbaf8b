"""The append-only record log a step store keeps its batches in.

Each record is framed as `MAGIC | kind | key | length | crc32 | payload` (payload:
pickle). Appending a batch costs one write of that batch, whatever the size of the
log, and opening a log walks the headers only. A torn last record (the process died
mid-write) is cut off on open; any other bad record is reported when read, never
guessed at.
"""

from __future__ import annotations

import os
import pickle
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from stillhouse.core.errors import CorruptCacheError

MAGIC = b"SH"
_HEADER = struct.Struct("<2sBqqII")

SYNC_EVERY = 1.0
BATCH = 1
ROUTE = 2


def corrupt(path: Path, offset: int, why: str) -> CorruptCacheError:
    return CorruptCacheError(
        f"The cache file {path} is damaged at byte {offset} ({why}): it was not written by "
        f"this version of stillhouse, or the disk corrupted it. Delete {path.parent} or run "
        "with use_cache=False to recompute this step."
    )


class RecordLog:
    """Append framed records; index them by `(kind, a, b)`; cut a torn tail on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self.index: list[tuple[int, int, int, int]] = []  # (kind, a, b, offset)
        self._scan()
        self._append = path.open("ab")
        self._read = path.open("rb")
        self.dirty = False
        self._synced_at = time.monotonic()

    def _scan(self) -> None:
        size = self.path.stat().st_size
        offset = 0
        last_ok = 0
        with self.path.open("rb") as handle:
            while offset < size:
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                magic, kind, a, b, length, crc = _HEADER.unpack(header)
                if magic != MAGIC:
                    raise corrupt(self.path, offset, "bad record marker")
                end = offset + _HEADER.size + length
                if end > size:
                    break  # torn tail: the writer died mid-record
                if end == size and zlib.crc32(handle.read(length)) != crc:
                    break  # torn tail written out of order by the OS
                handle.seek(end)
                self.index.append((kind, a, b, offset))
                offset = last_ok = end
        if last_ok < size:
            with self.path.open("r+b") as handle:
                handle.truncate(last_ok)

    def append(self, kind: int, a: int, b: int, payload: Any) -> None:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        offset = self._append.tell()
        self._append.write(_HEADER.pack(MAGIC, kind, a, b, len(data), zlib.crc32(data)) + data)
        self._append.flush()  # in the OS now: survives the death of this process
        self.index.append((kind, a, b, offset))
        self.dirty = True
        if time.monotonic() - self._synced_at > SYNC_EVERY:
            self.sync()  # group commit: durable against power loss within a second

    def read(self, offset: int) -> Any:
        self._read.seek(offset)
        magic, _kind, _a, _b, length, crc = _HEADER.unpack(self._read.read(_HEADER.size))
        data = self._read.read(length)
        if magic != MAGIC or len(data) != length or zlib.crc32(data) != crc:
            raise corrupt(self.path, offset, "checksum mismatch")
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise corrupt(self.path, offset, f"cannot be decoded: {exc}") from exc

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self._append.fileno())
            self.dirty = False
        self._synced_at = time.monotonic()

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._append.close()
            self._read.close()
