"""Steps and helpers for the executor tests.

A plain top-level module (conftest puts this directory on `sys.path`) so that
worker processes started with spawn or forkserver can import these classes by
name; classes defined in the test files themselves could not be unpickled there.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stillhouse.core.decorator import step
from stillhouse.core.engine import Died, Event, Executor, Failed, Finished, Task, TaskResult
from stillhouse.core.step import GeneratorStep, GlobalStep, Step
from stillhouse.core.typing import GeneratorStepOutput, StepInput, StepOutput

logger = logging.getLogger("executor_testkit")

# -- steps ---------------------------------------------------------------------------


@step(inputs=["x"], outputs=["y", "pid", "thread"])
def Double(inputs: StepInput, delay: float = 0.0) -> StepOutput:
    if delay:
        time.sleep(delay)
    yield [
        {**row, "y": row["x"] * 2, "pid": os.getpid(), "thread": threading.get_ident()}
        for row in inputs
    ]


class Triple(Step):
    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["y"]

    def process(self, inputs: StepInput) -> StepOutput:
        yield [{**row, "y": row["x"] * 3} for row in inputs]


@step(outputs=["n"], step_type="generator")
def Numbers(total: int = 10, size: int = 3) -> GeneratorStepOutput:
    for start in range(0, total, size):
        yield [{"n": i} for i in range(start, min(start + size, total))], start + size >= total


class Counter(GeneratorStep):
    total: int = 10

    @property
    def outputs(self) -> list[str]:
        return ["n"]

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        rows = [{"n": i} for i in range(offset, self.total)]
        for start in range(0, len(rows), self.batch_size):
            yield rows[start : start + self.batch_size], start + self.batch_size >= len(rows)


@step(inputs=["x"], outputs=["y"])
def FailOnThree(inputs: StepInput) -> StepOutput:
    if any(row["x"] == 3 for row in inputs):
        raise ValueError("three is bad")
    yield [{**row, "y": row["x"]} for row in inputs]


class LoadBoom(Exception):
    pass


def explode_on_load() -> None:
    raise LoadBoom("no model here")


class FailingLoad(Step):
    def load(self) -> None:
        explode_on_load()

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


class GlobalBoom(Exception):
    pass


def explode_globally(rows: list[dict]) -> None:
    raise GlobalBoom(f"cannot handle {len(rows)} rows")


class FailingGlobal(GlobalStep):
    def process(self, inputs: StepInput) -> StepOutput:
        explode_globally(inputs)
        yield inputs


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class FailingUnpicklably(GlobalStep):
    def process(self, inputs: StepInput) -> StepOutput:
        raise Unpicklable("holds a lock")
        yield inputs


class Unsendable(Step):
    def process(self, inputs: StepInput) -> StepOutput:
        yield [{"value": lambda: None} for _ in inputs]


class WhoAmI(Step):
    def process(self, inputs: StepInput) -> StepOutput:
        time.sleep(0.2)
        yield [{**row, "step_id": id(self)} for row in inputs]


class Sleeper(Step):
    seconds: float = 30.0

    def process(self, inputs: StepInput) -> StepOutput:
        time.sleep(self.seconds)
        yield inputs


class Exits(Step):
    def process(self, inputs: StepInput) -> StepOutput:
        os._exit(3)
        yield inputs


class DiesLoading(Step):
    def load(self) -> None:
        os._exit(4)

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


class Chatty(Step):
    def load(self) -> None:
        logger.info("chatty loading in %d", os.getpid())

    def process(self, inputs: StepInput) -> StepOutput:
        logger.warning("chatty saw %d rows", len(inputs))
        yield inputs


class GpuProbe(Step):
    @property
    def outputs(self) -> list[str]:
        return ["cuda"]

    def process(self, inputs: StepInput) -> StepOutput:
        time.sleep(0.3)  # keep this replica busy so the other one takes the next task
        yield [{**row, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")} for row in inputs]


# -- helpers ---------------------------------------------------------------------------


def batch(*xs: int) -> list[list[dict]]:
    return [[{"x": x} for x in xs]]


def collect(executor: Executor, done: Callable[[list[Event]], bool], timeout: float = 30.0) -> list[Event]:
    """Events until `done(events)` holds; fails the test after `timeout` seconds."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s; events so far: {events}")
        events.extend(executor.events(0.1))
    return events


def results(events: list[Event]) -> list[TaskResult]:
    return [e.result for e in events if isinstance(e, Finished)]


def run_tasks(executor: Executor, tasks: list[Task], timeout: float = 30.0) -> dict:
    """Send `tasks`, wait for all their results, fail on a `Failed`/`Died`: `{key: result}`."""
    for task in tasks:
        executor.send(task)

    def done(events: list[Event]) -> bool:
        bad = [e for e in events if isinstance(e, Failed | Died)]
        assert not bad, bad
        return len(results(events)) == len(tasks)

    return {r.key: r for r in results(collect(executor, done, timeout))}


def helper_pids() -> set[int]:
    """multiprocessing's own long-lived helpers (fork server, resource tracker)."""
    from multiprocessing import forkserver, resource_tracker

    pids = {forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid}
    return {pid for pid in pids if pid}


def child_pids() -> set[int]:
    """Processes (zombies included) whose parent is this process, read from /proc."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.add(int(stat.parent.name))
    return found


def assert_no_workers(pids: list[int], timeout: float = 5.0) -> None:
    """The given workers are gone (not even zombies) and no stray child is left."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        strays = child_pids() - helper_pids()
        if not alive and not strays and not multiprocessing.active_children():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Left behind: workers {alive}, children {strays}")
        time.sleep(0.05)


def workers_left(step_name: str) -> list[str]:
    """What an executor left running for `step_name`: threads named after the step
    (`stillhouse-<step>-<replica>...`), child processes (zombies included). Empty once
    `shutdown()` returned: it joins every worker before returning."""
    threads = [t.name for t in threading.enumerate() if t.name.startswith(f"stillhouse-{step_name}-")]
    children = [f"process {pid}" for pid in sorted(child_pids() - helper_pids())]
    return threads + children + [f"{p.name} (pid {p.pid})" for p in multiprocessing.active_children()]


def hold_the_gil(seconds: int) -> None:
    """Sleep in C with the GIL held (libc `sleep` through `ctypes.PyDLL`, which keeps
    it), as a catastrophic regex or some tokenizers do: no other thread of the process
    runs meanwhile, its batch timeout watchdog included."""
    import ctypes
    import ctypes.util

    ctypes.PyDLL(ctypes.util.find_library("c")).sleep(seconds)


@step(inputs=["x"], outputs=["y"])
def HoldsGilWhileMarked(inputs: StepInput, marker: str = "", log: str = "", seconds: int = 60) -> StepOutput:
    """Doubles `x`; while the file `marker` exists, the batch holding x == 2 holds the
    GIL for `seconds`. Appends one line per batch it starts to the file `log`."""
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{[row['x'] for row in inputs]}\n")
    if os.path.exists(marker) and any(row["x"] == 2 for row in inputs):
        hold_the_gil(seconds)
    yield [{**row, "y": row["x"] * 2} for row in inputs]


@step(inputs=["x"], outputs=["y", "pid"])
def HoldsGilOn(inputs: StepInput, hang_on: int = 2, seconds: int = 60) -> StepOutput:
    """Doubles `x` and records the worker's pid; the batch holding `hang_on` holds the
    GIL for `seconds` first."""
    if any(row["x"] == hang_on for row in inputs):
        hold_the_gil(seconds)
    yield [{**row, "y": row["x"] * 2, "pid": os.getpid()} for row in inputs]


class GlobalHoldsGil(GlobalStep):
    seconds: int = 60

    def process(self, inputs: StepInput) -> StepOutput:
        hold_the_gil(self.seconds)
        yield inputs


@step(inputs=["x"], outputs=["y"])
async def AsyncHoldsGilAfter(inputs: StepInput, folder: str = "", wait: float = 0.0) -> StepOutput:
    """Async: a batch holding x == 0 marks `folder`/started, waits (on its loop) up to
    `wait` s for another batch to start, then holds the GIL for 60 s; any other batch
    appends a line to `folder`/others, then takes a second. Doubles `x`."""
    import asyncio

    here = Path(folder)
    if any(row["x"] == 0 for row in inputs):
        (here / "started").touch()
        deadline = time.monotonic() + wait
        while not (here / "others").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        hold_the_gil(60)
    else:
        with open(here / "others", "a", encoding="utf-8") as handle:
            handle.write(f"{[row['x'] for row in inputs]}\n")
        await asyncio.sleep(1.0)
    yield [{**row, "y": row["x"] * 2} for row in inputs]
