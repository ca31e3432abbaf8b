"""The worker side of the "ray" executor: the actor that holds one step replica.

Everything here runs inside a Ray worker process, possibly on another node, so it
must be importable there and must not touch driver state. It never imports `ray`:
the driver wraps `StepActor` with `ray.remote` (see `executor.py`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field

from tblib import pickling_support

from stillhouse.core.engine import (
    Event,
    Finished,
    Loaded,
    LogBuffer,
    StepRunner,
    Task,
    failed_event,
    portable,
    replace_in_process,
    route_logs,
)
from stillhouse.core.memory import keep_freed_memory
from stillhouse.core.step import BaseStep

RAY_LOGGERS = ("ray",)
"""Ray's own loggers: a worker keeps their handlers, and the driver's levels for them
are not copied to the workers."""


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
    in flight. In a process of its own (not the `driver`'s, as in Ray's local mode) the
    actor keeps the memory it frees (`stillhouse.core.memory`).
    """

    def __init__(
        self,
        step: BaseStep,
        replica: int,
        enable_metadata: bool,
        log_levels: dict[str, int],
        driver: tuple[str, int],
    ) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's to handle
        # An actor's process is the executor's to tune; the driver's never (local mode).
        self.keeps_freed_memory = driver != driver_process() and keep_freed_memory()
        pickling_support.install()
        self._logs = LogBuffer()
        route_logs(self._logs, log_levels, (str(step.name), replica), keep=RAY_LOGGERS)
        self.runner = StepRunner(step, replica=replica, enable_metadata=enable_metadata)
        self._replacing = threading.Lock()

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
        # A batch timed out in a thread that cannot be killed, or on a loop it blocked;
        # of the calls waiting on that loop, the first to end replaces the runner.
        with self._replacing:
            if runner.abandoned and runner is self.runner:
                event = self._replace(runner) or event
        return self._reply(event)

    def _replace(self, runner: StepRunner) -> Event | None:
        """Go on with a fresh copy of the step in this actor; a failed `load()` is the
        event to report."""
        failures: list[Event] = []
        fresh = replace_in_process(runner, failures.append)
        if fresh is None:
            return failures[0]
        self.runner = fresh
        return None

    def unload(self) -> Reply:
        self.runner.unload()
        return self._reply(None)

    def _reply(self, event: Event | None) -> Reply:
        return Reply(portable(event), self._logs.take())


def driver_process() -> tuple[str, int]:
    """This process, as the driver names itself to its actors: an actor that finds the
    same name runs inside the driver (Ray's local mode) and leaves its memory alone."""
    return socket.gethostname(), os.getpid()
