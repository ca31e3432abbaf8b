"""`StepState.status`: one status per step, changed only by `StepState.move`."""

from __future__ import annotations

import pytest

from stillhouse.core import Pipeline, StepInput, StepOutput, step
from stillhouse.core.engine import MemoryOutputWriter, NullRunStore
from stillhouse.core.engine.state import StepStatus, build_states
from stillhouse.core.errors import EngineError
from stillhouse.core.steps import LoadDataFromDicts


@step(inputs=["x"], outputs=["x"])
def Work(inputs: StepInput) -> StepOutput:
    yield inputs


def _states():
    with Pipeline(name="states", executor="sync") as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": 1}]) >> Work(name="work")
    stores = {name: NullRunStore().step_store(name) for name in pipeline.dag.step_names}
    return build_states(pipeline.validate(), pipeline.dag, stores, MemoryOutputWriter())


def test_every_step_starts_waiting() -> None:
    states = _states()
    assert [s.status for s in states.values()] == [StepStatus.WAITING, StepStatus.WAITING]
    assert not any(s.finished or s.exhausted or s.had_workers for s in states.values())


def test_a_generator_goes_through_its_statuses_and_finishing_is_stamped() -> None:
    load = _states()["load"]
    for status in (StepStatus.RUNNING, StepStatus.PULLING, StepStatus.RUNNING, StepStatus.EXHAUSTED):
        load.move(status)
        assert load.status is status
    assert load.exhausted and not load.finished and load.stats.ended_at is None
    load.move(StepStatus.FINISHED)
    assert load.finished and load.exhausted and load.stats.ended_at is not None


def test_a_skipped_step_is_finished() -> None:
    work = _states()["work"]
    work.move(StepStatus.SKIPPED)
    assert work.finished


@pytest.mark.parametrize(("path", "bad"), [
    ((StepStatus.RUNNING, StepStatus.FINISHED), StepStatus.RUNNING),
    ((StepStatus.RUNNING, StepStatus.PULLING), StepStatus.FINISHED),
    ((StepStatus.SKIPPED,), StepStatus.RUNNING),
    ((StepStatus.RUNNING, StepStatus.EXHAUSTED), StepStatus.PULLING),
])
def test_a_move_the_engine_never_makes_is_refused(path, bad) -> None:
    state = _states()["load"]
    for status in path:
        state.move(status)
    with pytest.raises(EngineError, match=rf"'load' cannot go from {path[-1].value} to {bad.value}"):
        state.move(bad)
    assert state.status is path[-1]


@pytest.mark.timeout(120)
def test_after_a_run_every_step_is_finished_or_skipped(tmp_path, inprocess) -> None:
    """The summary reads the statuses: a first run computes, a rerun reuses everything."""
    pytest.importorskip("stillhouse.cache", reason="a rerun reuses only what stillhouse-cache kept")
    def build():
        with Pipeline(name="status-run", executor=inprocess, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(name="load", data=[{"x": i} for i in range(5)], batch_size=2) >> Work(name="work")
        return pipeline

    first = build()
    first.run(progress=False)
    assert [row["status"] for row in first.last_run_summary] == ["computed", "computed"]
    again = build()
    again.run(progress=False)
    assert [row["status"] for row in again.last_run_summary] == ["cached", "cached"]
