"""The cache on any fsspec filesystem (`cache_dir="s3://bucket/prefix"`, `memory://`).

Object stores have no append and no rename, but a single PUT is atomic. So a remote
step store keeps one object per output batch (`b-<lineage>-<index>.pkl`, framed with
a CRC like the local log) and one per routing decision; saving a batch costs one PUT
of that batch. `meta.json` is rewritten with one PUT. The lock is a lease object that
a live run refreshes; a lease older than `LEASE_SECONDS` belongs to a dead run.
Only the driver process writes the cache, whatever the executor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import socket
import struct
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

from stillhouse.cache.durable import remote_durable_dir
from stillhouse.cache.signature import step_signature_parts, step_signatures
from stillhouse.cache.store import FORMAT, _suspended_name, parse_meta, parse_suspended
from stillhouse.core.dag import load_stages, routing_context
from stillhouse.core.engine import BatchKey, BatchRecord, RunStore, StepStore
from stillhouse.core.errors import CacheLockedError, CorruptCacheError
from stillhouse.core.serialization import dumps

if TYPE_CHECKING:
    from stillhouse.core.pipeline import Pipeline

logger = logging.getLogger("stillhouse.cache")

LEASE_SECONDS = 300.0
_REFRESH_EVERY = 30.0
_FRAME = struct.Struct("<2sII")


def _frame(payload: Any) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(b"SH", len(data), zlib.crc32(data)) + data


def _unframe(blob: bytes, url: str) -> Any:
    magic, length, crc = _FRAME.unpack_from(blob)
    data = blob[_FRAME.size:]
    if magic != b"SH" or len(data) != length or zlib.crc32(data) != crc:
        raise CorruptCacheError(
            f"The cache object {url} is damaged. Delete its step folder or run with "
            "use_cache=False to recompute this step."
        )
    return pickle.loads(data)


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
    def __init__(self, fs: Any, root: str, meta: dict[str, Any], lease: Lease) -> None:
        self.fs, self.root, self.meta, self.lease = fs, root, meta, lease
        self.finished = bool(meta.get("finished"))
        self.batching = meta.get("batching")
        self._index: dict[str, set[str]] | None = None

    @classmethod
    def open(
        cls, fs: Any, root: str, *, lease: Lease, fresh: bool, keyed: bool = False, **identity: Any
    ) -> RemoteStepStore:
        meta = None if fresh else _read_meta(fs, f"{root}/meta.json")
        reusable = (
            meta is not None
            and meta.get("signature") == identity["signature"]
            and meta.get("predecessors") == identity["predecessors"]
            and ((meta.get("finished") and not keyed) or meta.get("batching") == identity["batching"])
        )
        if not reusable:
            if fs.exists(root):
                fs.rm(root, recursive=True)
            meta = {"format": FORMAT, "generation": uuid.uuid4().hex, "finished": False, **identity}
            fs.pipe_file(f"{root}/meta.json", json.dumps(meta, indent=2, default=str).encode())
        return cls(fs, root, meta, lease)

    @property
    def generation(self) -> str:
        return self.meta["generation"]

    def durable_dir(self) -> Path:
        return remote_durable_dir(self.fs.unstrip_protocol(self.root), self.generation)

    @property
    def index(self) -> set[str]:
        if self._index is None:
            try:
                names = self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                names = []
            self._index = {name.rsplit("/", 1)[-1] for name in names}
        return self._index

    def _get(self, name: str) -> Any:
        if name not in self.index:
            return None
        path = f"{self.root}/{name}"
        return _unframe(self.fs.cat_file(path), self.fs.unstrip_protocol(path))

    def _put(self, name: str, payload: Any) -> None:
        self.fs.pipe_file(f"{self.root}/{name}", _frame(payload))
        self.index.add(name)
        self.lease.refresh()

    def get(self, key: BatchKey) -> BatchRecord | None:
        found = self._get(_batch_name(key))
        return None if found is None else BatchRecord(key, *found)

    def put(self, record: BatchRecord) -> None:
        self._put(_batch_name(record.key), (record.rows, record.last, record.error))

    def get_route(self, ordinal: int) -> list[str] | None:
        return self._get(f"r-{ordinal:010d}.pkl")

    def put_route(self, ordinal: int, successors: list[str]) -> None:
        self._put(f"r-{ordinal:010d}.pkl", list(successors))

    def records(self) -> Iterator[BatchRecord]:
        for name in sorted(n for n in self.index if n.startswith("b-")):
            _, lineage, index = name.removesuffix(".pkl").split("-")
            yield self.get((int(lineage), int(index)))  # type: ignore[misc]

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
        self.meta = {**self.meta, "finished": True}
        self.finished = True
        self.fs.pipe_file(f"{self.root}/meta.json", json.dumps(self.meta, indent=2, default=str).encode())


def _batch_name(key: BatchKey) -> str:
    return f"b-{key[0]:010d}-{key[1]:010d}.pkl"


def _read_meta(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return parse_meta(blob, fs.unstrip_protocol(path), fs.unstrip_protocol(path.rsplit("/", 1)[0]))


class RemoteRunStore(RunStore):
    """The layout of `run_store.py`, on an fsspec URL."""

    def __init__(self, pipeline: Pipeline, *, use_cache: bool, fresh_steps: set[str]) -> None:
        self.pipeline = pipeline
        self.fs, root = fsspec.core.url_to_fs(pipeline.cache_dir)
        self.base = f"{root.rstrip('/')}/{pipeline.name}"
        self.run_path = f"{self.base}/{pipeline.signature}"
        self.run_dir = self.fs.unstrip_protocol(self.run_path)
        self.lease = Lease(self.fs, f"{self.base}/.lock", pipeline.name)
        self.fresh = set(fresh_steps) if use_cache else set(pipeline.dag.step_names)
        self.signatures = step_signatures(pipeline.dag)
        self.stores: dict[str, RemoteStepStore] = {}
        self._log = Path(tempfile.mkdtemp(prefix="stillhouse-log-")) / "pipeline.log"
        self._put_text("pipeline.yaml", dumps(pipeline.dump(), "yaml"))
        try:
            stages = load_stages(pipeline.dag, None)
        except Exception:
            stages = []
        self._put_text("stages.json", json.dumps({"stages": stages}, indent=2))

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
            keyed=routing_context(dag, name) is not None,
            step=name,
            signature=signature,
            batching=None if dag.get_step(name).is_generator else batching,
            predecessors={p: self.stores[p].generation for p in dag.predecessors(name)},
            parts=step_signature_parts(dag, name, self.signatures),
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
