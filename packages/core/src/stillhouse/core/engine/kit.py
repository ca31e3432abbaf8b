"""The executor kit: what every executor's worker side needs, whatever carries its tasks.

An executor owns transport (queues, threads, processes, actors); this module owns
what is the same under all of them, so that no executor copies another:

- `serve`: the replica loop (load, run tasks until `STOP`, unload), reporting every
  outcome as an event and replacing a runner abandoned after a batch timeout;
- `failed_event` / `outcome_event`: the `Failed` (or `Finished`) event for what a
  `StepRunner` raised or handed back;
- `portable`: a `Failed` event whose exception survives pickling, traceback included
  (tblib), for workers in other processes or on other machines;
- `LogBuffer`, `route_logs` and `log_levels`: a worker's log records, sent to the
  driver (which re-emits them with `stillhouse.core.engine.logs.reemit`) at the
  driver's levels;
- `queue_task`: put a task on its step's queue, naming the step when it is not running.

docs/executors.md walks through writing an executor with it.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tblib import pickling_support

from stillhouse.core.engine.logs import StepTagFilter
from stillhouse.core.engine.protocol import Event, Failed, Finished, Loaded, Task, TaskResult
from stillhouse.core.engine.worker import FatalStepError, Outcome, StepRunner
from stillhouse.core.errors import EngineError

logger = logging.getLogger("stillhouse.executors")

STOP = None
"""Put on a step's task queue once per replica: that replica unloads and ends."""

REPLACED = "replaced"
"""`serve`'s return value when it ended because its runner was abandoned."""

Replace = Callable[[StepRunner], "StepRunner | None"]
"""What `serve` calls when a batch timed out and its runner is `abandoned`: a new,
loaded runner to go on with, or None to end the replica (the executor restarts it)."""

MAX_BUFFERED_LOG_RECORDS = 10_000
"""Log records a `LogBuffer` keeps until they are taken: a step that logs in a loop
must not grow a worker's memory without bound (the oldest are dropped)."""


# -- events ---------------------------------------------------------------------------


def failed_event(step_name: str, exc: BaseException) -> Failed:
    """The `Failed` event for `exc`. A `FatalStepError` is unwrapped to the step's own
    exception and keeps the batch that caused it (key and a preview of its rows)."""
    if isinstance(exc, FatalStepError):
        return Failed(step_name, exc.original, exc.traceback, exc.key, exc.preview)
    return Failed(step_name, exc, "".join(traceback.format_exception(exc)))


def outcome_event(step_name: str, outcome: Outcome) -> Event:
    """The event for what `StepRunner.submit` handed back: `Finished`, or `Failed`."""
    return Finished(outcome) if isinstance(outcome, TaskResult) else failed_event(step_name, outcome)


def portable(event: Event | None) -> Event | None:
    """`event`, with a `Failed` event's exception made to survive pickling (its traceback
    too, via tblib). An exception that cannot be pickled becomes a `RuntimeError`
    carrying its type and text. Call `tblib.pickling_support.install()` once in the
    worker first, so that exception classes defined before it pickle with tracebacks."""
    if not isinstance(event, Failed):
        return event
    exc = event.exception
    try:
        pickling_support.install(exc)  # its class may be defined after install() ran
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return Failed(event.step_name, exc, event.traceback, event.key, event.preview)


# -- the replica loop -------------------------------------------------------------------


def replace_in_process(runner: StepRunner, put: Callable[[Event], Any]) -> StepRunner | None:
    """Go on with a fresh, loaded copy of the step (threads cannot be killed: the hung one
    is left behind as a daemon thread). A failed `load()` is reported and gives None."""
    logger.warning(
        "Replica %d of step %r timed out on a batch; its thread cannot be killed and is "
        "abandoned, and a new replica takes over.", runner.replica, runner.step.name,
    )
    fresh = runner.replacement()
    try:
        fresh.load()
    except Exception as exc:
        put(failed_event(runner.step.name, exc))
        return None
    return fresh


def serve(
    runner: StepRunner,
    get_task: Callable[[], Task | None],
    put: Callable[[Event], Any],
    replace: Replace | None = None,
) -> str | None:
    """Load the step, run tasks until `STOP`, then unload. Every outcome becomes an event.

    Runs in the worker (a thread, a process, an actor), which it blocks until the
    replica ends. `get_task` blocks until a task (or `STOP`) comes; `put` sends an event
    to the driver and may be called from the async step's loop thread too.

    A failed `load()` is reported and ends the replica without running anything. A
    fatal task failure is reported and the replica keeps serving: the engine decides
    when to stop, and a replica that vanished would look like a death. An async step
    keeps up to `runner.concurrency` tasks in flight (it takes a task only when a slot
    is free, so replicas sharing a queue share the work). A runner abandoned after a
    batch timeout is swapped for `replace(runner)` (default: `replace_in_process`)
    before the next task is taken; when that gives None, `serve` returns `REPLACED`
    without unloading, once every batch it took was answered.
    """
    name = runner.step.name
    try:
        runner.load()
    except Exception as exc:
        put(failed_event(name, exc))
        return None
    put(Loaded(name, runner.replica))
    if replace is None:
        def replace(old: StepRunner) -> StepRunner | None:
            return replace_in_process(old, put)
    slots = threading.Semaphore(runner.concurrency)

    def finished(outcome: Outcome) -> None:
        put(outcome_event(name, outcome))
        slots.release()

    try:
        while True:
            slots.acquire()
            if runner.abandoned:  # before taking a task: the next runner will run it
                fresh = replace(runner)
                if fresh is None:
                    slots.release()
                    _answered(slots, runner.concurrency)  # its batches, ended or timed out
                    return REPLACED
                runner = fresh
            try:
                task = get_task()
            except (EOFError, OSError):
                return None  # the driver closed the queue: nothing more will come
            except Exception as exc:  # a task that cannot be unpickled in this worker
                finished(exc)
                continue
            if task is STOP:
                slots.release()
                break
            runner.submit(task, finished)
        _answered(slots, runner.concurrency)  # an async replica finishes what it started
        return None
    finally:
        if not runner.abandoned:
            runner.unload()


def _answered(slots: threading.Semaphore, concurrency: int) -> None:
    """Wait until every batch in flight was answered: each holds one of the slots. A batch
    on a blocked loop is answered once it is past its `batch_timeout` (`LoopWatch`)."""
    for _ in range(concurrency):
        slots.acquire()


def queue_task(queues: Mapping[str, Any], task: Task) -> None:
    """Put `task` on its step's queue (anything with `put`); a step that is not running
    is an engine bug, named as such."""
    try:
        tasks = queues[task.step_name]
    except KeyError:
        raise EngineError(
            f"A task was sent to step {task.step_name!r}, which is not running. "
            f"Running steps: {sorted(queues)}."
        ) from None
    tasks.put(task)


# -- worker logs --------------------------------------------------------------------------


class LogBuffer(logging.Handler):
    """Keeps a worker's log records, made picklable, until `take()` sends them on
    (with the next reply of an actor, say). Keeps at most `MAX_BUFFERED_LOG_RECORDS`;
    dropped ones are counted in a warning record."""

    def __init__(self, capacity: int = MAX_BUFFERED_LOG_RECORDS) -> None:
        super().__init__()
        self._records: deque[logging.LogRecord] = deque(maxlen=capacity)
        self._dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            picklable(record)
        except Exception:
            self.handleError(record)
            return
        with self.lock:
            if len(self._records) == self._records.maxlen:
                self._dropped += 1  # appending pushes the oldest out
            self._records.append(record)

    def take(self) -> list[logging.LogRecord]:
        """The records since the last call (oldest first)."""
        with self.lock:
            records = list(self._records)
            self._records.clear()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            note = logging.LogRecord(
                "stillhouse.executors", logging.WARNING, __file__, 0,
                f"{dropped} log record(s) of worker {os.getpid()} were dropped "
                f"(more than {self._records.maxlen} between two deliveries).", None, None,
            )
            records.insert(0, note)
        return records


def picklable(record: logging.LogRecord) -> logging.LogRecord:
    """Format `record`'s message and exception into text, in place: its `args` and
    `exc_info` may hold objects that do not pickle."""
    record.msg = record.getMessage()
    record.args = None
    if record.exc_info:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    record.stack_info = None
    return record


def route_logs(
    handler: logging.Handler,
    levels: Mapping[str, int],
    replica: tuple[str, int] | None = None,
    keep: Iterable[str] = (),
) -> None:
    """Send this worker's log records to `handler` (which carries them to the driver)
    instead of the worker's own handlers.

    `levels` are the driver's logger levels (`log_levels()`), so a worker logs what the
    driver would. Records made inside a step are tagged with it; `replica` is the step
    replica this worker holds, for records of threads the step started itself. Handlers
    inherited from the driver (under fork: files, the terminal, pytest's capture) are
    removed so that no line is written twice, except on loggers named in `keep` (and
    their children), such as a runtime's own loggers.
    """
    kept = tuple(keep)
    handler.addFilter(StepTagFilter(replica))
    root = logging.getLogger()
    for log in [root, *logging.Logger.manager.loggerDict.values()]:
        if not isinstance(log, logging.Logger) or not log.handlers:
            continue
        if log is not root and _named(log.name, kept):
            continue
        for inherited in list(log.handlers):
            log.removeHandler(inherited)
        if log is not root and not log.propagate:
            log.addHandler(handler)
    root.addHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def log_levels(skip: Iterable[str] = ()) -> dict[str, int]:
    """The driver's explicit logger levels (`""` is the root), to apply in each worker
    with `route_logs`: a spawned worker starts with default levels, and an INFO line
    the driver would show would be dropped there. Loggers named in `skip` (and their
    children) are left out."""
    skipped = tuple(skip)
    levels = {"": logging.getLogger().level}
    for name, log in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(log, logging.Logger) and log.level != logging.NOTSET and not _named(name, skipped):
            levels[name] = log.level
    return levels


def _named(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)
