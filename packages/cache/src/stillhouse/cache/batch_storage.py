"""Batch data passed to workers through any filesystem (`use_fs_to_pass_data`).

Paths are `universal_pathlib.UPath`s, so a local folder, `memory://` or `s3://...`
behave alike; options (credentials, endpoints) are fsspec storage options. A batch's
inputs are one file `<lineage>-<index>.sh` of framed records (`records.frame`), one
per predecessor, each holding rows in the data-only encoding of `codec.py`: loading
it runs no code. Local files are private to the user.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillhouse.cache.atomic import FILE_MODE, disk_errors, private_dirs
from stillhouse.cache.codec import decode_rows, encode_rows
from stillhouse.cache.records import BATCH, HEADER_SIZE, frame, unframe
from stillhouse.core.engine import BatchKey, BatchStorage, Payload
from stillhouse.core.errors import CorruptCacheError
from stillhouse.core.typing import Row

if TYPE_CHECKING:
    from upath import UPath

logger = logging.getLogger("stillhouse.cache")


def encode_inputs(inputs: list[list[Row]], where: str) -> bytes:
    parts = []
    for position, rows in enumerate(inputs):
        parts.append(frame(BATCH, position, 0, encode_rows(rows, where=where), rows=len(rows))[1])
    return b"".join(parts)


def decode_inputs(blob: bytes, where: str) -> list[list[Row]]:
    inputs, offset = [], 0
    while offset < len(blob):
        length = int.from_bytes(blob[offset + HEADER_SIZE - 8: offset + HEADER_SIZE - 4], "little")
        end = offset + HEADER_SIZE + length
        header, payload = unframe(blob[offset:end], where)
        rows, _ = decode_rows(payload, f"The batch data file {where}")
        if header.a != len(inputs) or header.rows != len(rows):
            raise CorruptCacheError(f"The batch data file {where} is damaged. Run the pipeline again.")
        inputs.append(rows)
        offset = end
    return inputs


@dataclass(frozen=True)
class FsPayload(Payload):
    """Pickles (to a worker) as a URL and options, so a worker on any node can load it."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> list[list[Row]]:
        from upath import UPath

        path = UPath(self.url, **self.options)
        # A worker's filesystem instance may have listed this folder before the file
        # existed (s3fs caches listings): forget that, the file is there now.
        path.fs.invalidate_cache(path.path)
        with path.open("rb") as handle:
            return decode_inputs(handle.read(), self.url)


class FsBatchStorage(BatchStorage):
    def __init__(self, url: str, options: dict[str, Any] | None = None, *, owns_url: bool = False) -> None:
        """`owns_url`: the folder at `url` is ours (the run's `batch_data/`), so `cleanup()`
        may remove it once empty; a folder the user named is left in place."""
        self.url = str(url).rstrip("/")
        self.owns_url = owns_url
        self.options = dict(options or {})
        self.run_id = uuid.uuid4().hex[:12]
        protocol = self.url.split("://", 1)[0] if "://" in self.url else "file"
        self.local = protocol in ("file", "local")
        # `memory://` lives in one process: workers elsewhere would see nothing.
        self.shared_between_processes = protocol != "memory"

    @functools.cached_property
    def root(self) -> UPath:
        """This run's folder. Made on first use: most runs pass no data through files,
        and `upath` (with fsspec) is not worth importing for them."""
        from upath import UPath

        return UPath(self.url, **self.options) / self.run_id

    def put(self, step_name: str, key: BatchKey, inputs: list[list[Row]]) -> Payload:
        path = self.root / step_name / f"{key[0]}-{key[1]}.sh"
        blob = encode_inputs(inputs, f"the inputs of batch {key} of step {step_name!r}")
        if self.local:  # private, and a CacheError naming the file if the disk says no
            target = Path(path.path)
            with disk_errors(target):
                private_dirs(target.parent)
                with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as handle:
                    handle.write(blob)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as handle:
                handle.write(blob)
        logger.debug("Batch %s of step %r goes through %s", key, step_name, path)
        return FsPayload(str(path), self.options)

    def discard(self, payload: Payload) -> None:
        from upath import UPath

        assert isinstance(payload, FsPayload)
        UPath(payload.url, **self.options).unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Remove this run's folder (payloads no batch will read again) and, when it is
        ours, the shared parent (`batch_data/`) once nothing else is left in it."""
        if "root" not in self.__dict__ and self.local:  # nothing went through files
            if self.owns_url:
                with contextlib.suppress(OSError):  # not there, not empty, or another run's
                    os.rmdir(self.url.removeprefix("file://"))
            return
        if self.root.exists():
            self.root.fs.rm(self.root.path, recursive=True)
        if not self.owns_url:
            return
        parent = self.root.parent
        try:
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        except OSError:  # another run wrote into it meanwhile: leave it
            pass
