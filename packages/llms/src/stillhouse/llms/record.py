"""The call record: every finished LLM call, kept in the step's durable folder, so a
stopped, killed or crashed run never pays for the same request twice.

Key: a hash of what was sent and where (the endpoint's URL, model, messages,
generation arguments, the structured-output schema, the generation index). Value: the response as JSON, after
a checksum of its bytes (a line whose bytes changed is never answered from). Each
writer appends to its own `calls-<id>.jsonl` with one `write()` per record (no
buffering, so a SIGKILL loses at most the call in flight), each record one line.

Opening a record indexes it: where each key's line is, not the answers, so a resumed
replica holds about 300 bytes per recorded call instead of the parsed responses
(100,000 calls of 1 KB: 30 MB instead of 300 MB). An answer is read and parsed when
asked for. A torn last line (the writer was killed mid-write) is skipped: that call
will be sent again; so is a line that no longer parses when it is read (a damaged
file, or one whose response no longer matches its checksum), with a warning. Reading
back only parses JSON: nothing is ever executed.
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
"""How every record line starts: `{"key": "<key>", "check": "<check>", "response": <JSON>}`;
the key is read from the line without parsing the response."""

_LINE = '{{"key": "{key}", "check": "{check}", "response": '
"""A line up to its response (`_check` of the response's bytes); the line ends with the
response's JSON and `}\n`."""


def _check(response: bytes) -> str:
    """The checksum of a response's JSON bytes, as its line holds it."""
    return hashlib.sha256(response).hexdigest()[:32]

_KEY_CHARS = 64  # a sha256 hex digest
_HEX = b"0123456789abcdef"


def request_key(request: dict[str, Any], generation: int, endpoint: str | None) -> str:
    """The record key of one call: sha256 over the sorted JSON of what is sent and where
    (the record outlives the step's versions, and another server's answers are not these)."""
    payload = json.dumps({"request": request, "generation": generation, "endpoint": endpoint},
                         sort_keys=True, default=str)
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
                return _response_of(line, key)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("The recorded answer at byte %d of %s is damaged (%s); it is not used.",
                               offset, self._paths[number], exc)
            self.discard(key)

    def discard(self, key: str) -> None:
        """Stop answering `key` with the line `get` read (damaged, or an answer the caller
        cannot use): its next line answers, if any; else the call is sent again."""
        with self._lock:
            spare = self._spare.get(key)
            if spare:
                self._where[key] = spare.pop(0)
            else:
                self._where.pop(key, None)

    def put(self, key: str, response: Any) -> None:
        body = json.dumps(response, ensure_ascii=False).encode()
        data = _LINE.format(key=key, check=_check(body)).encode() + body + b"}\n"
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


def _response_of(line: bytes, key: str) -> Any:
    """The response a record line holds for `key`; ValueError when the line is not one
    this module wrote for it or its response's bytes no longer match their checksum."""
    head = _PREFIX + key.encode() + b'", "check": "'
    middle = b'", "response": '
    check = line[len(head):len(head) + 32]
    body = line[len(head) + 32 + len(middle):-2]
    if not (line.startswith(head) and line[len(head) + 32:].startswith(middle) and line.endswith(b"}\n")):
        raise ValueError("the line is not a record of this call")
    if _check(body).encode() != check:
        raise ValueError("its response does not match its checksum")
    return json.loads(body)


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
