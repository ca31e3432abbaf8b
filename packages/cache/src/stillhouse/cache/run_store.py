"""The cache directory of a pipeline and the `RunStore` the engine checkpoints into.

```
<cache_dir>/<pipeline name>/
    .lock                       held while a run of this pipeline is going (lock.py)
    <pipeline signature>/       one folder per shape of the pipeline
        pipeline.yaml           what ran (a record; never loaded over the live pipeline)
        inline_data/<sha>.parquet  inline rows pipeline.yaml refers to (once per content; .json
                                when Parquet would change them)
        pipeline.log            every log line of the driver and the workers
        stages.json             the load stages
        batch_manager.json      where the run is: per step, batches and rows done
        data/<leaf>/*.parquet   results, from which create_distiset rebuilds the Distiset
    steps/<step>-<signature>/   a step's outputs, shared by every shape that has the step
        meta.json               signature (and its parts), generation, batch size, finished,
                                and once finished its batch and row counts and its rows
                                out (store.py)
        batches.log             append-only output batches, routing decisions and large
                                columns, each stored once per content (records.py, codec.py)
        durable/                the step's own state across runs (`Step.cache_path`)
    lasting/<step>/             a step's state across its versions (`Step.lasting_path`)
```

Every file and folder is private to the user (0600 / 0700).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillhouse.cache import lock
from stillhouse.cache.atomic import (
    atomic_write_json,
    atomic_write_text,
    disk_errors,
    private_dirs,
    private_file,
)
from stillhouse.cache.codec import ColumnMemo
from stillhouse.cache.durable import LASTING, lasting_dir, started_over
from stillhouse.cache.signature import routing_identity, signature_table
from stillhouse.cache.store import FileStepStore
from stillhouse.core._references import relativize_files
from stillhouse.core.dag import load_stages
from stillhouse.core.engine import RunStore, StepStore
from stillhouse.core.engine.plan import compile_plan
from stillhouse.core.errors import CacheError
from stillhouse.core.serialization import dumps

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext
    from stillhouse.core.pipeline import Pipeline

logger = logging.getLogger("stillhouse.cache")


def pipeline_dir(pipeline: Pipeline) -> Path:
    root = pipeline.cache_dir
    if "://" in root and not root.startswith("file://"):
        raise CacheError(
            f"cache_dir {root!r} is not a local path. The checkpoint log needs a local "
            "filesystem; pass a local cache_dir."
        )
    return Path(root.removeprefix("file://")) / pipeline.name


def step_dir(base: Path, name: str, signature: str) -> Path:
    return base / "steps" / f"{name}-{signature[:20]}"


class FileRunStore(RunStore):
    def __init__(self, context: RunContext) -> None:
        pipeline: Pipeline = context.pipeline
        use_cache, fresh_steps = context.use_cache, context.fresh_steps
        self.context = context
        self.plan = context.plan or compile_plan(pipeline.dag)
        self.pipeline = pipeline
        self.base = pipeline_dir(pipeline)
        self.run_dir = self.base / pipeline.signature
        self.stores: dict[str, FileStepStore] = {}
        self.memo = ColumnMemo()  # columns the steps pass through are encoded once
        self._lock = lock.acquire(
            self.base,
            f"Another run of pipeline {pipeline.name!r} is using the cache {self.base} (pid {{pid}}). "
            "Wait for it to finish, or give this run another name= or cache_dir=.",
        )
        try:  # whatever fails from here on (a field that cannot be dumped, a full disk) frees the lock
            self.fresh = set(fresh_steps) if use_cache else set(pipeline.dag.step_names)
            self.started_over = started_over(pipeline, use_cache)
            self.signatures, self.parts = signature_table(pipeline.dag, enable_metadata=pipeline.enable_metadata)
            # before any store is opened; with the signatures already computed
            self.notes = _reuse_notes(pipeline, use_cache, (self.signatures, self.parts), self.plan)
            with disk_errors(self.run_dir):
                private_dirs(self.run_dir)
            private_file(self.run_dir / "pipeline.log")  # the log handler appends to it
            # A cached rerun rewrites nothing: inline rows are files named by their hash, and
            # pipeline.yaml (small without them) is replaced only when it differs.
            record = pipeline.dump(inline_dir=self.run_dir)
            relativize_files(record, self.run_dir)  # the script, relative to this pipeline.yaml
            _write_if_changed(self.run_dir / "pipeline.yaml", dumps(record, "yaml"))
            stages = run_stages(context)
            atomic_write_json(self.run_dir / "stages.json", {"stages": stages})
        except BaseException:
            lock.release(self._lock)
            raise

    def step_store(self, name: str, batching: int | None = None) -> StepStore:
        dag = self.pipeline.dag
        predecessors = {p: self.stores[p].generation for p in dag.predecessors(name)}
        store = FileStepStore.open(
            step_dir(self.base, name, self.signatures[name]),
            step_name=name,
            signature=self.signatures[name],
            batching=None if dag.get_step(name).is_generator else batching,
            predecessors=predecessors,
            fresh=name in self.fresh,
            parts=self.parts[name],
            keyed=self.plan.region_of[name] is not None,
        )
        store.reuse_note = self.notes.get(name)
        store.lasting = lasting_dir(self.base / LASTING / name, empty=name in self.started_over)
        store.routing = routing_identity(dag, name)
        # The stores upstream, whose blobs this one may refer to (`FileStepStore`).
        upstream = [self.stores[p] for p in dag.predecessors(name)]
        store.ancestors = list({id(s): s for p in upstream for s in (p, *p.ancestors)}.values())
        store.memo = self.memo
        self.stores[name] = store
        return store

    def data_dir(self) -> Path:
        return self.run_dir / "data"

    def save_progress(self, progress: dict[str, Any]) -> None:
        steps = {row["step"]: row for row in progress.get("steps", [])}
        for name, store in self.stores.items():
            steps.setdefault(name, {})
            steps[name].update({
                "signature": self.signatures[name],
                "store": str(store.directory.relative_to(self.base)),
                "generation": store.generation,
                "finished": store.finished,
            })
        atomic_write_json(self.run_dir / "batch_manager.json",
                          {"completed": progress.get("completed", False), "steps": steps})

    def sync(self) -> None:
        for store in self.stores.values():
            store.sync()

    def close(self, *, completed: bool) -> None:
        """Close every step store, even after one fails (a full disk refuses a log's
        buffered tail: the others' files must still be closed), then raise the first
        failure; the lock is released whatever happens. The stores after a failure are
        closed without an fsync: their batches may be made from its lost tail, and must
        not reach the disk before it (`records.py`, "Order")."""
        failure: BaseException | None = None
        try:
            for store in self.stores.values():  # upstream first
                try:
                    store.close(sync=failure is None)
                except BaseException as exc:  # each store closes on its own
                    failure = failure or exc
        finally:
            lock.release(self._lock)
        if failure is not None:
            raise failure


def _reuse_notes(pipeline: Pipeline, use_cache: bool, table: Any, plan: Any) -> dict[str, tuple[str, str]]:
    """`stillhouse cache explain`'s decision and reason per step, for `StepStore.reuse_note`."""
    from stillhouse.cache.cli import explain

    try:
        rows = explain(pipeline, use_cache, table, plan)
    except Exception:  # a note is not worth failing over: opening the store reports the cause
        logger.debug("No cache decisions to announce", exc_info=True)
        return {}
    return {row["step"]: (row["decision"], row["why"]) for row in rows}


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)


def run_stages(context: RunContext) -> list[list[str]]:
    """The load stages this run uses (its `load_groups` included), for `stages.json`."""
    if context.plan is not None:
        return [list(stage) for stage in context.plan.stages]
    try:
        return load_stages(context.pipeline.dag, None)
    except Exception:  # a context made by hand, with a DAG the engine would refuse
        return []
