"""The "mp" executor: start methods, dead workers, clean shutdown, GPU placement."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from executor_testkit import (
    Chatty,
    Counter,
    DiesLoading,
    Double,
    Exits,
    FailingGlobal,
    FailingLoad,
    FailingUnpicklably,
    GlobalBoom,
    GpuProbe,
    LoadBoom,
    Numbers,
    Sleeper,
    Triple,
    Unsendable,
    assert_no_workers,
    batch,
    collect,
    run_tasks,
)

from stillhouse.core.engine import Died, Failed, Finished, Loaded, RunContext, Task
from stillhouse.core.errors import InvalidResourcesError, PipelineValidationError, StepRuntimeError
from stillhouse.core.step import Step
from stillhouse.executors import MultiprocessingExecutor

pytestmark = pytest.mark.timeout(60)

START_METHODS = ["fork", "forkserver", "spawn"]


def loaded(executor: MultiprocessingExecutor, count: int) -> list:
    return collect(executor, lambda ev: sum(isinstance(e, Loaded) for e in ev) == count)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_start_methods(make_executor, start_method: str, caplog: pytest.LogCaptureFixture) -> None:
    # Only this logger is at INFO (root stays at WARNING): workers must follow its level.
    caplog.set_level(logging.INFO, logger="executor_testkit")
    executor = make_executor("mp", start_method=start_method)
    steps = [Double(name="double", resources={"replicas": 2}), Triple(name="triple"),
             Numbers(name="numbers"), Counter(name="counter", batch_size=4), Chatty(name="chatty")]
    executor.start(steps, RunContext())
    pids = [pid for step_pids in executor.worker_pids().values() for pid in step_pids]
    assert len(pids) == 6 and os.getpid() not in pids
    got = run_tasks(executor, [
        *(Task("double", (0, i), batch(i)) for i in range(4)),
        Task("triple", (1, 0), batch(1, 2)),
        Task("numbers", (2, 0), None, offset=7),
        Task("counter", (3, 0), None),
        Task("chatty", (4, 0), batch(1)),
    ])
    assert [got[0, i].rows[0]["y"] for i in range(4)] == [0, 2, 4, 6]
    assert all(got[0, i].rows[0]["pid"] in pids for i in range(4))
    assert [row["y"] for row in got[1, 0].rows] == [3, 6]
    assert ([row["n"] for row in got[2, 0].rows], got[2, 0].last) == ([7, 8], False)
    assert ([row["n"] for row in got[3, 0].rows], got[3, 0].last) == ([0, 1, 2, 3], False)
    executor.shutdown()
    assert_no_workers(pids)
    assert "chatty saw 1 rows" in caplog.messages
    assert any(message.startswith("chatty loading") for message in caplog.messages)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_failures_cross_the_process_boundary(make_executor, start_method: str) -> None:
    executor = make_executor("mp", start_method=start_method)
    executor.start([FailingLoad(name="broken"), FailingGlobal(name="everything")], RunContext())
    executor.send(Task("everything", (0, 0), batch(1)))
    events = collect(executor, lambda ev: sum(isinstance(e, Failed) for e in ev) == 2)
    failed = {e.step_name: e for e in events if isinstance(e, Failed)}
    assert type(failed["broken"].exception) is LoadBoom
    assert "explode_on_load" in failed["broken"].traceback
    assert type(failed["everything"].exception) is GlobalBoom
    assert "explode_globally" in failed["everything"].traceback
    # the load failure ended its worker cleanly: that is not a death
    assert not any(isinstance(e, Died) for e in events + executor.events(0.5))


def test_unpicklable_exception_becomes_runtime_error(make_executor) -> None:
    executor = make_executor("mp")
    executor.start([FailingUnpicklably(name="locked")], RunContext())
    executor.send(Task("locked", (0, 0), batch(1)))
    events = collect(executor, lambda ev: any(isinstance(e, Failed) for e in ev))
    failed = next(e for e in events if isinstance(e, Failed))
    assert type(failed.exception) is RuntimeError
    assert "Unpicklable: holds a lock" in str(failed.exception)
    assert "Unpicklable: holds a lock" in failed.traceback


def test_unpicklable_result_is_reported(make_executor) -> None:
    executor = make_executor("mp")
    executor.start([Unsendable(name="lambdas")], RunContext())
    executor.send(Task("lambdas", (0, 7), batch(1)))
    events = collect(executor, lambda ev: any(isinstance(e, Failed) for e in ev))
    failed = next(e for e in events if isinstance(e, Failed))
    assert "'lambdas' for batch (0, 7) could not be sent" in str(failed.exception)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_killed_worker_is_reported_as_died(make_executor, start_method: str) -> None:
    executor = make_executor("mp", start_method=start_method)
    executor.start([Sleeper(name="sleepy", resources={"replicas": 2})], RunContext())
    loaded(executor, 2)
    executor.send(Task("sleepy", (0, 0), batch(1)))
    victim = executor.worker_pids()["sleepy"][1]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    events = collect(executor, lambda ev: any(isinstance(e, Died) for e in ev), timeout=5)
    assert time.monotonic() - started < 5
    died = next(e for e in events if isinstance(e, Died))
    assert (died.step_name, died.replica) == ("sleepy", 1)
    assert "SIGKILL" in died.detail and str(victim) in died.detail
    pids = executor.worker_pids()["sleepy"]
    assert victim not in pids
    executor.shutdown(force=True)
    assert_no_workers([*pids, victim])


def test_worker_exiting_by_itself_is_a_death(make_executor) -> None:
    executor = make_executor("mp")
    executor.start([Exits(name="quitter"), DiesLoading(name="early")], RunContext())
    # Only a worker whose Loaded message arrived counts as loaded: wait for it first.
    events = collect(executor, lambda ev: any(isinstance(e, Loaded) for e in ev), timeout=10)
    executor.send(Task("quitter", (0, 0), batch(1)))
    events += collect(executor, lambda ev: sum(isinstance(e, Died) for e in events + ev) == 2, timeout=10)
    died = {e.step_name: e.detail for e in events if isinstance(e, Died)}
    assert "exited with code 3" in died["quitter"] and "before its step loaded" not in died["quitter"]
    assert "exited with code 4 without saying goodbye before its step loaded" in died["early"]


def test_workers_ignore_ctrl_c(make_executor) -> None:
    executor = make_executor("mp")
    executor.start([Double(name="double")], RunContext())
    loaded(executor, 1)
    os.kill(executor.worker_pids()["double"][0], signal.SIGINT)
    assert run_tasks(executor, [Task("double", (0, 0), batch(4))])[0, 0].rows[0]["y"] == 8
    assert not any(isinstance(e, Died) for e in executor.events(0.3))


def test_stopped_workers_are_not_deaths(make_executor) -> None:
    executor = make_executor("mp")
    executor.start([Double(name="double", resources={"replicas": 2}), Triple(name="triple")], RunContext())
    loaded(executor, 3)
    stopped = executor.worker_pids()["double"]
    executor.stop_steps(["double"])
    assert set(executor.worker_pids()) == {"triple"}
    assert not any(isinstance(e, Died) for e in executor.events(0.5))
    assert not any(os.path.exists(f"/proc/{pid}") for pid in stopped)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_forced_shutdown_kills_busy_workers_at_once(make_executor, start_method: str) -> None:
    executor = make_executor("mp", start_method=start_method)
    executor.start([Sleeper(name="sleepy", resources={"replicas": 2})], RunContext())
    loaded(executor, 2)
    executor.send(Task("sleepy", (0, 0), batch(1)))
    pids = executor.worker_pids()["sleepy"]
    started = time.monotonic()
    executor.shutdown(force=True)
    assert time.monotonic() - started < 5
    assert_no_workers(pids)


def test_graceful_shutdown_terminates_after_join_timeout(make_executor, caplog) -> None:
    executor = make_executor("mp", join_timeout=0.5)
    executor.start([Sleeper(name="sleepy"), Double(name="quick")], RunContext())
    loaded(executor, 2)
    executor.send(Task("sleepy", (0, 0), batch(1)))
    pids = [pid for step_pids in executor.worker_pids().values() for pid in step_pids]
    started = time.monotonic()
    executor.shutdown()
    assert time.monotonic() - started < 5
    assert_no_workers(pids)
    assert any("'sleepy' did not stop within" in m for m in caplog.messages)


def test_gpus_are_placed_per_replica(make_executor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("STILLHOUSE_GPU_COUNT", "4")
    executor = make_executor("mp")
    executor.start([GpuProbe(name="probe", resources={"gpus": 2, "replicas": 2})], RunContext())
    loaded(executor, 2)
    got = run_tasks(executor, [Task("probe", (0, i), batch(i)) for i in range(4)])
    assert {result.rows[0]["cuda"] for result in got.values()} == {"0,1", "2,3"}
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpus_come_from_cuda_visible_devices(make_executor, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    executor = make_executor("mp", gpu_count=8)
    executor.start([GpuProbe(name="probe", resources={"gpus": 1})], RunContext())
    executor.start([GpuProbe(name="other", resources={"gpus": 2})], RunContext())
    got = run_tasks(executor, [Task("probe", (0, 0), batch(1)), Task("other", (0, 1), batch(1))])
    assert (got[0, 0].rows[0]["cuda"], got[0, 1].rows[0]["cuda"]) == ("4", "5,6")
    with pytest.raises(InvalidResourcesError, match="only 0 of the 3 GPU"):
        executor.start([GpuProbe(name="third", resources={"gpus": 1})], RunContext())
    executor.stop_steps(["other"])  # frees its GPUs
    executor.start([GpuProbe(name="third", resources={"gpus": 2})], RunContext())


def test_too_many_gpus_is_refused_before_starting(make_executor, monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = make_executor("mp", gpu_count=4)
    steps = [Double(name="fine"), GpuProbe(name="greedy", resources={"gpus": 3, "replicas": 2})]
    with pytest.raises(InvalidResourcesError) as info:
        executor.start(steps, RunContext())
    message = str(info.value)
    assert "'greedy'" in message and "3 GPU(s) for each of its 2 replica(s), 6 in all" in message
    assert "only 4 of the 4" in message
    assert executor.worker_pids() == {}


def test_local_step_class_under_spawn_is_a_clear_error(make_executor) -> None:
    class Local(Step):
        def process(self, inputs):
            yield inputs

    executor = make_executor("mp", start_method="spawn")
    with pytest.raises(StepRuntimeError, match="'local' could not be sent to a worker process"):
        executor.start([Local(name="local")], RunContext())


def test_start_method_option_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STILLHOUSE_START_METHOD", raising=False)
    assert MultiprocessingExecutor().start_method == "fork"  # Linux default
    monkeypatch.setenv("STILLHOUSE_START_METHOD", "spawn")
    assert MultiprocessingExecutor().start_method == "spawn"
    assert MultiprocessingExecutor(start_method="forkserver").start_method == "forkserver"
    with pytest.raises(PipelineValidationError, match="Unknown start method 'spwan'"):
        MultiprocessingExecutor(start_method="spwan")


def test_results_keep_flowing_while_stopping(make_executor) -> None:
    # Big results while the driver is joining must not deadlock (the pipe is drained).
    executor = make_executor("mp")
    executor.start([Double(name="double")], RunContext())
    for i in range(20):
        executor.send(Task("double", (0, i), [[{"x": i, "pad": "x" * 100_000}]]))
    executor.stop_steps(["double"])
    events = executor.events(0)
    assert len([e for e in events if isinstance(e, Finished)]) == 20


DRIVER = """
import sys
from executor_testkit import Sleeper, collect
from stillhouse.core.engine import Loaded, RunContext
from stillhouse.executors import MultiprocessingExecutor

executor = MultiprocessingExecutor(start_method=sys.argv[1])
executor.start([Sleeper(name="sleepy", resources={"replicas": 2})], RunContext())
collect(executor, lambda ev: sum(isinstance(e, Loaded) for e in ev) == 2)
print(*executor.worker_pids()["sleepy"], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_exit_when_the_driver_is_killed(start_method: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, start_method],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )
    try:
        pids = [int(pid) for pid in driver.stdout.readline().split()]
        assert len(pids) == 2
        driver.kill()
        driver.wait(5)
        deadline = time.monotonic() + 30  # they look for their driver every second
        while any(_running(pid) for pid in pids):
            assert time.monotonic() < deadline, f"orphaned workers {pids} outlived their driver"
            time.sleep(0.1)
    finally:
        driver.kill()
        driver.wait(5)
        driver.stdin.close()
        driver.stdout.close()


def _running(pid: int) -> bool:
    # An orphan's zombie is its new parent's to reap (a container's PID 1 may not): ignore it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
