"""The worker side of the "ray" executor: the actor that holds one step replica.

Everything here runs inside a Ray worker process, possibly on another node, so it
must be importable there and must not touch driver state. It never imports `ray`:
the driver wraps `StepActor` with `ray.remote` (see `executor.py`).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field

from tblib import pickling_support

from stillhouse.core.engine import Event, Failed, FatalStepError, Finished, Loaded, StepRunner, Task
from stillhouse.core.engine.logs import StepTagFilter
from stillhouse.core.step import BaseStep

MAX_BUFFERED_LOG_RECORDS = 10_000
"""Log records an actor keeps until its next reply: a step that logs in a loop between
replies must not grow the actor's memory without bound (the oldest are dropped)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What every actor method returns: the event, plus the log records since the last
    reply, which the driver re-emits so that pipeline.log holds the workers' lines."""

    event: Event | None
    logs: list[logging.LogRecord] = field(default_factory=list)


class StepActor:
    """One replica of a step: `load()`, then `run(task)` per task, then `unload()`.

    Ray runs an actor's methods one at a time, in the order they were submitted, so
    an `unload()` sent after the last task runs after it. The actor of an async step is
    a threaded actor (`max_concurrency`): its `run` calls wait on the runner's event loop
    side by side, up to the step's `concurrency`; the engine unloads only once none is
    in flight.
    """

    def __init__(
        self, step: BaseStep, replica: int, enable_metadata: bool, log_levels: dict[str, int]
    ) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's to handle
        pickling_support.install()
        self._logs = _BufferHandler()
        _route_logs(self._logs, log_levels)
        self.runner = StepRunner(step, replica=replica, enable_metadata=enable_metadata)

    def pid(self) -> int:
        return os.getpid()

    def load(self) -> Reply:
        name = self.runner.step.name
        try:
            self.runner.load()
        except Exception as exc:
            return self._reply(failed_event(name, exc))
        return self._reply(Loaded(name, self.runner.replica))

    def run(self, task: Task) -> Reply:
        runner = self.runner
        try:
            event: Event = Finished(runner.run(task))
        except Exception as exc:
            event = failed_event(runner.step.name, exc)
        if runner.abandoned:  # a batch timed out in a thread that cannot be killed
            event = self._replace(runner) or event
        return self._reply(event)

    def _replace(self, runner: StepRunner) -> Event | None:
        """Go on with a fresh copy of the step; a failed `load()` is the event to report."""
        logging.getLogger("stillhouse.ray").warning(
            "Replica %d of step %r timed out on a batch; its thread is abandoned and a new "
            "replica takes over in the same actor.", runner.replica, runner.step.name,
        )
        fresh = runner.replacement()
        try:
            fresh.load()
        except Exception as exc:
            return failed_event(runner.step.name, exc)
        self.runner = fresh
        return None

    def unload(self) -> Reply:
        self.runner.unload()
        return self._reply(None)

    def _reply(self, event: Event | None) -> Reply:
        return Reply(_portable(event), self._logs.take())


def failed_event(step_name: str, exc: BaseException) -> Failed:
    """The `Failed` event for `exc`, unwrapping `FatalStepError` to the step's own exception."""
    if isinstance(exc, FatalStepError):
        return Failed(step_name, exc.original, exc.traceback)
    return Failed(step_name, exc, "".join(traceback.format_exception(exc)))


def _portable(event: Event | None) -> Event | None:
    """Make a `Failed` event's exception survive the trip (with its traceback, via tblib)."""
    if not isinstance(event, Failed):
        return event
    exc = event.exception
    try:
        pickling_support.install(exc)  # its class may be defined after install() ran
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return Failed(event.step_name, exc, event.traceback)


class _BufferHandler(logging.Handler):
    """Keeps log records, made picklable, until the next reply takes them."""

    def __init__(self) -> None:
        super().__init__()
        self._records: deque[logging.LogRecord] = deque(maxlen=MAX_BUFFERED_LOG_RECORDS)
        self._dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Formatting here: args and exc_info may hold objects that do not pickle.
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            record.stack_info = None
        except Exception:
            self.handleError(record)
            return
        with self.lock:
            if len(self._records) == self._records.maxlen:
                self._dropped += 1  # appending pushes the oldest out
            self._records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self.lock:
            records = list(self._records)
            self._records.clear()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            note = logging.LogRecord(
                "stillhouse.ray", logging.WARNING, __file__, 0,
                f"{dropped} log record(s) of worker {os.getpid()} were dropped "
                f"(more than {MAX_BUFFERED_LOG_RECORDS} between two replies).", None, None,
            )
            records.insert(0, note)
        return records


def _route_logs(handler: logging.Handler, levels: dict[str, int]) -> None:
    """Send the worker's log records to the driver instead of the worker's stderr.

    `levels` are the driver's logger levels (`""` is the root), so a worker logs what
    the driver would. Ray's own loggers keep their handlers; everything else that
    reaches the root logger goes to the driver once.
    """
    root = logging.getLogger()
    for inherited in list(root.handlers):
        root.removeHandler(inherited)
    handler.addFilter(StepTagFilter())  # records made inside the step carry its name
    root.addHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def log_levels() -> dict[str, int]:
    """The driver's explicit logger levels, to be applied in each worker."""
    levels = {"": logging.getLogger().level}
    for name, log in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(log, logging.Logger) and log.level != logging.NOTSET and not name.startswith("ray"):
            levels[name] = log.level
    return levels
