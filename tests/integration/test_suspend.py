"""Suspend (issue 15.4): a step says "not finished, come back later" with `SuspendStep`.

The run keeps the state, finishes what else it can and raises `StepsSuspendedError`;
the next run hands the state back with the same batch, and nothing else is recomputed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.errors import StepsSuspendedError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import AsyncSuspendOnce, CountCalls, Double, SuspendOnce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(params=["mp", "threaded", "sync"])
def executor(request: pytest.FixtureRequest) -> str:
    return request.param


def build(executor: str, cache: Path, calls: Path, step_class: type = SuspendOnce, **kwargs) -> Pipeline:
    with Pipeline(name="suspend", executor=executor, cache_dir=cache) as pipeline:
        loader = LoadDataFromDicts(data=[{"x": i} for i in range(12)], batch_size=4)
        waits = step_class(name="waits", input_batch_size=3, **kwargs)
        loader >> waits >> Double(name="after")
        loader >> CountCalls(name="other", log_path=str(calls), input_batch_size=4)
    return pipeline


@pytest.mark.parametrize("step_class", [SuspendOnce, AsyncSuspendOnce], ids=["sync", "async"])
def test_suspends_on_the_first_run_and_completes_on_the_second(executor, tmp_path, step_class):
    calls = tmp_path / "calls.txt"
    with pytest.raises(StepsSuspendedError) as info:
        build(executor, tmp_path, calls, step_class).run(progress=False)
    message = str(info.value)
    assert "'waits' (4 batches)" in message and "run the pipeline again" in message.lower()
    assert info.value.steps == {"waits": 4}
    assert calls.read_text().split() == ["0", "4", "8"]  # the other branch finished
    assert len(list(tmp_path.glob("suspend/steps/waits-*/suspended-*.json"))) == 4

    result = build(executor, tmp_path, calls, step_class).run(progress=False)
    rows = rows_of(result, "after")
    assert [r["x"] for r in rows] == list(range(12))
    assert [r["job"] for r in rows] == [x - x % 3 for x in range(12)]  # each batch got its own state
    assert [r["y"] for r in rows] == [2 * x for x in range(12)]
    assert [r["x"] for r in rows_of(result, "other")] == list(range(12))
    assert calls.read_text().split() == ["0", "4", "8"]  # kept, not recomputed
    assert not list(tmp_path.glob("suspend/steps/waits-*/suspended-*.json"))  # spent


def test_wait_for_suspended_retries_in_the_same_run(executor, tmp_path):
    calls = tmp_path / "calls.txt"
    pipeline = build(executor, tmp_path, calls, AsyncSuspendOnce, retry_after=0.2)
    result = pipeline.run(progress=False, wait_for_suspended=True)
    assert [r["job"] for r in rows_of(result, "after")] == [x - x % 3 for x in range(12)]
    # nothing is left suspended: the next run is answered from the cache
    again = build(executor, tmp_path, calls, AsyncSuspendOnce, retry_after=0.2).run(progress=False)
    assert rows_of(again, "after") == rows_of(result, "after")
    assert not list(tmp_path.glob("suspend/steps/waits-*/suspended-*.json"))


def test_suspended_state_survives_in_a_remote_store(tmp_path):
    """The remote (fsspec) store keeps the state too: `memory://` stands for s3://."""
    import fsspec

    cache = f"memory://suspend-remote-{tmp_path.name}"
    calls = tmp_path / "calls.txt"
    with pytest.raises(StepsSuspendedError):
        build("threaded", cache, calls).run(progress=False)  # type: ignore[arg-type]
    fs, root = fsspec.core.url_to_fs(cache)
    assert len([p for p in fs.find(root) if "/suspended-" in p]) == 4
    rows = rows_of(build("threaded", cache, calls).run(progress=False), "after")  # type: ignore[arg-type]
    assert [r["job"] for r in rows] == [x - x % 3 for x in range(12)]
    assert not [p for p in fs.find(root) if "/suspended-" in p]
    assert calls.read_text().split() == ["0", "4", "8"]


def test_a_stop_while_waiting_for_suspended_batches_keeps_their_state(tmp_path):
    """`pipeline.stop()` (what Ctrl+C does) while suspended batches wait for their
    `retry_after`: the run stops at once, and the next run resumes them."""
    import threading
    import time

    calls = tmp_path / "calls.txt"
    pipeline = build("threaded", tmp_path, calls, retry_after=60)

    def stop_once_all_four_wait() -> None:
        # Once every batch saved its state, not on a timer that a loaded machine could
        # outrun: a batch not suspended yet would suspend afresh in the next run.
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("suspend/steps/waits-*/suspended-*.json"))) < 4:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        pipeline.stop()

    stopper = threading.Thread(target=stop_once_all_four_wait, daemon=True)
    stopper.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(progress=False, wait_for_suspended=True)
    stopper.join(30)
    assert time.monotonic() - started < 30  # not the 60 s retry_after
    again = build("threaded", tmp_path, calls, retry_after=60)  # the same step: same store
    rows = rows_of(again.run(progress=False), "after")
    assert [r["job"] for r in rows] == [x - x % 3 for x in range(12)]
