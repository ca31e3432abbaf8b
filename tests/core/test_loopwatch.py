"""An async step that blocks its own event loop (`stillhouse.core.engine.loopwatch`): a
warning names the step and the line it blocks at, and a batch past its `batch_timeout`
is failed from beside the loop, whose own timeout cannot run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from stillhouse.core import Pipeline, StepInput, step
from stillhouse.core.engine import InProcessExecutor, loopwatch
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.testing import registered_executor, rows_of

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def inprocess():
    with registered_executor(InProcessExecutor):
        yield


def blocked_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "blocked its event loop" in r.getMessage()]


@step(inputs=["x"], outputs=["y"])
async def SleepsInAsync(inputs: StepInput, seconds: float = 2.5) -> AsyncIterator[list[dict]]:
    time.sleep(seconds)  # the mistake the warning is about
    yield [{**row, "y": row["x"]} for row in inputs]


def test_a_blocked_loop_is_named_with_the_line_that_blocks_it(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(loopwatch, "BLOCKED_WARNING", 1.0)
    with Pipeline(name="blocks", executor="inprocess", cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> SleepsInAsync(name="sleepy")
    with caplog.at_level(logging.WARNING, logger="stillhouse.worker"):
        rows = rows_of(pipeline.run(progress=False))
    assert rows == [{"x": 1, "y": 1}]  # slow, not failed: it has no batch_timeout
    [warning] = blocked_warnings(caplog)
    assert "Step 'sleepy' (replica 0)" in warning
    assert "time.sleep(seconds)" in warning and "test_loopwatch.py" in warning
    assert "asyncio.to_thread" in warning and "set `batch_timeout`" in warning


@step(inputs=["x"], outputs=["y"])
async def Awaits(inputs: StepInput) -> AsyncIterator[list[dict]]:
    await asyncio.sleep(1.5)
    yield [{**row, "y": row["x"]} for row in inputs]


class LoadsSlowly(Awaits):  # type: ignore[misc, valid-type]
    def load(self) -> None:  # a model loaded in load(): sync, on the step's loop by design
        super().load()
        time.sleep(1.5)


def test_a_slow_load_is_not_reported_as_a_blocked_loop(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(loopwatch, "BLOCKED_WARNING", 1.0)
    with Pipeline(name="loads", executor="inprocess", cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> LoadsSlowly(name="heavy")
    with caplog.at_level(logging.WARNING, logger="stillhouse.worker"):
        assert rows_of(pipeline.run(progress=False)) == [{"x": 1, "y": 1}]
    assert blocked_warnings(caplog) == []


def test_a_loop_that_answers_is_not_reported(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(loopwatch, "BLOCKED_WARNING", 1.0)
    with Pipeline(name="awaits", executor="inprocess", cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> Awaits(name="patient")
    with caplog.at_level(logging.WARNING, logger="stillhouse.worker"):
        assert rows_of(pipeline.run(progress=False)) == [{"x": 1, "y": 1}]
    assert blocked_warnings(caplog) == []


def test_batches_stuck_behind_a_blocking_one_time_out_and_a_fresh_replica_runs_the_rest(tmp_path):
    """Concurrency 4: the first batch (rows 0-1) blocks the loop for good before the three
    sent with it could run; all four fail once past batch_timeout, and the two batches
    sent after them (rows 8-11, held until a slot frees) run on a fresh copy of the step."""
    from stillhouse.core.testing.steps import AsyncBlocksLoop

    with Pipeline(name="stuck-behind", executor="inprocess", cache_dir=tmp_path, enable_metadata=True) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(12)], batch_size=12) >> AsyncBlocksLoop(
            name="hangs", hang_on=1, input_batch_size=2, batch_timeout=1.0, concurrency=4
        )
    rows = rows_of(pipeline.run(use_cache=False, progress=False))
    assert [r["x"] for r in rows] == list(range(12))
    failed = {r["x"] for r in rows if r["slow"] is None}
    assert failed == set(range(8))
    assert all("batch_timeout" in r["stillhouse_metadata"]["error_hangs"] for r in rows if r["x"] in failed)
    assert [r["slow"] for r in rows[8:]] == [8, 9, 10, 11]
