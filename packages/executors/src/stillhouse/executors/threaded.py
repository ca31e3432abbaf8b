"""The "threaded" executor: one thread per step replica, inside the driver process.

For I/O-bound steps (API calls) and debugging. Tasks and events travel on plain
`queue.Queue`s, nothing is pickled. Threads cannot be killed, so this module
never promises more than a bounded wait for them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from stillhouse.core.engine import (
    STOP,
    Event,
    Executor,
    RunContext,
    StepRunner,
    Task,
    failed_event,
    queue_task,
    serve,
)
from stillhouse.core.errors import EngineError
from stillhouse.core.step import BaseStep

logger = logging.getLogger("stillhouse.executors.threaded")

DEFAULT_JOIN_TIMEOUT = 30.0
"""Seconds `stop_steps()`/`shutdown()` wait for a replica to unload: a stuck step must
not hang the run, and a thread cannot be killed, so after this it is left behind."""

FORCE_JOIN_TIMEOUT = 1.0
"""Seconds `shutdown(force=True)` waits: the user pressed Ctrl+C twice."""


class ThreadedExecutor(Executor):
    """Runs each replica of a step in its own daemon thread of the driver process.

    Options:
        join_timeout: Seconds to wait for replicas to unload when stopping (default 30).

    Replica 0 runs the step object it was given; further replicas run shallow copies,
    so that state a step sets in `load()` is per replica, as under "mp".
    """

    name: ClassVar[str] = "threaded"
    in_process: ClassVar[bool] = True
    runs_in_order: ClassVar[bool] = True  # a FIFO queue per step
    known_options: ClassVar[tuple[str, ...]] = ("join_timeout",)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._join_timeout = float(options.get("join_timeout", DEFAULT_JOIN_TIMEOUT))
        self._results: queue.Queue[Event] = queue.Queue()
        self._tasks: dict[str, queue.Queue[Task | None]] = {}
        self._threads: dict[str, list[threading.Thread]] = {}
        self._runners: dict[str, list[StepRunner]] = {}

    def start(self, steps: Sequence[BaseStep], context: RunContext) -> None:
        enable_metadata = context.enable_metadata
        for step in steps:
            if step.name in self._tasks:
                raise EngineError(f"Step {step.name!r} was started twice without being stopped.")
        for step in steps:
            tasks: queue.Queue[Task | None] = queue.Queue()
            self._tasks[step.name] = tasks
            self._threads[step.name] = []
            self._runners[step.name] = []
            for replica in range(step.resources.replicas):
                own = step if replica == 0 else step.model_copy()
                runner = StepRunner(own, replica=replica, enable_metadata=enable_metadata)
                self._runners[step.name].append(runner)
                thread = threading.Thread(
                    target=self._run_replica,
                    args=(runner, tasks),
                    name=f"stillhouse-{step.name}-{replica}",
                    daemon=True,  # a stuck step must not keep the interpreter alive
                )
                thread.start()
                self._threads[step.name].append(thread)

    def send(self, task: Task) -> None:
        queue_task(self._tasks, task)

    def events(self, timeout: float) -> list[Event]:
        try:
            events = [self._results.get(timeout=max(timeout, 0.0))]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._results.get_nowait())
            except queue.Empty:
                return events

    def stop_steps(self, names: Sequence[str]) -> None:
        names = [name for name in names if name in self._tasks]
        self._stop(names, self._join_timeout)

    def shutdown(self, force: bool = False) -> None:
        names = list(self._tasks)
        if force:  # what is still in flight is given up: async batches stop calling out
            for name in names:
                _discard(self._tasks[name])
                for runner in self._runners[name]:
                    runner.cancel_pending()
        self._stop(names, FORCE_JOIN_TIMEOUT if force else self._join_timeout)

    def _stop(self, names: list[str], timeout: float) -> None:
        # A second Ctrl+C (or the stop deadline) may interrupt a join below: a step whose
        # threads were popped then still has its queue and runners, and the next call
        # (a forced shutdown) must cancel and drop them, not fail on what is gone.
        for name in names:
            for _ in self._threads.get(name, ()):
                self._tasks[name].put(STOP)
        deadline = time.monotonic() + timeout
        for name in names:
            for thread in self._threads.pop(name, ()):
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    logger.warning(
                        "Thread %r did not stop within %.0f s; it is left running as a daemon "
                        "thread (threads cannot be killed).", thread.name, timeout
                    )
            self._tasks.pop(name, None)
            self._runners.pop(name, None)

    def _run_replica(self, runner: StepRunner, tasks: queue.Queue[Task | None]) -> None:
        try:
            serve(runner, tasks.get, self._results.put)
        except BaseException as exc:  # sys.exit() in a step: report it, a thread cannot "die"
            self._results.put(failed_event(runner.step.name, exc))


def _discard(tasks: queue.Queue[Task | None]) -> None:
    while True:
        try:
            tasks.get_nowait()
        except queue.Empty:
            return
