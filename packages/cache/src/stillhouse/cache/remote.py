"""The cache on any fsspec filesystem (`cache_dir="s3://bucket/prefix"`, `memory://`).

Object stores have no append and no rename, but a single PUT is atomic. So a remote
step store keeps one object per output batch (`b-<lineage>-<index>-<rows>.sh`, one
record framed as in the local log: data only, header and payload under one CRC) and
one per routing decision; saving a batch costs one PUT of that batch. `meta.json` is
rewritten with one PUT. Only the driver process writes the cache, whatever the executor.

The lock is a lease object, `<pipeline>/.lock`, naming the run that holds it (`Lease`):
created only if absent (S3 `If-None-Match: *`), renewed by a heartbeat thread, and
taken over when it expired or when its owner was a process of this machine that is
gone. A run that finds its lease taken over stops writing (`Lease.check`).

Not here: the local cache (`run_store.py`, `store.py`), the rule deciding what is
reused (`reuse.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
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
from stillhouse.cache.lease import Lease
from stillhouse.cache.records import BATCH, LAST, ROUTE, Header, frame, unframe
from stillhouse.cache.reuse import Decision, Holdings, decide
from stillhouse.cache.run_store import run_stages
from stillhouse.cache.signature import routing_identity, signature_table
from stillhouse.cache.store import (
    FLAGGED,
    _suspended_name,
    new_meta,
    parse_meta,
    parse_suspended,
    warn_recomputed,
)
from stillhouse.core.engine import BatchKey, BatchRecord, RunStore, StepStore
from stillhouse.core.engine.plan import compile_plan
from stillhouse.core.errors import CorruptCacheError
from stillhouse.core.serialization import dumps

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext
    from stillhouse.core.pipeline import Pipeline

logger = logging.getLogger("stillhouse.cache")

_SUFFIX = ".sh"


class RemoteStepStore(StepStore):
    """One object per batch, `b-<lineage>-<index>-<rows>.sh`, and per routing decision,
    `r-<ordinal>.sh`, each one framed record (`records.frame`); the row count in the
    name lets a listing alone check a finished store against its `meta.json`, which
    records its batches, rows and routing decisions when the step finishes."""

    def __init__(self, fs: Any, root: str, meta: dict[str, Any], lease: Lease) -> None:
        self.fs, self.root, self.meta, self.lease = fs, root, meta, lease
        self.finished = bool(meta.get("finished"))
        self.batching = meta.get("batching")
        self.routing: str | None = None  # the routing function after this step (`routing_identity`)
        self.lasting: Path | None = None  # its lasting folder, on this machine (`RemoteRunStore`)
        self._index: set[str] | None = None
        self._batches: dict[BatchKey, str] | None = None

    @classmethod
    def open(
        cls, fs: Any, root: str, *, lease: Lease, fresh: bool, keyed: bool = False, **identity: Any
    ) -> RemoteStepStore:
        meta = None if fresh else _read_meta(fs, f"{root}/meta.json")
        listed: list[set[str]] = []  # the listing `decide` asked for (a finished store)

        def holdings() -> Holdings:
            listed.append(_listing(fs, root))
            return _holdings(listed[0])

        decision = decide(
            meta, signature=identity["signature"], predecessors=identity["predecessors"],
            batching=identity["batching"], keyed=keyed, fresh="use_cache=False" if fresh else None,
            holdings=holdings,
        )
        if decision.action == "reuse" and listed:
            decision = _missing_routes(meta, listed[0]) or decision
        if decision.action == "recompute":
            lease.check()
            warn_recomputed(decision, identity["step"], fs.unstrip_protocol(root))
            if fs.exists(root):
                fs.rm(root, recursive=True)
            meta = {**new_meta(identity), FLAGGED: True}
            fs.pipe_file(f"{root}/meta.json", json.dumps(meta, indent=2, default=str).encode())
            listed = [set()]
        store = cls(fs, root, meta, lease)
        if listed:
            store._index = set(listed[0])
        return store

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
        self.lease.check()
        self.fs.pipe_file(f"{self.root}/{name}", blob)
        self.index.add(name)

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
        name = _batch_name(record.key, len(record.rows), failed=record.error is not None)
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
        self.lease.check()
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
        self.lease.check()
        found = _holdings(self.index)
        self.meta = {
            **self.meta, "finished": True, "batches": found.batches, "rows": found.rows,
            "rows_out": found.rows, "routes": _routes(self.index),
        }
        if self.meta.get(FLAGGED):
            self.meta["failed_batches"] = sum(map(_failed, self.batches.values()))
        self.finished = True
        self.fs.pipe_file(f"{self.root}/meta.json", json.dumps(self.meta, indent=2, default=str).encode())

    def stored_rows(self) -> int | None:
        """`meta.json`'s row count, read when the store was opened (a recomputed batch
        replaces its object, so "rows" of a store finished before "rows_out" was recorded
        is right too); None before the step finished."""
        rows = self.meta.get("rows_out", self.meta.get("rows")) if self.finished else None
        return rows if isinstance(rows, int) else None

    def stored_failed_batches(self) -> int | None:
        """`meta.json`'s "failed_batches", read when the store was opened; None before the
        step finished, or for a store begun before batch names said so."""
        failed = self.meta.get("failed_batches") if self.finished else None
        return failed if isinstance(failed, int) else None

    def failed_keys(self) -> set[BatchKey]:
        """From the names of the batches, without reading them (a store begun before
        they said so reads them all)."""
        if not self.meta.get(FLAGGED):
            return super().failed_keys()
        return {key for key, name in self.batches.items() if _failed(name)}


_FAILED = "failed"
"""The last part of the name of a batch that recorded a failure (stores made with
`FLAGGED` in their meta; older ones never name it)."""


def _batch_name(key: BatchKey, rows: int, failed: bool = False) -> str:
    return f"b-{key[0]:010d}-{key[1]:010d}-{rows}{'-' + _FAILED if failed else ''}{_SUFFIX}"


def _parse_batch_name(name: str) -> tuple[BatchKey, int, bool] | None:
    """`(key, rows, failed)` of a batch object's name; None for other objects."""
    if not (name.startswith("b-") and name.endswith(_SUFFIX)):
        return None
    _, *parts = name.removesuffix(_SUFFIX).split("-")
    failed = parts[3:] == [_FAILED]
    try:
        lineage, index, rows = parts[:3] if failed else parts
        return (int(lineage), int(index)), int(rows), failed
    except ValueError:
        return None


def _failed(name: str) -> bool:
    """Whether the batch object `name` recorded a failure."""
    parsed = _parse_batch_name(name)
    return parsed is not None and parsed[2]


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
    return Holdings(len(parsed), sum(rows for _, rows, _ in parsed))


def _routes(names: set[str]) -> int:
    return sum(1 for name in names if name.startswith("r-") and name.endswith(_SUFFIX))


def _missing_routes(meta: dict[str, Any] | None, names: set[str]) -> Decision | None:
    """A finished store that lost routing decisions is damaged, as a local log that lost
    bytes is (`reuse.decide`): reusing it would decide those routes anew. Stores finished
    before the count was recorded are not checked."""
    expected = (meta or {}).get("routes")
    found = _routes(names)
    if expected is None or found == expected:
        return None
    return Decision(
        "recompute",
        f"it holds {found} routing decisions, but it recorded {expected} when it finished",
        damaged=True,
    )


def _read_meta(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return parse_meta(blob, fs.unstrip_protocol(path), fs.unstrip_protocol(path.rsplit("/", 1)[0]))


class RemoteRunStore(RunStore):
    """The layout of `run_store.py`, on an fsspec URL.

    `pipeline.log` is a local file during the run (the log handler appends to it) in a
    temporary folder: it starts with the run folder's remote `pipeline.log`, so earlier
    runs' lines are kept as in a local cache, and is uploaded whole by `sync`; `close`
    removes the folder once the log is uploaded. Inline rows are written beside
    `pipeline.yaml` (`inline_data/<sha>.parquet`), as in a local cache."""

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
        self._scratch = Path(tempfile.mkdtemp(prefix="stillhouse-log-"))  # private (0700)
        self._log = self._scratch / "pipeline.log"
        self._uploaded: tuple[int, int] | None = None  # (size, mtime) of the log last uploaded
        try:  # whatever fails from here on frees the lease for the next run
            self.fresh = set(fresh_steps) if use_cache else set(pipeline.dag.step_names)
            self.started_over = started_over(pipeline, use_cache)
            self.signatures, self.parts = signature_table(pipeline.dag, enable_metadata=pipeline.enable_metadata)
            self.stores: dict[str, RemoteStepStore] = {}
            self._fetch_log()
            self._put_record()
            stages = run_stages(context)
            self._put_text("stages.json", json.dumps({"stages": stages}, indent=2))
        except BaseException:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self.lease.release()
            raise

    def _fetch_log(self) -> None:
        """Start the local log with the remote one: a rerun adds to it, as locally."""
        fd = os.open(self._log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as local:
            try:
                with self.fs.open(f"{self.run_path}/pipeline.log", "rb") as remote:
                    shutil.copyfileobj(remote, local)
            except FileNotFoundError:
                pass

    def _put_record(self) -> None:
        """`pipeline.yaml`, with inline rows in files beside it (`inline_data.write_references`,
        written to a local folder, then uploaded unless the run folder holds them already).
        The files go first, so a `pipeline.yaml` never names one that is not there; it is
        replaced only when it differs."""
        with tempfile.TemporaryDirectory(prefix="stillhouse-record-") as local:
            text = dumps(self.pipeline.dump(inline_dir=local), "yaml")
            listings: dict[str, set[str]] = {}
            for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
                folder, _, name = f"{self.run_path}/{path.relative_to(local).as_posix()}".rpartition("/")
                if folder not in listings:
                    listings[folder] = _listing(self.fs, folder)
                if name not in listings[folder]:
                    self.lease.check()
                    self.fs.put_file(str(path), f"{folder}/{name}")
        self._put_text("pipeline.yaml", text, if_changed=True)

    def _put_text(self, name: str, text: str, *, if_changed: bool = False) -> None:
        self.lease.check()
        path, data = f"{self.run_path}/{name}", text.encode("utf-8")
        if if_changed:
            with contextlib.suppress(FileNotFoundError):
                if self.fs.cat_file(path) == data:
                    return
        self.fs.pipe_file(path, data)

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

    def check_owned(self) -> None:
        self.lease.check()

    def save_progress(self, progress: dict[str, Any]) -> None:
        if self.lease.lost is not None:
            return  # the run folder is another run's now; the error was raised and logged
        steps = {row["step"]: row for row in progress.get("steps", [])}
        for name, store in self.stores.items():
            steps.setdefault(name, {}).update(
                {"signature": self.signatures[name], "generation": store.generation, "finished": store.finished}
            )
        self._put_text("batch_manager.json", json.dumps(
            {"completed": progress.get("completed", False), "steps": steps}, indent=2, default=str))

    def sync(self) -> None:
        if self.lease.lost is not None or not self._log.exists():
            return
        stat = self._log.stat()
        if self._uploaded != (stat.st_size, stat.st_mtime_ns):
            self.fs.put_file(str(self._log), f"{self.run_path}/pipeline.log")
            self._uploaded = (stat.st_size, stat.st_mtime_ns)

    def close(self, *, completed: bool) -> None:
        uploaded = False
        try:
            self.sync()
            uploaded = self.lease.lost is None
        finally:
            try:
                self.lease.release()
            finally:
                if uploaded:
                    shutil.rmtree(self._scratch, ignore_errors=True)
                else:
                    logger.warning(
                        "The log of this run was not uploaded to %s/pipeline.log; it is kept in %s.",
                        self.run_dir, self._log,
                    )

