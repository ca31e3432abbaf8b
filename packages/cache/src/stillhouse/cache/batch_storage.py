"""Batch data passed to workers through any filesystem (`use_fs_to_pass_data`).

Paths are `universal_pathlib.UPath`s, so a local folder, `memory://` or `s3://...`
behave alike; options (credentials, endpoints) are fsspec storage options.
"""

from __future__ import annotations

import logging
import pickle
import uuid
from dataclasses import dataclass, field
from typing import Any

from upath import UPath

from stillhouse.core.engine import BatchKey, BatchStorage, Payload
from stillhouse.core.typing import Row

logger = logging.getLogger("stillhouse.cache")


@dataclass(frozen=True)
class FsPayload(Payload):
    """Pickles to a URL and options, so a worker on any node can load it."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> list[list[Row]]:
        path = UPath(self.url, **self.options)
        # A worker's filesystem instance may have listed this folder before the file
        # existed (s3fs caches listings): forget that, the file is there now.
        path.fs.invalidate_cache(path.path)
        with path.open("rb") as handle:
            return pickle.load(handle)


class FsBatchStorage(BatchStorage):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = str(url).rstrip("/")
        self.options = dict(options or {})
        self.root = UPath(self.url, **self.options) / uuid.uuid4().hex[:12]
        protocol = self.root.protocol or "file"
        # `memory://` lives in one process: workers elsewhere would see nothing.
        self.shared_between_processes = protocol != "memory"

    def put(self, step_name: str, key: BatchKey, inputs: list[list[Row]]) -> Payload:
        path = self.root / step_name / f"{key[0]}-{key[1]}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.debug("Batch %s of step %r goes through %s", key, step_name, path)
        with path.open("wb") as handle:
            pickle.dump(inputs, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return FsPayload(str(path), self.options)

    def discard(self, payload: Payload) -> None:
        assert isinstance(payload, FsPayload)
        UPath(payload.url, **self.options).unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Remove this run's folder (payloads no batch will read again) and the shared
        parent (`batch_data/`) when nothing else is left in it."""
        if self.root.exists():
            self.root.fs.rm(self.root.path, recursive=True)
        parent = self.root.parent
        try:
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        except OSError:  # another run wrote into it meanwhile: leave it
            pass
