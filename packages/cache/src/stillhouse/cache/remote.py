"""The cache on any fsspec filesystem (`cache_dir="s3://bucket/prefix"`, `memory://`).

Object stores have no append and no rename, but a single PUT is atomic. So a remote
step store keeps one object per output batch (`b-<lineage>-<index>-<rows>.sh`, one
record framed as in the local log: data only, header and payload under one CRC) and
one per routing decision; saving a batch costs one PUT of that batch. `meta.json` is rewritten with one PUT. The lock is a lease object that
a live run refreshes; a lease older than `LEASE_SECONDS` belongs to a dead run.
Only the driver process writes the cache, whatever the executor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

from stillhouse.cache.codec import (
    decode_route,
    decode_rows,
    encode_route,
    encode_rows,
)
from stillhouse.cache.durable import (
    lasting_dir,
    remote_durable_dir,
    remote_lasting_root,
    started_over,
)
from stillhouse.cache.records import BATCH, LAST, ROUTE, Header, frame, unframe
from stillhouse.cache.reuse import Holdings, decide
from stillhouse.cache.signature import routing_identity, signature_table
from stillhouse.cache.store import (
    _suspended_name,
    new_meta,
    parse_meta,
    parse_suspended,
    warn_recomputed,
)
from stillhouse.core.dag import load_stages
from stillhouse.core.engine import BatchKey, BatchRecord, RunStore, StepStore
from stillhouse.core.engine.plan import compile_plan
from stillhouse.core.errors import CacheLockedError, CorruptCacheError
from stillhouse.core.serialization import dumps

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext
    from stillhouse.core.pipeline import Pipeline

logger = logging.getLogger("stillhouse.cache")

LEASE_SECONDS = 300.0
_REFRESH_EVERY = 30.0
_SUFFIX = ".sh"


class Lease:
    """`.lock` object naming its owner; refreshed while the run lives."""

    def __init__(self, fs: Any, path: str, pipeline_name: str) -> None:
        self.fs, self.path = fs, path
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if fs.exists(path):
            try:
                held = json.loads(fs.cat_file(path))
            except (OSError, ValueError):
                held = {}
            age = time.time() - float(held.get("time", 0))
            if age < LEASE_SECONDS:
                raise CacheLockedError(
                    f"Another run of pipeline {pipeline_name!r} ({held.get('owner')}) is using "
                    f"the cache {fs.unstrip_protocol(path)} (its lease was renewed {age:.0f} s "
                    "ago). Wait for it to finish, or give this run another name= or cache_dir=."
                )
        self._written = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self._written > _REFRESH_EVERY:
            self.fs.pipe_file(self.path, json.dumps({"owner": self.owner, "time": time.time()}).encode())
            self._written = time.monotonic()

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)


class RemoteStepStore(StepStore):
    """One object per batch, `b-<lineage>-<index>-<rows>.sh`, and per routing decision,
    `r-<ordinal>.sh`, each one framed record (`records.frame`); the row count in the
    name lets a listing alone check a finished store against its `meta.json`."""

    def __init__(self, fs: Any, root: str, meta: dict[str, Any], lease: Lease) -> None:
        self.fs, self.root, self.meta, self.lease = fs, root, meta, lease
        self.finished = bool(meta.get("finished"))
        self.batching = meta.get("batching")
        self.routing: str | None = None  # the routing function after this step (`routing_identity`)
        self.lasting: Path | None = None  # its lasting folder, on this machine (`RemoteRunStore`)
        self._index: dict[str, set[str]] | None = None
        self._batches: dict[BatchKey, str] | None = None

    @classmethod
    def open(
        cls, fs: Any, root: str, *, lease: Lease, fresh: bool, keyed: bool = False, **identity: Any
    ) -> RemoteStepStore:
        meta = None if fresh else _read_meta(fs, f"{root}/meta.json")
        decision = decide(
            meta, signature=identity["signature"], predecessors=identity["predecessors"],
            batching=identity["batching"], keyed=keyed, fresh="use_cache=False" if fresh else None,
            holdings=lambda: _holdings(_listing(fs, root)),
        )
        if decision.action == "recompute":
            warn_recomputed(decision, identity["step"], fs.unstrip_protocol(root))
            if fs.exists(root):
                fs.rm(root, recursive=True)
            meta = new_meta(identity)
            fs.pipe_file(f"{root}/meta.json", json.dumps(meta, indent=2, default=str).encode())
        return cls(fs, root, meta, lease)

    @property
    def generation(self) -> str:
        return self.meta["generation"]

    def durable_dir(self) -> Path:
        return remote_durable_dir(self.fs.unstrip_protocol(self.root), self.generation)

    def lasting_dir(self) -> Path | None:
        return self.lasting

    @property
    def version(self) -> str:
        return f"{self.meta['signature']}:{self.generation}"

    @property
    def index(self) -> set[str]:
        if self._index is None:
            self._index = _listing(self.fs, self.root)
        return self._index

    @property
    def batches(self) -> dict[BatchKey, str]:
        if self._batches is None:
            self._batches = {}
            for name in self.index:
                parsed = _parse_batch_name(name)
                if parsed is not None:
                    self._batches[parsed[0]] = name
        return self._batches

    def _get(self, name: str) -> tuple[Header, bytes, str]:
        path = f"{self.root}/{name}"
        where = self.fs.unstrip_protocol(path)
        header, payload = unframe(self.fs.cat_file(path), where)
        return header, payload, where

    def _put(self, name: str, blob: bytes) -> None:
        self.fs.pipe_file(f"{self.root}/{name}", blob)
        self.index.add(name)
        self.lease.refresh()

    def get(self, key: BatchKey) -> BatchRecord | None:
        name = self.batches.get(key)
        if name is None:
            return None
        header, payload, where = self._get(name)
        rows, error = decode_rows(payload, f"The cache object {where}")
        if (header.kind, header.a, header.b, header.rows) != (BATCH, *key, len(rows)):
            raise CorruptCacheError(
                f"The cache object {where} holds another batch than its name says. Delete its "
                "step folder or run with use_cache=False to recompute this step."
            )
        return BatchRecord(key, rows, bool(header.flags & LAST), error)

    def put(self, record: BatchRecord) -> None:
        payload = encode_rows(record.rows, error=record.error, where=f"an output batch of step {self.meta.get('step')!r}")
        _, blob = frame(BATCH, *record.key, payload, rows=len(record.rows), flags=LAST if record.last else 0)
        name = _batch_name(record.key, len(record.rows))
        self._put(name, blob)
        replaced = self.batches.get(record.key)
        self.batches[record.key] = name
        if replaced is not None and replaced != name:  # a recomputed batch (retry_failed)
            self.fs.rm_file(f"{self.root}/{replaced}")
            self.index.discard(replaced)

    def get_route(self, ordinal: int) -> list[str] | None:
        name = f"r-{ordinal:010d}{_SUFFIX}"
        if name not in self.index:
            return None
        _, payload, where = self._get(name)
        return decode_route(payload, self.routing, f"The cache object {where}")

    def put_route(self, ordinal: int, successors: list[str]) -> None:
        self._put(f"r-{ordinal:010d}{_SUFFIX}", frame(ROUTE, ordinal, 0, encode_route(successors, self.routing))[1])

    def records(self) -> Iterator[BatchRecord]:
        for key in sorted(self.batches):
            yield self.get(key)  # type: ignore[misc]

    def put_suspended(self, key: BatchKey, state: dict[str, Any] | None) -> None:
        name = _suspended_name(key)
        if state is None:
            if name in self.index:
                self.fs.rm(f"{self.root}/{name}")
                self.index.discard(name)
        else:
            self.fs.pipe_file(f"{self.root}/{name}", json.dumps(state).encode())
            self.index.add(name)

    def get_suspended(self, key: BatchKey) -> dict[str, Any] | None:
        name = _suspended_name(key)
        if name not in self.index:  # the store's one listing, not a request per batch
            return None
        path = f"{self.root}/{name}"
        return parse_suspended(self.fs.cat_file(path), self.fs.unstrip_protocol(path))

    def mark_finished(self) -> None:
        found = _holdings(self.index)
        self.meta = {**self.meta, "finished": True, "batches": found.batches, "rows": found.rows}
        self.finished = True
        self.fs.pipe_file(f"{self.root}/meta.json", json.dumps(self.meta, indent=2, default=str).encode())


def _batch_name(key: BatchKey, rows: int) -> str:
    return f"b-{key[0]:010d}-{key[1]:010d}-{rows}{_SUFFIX}"


def _parse_batch_name(name: str) -> tuple[BatchKey, int] | None:
    if not (name.startswith("b-") and name.endswith(_SUFFIX)):
        return None
    try:
        _, lineage, index, rows = name.removesuffix(_SUFFIX).split("-")
        return (int(lineage), int(index)), int(rows)
    except ValueError:
        return None


def _listing(fs: Any, root: str) -> set[str]:
    try:
        names = fs.ls(root, detail=False, refresh=True)
    except FileNotFoundError:
        names = []
    except TypeError:  # filesystems whose `ls` takes no `refresh`
        names = fs.ls(root, detail=False)
    return {name.rsplit("/", 1)[-1] for name in names}


def _holdings(names: set[str]) -> Holdings:
    parsed = [p for p in map(_parse_batch_name, names) if p is not None]
    return Holdings(len(parsed), sum(rows for _, rows in parsed))


def _read_meta(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return parse_meta(blob, fs.unstrip_protocol(path), fs.unstrip_protocol(path.rsplit("/", 1)[0]))


class RemoteRunStore(RunStore):
    """The layout of `run_store.py`, on an fsspec URL."""

    def __init__(self, context: RunContext) -> None:
        pipeline: Pipeline = context.pipeline
        use_cache, fresh_steps = context.use_cache, context.fresh_steps
        self.context = context
        self.plan = context.plan or compile_plan(pipeline.dag)
        self.pipeline = pipeline
        self.fs, root = fsspec.core.url_to_fs(pipeline.cache_dir)
        self.base = f"{root.rstrip('/')}/{pipeline.name}"
        self.run_path = f"{self.base}/{pipeline.signature}"
        self.run_dir = self.fs.unstrip_protocol(self.run_path)
        self.lease = Lease(self.fs, f"{self.base}/.lock", pipeline.name)
        try:  # whatever fails from here on frees the lease for the next run
            self.fresh = set(fresh_steps) if use_cache else set(pipeline.dag.step_names)
            self.started_over = started_over(pipeline, use_cache)
            self.signatures, self.parts = signature_table(pipeline.dag, enable_metadata=pipeline.enable_metadata)
            self.stores: dict[str, RemoteStepStore] = {}
            self._log = Path(tempfile.mkdtemp(prefix="stillhouse-log-")) / "pipeline.log"
            self._put_text("pipeline.yaml", dumps(pipeline.dump(), "yaml"))
            try:
                stages = load_stages(pipeline.dag, None)
            except Exception:
                stages = []
            self._put_text("stages.json", json.dumps({"stages": stages}, indent=2))
        except BaseException:
            self.lease.release()
            raise

    def _put_text(self, name: str, text: str) -> None:
        self.fs.pipe_file(f"{self.run_path}/{name}", text.encode("utf-8"))

    def step_store(self, name: str, batching: int | None = None) -> StepStore:
        dag = self.pipeline.dag
        signature = self.signatures[name]
        store = RemoteStepStore.open(
            self.fs,
            f"{self.base}/steps/{name}-{signature[:20]}",
            lease=self.lease,
            fresh=name in self.fresh,
            keyed=self.plan.region_of[name] is not None,
            step=name,
            signature=signature,
            batching=None if dag.get_step(name).is_generator else batching,
            predecessors={p: self.stores[p].generation for p in dag.predecessors(name)},
            parts=self.parts[name],
        )
        store.routing = routing_identity(dag, name)
        store.lasting = lasting_dir(
            remote_lasting_root(self.fs.unstrip_protocol(self.base)) / name, empty=name in self.started_over
        )
        self.stores[name] = store
        return store

    def data_dir(self) -> str:
        return f"{self.run_dir}/data"

    def log_file(self) -> Path:
        return self._log

    def save_progress(self, progress: dict[str, Any]) -> None:
        steps = {row["step"]: row for row in progress.get("steps", [])}
        for name, store in self.stores.items():
            steps.setdefault(name, {}).update(
                {"signature": self.signatures[name], "generation": store.generation, "finished": store.finished}
            )
        self._put_text("batch_manager.json", json.dumps(
            {"completed": progress.get("completed", False), "steps": steps}, indent=2, default=str))

    def sync(self) -> None:
        if self._log.exists():
            self.fs.put_file(str(self._log), f"{self.run_path}/pipeline.log")

    def close(self, *, completed: bool) -> None:
        try:
            self.sync()
        finally:
            self.lease.release()
