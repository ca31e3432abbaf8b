"""The cache directory of a pipeline and the `RunStore` the engine checkpoints into.

```
<cache_dir>/<pipeline name>/
    .lock                       held while a run of this pipeline is going
    <pipeline signature>/       one folder per shape of the pipeline
        pipeline.yaml           what ran (a record; never loaded over the live pipeline)
        pipeline.log            every log line of the driver and the workers
        stages.json             the load stages
        batch_manager.json      where the run is: per step, batches and rows done
        data/<leaf>/*.parquet   results, from which create_distiset rebuilds the Distiset
    steps/<step>-<signature>/   a step's outputs, shared by every shape that has the step
        meta.json               signature (and its parts), generation, batch size, finished
        batches.log             append-only output batches and routing decisions
        durable/                the step's own state across runs (`Step.cache_path`)
```
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillhouse.cache.atomic import atomic_write_json, atomic_write_text
from stillhouse.cache.signature import step_signature_parts, step_signatures
from stillhouse.cache.store import FileStepStore
from stillhouse.core.dag import load_stages, routing_context
from stillhouse.core.engine import RunStore, StepStore
from stillhouse.core.errors import CacheError, CacheLockedError
from stillhouse.core.serialization import dumps

if TYPE_CHECKING:
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
    def __init__(self, pipeline: Pipeline, *, use_cache: bool, fresh_steps: set[str]) -> None:
        self.pipeline = pipeline
        self.base = pipeline_dir(pipeline)
        self.run_dir = self.base / pipeline.signature
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _acquire_lock(self.base, pipeline.name)
        self.fresh = set(fresh_steps) if use_cache else set(pipeline.dag.step_names)
        self.signatures = step_signatures(pipeline.dag)
        self.stores: dict[str, FileStepStore] = {}
        atomic_write_text(self.run_dir / "pipeline.yaml", dumps(pipeline.dump(), "yaml"))
        try:
            stages = load_stages(pipeline.dag, None)
        except Exception:  # custom load_groups are validated by the engine itself
            stages = []
        atomic_write_json(self.run_dir / "stages.json", {"stages": stages})

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
            parts=step_signature_parts(dag, name, self.signatures),
            keyed=routing_context(dag, name) is not None,
        )
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
        for store in self.stores.values():
            store.close()
        _release_lock(self._lock)


def _acquire_lock(base: Path, name: str) -> int:
    base.mkdir(parents=True, exist_ok=True)
    path = base / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CacheLockedError(
            f"Another run of pipeline {name!r} is using the cache {base} (pid {holder}). Wait "
            "for it to finish, or give this run another name= or cache_dir=."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
