"""The scheduler, driven through `Pipeline.run()` on core's in-process executor and on
small executor doubles that implement the public `Executor` interface: results that
come back out of order are released in order, stored batches are replayed without
sending tasks, a stop drains what is in flight, and a run that cannot progress raises
with its state. Runs with stillhouse-core alone (`.ci/core-alone`)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.engine import (
    BatchKey,
    BatchRecord,
    Event,
    Executor,
    Finished,
    InProcessExecutor,
    Loaded,
    RunContext,
    RunStore,
    StepRunner,
    StepStore,
    Task,
)
from stillhouse.core.errors import EngineError, PipelineValidationError
from stillhouse.core.hookspecs import hookimpl
from stillhouse.core.plugins import plugin_manager
from stillhouse.core.step import BaseStep
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.testing import registered_executor, rows_of
from stillhouse.core.testing.steps import Double

pytestmark = pytest.mark.timeout(60)


def data(n: int) -> list[dict[str, int]]:
    return [{"x": i} for i in range(n)]


def doubled(n: int) -> list[tuple[int, int]]:
    return [(i, 2 * i) for i in range(n)]


def pipeline_of(executor: str, tmp_path: Any, rows: int = 40, replicas: int = 1) -> Pipeline:
    with Pipeline(name="sched", executor=executor, cache_dir=tmp_path) as pipeline:
        loader = LoadDataFromDicts(name="load", data=data(rows), batch_size=5)
        loader >> Double(name="double", input_batch_size=2, resources={"replicas": replicas})
    return pipeline


def pairs(result: Any) -> list[tuple[int, int]]:
    return [(row["x"], row["y"]) for row in rows_of(result)]


# -- a run store kept in memory, across runs ----------------------------------------------


class MemoryStepStore(StepStore):
    def __init__(self) -> None:
        self.batches: dict[BatchKey, BatchRecord] = {}
        self.routes: dict[int, list[str]] = {}
        self.version = "memory"

    def get(self, key: BatchKey) -> BatchRecord | None:
        return self.batches.get(key)

    def put(self, record: BatchRecord) -> None:
        self.batches[record.key] = record

    def get_route(self, ordinal: int) -> list[str] | None:
        return self.routes.get(ordinal)

    def put_route(self, ordinal: int, successors: list[str]) -> None:
        self.routes[ordinal] = successors

    def mark_finished(self) -> None:
        self.finished = True

    def records(self) -> Iterator[BatchRecord]:
        return iter([self.batches[key] for key in sorted(self.batches)])


class MemoryRunStore(RunStore):
    def __init__(self) -> None:
        self.steps: dict[str, MemoryStepStore] = {}

    def step_store(self, name: str, batching: int | None = None) -> StepStore:
        return self.steps.setdefault(name, MemoryStepStore())


@contextlib.contextmanager
def run_store(store: RunStore) -> Iterator[RunStore]:
    """Runs inside the block use `store` (a throwaway plugin; with stillhouse-cache
    installed too, the last registered plugin answers first)."""

    @hookimpl
    def make_run_store() -> RunStore:
        return store

    plugin = types.ModuleType("test-scheduler-run-store")  # pluggy keeps plugins in sets
    plugin.make_run_store = make_run_store
    manager = plugin_manager()
    manager.register(plugin, name="test-scheduler-run-store")
    try:
        yield store
    finally:
        manager.unregister(name="test-scheduler-run-store")


# -- executor doubles ---------------------------------------------------------------------


class Recording(InProcessExecutor):
    """The in-process executor, keeping every task it was sent."""

    name: ClassVar[str] = "recording"
    sent: ClassVar[list[tuple[str, BatchKey]]] = []

    def send(self, task: Task) -> None:
        Recording.sent.append((task.step_name, task.key))
        super().send(task)


class Reversing(Executor):
    """Holds every task it is sent and, on `events()`, answers all of them last first:
    the engine must put results back in key order."""

    name: ClassVar[str] = "reversing"
    delivered: ClassVar[list[tuple[str, BatchKey]]] = []

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.runners: dict[str, StepRunner] = {}
        self.held: list[Task] = []
        self.pending: list[Event] = []

    def start(self, steps: Sequence[BaseStep], context: RunContext) -> None:
        for step in steps:
            runner = StepRunner(step, enable_metadata=context.enable_metadata)
            runner.load()
            self.runners[step.name] = runner
            self.pending += [Loaded(step.name, r) for r in range(step.resources.replicas)]

    def send(self, task: Task) -> None:
        self.held.append(task)

    def events(self, timeout: float) -> list[Event]:
        events, self.pending = self.pending, []
        held, self.held = self.held, []
        for task in reversed(held):
            Reversing.delivered.append((task.step_name, task.key))
            events.append(Finished(self.runners[task.step_name].run(task)))
        return events

    def stop_steps(self, names: Sequence[str]) -> None:
        for name in names:
            self.runners.pop(name).unload()

    def shutdown(self, force: bool = False) -> None:
        self.stop_steps(list(self.runners))


class StopsMidway(Reversing):
    """Asks the pipeline to stop once three batches of "double" are in flight (as a first
    Ctrl+C would), answers them while the engine drains, and records what it was sent
    after the stop and whether it was shut down."""

    name: ClassVar[str] = "stops-midway"
    after_stop: ClassVar[list[BatchKey]] = []
    shut_down: ClassVar[list[bool]] = []

    def start(self, steps: Sequence[BaseStep], context: RunContext) -> None:
        super().start(steps, context)
        self.pipeline = context.pipeline
        self.stopped = False

    def send(self, task: Task) -> None:
        if self.stopped:
            StopsMidway.after_stop.append(task.key)
        super().send(task)

    def events(self, timeout: float) -> list[Event]:
        in_flight = [task for task in self.held if task.step_name == "double"]
        if not self.stopped and len(in_flight) >= 3:
            self.pipeline.stop()
            self.stopped = True
            events, self.pending = self.pending, []
            return events  # the held batches are answered while the engine drains
        return super().events(timeout)

    def shutdown(self, force: bool = False) -> None:
        StopsMidway.shut_down.append(force)
        super().shutdown(force)


class LosesABatch(InProcessExecutor):
    """Answers batch (0, 1) of "double" under another key: the engine waits for it forever."""

    name: ClassVar[str] = "loses-a-batch"

    def send(self, task: Task) -> None:
        if task.step_name == "double" and task.key == (0, 1):
            task = Task(task.step_name, (0, 999), task.inputs, task.offset, task.resume_state)
        super().send(task)


@pytest.fixture(autouse=True)
def _fresh_records() -> None:
    Recording.sent.clear()
    Reversing.delivered.clear()
    StopsMidway.after_stop.clear()
    StopsMidway.shut_down.clear()


# -- the tests ----------------------------------------------------------------------------


def test_the_in_process_executor_runs_a_pipeline(tmp_path):
    with registered_executor(InProcessExecutor) as name:
        result = pipeline_of(name, tmp_path, replicas=2).run(use_cache=False, progress=False)
    assert pairs(result) == doubled(40)


def test_results_that_come_back_out_of_order_are_released_in_order(tmp_path):
    with registered_executor(Reversing) as name:
        result = pipeline_of(name, tmp_path, rows=60, replicas=3).run(use_cache=False, progress=False)
    assert pairs(result) == doubled(60)
    keys = [key for step, key in Reversing.delivered if step == "double"]
    assert sorted(keys) == [(0, i) for i in range(30)]
    assert keys != sorted(keys)  # the executor really answered out of order


def test_a_second_run_replays_stored_batches_without_sending_tasks(tmp_path):
    store = MemoryRunStore()
    with registered_executor(Recording) as name, run_store(store):
        first = pipeline_of(name, tmp_path).run(progress=False)
        assert ("double", (0, 0)) in Recording.sent
        assert store.steps["double"].finished and len(store.steps["double"].batches) == 20
        Recording.sent.clear()

        second = pipeline_of(name, tmp_path).run(progress=False)
        assert Recording.sent == []

        # An unfinished step with batches missing: only those are computed again.
        double = store.steps["double"]
        double.finished = False
        del double.batches[(0, 3)], double.batches[(0, 7)]
        third = pipeline_of(name, tmp_path).run(progress=False)
    assert sorted(Recording.sent) == [("double", (0, 3)), ("double", (0, 7))]
    assert pairs(first) == pairs(second) == pairs(third) == doubled(40)


def test_a_stop_drains_the_batches_in_flight_and_a_rerun_resumes(tmp_path):
    store = MemoryRunStore()
    with registered_executor(StopsMidway) as name, run_store(store):
        with pytest.raises(KeyboardInterrupt):
            pipeline_of(name, tmp_path, replicas=2).run(progress=False)
        stored = sorted(store.steps["double"].batches)
        assert len(stored) >= 3  # the three in flight at the stop were stored, not dropped
        assert not store.steps["double"].finished
        assert StopsMidway.after_stop == []  # nothing new was sent once stopping
        assert StopsMidway.shut_down == [False]  # drained cleanly: workers unload, no kill

    with registered_executor(Recording) as name, run_store(store):
        result = pipeline_of(name, tmp_path).run(progress=False)
    assert pairs(result) == doubled(40)
    resent = {key for step, key in Recording.sent if step == "double"}
    assert resent and not resent & set(stored)


def test_a_run_that_cannot_progress_raises_with_its_state(tmp_path):
    with registered_executor(LosesABatch) as name, pytest.raises(EngineError) as info:
        pipeline_of(name, tmp_path).run(use_cache=False, progress=False)
    text = str(info.value)
    assert "cannot make progress" in text
    assert "'double'" in text and "(0, 1)" in text  # the step, and the batch it waits for


# -- generators asked ahead ------------------------------------------------------------


class Ahead(InProcessExecutor):
    """The in-process executor, recording how many pulls each generator had in flight."""

    name: ClassVar[str] = "ahead"
    most: ClassVar[dict[str, int]] = {}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.out: dict[str, int] = {}

    def send(self, task: Task) -> None:
        if task.inputs is None:
            self.out[task.step_name] = self.out.get(task.step_name, 0) + 1
            Ahead.most[task.step_name] = max(Ahead.most.get(task.step_name, 0), self.out[task.step_name])
        super().send(task)

    def events(self, timeout: float) -> list[Event]:
        events = super().events(timeout)
        for event in events:
            if isinstance(event, Finished) and event.result.key[0] == 0 and event.result.step_name in self.out:
                self.out[event.result.step_name] -= 1
        return events


class Unordered(Ahead):
    name: ClassVar[str] = "unordered"
    runs_in_order: ClassVar[bool] = False


def _numbers(count: int, *, more_after_last: bool) -> Any:
    from stillhouse.core import GeneratorStep

    class Numbers(GeneratorStep):
        @property
        def outputs(self) -> list[str]:
            return ["x"]

        def process(self, offset: int = 0) -> Any:
            for start in range(offset, count, 5):
                yield [{"x": i} for i in range(start, min(start + 5, count))], start + 5 >= count
            if more_after_last:  # never asked for with one pull in flight: never kept
                yield [{"x": -1}], True

    return Numbers


@pytest.mark.parametrize("more_after_last", [False, True])
def test_a_generator_is_asked_ahead_where_tasks_run_in_order_and_keeps_exactly_its_rows(tmp_path, more_after_last):
    numbers = _numbers(23, more_after_last=more_after_last)
    results = {}
    for executor in (Ahead, Unordered):
        Ahead.most.clear()
        store = MemoryRunStore()
        with registered_executor(executor) as name, run_store(store):
            with Pipeline(name=f"ahead-{name}", executor=name, cache_dir=tmp_path) as pipeline:
                numbers(name="numbers") >> Double(name="double", input_batch_size=4)
            results[name] = pairs(pipeline.run(use_cache=False, progress=False))
            summary = {row["step"]: row for row in pipeline.last_run_summary}
        assert summary["numbers"]["batches"] == 5 and summary["numbers"]["rows_out"] == 23
        assert Ahead.most["numbers"] == (2 if executor is Ahead else 1)
        assert sorted(store.steps["numbers"].batches) == [(0, i) for i in range(5)]
    assert results["ahead"] == results["unordered"] == doubled(23)


@pytest.mark.parametrize("generator_batch_size", [2, 5, 50])
def test_a_dry_run_sends_one_batch_of_its_batch_size_and_leaves_the_generator_as_it_was(
    tmp_path, generator_batch_size
):
    """distilabel's dry run makes every generator yield `batch_size` rows: a generator
    whose own batches are smaller still sends one batch of that many rows."""
    with registered_executor(InProcessExecutor) as name:  # core alone has no "sync"
        with Pipeline(name="dry", cache_dir=tmp_path, executor=name) as pipeline:
            load = LoadDataFromDicts(data=[{"x": i} for i in range(10)], batch_size=generator_batch_size)
            load >> Double(name="double", input_batch_size=3)
        fields_set = set(load.model_fields_set)
        assert [row["y"] for row in rows_of(pipeline.dry_run(batch_size=5))] == [0, 2, 4, 6, 8]
    assert load.batch_size == generator_batch_size and load.model_fields_set == fields_set
    assert not (tmp_path / "dry").exists()


def test_a_dry_run_batch_size_must_be_a_positive_number_of_rows(tmp_path):
    with registered_executor(InProcessExecutor) as name:
        with Pipeline(name="dry", cache_dir=tmp_path, executor=name) as pipeline:
            LoadDataFromDicts(data=[{"x": 1}]) >> Double(name="double")
        with pytest.raises(PipelineValidationError, match=r"dry_run\(batch_size=0\): the batch size must be a positive"):
            pipeline.dry_run(batch_size=0)
