"""The in-process executor: every step runs in the calling thread, one task at a time.

Core ships it so that a pipeline runs with stillhouse-core alone (tests, the
conformance suite in `stillhouse.core.testing`), and it is the reference a third
party reads when writing an executor (docs/executors.md). stillhouse-executors
registers it as "sync". Nothing here may start a thread or a process; the only
threads are the ones `StepRunner` owns (the event loop of an async step, so that it
also runs when the calling thread already runs a loop, as in Jupyter; the helper
thread of a `batch_timeout`).
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from stillhouse.core.engine.kit import failed_event, outcome_event, replace_in_process
from stillhouse.core.engine.protocol import Event, Executor, Failed, Finished, Loaded, Task
from stillhouse.core.engine.worker import StepRunner
from stillhouse.core.errors import EngineError

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext
    from stillhouse.core.step import BaseStep


class InProcessExecutor(Executor):
    """Runs each step in the calling thread: `events()` runs exactly one pending task.

    Loading is lazy: the first `events()` after `start()` loads the new steps and
    reports them. A step runs as one copy whatever its `replicas`; every replica is
    still reported as loaded, so the engine's bookkeeping matches the other executors.
    An async step's tasks are submitted to its loop, up to `concurrency` at once;
    `events()` then waits for them to finish.
    """

    name: ClassVar[str] = "inprocess"
    in_process: ClassVar[bool] = True
    runs_in_order: ClassVar[bool] = True  # a FIFO queue per step

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._runners: dict[str, StepRunner] = {}
        self._to_load: list[str] = []
        self._load_failures: dict[str, Failed] = {}
        self._tasks: deque[Task] = deque()
        self._pending: list[Event] = []
        self._waiting: dict[str, deque[Task]] = {}  # async steps' tasks not yet submitted
        self._running: dict[str, int] = {}  # async steps' tasks submitted, not finished
        self._done: queue.Queue[Event] = queue.Queue()

    def start(self, steps: Sequence[BaseStep], context: RunContext) -> None:
        enable_metadata = context.enable_metadata
        for step in steps:
            if step.name in self._runners:
                raise EngineError(f"Step {step.name!r} was started twice without being stopped.")
            self._runners[step.name] = StepRunner(step, replica=0, enable_metadata=enable_metadata)
            self._to_load.append(step.name)

    def send(self, task: Task) -> None:
        if task.step_name not in self._runners:
            raise EngineError(
                f"A task was sent to step {task.step_name!r}, which is not running. "
                f"Running steps: {sorted(self._runners)}."
            )
        if self._runners[task.step_name].concurrency > 1:
            self._waiting.setdefault(task.step_name, deque()).append(task)
        else:
            self._tasks.append(task)

    def events(self, timeout: float) -> list[Event]:
        # Nothing can happen while we wait (there is no other worker), so never sleep.
        if self._pending:
            events, self._pending = self._pending, []
            return events
        if self._to_load:
            events: list[Event] = []
            while self._to_load:
                events.extend(self._load(self._to_load.pop(0)))
            return events
        self._submit_waiting()
        if self._tasks:
            return [self._run(self._tasks.popleft())]
        if any(self._running.values()):
            return self._collect(timeout)
        return []

    def stop_steps(self, names: Sequence[str]) -> None:
        for name in names:
            # Tasks sent before the stop still run, as they would on the other executors.
            mine = [task for task in self._tasks if task.step_name == name]
            self._tasks = deque(task for task in self._tasks if task.step_name != name)
            for task in mine:
                event = self._run(task)
                self._pending.append(event)
            while self._waiting.get(name) or self._running.get(name):
                self._submit_waiting()
                self._pending.extend(self._collect(0.1))
            self._end(name)

    def shutdown(self, force: bool = False) -> None:
        # unload() runs even when forced: nothing needs killing, and an in-process model
        # left loaded would hold its memory for the rest of the interpreter's life.
        self._tasks.clear()
        self._pending.clear()
        self._waiting.clear()
        for name in list(self._runners):
            self._end(name)

    def _load(self, name: str) -> list[Event]:
        runner = self._runners[name]
        try:
            runner.load()
        except Exception as exc:
            failed = failed_event(name, exc)
            self._load_failures[name] = failed
            return [failed]
        return [Loaded(name, replica) for replica in range(runner.step.resources.replicas)]

    def _run(self, task: Task) -> Event:
        name = task.step_name
        if name in self._to_load:
            self._to_load.remove(name)
            self._pending.extend(self._load(name))
        if name in self._load_failures:
            return self._load_failures[name]
        runner = self._runners[name]
        try:
            event: Event = Finished(runner.run(task))
        except Exception as exc:
            event = failed_event(name, exc)
        if runner.abandoned:
            self._replace(name, runner)
        return event

    def _replace(self, name: str, runner: StepRunner) -> StepRunner | None:
        """A fresh runner for one whose batch timed out and left it `abandoned`; None (and
        the step's later tasks fail) when the copy cannot load."""
        fresh = replace_in_process(runner, self._pending.append)
        if fresh is None:
            self._load_failures[name] = self._pending[-1]  # type: ignore[assignment]
        else:
            self._runners[name] = fresh
        return fresh

    def _submit_waiting(self) -> None:
        for name, waiting in self._waiting.items():
            runner = self._runners.get(name)
            if runner is None or name in self._to_load:
                continue
            if runner.abandoned and waiting:  # its loop is blocked: a fresh one goes on
                fresh = None if name in self._load_failures else self._replace(name, runner)
                if fresh is None:
                    waiting.clear()  # the copy's failed load() is reported: the run stops
                    continue
                runner = fresh
            while waiting and self._running.get(name, 0) < runner.concurrency:
                task = waiting.popleft()
                self._running[name] = self._running.get(name, 0) + 1
                runner.submit(task, lambda outcome, name=name: self._done.put(outcome_event(name, outcome)))

    def _collect(self, timeout: float) -> list[Event]:
        try:
            events = [self._done.get(timeout=max(timeout, 0.0))]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._done.get_nowait())
            except queue.Empty:
                break
        for event in events:
            name = event.result.step_name if isinstance(event, Finished) else event.step_name
            if name in self._running:
                self._running[name] -= 1
        return events

    def _end(self, name: str) -> None:
        self._waiting.pop(name, None)
        self._running.pop(name, None)
        runner = self._runners.pop(name, None)
        if name in self._to_load:
            self._to_load.remove(name)
        elif runner is not None and name not in self._load_failures and not runner.abandoned:
            runner.unload()
        self._load_failures.pop(name, None)
