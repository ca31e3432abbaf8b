"""Behaviour every built-in executor shares, driven directly (no engine, no pipeline)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, ClassVar

import pytest
from executor_testkit import (
    Chatty,
    Counter,
    Double,
    FailingGlobal,
    FailingLoad,
    FailOnThree,
    GlobalBoom,
    LoadBoom,
    Numbers,
    Sleeper,
    WhoAmI,
    batch,
    collect,
    results,
    run_tasks,
    workers_left,
)

from stillhouse.core import Step, StepInput
from stillhouse.core.engine import Executor, Failed, Loaded, RunContext, Task
from stillhouse.core.errors import EngineError

pytestmark = pytest.mark.timeout(60)


def test_every_task_gets_a_result(executor: Executor) -> None:
    executor.start([Double(name="double")], RunContext())
    tasks = [Task("double", (0, i), batch(i, i + 100)) for i in range(10)]
    got = run_tasks(executor, tasks)
    assert sorted(got) == [(0, i) for i in range(10)]
    for i in range(10):
        assert [row["y"] for row in got[0, i].rows] == [2 * i, 2 * (i + 100)]
        assert got[0, i].error is None and not got[0, i].last


def test_every_replica_is_loaded(executor: Executor) -> None:
    executor.start([Double(name="double", resources={"replicas": 2})], RunContext())
    events = collect(executor, lambda ev: sum(isinstance(e, Loaded) for e in ev) == 2)
    assert sorted(e.replica for e in events if isinstance(e, Loaded)) == [0, 1]


@pytest.mark.parametrize("generator", [Counter, Numbers], ids=["class", "decorator"])
def test_generator_resumes_from_offset(executor: Executor, generator: type) -> None:
    executor.start([generator(name="gen", batch_size=3)], RunContext())
    rows, last, i = [], False, 0
    while not last:
        result = run_tasks(executor, [Task("gen", (0, i), None, offset=4 if i == 0 else 0)])[0, i]
        rows += [row["n"] for row in result.rows]
        last, i = result.last, i + 1
    assert rows == list(range(4, 10))


def test_failing_batch_is_imputed(executor: Executor) -> None:
    executor.start([FailOnThree(name="flaky")], RunContext(enable_metadata=True))
    got = run_tasks(executor, [Task("flaky", (0, 0), batch(1, 2)), Task("flaky", (0, 1), batch(3, 4))])
    assert got[0, 0].error is None
    assert [row["y"] for row in got[0, 0].rows] == [1, 2]
    failed = got[0, 1]
    assert failed.error == "ValueError: three is bad"
    assert [(row["x"], row["y"]) for row in failed.rows] == [(3, None), (4, None)]
    assert all("three is bad" in row["stillhouse_metadata"]["error_flaky"] for row in failed.rows)


def test_load_failure_is_fatal(executor: Executor) -> None:
    executor.start([FailingLoad(name="broken")], RunContext())
    events = collect(executor, lambda ev: any(isinstance(e, Failed) for e in ev))
    failed = next(e for e in events if isinstance(e, Failed))
    assert failed.step_name == "broken"
    assert type(failed.exception) is LoadBoom
    assert str(failed.exception) == "no model here"
    assert "explode_on_load" in failed.traceback
    assert not any(isinstance(e, Loaded) for e in events)


def test_global_step_failure_is_fatal(executor: Executor) -> None:
    executor.start([FailingGlobal(name="everything")], RunContext())
    executor.send(Task("everything", (0, 0), batch(1, 2, 3)))
    events = collect(executor, lambda ev: any(isinstance(e, Failed) for e in ev))
    failed = next(e for e in events if isinstance(e, Failed))
    assert failed.step_name == "everything"
    assert type(failed.exception) is GlobalBoom
    assert str(failed.exception) == "cannot handle 3 rows"
    assert "explode_globally" in failed.traceback
    assert failed.exception.__traceback__ is not None


def test_worker_logs_reach_the_driver(executor: Executor, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    executor.start([Chatty(name="chatty"), FailOnThree(name="flaky")], RunContext())
    run_tasks(executor, [Task("chatty", (0, 0), batch(1, 2)), Task("flaky", (0, 0), batch(3))])
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("executor_testkit", logging.WARNING, "chatty saw 2 rows") in messages
    assert any(name == "executor_testkit" and msg.startswith("chatty loading") for name, _, msg in messages)
    step_failure = [msg for name, _, msg in messages if name == "stillhouse.worker"]
    assert step_failure and "'flaky' failed on batch (0, 0)" in step_failure[0]
    assert "three is bad" in step_failure[0]


def test_stop_then_start_again(executor: Executor) -> None:
    executor.start([Double(name="first")], RunContext())
    run_tasks(executor, [Task("first", (0, 0), batch(1))])
    executor.stop_steps(["first"])
    with pytest.raises(EngineError, match="'first', which is not running"):
        executor.send(Task("first", (0, 1), batch(2)))
    executor.start([Double(name="second")], RunContext())
    assert run_tasks(executor, [Task("second", (0, 0), batch(5))])[0, 0].rows[0]["y"] == 10


def test_tasks_sent_before_stop_still_run(executor: Executor) -> None:
    executor.start([Double(name="double")], RunContext())
    for i in range(3):
        executor.send(Task("double", (0, i), batch(i)))
    executor.stop_steps(["double"])
    events = collect(executor, lambda ev: len(results(ev)) == 3, timeout=10)
    assert sorted(r.key for r in results(events)) == [(0, 0), (0, 1), (0, 2)]


def test_shutdown_is_idempotent(executor: Executor) -> None:
    executor.start([Double(name="double", resources={"replicas": 2})], RunContext())
    run_tasks(executor, [Task("double", (0, i), batch(i)) for i in range(4)])
    executor.shutdown()
    assert workers_left("double") == []
    executor.shutdown()
    executor.shutdown(force=True)
    assert workers_left("double") == []


@pytest.mark.parametrize("kind", ["mp", "threaded"])
def test_replicas_share_the_work(make_executor, kind: str) -> None:
    executor = make_executor(kind)
    executor.start([Double(name="double", delay=0.2, resources={"replicas": 2})], RunContext())
    collect(executor, lambda ev: sum(isinstance(e, Loaded) for e in ev) == 2)
    got = run_tasks(executor, [Task("double", (0, i), batch(i)) for i in range(6)])
    worker = "pid" if kind == "mp" else "thread"
    assert len({result.rows[0][worker] for result in got.values()}) == 2


def test_sync_runs_in_the_calling_thread(make_executor) -> None:
    executor = make_executor("sync")
    executor.start([Double(name="double")], RunContext())
    assert executor.events(0) == [Loaded("double", 0)]  # loading is lazy
    executor.send(Task("double", (0, 0), batch(1)))
    executor.send(Task("double", (0, 1), batch(2)))
    first = executor.events(10)
    assert len(first) == 1 and first[0].result.key == (0, 0)  # one task per call
    assert first[0].result.rows[0]["thread"] == threading.get_ident()
    assert executor.events(10)[0].result.key == (0, 1)
    assert executor.events(10) == []


def test_threaded_replicas_get_their_own_step(make_executor) -> None:
    executor = make_executor("threaded")
    original = WhoAmI(name="who", resources={"replicas": 2})
    executor.start([original], RunContext())
    collect(executor, lambda ev: sum(isinstance(e, Loaded) for e in ev) == 2)
    got = run_tasks(executor, [Task("who", (0, i), batch(i)) for i in range(4)])
    ids = {result.rows[0]["step_id"] for result in got.values()}
    assert len(ids) == 2 and id(original) in ids


class Calls(Step):
    """An async step that makes one "call" every 20 ms per row and counts them."""

    made: ClassVar[list[float]] = []

    async def process(self, inputs: StepInput) -> Any:
        for _ in inputs:
            Calls.made.append(time.monotonic())
            await asyncio.sleep(0.02)
        yield list(inputs)


def test_a_forced_threaded_shutdown_cancels_the_async_batches_it_gives_up(make_executor) -> None:
    """After Ctrl+C gives up the batches in flight, an async replica must not go on
    calling out (an LLM step would pay for answers nobody records) until the process exits."""
    Calls.made.clear()
    executor = make_executor("threaded")
    executor.start([Calls(name="calls")], RunContext())
    executor.send(Task("calls", (0, 0), batch(*range(500))))  # 10 s of calls
    while len(Calls.made) < 5:
        time.sleep(0.01)
    executor.shutdown(force=True)
    made = len(Calls.made)
    time.sleep(0.3)  # before: 15 more calls in this time
    assert len(Calls.made) <= made + 1


def test_a_threaded_shutdown_interrupted_while_joining_can_be_forced_again(make_executor) -> None:
    """Ctrl+C again (or the stop deadline) interrupts a graceful shutdown while it waits
    for a hung step's thread: the forced shutdown the engine then calls must finish, not
    fail with a KeyError on the step whose threads it already let go."""
    import signal

    executor = make_executor("threaded", join_timeout=30)
    executor.start([Sleeper(name="hangs", seconds=60)], RunContext())
    executor.send(Task("hangs", (0, 0), batch(1)))
    time.sleep(0.2)  # the replica took the task: its thread is busy
    main = threading.get_ident()
    interrupt = threading.Timer(0.5, lambda: signal.pthread_kill(main, signal.SIGINT))
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        interrupt.start()  # inside the block: a stall before it cannot let the signal escape
        executor.shutdown()  # waits up to 30 s for the hung thread: interrupted first
    assert time.monotonic() - started < 25
    executor.shutdown(force=True)  # before: KeyError('hangs')
    executor.shutdown(force=True)
