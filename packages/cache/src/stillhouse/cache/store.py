"""One step's stored output batches: `meta.json` plus an append-only `batches.log`."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stillhouse.cache.atomic import atomic_write_json
from stillhouse.cache.durable import local_durable_dir
from stillhouse.cache.records import BATCH, ROUTE, RecordLog
from stillhouse.core.engine import BatchKey, BatchRecord, StepStore
from stillhouse.core.errors import CorruptCacheError

FORMAT = 1
META = "meta.json"
LOG = "batches.log"


def read_meta(directory: Path) -> dict[str, Any] | None:
    path = directory / META
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CorruptCacheError(
            f"The cache file {path} cannot be read ({exc}). Delete {directory} or run with "
            "use_cache=False to recompute this step."
        ) from exc
    return parse_meta(text, str(path), str(directory))


def parse_meta(text: str | bytes, where: str, folder: str) -> dict[str, Any]:
    """A step store's `meta.json`, checked; shared by the local and the remote store."""
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CorruptCacheError(
            f"The cache file {where} cannot be read ({exc}). Delete {folder} or run with "
            "use_cache=False to recompute this step."
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCacheError(
            f"The cache file {where} was not written by this version of stillhouse. Delete "
            f"{folder} or run with use_cache=False to recompute this step."
        )
    return meta


class FileStepStore(StepStore):
    """Batches are looked up by key through an in-memory index of the log's headers.

    The log is opened lazily: a step whose finished outputs nobody needs costs one
    small JSON read."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory = directory
        self.meta = meta
        self.finished = bool(meta.get("finished"))
        self.batching = meta.get("batching")
        self._log: RecordLog | None = None
        self._batches: dict[BatchKey, int] = {}
        self._routes: dict[int, int] = {}
        self._suspended: set[str] | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        step_name: str,
        signature: str,
        batching: int | None,
        predecessors: dict[str, str],
        fresh: bool,
        parts: dict[str, Any] | None = None,
        keyed: bool = False,
    ) -> FileStepStore:
        """Open the store, starting it over when its contents cannot be reused.

        `keyed`: the step is replayed batch by batch even once finished (it sits inside
        routed branches), so its batches are only reusable if cut with the same size.
        `parts` (what the signature hashes) are kept so `stillhouse cache explain` can
        say which of them changed when a later signature differs."""
        meta = None if fresh else read_meta(directory)
        reusable = (
            meta is not None
            and meta.get("signature") == signature
            and meta.get("predecessors") == predecessors
            and ((meta.get("finished") and not keyed) or meta.get("batching") == batching)
        )
        if not reusable:
            if directory.exists():
                shutil.rmtree(directory)
            meta = {
                "format": FORMAT,
                "step": step_name,
                "signature": signature,
                "generation": uuid.uuid4().hex,
                "batching": batching,
                "predecessors": predecessors,
                "finished": False,
                "parts": parts,
            }
            atomic_write_json(directory / META, meta)
        return cls(directory, meta)

    @property
    def generation(self) -> str:
        return self.meta["generation"]

    def durable_dir(self) -> Path:
        return local_durable_dir(self.directory)

    @property
    def log(self) -> RecordLog:
        if self._log is None:
            self._log = RecordLog(self.directory / LOG)
            for kind, a, b, offset in self._log.index:
                if kind == BATCH:
                    self._batches[(a, b)] = offset
                elif kind == ROUTE:
                    self._routes[a] = offset
        return self._log

    def get(self, key: BatchKey) -> BatchRecord | None:
        log = self.log
        offset = self._batches.get(key)
        if offset is None:
            return None
        rows, last, error = log.read(offset)
        return BatchRecord(key, rows, last, error)

    def put(self, record: BatchRecord) -> None:
        self.log.append(BATCH, record.key[0], record.key[1], (record.rows, record.last, record.error))
        self._batches[record.key] = self.log.index[-1][3]

    def get_route(self, ordinal: int) -> list[str] | None:
        log = self.log
        offset = self._routes.get(ordinal)
        return None if offset is None else log.read(offset)

    def put_route(self, ordinal: int, successors: list[str]) -> None:
        self.log.append(ROUTE, ordinal, 0, list(successors))
        self._routes[ordinal] = self.log.index[-1][3]

    def records(self) -> Iterator[BatchRecord]:
        log = self.log
        for key in sorted(self._batches):
            rows, last, error = log.read(self._batches[key])
            yield BatchRecord(key, rows, last, error)

    def put_suspended(self, key: BatchKey, state: dict[str, Any] | None) -> None:
        name = _suspended_name(key)
        if state is None:
            (self.directory / name).unlink(missing_ok=True)
            self.suspended_names.discard(name)
        else:
            atomic_write_json(self.directory / name, state)
            self.suspended_names.add(name)

    def get_suspended(self, key: BatchKey) -> dict[str, Any] | None:
        name = _suspended_name(key)
        if name not in self.suspended_names:  # one listing per run, not a stat per batch
            return None
        path = self.directory / name
        return parse_suspended(path.read_bytes(), str(path))

    @property
    def suspended_names(self) -> set[str]:
        if self._suspended is None:
            self._suspended = {path.name for path in self.directory.glob("suspended-*.json")}
        return self._suspended

    def mark_finished(self) -> None:
        if self._log is not None:
            self._log.sync()  # the batches must be durable before "finished" is
        self.meta = {**self.meta, "finished": True}
        self.finished = True
        atomic_write_json(self.directory / META, self.meta)

    def sync(self) -> None:
        if self._log is not None:
            self._log.sync()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def parse_suspended(text: str | bytes, where: str) -> dict[str, Any]:
    """A suspended batch's saved state (`{"state": ..., "retry_after": ...}`), checked."""
    try:
        saved = json.loads(text)
    except ValueError as exc:
        saved = exc
    if not isinstance(saved, dict) or "state" not in saved:
        raise CorruptCacheError(
            f"The suspended-step state {where} cannot be read ({saved!r:.100}). Delete it to "
            "start that batch over, or run with use_cache=False."
        )
    return saved


def _suspended_name(key: BatchKey) -> str:
    """The JSON file holding what a step saved when it suspended on batch `key`."""
    return f"suspended-{key[0]}-{key[1]}.json"
