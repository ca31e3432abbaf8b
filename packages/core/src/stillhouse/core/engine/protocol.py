"""What the engine exchanges with executors, run stores and output writers.

These are the only types an executor, a cache or a result writer needs to know.
An executor moves `Task`s to workers and brings `Event`s back; a worker turns a
task into a `TaskResult` with `StepRunner` (see `worker.py`), so every executor
runs steps the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from stillhouse.core.errors import PipelineValidationError
from stillhouse.core.typing import Row

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext
    from stillhouse.core.step import BaseStep

BatchKey = tuple[int, int]
"""`(lineage, index)`: where a batch sits in its step's output stream. Keys sort in
stream order; outside routed branches the lineage is 0."""


class Payload(ABC):
    """Batch data kept somewhere else (a filesystem) and loaded by the worker."""

    @abstractmethod
    def load(self) -> list[list[Row]]:
        """The inputs: one list of rows per predecessor."""


class BatchStorage(ABC):
    """Passes batch data through a filesystem (`use_fs_to_pass_data`, global steps).

    Made by the `make_batch_storage` hook (stillhouse-cache implements it)."""

    shared_between_processes: bool = True

    @abstractmethod
    def put(self, step_name: str, key: BatchKey, inputs: list[list[Row]]) -> Payload:
        """Write a batch's inputs and return what the worker loads them from."""

    @abstractmethod
    def discard(self, payload: Payload) -> None:
        """The batch is done: delete its data."""

    def cleanup(self) -> None:
        """The run ended (finished, failed or stopped): delete whatever it left behind,
        such as a failed global step's inputs and empty folders. Resumes never reuse
        batch data, so nothing here is needed later."""


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work for a step.

    Normal and global steps get `inputs` (one list of rows per predecessor).
    Generator steps get `inputs=None`; the first task a generator replica gets
    carries the `offset` (rows already produced by an earlier, interrupted run).
    `resume_state` is what the step saved for this batch when it suspended
    (`SuspendStep`); the worker shows it to the step as `self.resume_state`.
    """

    step_name: str
    key: BatchKey
    inputs: list[list[Row]] | Payload | None = None
    offset: int = 0
    resume_state: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a worker made of a task.

    `error` is set when a normal step's `process` raised: `rows` then holds the
    input rows with the step's outputs set to None (SPEC.md §5).
    `suspended` is set when the step raised `SuspendStep` on this batch:
    `{"state": ..., "retry_after": ...}`; `rows` is then empty and means nothing.
    """

    step_name: str
    key: BatchKey
    rows: list[Row]
    last: bool = False
    error: str | None = None
    seconds: float = 0.0
    suspended: dict[str, Any] | None = None


# -- events an executor reports ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    step_name: str
    replica: int


@dataclass(frozen=True, slots=True)
class Finished:
    result: TaskResult


@dataclass(frozen=True, slots=True)
class Failed:
    """A failure that stops the run: `load()`, a global or a generator step raised.

    `exception` is the worker's exception (tracebacks survive pickling via tblib);
    `traceback` is its formatted text, for logs. When a batch caused it, `key` is that
    batch's key and `preview` a short, truncated view of its rows (None otherwise).
    `kit.failed_event` fills all of them from what `StepRunner` raised."""

    step_name: str
    exception: BaseException
    traceback: str
    key: BatchKey | None = None
    preview: str | None = None

    def describe(self) -> str:
        """`Step 'name' failed on batch (0, 3) (rows: [...])`: the step, the batch and its rows."""
        where = f"Step {self.step_name!r} failed"
        if self.key is not None:
            where += f" on batch {self.key}"
        if self.preview is not None:
            where += f" (rows: {self.preview})"
        return where


@dataclass(frozen=True, slots=True)
class Died:
    """A worker ended without reporting (killed, segfault, out of memory)."""

    step_name: str
    replica: int
    detail: str


Event = Loaded | Finished | Failed | Died


class Executor(ABC):
    """Runs step replicas and moves tasks to them.

    Lifecycle: `start()` for the steps of a stage, any number of `send()`s and
    `events()`, `stop_steps()` when a stage is done, `shutdown()` at the end (also
    after errors and Ctrl+C). Each replica calls `load()` once, handles tasks with a
    `StepRunner`, and calls `unload()` when stopped. Tasks of one step may go to any
    of its replicas; results may come back in any order (the engine reorders them).
    A replica of an async step works on up to `StepRunner.concurrency` tasks at once
    (`StepRunner.submit`); the engine sends such a step up to `replicas x (concurrency
    + 1)` tasks, other normal steps two per replica, global steps one, generators one
    (two when `runs_in_order`).

    The engine calls every method from the thread that runs the pipeline, one at a
    time. Workers are built from the kit (`stillhouse.core.engine.kit`: `serve`,
    `STOP`, `failed_event`, `portable`, log routing); docs/executors.md walks through
    writing one, and `stillhouse.core.testing.conformance` is the suite it must pass.
    """

    name: ClassVar[str] = ""
    in_process: ClassVar[bool] = False
    """True when every replica runs in the driver process: the engine may then hand it
    batch data that only this process can read (`memory://` batch storage), and
    `Step` objects are shared with the driver instead of copied."""
    known_options: ClassVar[tuple[str, ...]] = ()
    """The options (`Pipeline(executor=..., **options)`) this executor accepts; any other
    is refused by `__init__`, so a misspelt one fails before anything runs."""
    runs_in_order: ClassVar[bool] = False
    """True when a replica runs its tasks in the order they were sent (a queue per step,
    served first in, first out). The engine then asks a (sync) generator for its next
    batch before the last one came back, so it makes it while the driver stores and
    passes on the last; an executor that may run a replica's tasks in another order
    keeps False, and a generator gets one pull at a time."""

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.known_options))
        if unknown:
            known = ", ".join(repr(k) for k in sorted(self.known_options)) or "none"
            raise PipelineValidationError(
                f"Unknown option(s) {', '.join(repr(u) for u in unknown)} for the "
                f"{self.name!r} executor. Known options: {known}. Check the spelling of the "
                "keyword arguments given to `Pipeline(executor=...)`."
            )
        self.options = options

    @abstractmethod
    def start(self, steps: Sequence[BaseStep], context: RunContext) -> None:
        """Start `step.resources.replicas` workers for each step (each calls `load()`).

        `context` describes the run (`context.enable_metadata`, `context.run_dir`, ...)."""

    @abstractmethod
    def send(self, task: Task) -> None:
        """Queue `task` for one replica of `task.step_name`."""

    @abstractmethod
    def events(self, timeout: float) -> list[Event]:
        """Events since the last call; wait up to `timeout` seconds for the first one."""

    @abstractmethod
    def stop_steps(self, names: Sequence[str]) -> None:
        """Let these steps' replicas `unload()` and end; they get no more tasks."""

    @abstractmethod
    def shutdown(self, force: bool = False) -> None:
        """End every worker. `force=True` kills at once (second Ctrl+C, fatal error)."""


# -- where outputs are checkpointed ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A finished output batch as a run store keeps it."""

    key: BatchKey
    rows: list[Row]
    last: bool = False
    error: str | None = None


class StepStore(ABC):
    """One step's checkpointed output batches."""

    finished: bool = False
    batching: int | None = None
    version: str = ""
    """Who wrote the stored batches (signature and generation): data derived from them,
    such as a leaf's results, is reused only while this is unchanged."""
    reuse_note: tuple[str, str] | None = None
    """What the cache decided for this step when the run opened it, and why, as
    `(decision, reason)`; the decision starts with "reuse", "resume" or "recompute"
    (`("resume (16 batches stored)", "stored outputs are not finished")`). The engine
    logs it at the start of a run that reuses anything. None: the store cannot say."""

    @abstractmethod
    def get(self, key: BatchKey) -> BatchRecord | None:
        """The stored batch with this key, if any."""

    @abstractmethod
    def put(self, record: BatchRecord) -> None:
        """Store a batch so that it survives the driver being killed right after."""

    @abstractmethod
    def get_route(self, ordinal: int) -> list[str] | None:
        """The successors the `ordinal`-th released batch was routed to, if recorded."""

    @abstractmethod
    def put_route(self, ordinal: int, successors: list[str]) -> None:
        """Record a routing decision before any successor sees the batch."""

    @abstractmethod
    def mark_finished(self) -> None:
        """Every batch of the step is stored: later runs may reuse it whole."""

    def put_suspended(self, key: BatchKey, state: dict[str, Any] | None) -> None:
        """Keep (or, with None, forget) what a step saved when it suspended on batch `key`.

        `state` is JSON-serialisable. A store that keeps nothing across runs ignores it."""

    def get_suspended(self, key: BatchKey) -> dict[str, Any] | None:
        """What `put_suspended` kept for `key` in this or an earlier run, if anything."""

    def durable_dir(self) -> Path | None:
        """The step's durable folder (`Step.cache_path`), created if missing, or None.

        It lives as long as the store's batches: kept across stops, kills and resumes,
        removed whenever the store is started over. Workers on this machine must be
        able to write it. None: this store offers no folder."""
        return None

    def lasting_dir(self) -> Path | None:
        """The step's lasting folder (`Step.lasting_path`), created if missing, or None.

        Kept across the step's signatures (one per step name and pipeline), emptied when
        the run starts the step fresh by request (`use_cache=False` on the run or on the
        step). Workers on this machine must be able to write it. None: no such folder."""
        return None

    def records(self) -> Iterator[BatchRecord]:
        """Every stored batch in key order (generators are replayed this way)."""
        return iter(())

    def failed_keys(self) -> set[BatchKey]:
        """Keys of the stored batches that recorded a failure (for `run(retry_failed=True)`).

        Reads every stored batch; a store that can say it cheaper may override this."""
        return {record.key for record in self.records() if record.error is not None}

    def stored_rows(self) -> int | None:
        """Rows out of the finished stored outputs: the rows `records()` would give, or None
        when the store is not finished or cannot say.

        The run summary shows it for a step taken whole from the cache, which releases no
        batch in the run. It must be cheap (from what opening the store already read, at
        most one small file), never a read of the batches."""
        return None

    def stored_failed_batches(self) -> int | None:
        """How many of the finished stored batches (those `records()` would give) recorded
        a failure, or None when the store is not finished or cannot say.

        The run summary shows it for a step taken whole from the cache. As cheap as
        `stored_rows()`: never a read of the batches (`failed_keys()` reads them)."""
        return None


class RunStore(ABC):
    """Everything a run keeps on disk. Made by the `make_run_store` hook."""

    run_dir: Any = None

    @abstractmethod
    def step_store(self, name: str, batching: int | None = None) -> StepStore:
        """The store of one step (opened, invalidated or reset as the cache decides).

        `batching` is the step's input batch size: stored batches of an unfinished
        step cut with another size cannot be matched and must be discarded."""

    def log_file(self) -> Path | None:
        """The local file this run's log lines go to (`pipeline.log`), or None."""
        if self.run_dir is None or "://" in str(self.run_dir):
            return None
        return Path(self.run_dir) / "pipeline.log"

    def data_dir(self) -> Any:
        """Where the output writer puts leaf rows, or None to keep them in memory."""
        return None

    def check_owned(self) -> None:
        """Raise (a `CacheLockedError`) if this run no longer holds the cache, because
        another run took its lock over: the output writer asks before every write of
        results. Cheap: called per batch. A local lock cannot be taken from a living
        run, so by default this does nothing."""

    def save_progress(self, progress: dict[str, Any]) -> None:
        """Persist a small summary of where the run is (cheap; called now and then)."""

    def sync(self) -> None:
        """Make everything written so far durable (fsync)."""

    def close(self, *, completed: bool) -> None:
        """Release the run (its lock); `completed` when every step finished."""


class NullStepStore(StepStore):
    def get(self, key: BatchKey) -> BatchRecord | None:
        return None

    def put(self, record: BatchRecord) -> None:
        pass

    def get_route(self, ordinal: int) -> list[str] | None:
        return None

    def put_route(self, ordinal: int, successors: list[str]) -> None:
        pass

    def mark_finished(self) -> None:
        pass


class NullRunStore(RunStore):
    """No cache installed, or `use_cache=False` without a cache plugin: keep nothing."""

    def step_store(self, name: str, batching: int | None = None) -> StepStore:
        return NullStepStore()


# -- where leaf rows go ---------------------------------------------------------------


class OutputWriter(ABC):
    """Receives every leaf step's rows, in order. Made by the `make_output_writer` hook."""

    @abstractmethod
    def is_complete(self, leaf: str, version: str = "") -> bool:
        """This leaf's rows were all written by an earlier run, from the stored outputs
        whose `StepStore.version` is `version` (nothing to replay)."""

    @abstractmethod
    def begin(self, leaf: str, version: str = "") -> None:
        """Start (or restart from nothing) this leaf's output, made from `version`."""

    @abstractmethod
    def write(self, leaf: str, rows: list[Row]) -> None:
        """Append rows to a leaf's output."""

    @abstractmethod
    def finish(self, leaf: str) -> None:
        """The leaf has produced all its rows."""

    def flush(self) -> None:
        """Make what was written so far durable (before a stop)."""

    @abstractmethod
    def result(self) -> Any:
        """What `Pipeline.run()` returns (a Distiset when stillhouse-distiset is installed)."""


@dataclass
class MemoryOutputWriter(OutputWriter):
    """Keeps leaf rows in memory: `run()` returns `{leaf: rows}` without stillhouse-distiset."""

    rows: dict[str, list[Row]] = field(default_factory=dict)

    def is_complete(self, leaf: str, version: str = "") -> bool:
        return False

    def begin(self, leaf: str, version: str = "") -> None:
        self.rows[leaf] = []

    def write(self, leaf: str, rows: list[Row]) -> None:
        self.rows[leaf].extend(rows)

    def finish(self, leaf: str) -> None:
        pass

    def result(self) -> dict[str, list[Row]]:
        return self.rows
