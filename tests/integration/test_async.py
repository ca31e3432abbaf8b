"""Async steps (issue 15.1, 15.2): concurrency per replica, a calling thread that already
runs an event loop (Jupyter), and the step API around `async def process`."""

from __future__ import annotations

import asyncio

import pytest

from stillhouse.core import GeneratorStep, Pipeline, Step, StepInput, step
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import (
    AsyncBlocksOnTwo,
    AsyncDouble,
    AsyncNumbers,
    AsyncSpan,
    Double,
    HangPid,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXECUTORS = ["sync", "threaded", "mp"]


def most_in_flight(rows: list[dict]) -> int:
    """The largest number of batches whose [started, ended] spans overlap at one moment."""
    spans = {(r["started"], r["ended"]) for r in rows}
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda ev: (ev[0], ev[1]))
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("executor", [*EXECUTORS, "ray"])
def test_an_async_replica_works_on_up_to_concurrency_batches_at_once(executor, tmp_path):
    with Pipeline(name="spans", executor=executor, cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(40)], batch_size=40) >> AsyncSpan(
            input_batch_size=2, concurrency=5, sleep=0.5
        )
    rows = rows_of(pipeline.run(use_cache=False, progress=False))
    assert [r["x"] for r in rows] == list(range(40))
    assert 2 <= most_in_flight(rows) <= 5


@pytest.mark.parametrize("executor", EXECUTORS)
def test_runs_when_the_calling_thread_already_runs_an_event_loop(executor, tmp_path):
    """As in Jupyter: `run()` is called from code running on an event loop."""
    with Pipeline(name="in-loop", executor=executor, cache_dir=tmp_path) as pipeline:
        AsyncNumbers(n=9, batch=4) >> AsyncDouble(input_batch_size=2) >> Double(name="sync_after", input_batch_size=3)

    async def main() -> list[dict]:
        asyncio.get_running_loop()  # there is one
        return rows_of(pipeline.run(use_cache=False, progress=False))

    rows = asyncio.run(main())
    assert [(r["x"], r["y"]) for r in rows] == [(i, 2 * i) for i in range(9)]


def test_is_async_and_resume_state_outside_a_run():
    class Plain(Step):
        def process(self, inputs: StepInput):
            yield inputs

    class Awaiting(Step):
        async def process(self, inputs: StepInput):
            yield inputs

    class Producing(GeneratorStep):
        async def process(self, offset: int = 0):
            yield [{"x": offset}], True

    assert not Plain().is_async
    assert Awaiting().is_async and Awaiting().concurrency == 16
    assert Producing().is_async
    assert Awaiting().resume_state is None


def test_step_decorator_accepts_async_functions_and_skips_offset_rows():
    @step(outputs=["x"], step_type="generator")
    async def Numbers(n: int = 5):
        yield [{"x": i} for i in range(3)], False
        yield [{"x": i} for i in range(3, n)], True

    async def collect(offset: int) -> list:
        return [item async for item in Numbers().process(offset=offset)]

    assert Numbers().is_async
    assert asyncio.run(collect(4)) == [([{"x": 4}], True)]
    assert asyncio.run(collect(0))[0] == ([{"x": 0}, {"x": 1}, {"x": 2}], False)


def test_mp_replaces_the_process_of_a_replica_whose_sync_batch_timed_out(tmp_path):
    """A sync batch cannot be stopped inside its process: the process ends after reporting
    the failed batch and a new one (another pid) takes the replica's place."""
    with Pipeline(name="replace", executor="mp", cache_dir=tmp_path, enable_metadata=True) as pipeline:
        loader = LoadDataFromDicts(data=[{"x": i} for i in range(8)], batch_size=8)
        loader >> HangPid(name="hangs", hang_on=3, input_batch_size=2, batch_timeout=1.0)
    rows = rows_of(pipeline.run(use_cache=False, progress=False))
    assert [r["x"] for r in rows] == list(range(8))
    assert [r["pid"] is None for r in rows] == [False, False, True, True, False, False, False, False]
    before, after = {rows[0]["pid"], rows[1]["pid"]}, {r["pid"] for r in rows[4:]}
    assert len(before) == 1 and len(after) == 1 and before != after


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_batch_done_before_another_blocks_the_loop_keeps_its_rows(executor, tmp_path):
    """The first batch ends at once; the second then blocks the loop past its timeout. Only
    the second fails, on every executor: the first's rows (a paid call's, for an LLM step)
    were lost with it, its answer still queued on the blocked loop."""
    with Pipeline(name="done-first", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(4)], batch_size=4) >> AsyncBlocksOnTwo(
            name="blocky", input_batch_size=2, batch_timeout=1.0, concurrency=2
        )
    rows = rows_of(pipeline.run(use_cache=False, progress=False))
    assert [r["y"] for r in rows] == [0, 1, None, None]
    assert "on batch (0, 1)" in rows[2]["stillhouse_metadata"]["error_blocky"]
