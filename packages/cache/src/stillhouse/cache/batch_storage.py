"""Batch data passed to workers through any fsspec filesystem (`use_fs_to_pass_data`)."""

from __future__ import annotations

import pickle
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec

from stillhouse.core.engine import BatchKey, BatchStorage, Payload
from stillhouse.core.typing import Row


@dataclass(frozen=True)
class FsPayload(Payload):
    """Pickles to a URL and options, so a worker on any node can load it."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> list[list[Row]]:
        with fsspec.open(self.url, "rb", **self.options) as handle:
            return pickle.load(handle)


class FsBatchStorage(BatchStorage):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.options = dict(options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.options)
        self.shared_between_processes = "memory" not in _protocols(self.fs)
        self.run_id = uuid.uuid4().hex[:12]

    def put(self, step_name: str, key: BatchKey, inputs: list[list[Row]]) -> Payload:
        path = f"{self.root}/{self.run_id}/{step_name}/{key[0]}-{key[1]}.pkl"
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as handle:
            pickle.dump(inputs, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return FsPayload(self.fs.unstrip_protocol(path), self.options)

    def discard(self, payload: Payload) -> None:
        assert isinstance(payload, FsPayload)
        self.fs.rm(fsspec.core.url_to_fs(payload.url, **self.options)[1])


def _protocols(fs: Any) -> set[str]:
    protocol = fs.protocol
    return set(protocol) if isinstance(protocol, tuple | list) else {protocol}
