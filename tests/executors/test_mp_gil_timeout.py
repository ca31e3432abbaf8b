"""`batch_timeout` on "mp" when the step holds the GIL (SPEC §2, §5).

A C call that keeps the GIL (a catastrophic regex, some tokenizers; here libc `sleep`
through `ctypes.PyDLL`) stops every thread of its worker, the worker's own timeout
watchdog included. The driver then kills the worker once it has held the batch
`KILL_MARGIN` past its timeout, fails the batch as the worker would have, resends the
batches the worker held that were not over their timeout, and starts a new worker.
Every C call here lasts 60 s; the tests only assert that things end far sooner.
"""

from __future__ import annotations

import time

import pytest
from executor_testkit import (
    AsyncHoldsGilAfter,
    GlobalHoldsGil,
    HoldsGilOn,
    HoldsGilWhileMarked,
    Unsendable,
    assert_no_workers,
    batch,
    collect,
    results,
)

from stillhouse.core import Pipeline
from stillhouse.core.engine import Died, Failed, Finished, Loaded, RunContext, Task
from stillhouse.core.errors import BatchTimeoutError
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.testing import rows_of
from stillhouse.executors import mp

pytestmark = pytest.mark.timeout(150)

C_CALL = 60.0
"""Seconds each GIL-holding call lasts: every run must end far sooner."""

FAR_SOONER = 40.0


def message(step: str, key: tuple[int, int], timeout: float) -> str:
    return f"BatchTimeoutError: Step {step!r} took longer than its batch_timeout ({timeout!r} s) on batch {key}."


def loaded(executor, count: int) -> list:
    return collect(executor, lambda ev: sum(isinstance(e, Loaded) for e in ev) == count, timeout=60)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_batch_holding_the_gil_past_its_timeout_fails_and_is_the_only_one_retried(tmp_path, start_method):
    marker, log = tmp_path / "hang", tmp_path / "calls.log"

    def build() -> Pipeline:
        with Pipeline(name="gil", cache_dir=tmp_path / "cache", executor="mp",
                      start_method=start_method, enable_metadata=True) as pipeline:
            LoadDataFromDicts(name="load", data=[{"x": i} for i in range(8)], batch_size=2) >> HoldsGilWhileMarked(
                name="holds", input_batch_size=2, batch_timeout=2.0, marker=str(marker), log=str(log),
            )
        return pipeline

    marker.touch()
    began = time.monotonic()
    rows = rows_of(build().run(progress=False, use_cache=False))
    assert time.monotonic() - began < FAR_SOONER, "the run waited for the C call"
    assert [row["y"] for row in rows] == [0, 2, None, None, 8, 10, 12, 14]
    assert [row["x"] for row in rows] == list(range(8))
    for row in rows[2:4]:
        assert row["stillhouse_metadata"]["error_holds"].startswith(message("holds", (0, 1), 2.0))
    assert all(not (row.get("stillhouse_metadata") or {}) for row in rows[:2] + rows[4:])
    assert sorted(log.read_text().splitlines()) == ["[0, 1]", "[2, 3]", "[4, 5]", "[6, 7]"]

    marker.unlink()  # the step no longer hangs
    log.unlink()
    rows = rows_of(build().run(progress=False, retry_failed=True))
    assert [row["y"] for row in rows] == [2 * x for x in range(8)]
    assert log.read_text().splitlines() == ["[2, 3]"]  # only the failed batch ran again


def test_the_killed_worker_is_replaced_and_every_other_batch_runs_once(make_executor):
    executor = make_executor("mp")
    executor.start([HoldsGilOn(name="holds", hang_on=1, seconds=int(C_CALL), batch_timeout=1.0)],
                   RunContext(enable_metadata=True))
    loaded(executor, 1)
    [first] = executor.worker_pids()["holds"]
    began = time.monotonic()
    for i in range(4):
        executor.send(Task("holds", (0, i), batch(i)))
    events = collect(executor, lambda ev: len(results(ev)) == 4, timeout=FAR_SOONER)
    assert time.monotonic() - began < FAR_SOONER
    assert not [e for e in events if isinstance(e, Failed | Died)]
    answers = {r.key: r for r in results(events)}
    assert sorted(answers) == [(0, i) for i in range(4)]  # each exactly once
    assert answers[0, 1].error.startswith(message("holds", (0, 1), 1.0))
    assert answers[0, 1].rows[0]["y"] is None
    assert answers[0, 1].rows[0]["stillhouse_metadata"]["error_holds"] == answers[0, 1].error
    for i in (0, 2, 3):
        assert answers[0, i].error is None and answers[0, i].rows[0]["y"] == 2 * i
    assert answers[0, 0].rows[0]["pid"] == first
    [second] = executor.worker_pids()["holds"]
    assert second != first and {answers[0, 2].rows[0]["pid"], answers[0, 3].rows[0]["pid"]} == {second}
    executor.shutdown()
    assert_no_workers([first, second])


def test_batches_the_killed_worker_took_within_their_timeout_are_resent(make_executor, tmp_path, monkeypatch):
    # The batch holding x == 0 waits on its loop until batch 1 has started there, then
    # holds the GIL: the worker is killed with batch 1 in flight but not yet over its
    # timeout, so batch 1 runs again on the new worker instead of failing.
    monkeypatch.setattr(mp, "KILL_MARGIN", 0.5)  # killed 6 + 3 s after batch 0 started
    executor = make_executor("mp")
    executor.start([AsyncHoldsGilAfter(name="holds", folder=str(tmp_path), wait=5.0, concurrency=2,
                                       batch_timeout=6.0)], RunContext())
    loaded(executor, 1)
    executor.send(Task("holds", (0, 0), batch(0)))
    events = collect(executor, lambda _: (tmp_path / "started").exists(), timeout=30)
    pause = time.monotonic() + 3.5  # batch 1 starts > 3 s after batch 0: < 6 s old at the kill
    events += collect(executor, lambda _: time.monotonic() > pause, timeout=30)
    executor.send(Task("holds", (0, 1), batch(1)))
    events += collect(executor, lambda ev: len(results(events + ev)) == 2, timeout=FAR_SOONER)
    assert not [e for e in events if isinstance(e, Failed | Died)]
    answers = {r.key: r for r in results(events)}
    assert sorted(answers) == [(0, 0), (0, 1)]
    assert answers[0, 0].error.startswith(message("holds", (0, 0), 6.0))
    assert answers[0, 1].error is None and answers[0, 1].rows == [{"x": 1, "y": 2}]
    assert (tmp_path / "others").read_text().splitlines() == ["[1]", "[1]"]  # killed, then resent


def test_a_global_step_holding_the_gil_fails_the_run(make_executor):
    executor = make_executor("mp")
    executor.start([GlobalHoldsGil(name="total", seconds=int(C_CALL), batch_timeout=1.0)], RunContext())
    loaded(executor, 1)
    began = time.monotonic()
    executor.send(Task("total", (0, 0), batch(1, 2)))
    events = collect(executor, lambda ev: any(isinstance(e, Failed | Finished | Died) for e in ev),
                     timeout=FAR_SOONER)
    assert time.monotonic() - began < FAR_SOONER
    [failed] = [e for e in events if isinstance(e, Failed | Finished | Died)]
    assert isinstance(failed, Failed) and isinstance(failed.exception, BatchTimeoutError)
    assert f"{type(failed.exception).__name__}: {failed.exception}".startswith(message("total", (0, 0), 1.0))
    assert failed.key == (0, 0) and "'x': 1" in failed.preview


def test_a_worker_that_sends_without_a_feeder_still_reports_an_unsendable_result(make_executor):
    # A step with a batch_timeout sends from the thread that makes the event (`send_now`).
    executor = make_executor("mp")
    executor.start([Unsendable(name="lambdas", batch_timeout=30.0)], RunContext())
    executor.send(Task("lambdas", (0, 7), batch(1)))
    executor.send(Task("lambdas", (0, 8), batch(2)))
    events = collect(executor, lambda ev: sum(isinstance(e, Failed) for e in ev) == 2)
    failed = [e for e in events if isinstance(e, Failed)]
    assert [e.key for e in failed] == [(0, 7), (0, 8)]
    assert "'lambdas' for batch (0, 7) could not be sent" in str(failed[0].exception)


def test_the_kill_margin_gives_the_worker_its_own_chance_first() -> None:
    assert mp.kill_after(2.0) == 2.0 + mp.KILL_MARGIN
    assert mp.kill_after(60.0) == 90.0
