"""The call record: every finished LLM call, kept in the step's durable folder, so a
stopped, killed or crashed run never pays for the same request twice.

Key: a hash of what was sent (model, messages, generation arguments, the
structured-output schema, the generation index). Value: the response as JSON. Each
writer appends to its own `calls-<id>.jsonl` with one `write()` per record (no
buffering, so a SIGKILL loses at most the call in flight), each record one line.

Opening a record indexes it: where each key's line is, not the answers, so a resumed
replica holds about 300 bytes per recorded call instead of the parsed responses
(100,000 calls of 1 KB: 30 MB instead of 300 MB). An answer is read and parsed when
asked for. A torn last line (the writer was killed mid-write) is skipped: that call
will be sent again; so is a line that no longer parses when it is read (a damaged
file), with a warning. Reading back only parses JSON: nothing is ever executed.
Failed calls are not recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger("stillhouse.llms.record")

RECORD_GLOB = "calls-*.jsonl"

_PREFIX = b'{"key": "'
"""How every record line starts (`json.dumps` of `{"key": ..., "response": ...}`): the
key is read from the line without parsing the response."""

_KEY_CHARS = 64  # a sha256 hex digest
_HEX = b"0123456789abcdef"


def request_key(request: dict[str, Any], generation: int) -> str:
    """The record key of one call: sha256 over the sorted JSON of what is sent."""
    payload = json.dumps({"request": request, "generation": generation}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class CallRecord:
    """The finished calls of one step, read from and appended to `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._paths: list[Path] = []
        self._readers: dict[int, int] = {}  # path number -> a descriptor open for reading
        self._where: dict[str, tuple[int, int, int]] = {}  # key -> (path number, offset, length)
        # Other lines of a key (a call answered again after its line was found damaged):
        # tried in turn when the first no longer parses.
        self._spare: dict[str, list[tuple[int, int, int]]] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path = self.folder / f"calls-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._own: int | None = None  # the path number of `_path`, once written
        self._written = 0  # bytes this writer appended to `_path`
        for path in sorted(self.folder.glob(RECORD_GLOB)):
            self._index(path)

    def _index(self, path: Path) -> None:
        number = len(self._paths)
        self._paths.append(path)
        offset = 0
        with path.open("rb") as handle:
            for line in handle:
                length = len(line)
                if line.endswith(b"\n"):  # else a torn last line: the call did not finish
                    key = _key_of(line)
                    if key is None:
                        logger.debug("Skipping unreadable line at byte %d of %s", offset, path)
                    elif key in self._where:
                        self._spare.setdefault(key, []).append((number, offset, length))
                    else:
                        self._where[key] = (number, offset, length)
                offset += length

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: str) -> Any | None:
        """The recorded answer to `key`, or None (never recorded, or unreadable now)."""
        while True:
            with self._lock:
                where = self._where.get(key)
                if where is None:
                    return None
                number, offset, length = where
                fd = self._readers.get(number)
                if fd is None:
                    fd = self._readers[number] = os.open(self._paths[number], os.O_RDONLY)
            line = os.pread(fd, length, offset)
            try:
                item = json.loads(line)
                if item["key"] != key:
                    raise ValueError("the line holds another key")
                return item["response"]
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("The recorded answer at byte %d of %s is damaged (%s); it is not used.",
                               offset, self._paths[number], exc)
            with self._lock:  # try the key's next line, if any; else the call is sent again
                spare = self._spare.get(key)
                if spare:
                    self._where[key] = spare.pop(0)
                else:
                    self._where.pop(key, None)

    def put(self, key: str, response: Any) -> None:
        data = (json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._own = len(self._paths)
                self._paths.append(self._path)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._where[key] = (self._own, self._written, len(data))
            self._written += len(data)

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, *self._readers.values()):
                if fd is not None:
                    os.close(fd)
            self._fd = None
            self._readers.clear()


def _key_of(line: bytes) -> str | None:
    """The key of a complete record line: read from its start when it is laid out as
    this module writes it, else by parsing the line; None if it holds none."""
    end = len(_PREFIX) + _KEY_CHARS
    if line.startswith(_PREFIX) and line[end:end + 1] == b'"':
        key = line[len(_PREFIX):end]
        if not key.translate(None, _HEX):  # hex digits only
            return key.decode()
    try:
        item = json.loads(line)
        return str(item["key"])
    except (ValueError, KeyError, TypeError):
        return None
