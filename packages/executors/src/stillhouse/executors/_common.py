"""What every built-in executor's worker does, whatever carries its tasks.

`serve` is the replica loop (load, run tasks until the stop sentinel, unload) and
`failed_event` turns an exception into the `Failed` event the engine stops on.
Transport (queues, threads, processes) does not belong here.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stillhouse.core.engine import (
    Event,
    Failed,
    FatalStepError,
    Finished,
    Loaded,
    StepRunner,
    Task,
    TaskResult,
)
from stillhouse.core.engine.worker import Outcome
from stillhouse.core.errors import EngineError, PipelineValidationError

logger = logging.getLogger("stillhouse.executors")

STOP = None
"""Put on a step's task queue once per replica: that replica unloads and ends."""


def failed_event(step_name: str, exc: BaseException) -> Failed:
    """The `Failed` event for `exc`, unwrapping `FatalStepError` to the step's own exception."""
    if isinstance(exc, FatalStepError):
        return Failed(step_name, exc.original, exc.traceback)
    return Failed(step_name, exc, "".join(traceback.format_exception(exc)))


Replace = Callable[[StepRunner], "StepRunner | None"]
"""What `serve` calls when a batch timed out and its runner is `abandoned`: a new,
loaded runner to go on with, or None to end the replica (the executor restarts it)."""

REPLACED = "replaced"
"""`serve`'s return value when it ended because its runner was abandoned."""


def outcome_event(step_name: str, outcome: Outcome) -> Event:
    """The event for what `StepRunner.submit` handed back: `Finished`, or `Failed`."""
    return Finished(outcome) if isinstance(outcome, TaskResult) else failed_event(step_name, outcome)


def replace_in_process(runner: StepRunner, put: Callable[[Event], Any]) -> StepRunner | None:
    """Go on with a fresh copy of the step (threads cannot be killed: the hung one is
    left behind as a daemon thread). A failed `load()` is reported and ends the replica."""
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

    A failed `load()` is reported and ends the replica without running anything. A
    fatal task failure is reported and the replica keeps serving: the engine decides
    when to stop, and a replica that vanished would look like a death. An async step
    keeps up to `runner.concurrency` tasks in flight. A runner abandoned after a batch
    timeout is swapped for `replace(runner)` (default: `replace_in_process`); when that
    gives None, `serve` returns `REPLACED` without unloading.
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
            if runner.abandoned:
                fresh = replace(runner)
                if fresh is None:
                    return REPLACED
                runner = fresh
        for _ in range(runner.concurrency):  # an async replica finishes what it started
            slots.acquire()
        return None
    finally:
        if not runner.abandoned:
            runner.unload()


def check_options(executor: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """Reject options the executor does not know, so a misspelt one is not silently ignored."""
    known = sorted(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        expected = ", ".join(repr(k) for k in known) or "none"
        raise PipelineValidationError(
            f"Unknown option(s) {', '.join(repr(u) for u in unknown)} for the {executor!r} "
            f"executor. Known options: {expected}. Check the spelling in `executor_options`."
        )


def queue_task(queues: Mapping[str, Any], task: Task) -> None:
    """Put `task` on its step's queue; a step that is not running is an engine bug."""
    try:
        tasks = queues[task.step_name]
    except KeyError:
        raise EngineError(
            f"A task was sent to step {task.step_name!r}, which is not running. "
            f"Running steps: {sorted(queues)}."
        ) from None
    tasks.put(task)
