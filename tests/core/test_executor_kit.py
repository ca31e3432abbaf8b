"""The executor kit (`stillhouse.core.engine.kit`) and the base `Executor`, on their own."""

from __future__ import annotations

import logging
import pickle
import queue
from typing import ClassVar

import pytest

from stillhouse.core.engine import (
    STOP,
    Event,
    Failed,
    Finished,
    InProcessExecutor,
    Loaded,
    LogBuffer,
    StepRunner,
    Task,
    failed_event,
    log_levels,
    portable,
    serve,
)
from stillhouse.core.errors import PipelineValidationError
from stillhouse.core.step import METADATA_COLUMN, Step
from stillhouse.core.testing.steps import BrokenGlobal
from stillhouse.core.typing import StepInput, StepOutput

pytestmark = pytest.mark.timeout(60)


def rows(n: int) -> list[list[dict[str, int]]]:
    return [[{"x": i} for i in range(n)]]


def test_unknown_executor_options_are_refused_naming_the_known_ones():
    class Mine(InProcessExecutor):
        name = "mine"
        known_options = ("join_timeout",)

    Mine(join_timeout=3)
    with pytest.raises(PipelineValidationError, match=r"'join_tiemout'.*'mine'.*'join_timeout'"):
        Mine(join_tiemout=3)
    with pytest.raises(PipelineValidationError, match="Known options: none"):
        InProcessExecutor(anything=1)


def test_a_batch_failure_names_its_step_batch_and_a_truncated_preview():
    runner = StepRunner(BrokenGlobal(name="boom"))
    runner.load()
    with pytest.raises(Exception) as info:
        runner.run(Task("boom", (0, 4), rows(500)))
    event = failed_event("boom", info.value)
    assert isinstance(event.exception, RuntimeError)  # the step's own exception
    assert event.key == (0, 4)
    assert event.preview is not None and event.preview.startswith("[{'x': 0}, {'x': 1}")
    assert event.preview.endswith("... (500 rows)") and len(event.preview) < 250
    assert event.describe() == f"Step 'boom' failed on batch (0, 4) (rows: {event.preview})"
    assert "global step exploded" in event.traceback
    # ...and all of it crosses a process boundary
    again = pickle.loads(pickle.dumps(portable(event)))
    assert (again.key, again.preview, type(again.exception)) == (event.key, event.preview, RuntimeError)
    assert again.exception.__traceback__ is not None  # tblib: the traceback survives


def test_a_failure_outside_a_batch_has_no_key():
    event = failed_event("load", OSError("weights not found"))
    assert (event.key, event.preview) == (None, None)
    assert event.describe() == "Step 'load' failed"


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def test_an_exception_that_does_not_pickle_arrives_as_its_type_and_text():
    event = portable(Failed("s", Unpicklable("details"), "tb"))
    assert isinstance(event, Failed) and isinstance(event.exception, RuntimeError)
    assert "Unpicklable: details" in str(event.exception)
    assert portable(None) is None


def test_every_stillhouse_error_crosses_processes_as_itself():
    """Errors that also derive from an OSError (a timeout, a disk error) once arrived as a
    plain RuntimeError: tblib's unpickling made them with `RuntimeError.__new__`."""
    import inspect

    from stillhouse.core import errors

    for cls in (c for _, c in inspect.getmembers(errors, inspect.isclass)
                if issubclass(c, errors.StillhouseError) and c is not errors.StepsSuspendedError):
        try:
            raise cls("what happened")
        except cls as raised:
            event = pickle.loads(pickle.dumps(portable(Failed("s", raised, "tb"))))
        assert type(event.exception) is cls and str(event.exception) == "what happened"
    timeout = errors.BatchTimeoutError("too slow", step_name="s")
    event = pickle.loads(pickle.dumps(portable(Failed("s", timeout, "tb"))))
    assert isinstance(event.exception, TimeoutError) and event.exception.step_name == "s"


class Unloads(Step):
    unloaded: ClassVar[list[str]] = []

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs

    def unload(self) -> None:
        Unloads.unloaded.append(self.name)


def test_serve_loads_runs_until_stop_and_unloads():
    tasks: queue.Queue[Task | None] = queue.Queue()
    events: list[Event] = []
    for index in range(3):
        tasks.put(Task("double", (0, index), rows(2)))
    tasks.put(STOP)
    runner = StepRunner(Unloads(name="double"), replica=1)
    assert serve(runner, tasks.get, events.append) is None
    assert events[0] == Loaded("double", 1)
    assert [e.result.key for e in events[1:] if isinstance(e, Finished)] == [(0, 0), (0, 1), (0, 2)]
    assert Unloads.unloaded == ["double"]


def test_log_buffer_keeps_the_newest_records_and_counts_the_dropped():
    buffer = LogBuffer(capacity=2)
    log = logging.getLogger("test_executor_kit.buffer")
    log.addHandler(buffer)
    log.propagate = False
    try:
        for i in range(3):
            log.warning("line %d of %s", i, object())  # args that do not pickle
    finally:
        log.removeHandler(buffer)
    taken = buffer.take()
    assert [r.getMessage()[:6] for r in taken[1:]] == ["line 1", "line 2"]
    assert "1 log record(s)" in taken[0].getMessage()
    pickle.dumps(taken)
    assert buffer.take() == []


def test_log_levels_are_the_drivers_explicit_ones_minus_skipped():
    logging.getLogger("kit_levels.mine").setLevel(logging.DEBUG)
    logging.getLogger("kit_levels_skip.inner").setLevel(logging.ERROR)
    levels = log_levels(skip=["kit_levels_skip"])
    assert levels["kit_levels.mine"] == logging.DEBUG
    assert "kit_levels_skip.inner" not in levels and "" in levels


def test_the_metadata_column_is_defined_once():
    from stillhouse.core.engine import worker
    from stillhouse.core.steps import columns

    assert worker.METADATA_COLUMN is columns.METADATA_COLUMN is METADATA_COLUMN == "stillhouse_metadata"
