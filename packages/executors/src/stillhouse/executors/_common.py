"""What every built-in executor's worker does, whatever carries its tasks.

`serve` is the replica loop (load, run tasks until the stop sentinel, unload) and
`failed_event` turns an exception into the `Failed` event the engine stops on.
Transport (queues, threads, processes) does not belong here.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stillhouse.core.engine import Event, Failed, FatalStepError, Finished, Loaded, StepRunner, Task
from stillhouse.core.errors import EngineError, PipelineValidationError

STOP = None
"""Put on a step's task queue once per replica: that replica unloads and ends."""


def failed_event(step_name: str, exc: BaseException) -> Failed:
    """The `Failed` event for `exc`, unwrapping `FatalStepError` to the step's own exception."""
    if isinstance(exc, FatalStepError):
        return Failed(step_name, exc.original, exc.traceback)
    return Failed(step_name, exc, "".join(traceback.format_exception(exc)))


def serve(runner: StepRunner, get_task: Callable[[], Task | None], put: Callable[[Event], Any]) -> None:
    """Load the step, run tasks until `STOP`, then unload. Every outcome becomes an event.

    A failed `load()` is reported and ends the replica without running anything. A
    fatal task failure is reported and the replica keeps serving: the engine decides
    when to stop, and a replica that vanished would look like a death.
    """
    name = runner.step.name
    try:
        runner.load()
    except Exception as exc:
        put(failed_event(name, exc))
        return
    put(Loaded(name, runner.replica))
    try:
        while True:
            try:
                task = get_task()
            except (EOFError, OSError):
                return  # the driver closed the queue: nothing more will come
            except Exception as exc:  # a task that cannot be unpickled in this worker
                put(failed_event(name, exc))
                continue
            if task is STOP:
                return
            try:
                put(Finished(runner.run(task)))
            except Exception as exc:
                put(failed_event(name, exc))
    finally:
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
