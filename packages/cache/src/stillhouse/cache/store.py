"""One step's stored output batches: `meta.json` plus an append-only `batches.log`.

`meta.json` records who wrote the batches (step, signature and its parts, the
generations of the predecessors' outputs they were made from), a `generation` of
its own, the input batch size, and, once the step finished, how many batches and
rows the log holds, its length in bytes, and what a replay gives: its rows out
(`rows_out`) and how many of its batches recorded a failure (`failed_batches`), both
shown by the run summary when a later run reuses the step whole. `reuse.decide`
compares all of that with the live pipeline and the log before anything is reused.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stillhouse.cache.atomic import atomic_write_json, disk_errors, private_dirs
from stillhouse.cache.codec import (
    Blob,
    ColumnMemo,
    decode_blob,
    decode_route,
    encode_batch,
    encode_route,
    join_columns,
    pack,
    split_columns,
    table_rows,
    unpack,
)
from stillhouse.cache.durable import local_durable_dir
from stillhouse.cache.records import (
    BATCH,
    BLOB,
    FAILED,
    IDENTITY,
    LAST,
    ROUTE,
    Header,
    RecordLog,
    iter_headers,
)
from stillhouse.cache.reuse import FORMAT, Decision, Holdings, decide
from stillhouse.core.engine import BatchKey, BatchRecord, StepStore
from stillhouse.core.errors import CorruptCacheError

logger = logging.getLogger("stillhouse.cache")

META = "meta.json"
LOG = "batches.log"
_BLOB_ID = struct.Struct("<qq")  # a blob's 16-byte digest as the header's `a` and `b`
FLAGGED = "failures_flagged"
"""In `meta.json`: every batch of the log was written with `FAILED` where it failed, so
its failures can be counted from the headers. A store begun by an older version lacks it,
and its `failed_batches` is never recorded (the summary then cannot say)."""


def read_meta(directory: Path) -> dict[str, Any] | None:
    path = directory / META
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptCacheError(
            f"The cache file {path} cannot be read ({exc}). Delete {directory} or run with "
            "use_cache=False to recompute this step."
        ) from exc
    return parse_meta(text, str(path), str(directory))


def parse_meta(text: str | bytes, where: str, folder: str) -> dict[str, Any]:
    """A step store's `meta.json`, checked; shared by the local and the remote store.

    A `meta.json` of an older format is returned as it is (`reuse.decide` discards it)."""
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CorruptCacheError(
            f"The cache file {where} cannot be read ({exc}). Delete {folder} or run with "
            "use_cache=False to recompute this step."
        ) from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("format"), int) or meta["format"] > FORMAT:
        raise CorruptCacheError(
            f"The cache file {where} was not written by this version of stillhouse. Delete "
            f"{folder} or run with use_cache=False to recompute this step."
        )
    return meta


def log_holdings(path: Path, *, count: bool = False) -> Holdings | None:
    """What a log holds (None: there is no log): its size, and with `count` its batches
    and rows from a walk over its headers. Opening a store only needs the size (one
    `stat`); the counts are checked when the log is first read (`FileStepStore.log`)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if not count:
        return Holdings(None, None, size)
    try:
        batches = [h for h in iter_headers(path) if h.kind == BATCH]
    except CorruptCacheError:
        return Holdings(-1, -1, size)
    return Holdings(len(batches), sum(h.rows for h in batches), size)


def new_meta(identity: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "generation": uuid.uuid4().hex, "finished": False, **identity}


def warn_recomputed(decision: Decision, step: str, where: str) -> None:
    if decision.damaged:
        logger.warning(
            "The stored outputs of step %r in %s cannot be trusted: %s. Recomputing the step.",
            step, where, decision.reason,
        )


class FileStepStore(StepStore):
    """Batches are looked up by key through an in-memory index of the log's headers.

    The log is opened lazily: a step whose finished outputs nobody needs costs one
    small JSON read and a walk over the log's headers.

    Large columns are stored once per content (`codec.split_columns`): a batch refers to
    a blob in its own log or in the log of one of its `ancestors`, the stores of the
    steps upstream of it. Those can only change with a new generation, which makes
    this store's outputs unusable too (`reuse.decide`), so a reference never outlives
    the blob; a blob that was lost anyway (power loss before an fsync) fails its digest
    check and the batch is reported damaged, never read. The `ancestors`' logs are
    fsynced before this store's (`RecordLog.upstream`)."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory = directory
        self.meta = meta
        self.finished = bool(meta.get("finished"))
        self.batching = meta.get("batching")
        self.step_name = meta.get("step", directory.name)
        self._log: RecordLog | None = None
        self._batches: dict[BatchKey, Header] = {}
        self._routes: dict[int, Header] = {}
        self._blobs: dict[bytes, Header] = {}
        self._suspended: set[str] | None = None
        self.ancestors: list[FileStepStore] = []
        self.memo: ColumnMemo | None = None  # shared by the stores of a run (`FileRunStore`)
        self.routing: str | None = None  # the routing function after this step (`routing_identity`)
        self.lasting: Path | None = None  # its lasting folder (`FileRunStore`)

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        step_name: str,
        signature: str,
        batching: int | None,
        predecessors: dict[str, str],
        fresh: bool | str,
        parts: dict[str, Any] | None = None,
        keyed: bool = False,
    ) -> FileStepStore:
        """Open the store, starting it over when `reuse.decide` says so.

        `parts` (what the signature hashes) are kept so `stillhouse cache explain` can
        say which of them changed when a later signature differs."""
        identity = {
            "step": step_name, "signature": signature, "batching": batching,
            "predecessors": predecessors, "parts": parts,
        }
        meta = None if fresh else read_meta(directory)
        decision = decide(
            meta, signature=signature, predecessors=predecessors, batching=batching, keyed=keyed,
            fresh="use_cache=False" if fresh else None,
            holdings=lambda: log_holdings(directory / LOG),
        )
        if decision.action == "recompute":
            warn_recomputed(decision, step_name, str(directory / LOG))
            meta = {**new_meta(identity), FLAGGED: True}
            with disk_errors(directory):
                if directory.exists():
                    shutil.rmtree(directory)
                private_dirs(directory)
            atomic_write_json(directory / META, meta)
        assert meta is not None
        return cls(directory, meta)

    @property
    def generation(self) -> str:
        return self.meta["generation"]

    def durable_dir(self) -> Path:
        return local_durable_dir(self.directory)

    def lasting_dir(self) -> Path | None:
        return self.lasting

    @property
    def version(self) -> str:
        return f"{self.meta['signature']}:{self.generation}"

    @property
    def log(self) -> RecordLog:
        if self._log is None:
            with disk_errors(self.directory / LOG, "open"):
                self._log = RecordLog(
                    self.directory / LOG, repair=not self.finished, upstream=self._upstream_logs
                )
            self._check_identity(self._log)
            for header in self._log.index:
                self._index(header)
            if self.finished:
                self._check_counts(self._log)
        return self._log

    def _check_identity(self, log: RecordLog) -> None:
        """A new log gets this store's identity as its first record; an existing one must
        start with it: a log copied over from another step's folder, or from another
        version of this step, holds batches of other rows, and is refused."""
        identity = json.dumps({"generation": self.generation, "step": self.step_name}).encode()
        if not log.index and not self.finished:
            with disk_errors(log.path):
                log.append(IDENTITY, 0, 0, identity)
            return
        first = log.index[0] if log.index else None
        found = log.read(first) if first is not None and first.kind == IDENTITY else None
        try:
            generation = json.loads(found)["generation"] if found is not None else None
        except (ValueError, TypeError, KeyError):
            generation = None
        if generation != self.generation:
            raise CorruptCacheError(
                f"The cache file {log.path} is not the log of this step's stored outputs: it "
                f"does not start with their identity (generation {self.generation}; "
                f"{'none' if generation is None else repr(generation)} found). It was copied "
                f"from another step or version, or damaged. Delete {self.directory} or run "
                "with use_cache=False to recompute this step."
            )

    def _upstream_logs(self) -> list[RecordLog]:
        """The open logs of the stores upstream, upstream first: fsynced before this one's,
        so no batch reaches the disk before the records it was made from (`records.py`).
        `ancestors` holds every store upstream, so one upstream of another has fewer."""
        ordered = sorted(self.ancestors, key=lambda store: len(store.ancestors))
        return [store._log for store in ordered if store._log is not None]

    def _indexed(self) -> FileStepStore:
        """This store, with its log opened and its headers indexed."""
        _ = self.log
        return self

    def _check_counts(self, log: RecordLog) -> None:
        batches = [h for h in log.index if h.kind == BATCH]
        found = (len(batches), sum(h.rows for h in batches))
        if found != (self.meta.get("batches"), self.meta.get("rows")):
            raise CorruptCacheError(
                f"The cache file {log.path} holds {found[0]} batches and {found[1]} rows, but its "
                f"step finished with {self.meta.get('batches')} batches and {self.meta.get('rows')} "
                f"rows ({self.directory / META}). Delete {self.directory} or run with "
                "use_cache=False to recompute this step."
            )

    def _index(self, header: Header) -> None:
        if header.kind == BATCH:
            self._batches[(header.a, header.b)] = header
        elif header.kind == ROUTE:
            self._routes[header.a] = header
        elif header.kind == BLOB:
            self._blobs[_BLOB_ID.pack(header.a, header.b)] = header

    def _where(self, header: Header) -> str:
        return f"The cache file {self.log.path} (record at byte {header.offset})"

    def _record(self, key: BatchKey, header: Header) -> BatchRecord:
        where = self._where(header)
        table = join_columns(unpack(self.log.read(header), where), self._fetch_blob, where)
        rows, error = table_rows(table, where)
        if len(rows) != header.rows:
            raise CorruptCacheError(
                f"{where} holds {len(rows)} rows, its header says {header.rows}. "
                f"Delete {self.directory} or run with use_cache=False to recompute this step."
            )
        return BatchRecord(key, rows, bool(header.flags & LAST), error)

    def get(self, key: BatchKey) -> BatchRecord | None:
        header = self._indexed()._batches.get(key)
        return None if header is None else self._record(key, header)

    def put(self, record: BatchRecord) -> None:
        where = f"an output batch of step {self.step_name!r}"
        batch = encode_batch(record.rows, error=record.error, where=where, memo=self.memo)
        with disk_errors(self.directory / LOG):
            payload = pack(split_columns(batch, self, self.memo))
            header = self.log.append(
                BATCH, record.key[0], record.key[1], payload,
                rows=len(record.rows),
                flags=(LAST if record.last else 0) | (FAILED if record.error is not None else 0),
            )
        self._index(header)

    def has(self, digest: bytes) -> bool:
        """Whether this store or one upstream holds the blob (`codec.BlobSink`)."""
        return self._find_blob(digest) is not None

    def add(self, blob: Blob) -> None:
        header = self.log.append(BLOB, *_BLOB_ID.unpack(blob.digest), blob.parts())
        self._index(header)

    def _find_blob(self, digest: bytes) -> tuple[FileStepStore, Header] | None:
        for store in (self, *self.ancestors):
            header = store._indexed()._blobs.get(digest)
            if header is not None:
                return store, header
        return None

    def _fetch_blob(self, digest: bytes) -> tuple[Any, Any]:
        found = self._find_blob(digest)
        if found is None:
            raise CorruptCacheError(
                f"A batch in the cache file {self.log.path} refers to a column (digest "
                f"{digest.hex()}) that neither it nor the logs of the steps upstream hold. "
                f"Delete {self.directory} or run with use_cache=False to recompute this step."
            )
        store, header = found
        return decode_blob(store.log.read(header), digest, store._where(header))

    def get_route(self, ordinal: int) -> list[str] | None:
        log = self.log
        header = self._routes.get(ordinal)
        return None if header is None else decode_route(log.read(header), self.routing, self._where(header))

    def put_route(self, ordinal: int, successors: list[str]) -> None:
        with disk_errors(self.directory / LOG):
            header = self.log.append(ROUTE, ordinal, 0, encode_route(successors, self.routing))
        self._index(header)

    def records(self) -> Iterator[BatchRecord]:
        for key in sorted(self._indexed()._batches):
            yield self._record(key, self._batches[key])

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
        log = self.log
        with disk_errors(self.directory / LOG):
            log.sync()  # the batches must be durable before "finished" is
        meta = {
            **self.meta,
            "finished": True,
            "batches": sum(1 for h in log.index if h.kind == BATCH),
            "rows": sum(h.rows for h in log.index if h.kind == BATCH),
            # what a replay gives: a batch recomputed by `retry_failed` replaces the failed
            # one, which the log keeps (and "rows" counts)
            "rows_out": sum(h.rows for h in self._batches.values()),
            "log_bytes": log.index[-1].end if log.index else 0,
        }
        if meta.get(FLAGGED):
            meta["failed_batches"] = sum(1 for h in self._batches.values() if h.flags & FAILED)
        self.meta = meta
        self.finished = True
        atomic_write_json(self.directory / META, self.meta)

    def stored_rows(self) -> int | None:
        """`meta.json`'s "rows_out", read when the store was opened; None before the step
        finished, or for a store finished before the count was recorded (its "rows" may
        count a batch `retry_failed` replaced)."""
        rows = self.meta.get("rows_out") if self.finished else None
        return rows if isinstance(rows, int) else None

    def stored_failed_batches(self) -> int | None:
        """`meta.json`'s "failed_batches" (of the batches a replay gives), read when the
        store was opened; None before the step finished, or for a store begun before
        failures were flagged in its log."""
        failed = self.meta.get("failed_batches") if self.finished else None
        return failed if isinstance(failed, int) else None

    def sync(self) -> None:
        if self._log is not None:
            with disk_errors(self.directory / LOG):
                self._log.sync()

    def close(self, *, sync: bool = True) -> None:
        """Close the log, fsyncing it first unless `sync=False` (`RecordLog.close`)."""
        log, self._log = self._log, None
        if log is not None:
            log.close(sync=sync)


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
