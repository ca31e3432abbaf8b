"""The call record: every finished LLM call, kept in the step's durable folder, so a
stopped, killed or crashed run never pays for the same request twice.

Key: a hash of what was sent (model, messages, generation arguments, the
structured-output schema, the generation index). Value: the response as JSON. Each
writer appends to its own `calls-<id>.jsonl` with one `write()` per record (no
buffering, so a SIGKILL loses at most the call in flight); readers load every
`calls-*.jsonl` and skip a torn last line. Reading back only parses JSON: nothing
is ever executed. Failed calls are not recorded.
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


def request_key(request: dict[str, Any], generation: int) -> str:
    """The record key of one call: sha256 over the sorted JSON of what is sent."""
    payload = json.dumps({"request": request, "generation": generation}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class CallRecord:
    """The finished calls of one step, read from and appended to `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._answers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path = self.folder / f"calls-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._load()

    def _load(self) -> None:
        for path in sorted(self.folder.glob(RECORD_GLOB)):
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    try:
                        item = json.loads(line)
                        self._answers[item["key"]] = item["response"]
                    except (ValueError, KeyError, TypeError):
                        # A torn line (the writer was killed mid-write) is a call that
                        # did not finish: it will be sent again.
                        logger.debug("Skipping unreadable line %d of %s", number, path)

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> Any | None:
        return self._answers.get(key)

    def put(self, key: str, response: Any) -> None:
        data = (json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._answers[key] = response

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
