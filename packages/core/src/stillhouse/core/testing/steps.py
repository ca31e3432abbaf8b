"""Steps the executor conformance suite runs (`stillhouse.core.testing.conformance`).

Defined at module level of an importable module, so that workers started with
"spawn", "forkserver" or on a Ray cluster can unpickle them by name. Each is small
and does one thing a conformance case needs: compute, tag, fail, hang, filter.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator

from stillhouse.core.decorator import step
from stillhouse.core.errors import StopRun
from stillhouse.core.step import GlobalStep, Step
from stillhouse.core.typing import StepInput, StepOutput


@step(inputs=["x"], outputs=["y"])
def Double(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["y"] = row["x"] * 2
    yield inputs


@step(inputs=["x"], outputs=["z"])
def Tag(inputs: StepInput, tag: str = "a", sleep: float = 0.0) -> StepOutput:
    if sleep:
        time.sleep(random.random() * sleep)
    for row in inputs:
        row["z"] = tag
    yield inputs


MEET_SECONDS = 60.0
"""How long a replica of `Pid` or `AsyncPid` waits for the others to meet it."""


def _arrived(meet_dir: str, count: int) -> bool:
    """Mark this process in `meet_dir`; whether `count` processes have marked it."""
    os.makedirs(meet_dir, exist_ok=True)
    with open(os.path.join(meet_dir, str(os.getpid())), "w"):
        pass
    return len(os.listdir(meet_dir)) >= count


def _missed(meet_dir: str, count: int) -> RuntimeError:
    return RuntimeError(f"only {len(os.listdir(meet_dir))} of {count} replica processes met in {MEET_SECONDS:.0f} s")


@step(inputs=["x"], outputs=["pid"])
def Pid(inputs: StepInput, sleep: float = 0.0, meet: int = 0, meet_dir: str = "") -> StepOutput:
    """Rows get the pid of the process that ran them. With `meet`, each batch first waits
    until `meet` processes ran one (marked in `meet_dir`): however late a replica starts
    on a loaded machine, every replica then runs some of the rows."""
    deadline = time.monotonic() + MEET_SECONDS
    while meet and not _arrived(meet_dir, meet):
        if time.monotonic() > deadline:
            raise _missed(meet_dir, meet)
        time.sleep(0.02)
    time.sleep(random.random() * sleep)
    for row in inputs:
        row["pid"] = os.getpid()
    yield inputs


@step(inputs=["x"], outputs=["x"])
def DropOdd(inputs: StepInput) -> StepOutput:
    yield [row for row in inputs if row["x"] % 2 == 0]


@step(inputs=["x"], outputs=["x"])
def DropAll(inputs: StepInput) -> StepOutput:
    yield []


@step(inputs=["x"], outputs=["out"])
def AlwaysFail(inputs: StepInput) -> StepOutput:
    raise ValueError("this step always fails")
    yield inputs  # pragma: no cover


@step(inputs=["x"], outputs=["out"])
def Ok(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["out"] = "ok"
    yield inputs


@step(outputs=["n"], step_type="global")
def Count(inputs: StepInput) -> StepOutput:
    yield [{"n": len(inputs), "xs": [row["x"] for row in inputs]}]


@step(step_type="global")
def BrokenGlobal(inputs: StepInput) -> StepOutput:
    raise RuntimeError("global step exploded")
    yield inputs  # pragma: no cover


@step(outputs=["x"], step_type="generator")
def BrokenGenerator(offset: int = 0):
    yield [{"x": 1}], False
    raise RuntimeError("generator exploded")


class BrokenLoad(Step):
    @property
    def inputs(self) -> list[str]:
        return ["x"]

    def load(self) -> None:
        raise OSError("model weights not found")

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


def zipped(inputs: tuple[StepInput, ...]) -> list[dict]:
    """One row from each predecessor merged into one, with `tags`: each branch's `z`."""
    merged = []
    for rows in zip(*inputs, strict=True):
        row = {}
        for part in rows:
            row.update(part)
        row["tags"] = [part.get("z") for part in rows]
        merged.append(row)
    return merged


class Zip(Step):
    """Merges one row from each predecessor; records which branches a row went through."""

    def process(self, *inputs: StepInput) -> StepOutput:
        yield zipped(inputs)


class CountAll(GlobalStep):
    def process(self, *inputs: StepInput) -> StepOutput:
        yield [{"rows": sum(len(rows) for rows in inputs)}]


@step(inputs=["x"], outputs=["y"])
async def AsyncDouble(inputs: StepInput, sleep: float = 0.0) -> AsyncIterator[list[dict]]:
    await asyncio.sleep(random.random() * sleep)
    for row in inputs:
        row["y"] = row["x"] * 2
    yield inputs


@step(inputs=["x"], outputs=["z"])
async def AsyncTag(inputs: StepInput, tag: str = "a", sleep: float = 0.0) -> AsyncIterator[list[dict]]:
    await asyncio.sleep(random.random() * sleep)
    for row in inputs:
        row["z"] = tag
    yield inputs


@step(inputs=["x"], outputs=["pid"])
async def AsyncPid(
    inputs: StepInput, sleep: float = 0.0, meet: int = 0, meet_dir: str = ""
) -> AsyncIterator[list[dict]]:
    """`Pid`, async: the batches of a replica wait side by side."""
    deadline = time.monotonic() + MEET_SECONDS
    while meet and not _arrived(meet_dir, meet):
        if time.monotonic() > deadline:
            raise _missed(meet_dir, meet)
        await asyncio.sleep(0.02)
    await asyncio.sleep(random.random() * sleep)
    for row in inputs:
        row["pid"] = os.getpid()
    yield inputs


@step(inputs=["x"], outputs=["out"])
async def AsyncFail(inputs: StepInput) -> AsyncIterator[list[dict]]:
    await asyncio.sleep(0)
    raise ValueError("this async step always fails")
    yield inputs  # pragma: no cover


@step(inputs=["x"], outputs=["slow"])
async def AsyncHang(inputs: StepInput, hang_on: int = -1) -> AsyncIterator[list[dict]]:
    """Never finishes a batch holding row `hang_on`; the others take no time."""
    if any(row["x"] == hang_on for row in inputs):
        await asyncio.sleep(3600)
    for row in inputs:
        row["slow"] = row["x"]
    yield inputs


@step(inputs=["x"], outputs=["slow"])
async def AsyncBlocksLoop(inputs: StepInput, hang_on: int = -1) -> AsyncIterator[list[dict]]:
    """Blocks its own event loop (a sync call in `async def`) on a batch holding row
    `hang_on`: the loop can neither run its other batches nor time this one out."""
    if any(row["x"] == hang_on for row in inputs):
        time.sleep(3600)
    for row in inputs:
        row["slow"] = row["x"]
    yield inputs


@step(inputs=["x"], outputs=["slow"])
def SyncHang(inputs: StepInput, hang_on: int = -1) -> StepOutput:
    """A sync step that never finishes the batch holding row `hang_on`."""
    if any(row["x"] == hang_on for row in inputs):
        time.sleep(3600)
    for row in inputs:
        row["slow"] = row["x"]
    yield inputs


@step(outputs=["n"], step_type="global")
async def AsyncCount(inputs: StepInput) -> AsyncIterator[list[dict]]:
    await asyncio.sleep(0)
    yield [{"n": len(inputs), "xs": [row["x"] for row in inputs]}]


@step(outputs=["x"], step_type="generator")
async def AsyncNumbers(n: int = 10, batch: int = 3) -> AsyncIterator[tuple[list[dict], bool]]:
    for start in range(0, n, batch):
        await asyncio.sleep(0)
        stop = min(n, start + batch)
        yield [{"x": i} for i in range(start, stop)], stop >= n


class AsyncZip(Step):
    """`Zip` with an async `process`."""

    async def process(self, *inputs: StepInput) -> AsyncIterator[list[dict]]:
        await asyncio.sleep(random.random() * 0.01)
        yield zipped(inputs)


@step(step_type="global")
async def HangingGlobal(inputs: StepInput) -> AsyncIterator[list[dict]]:
    await asyncio.sleep(3600)
    yield inputs  # pragma: no cover


class RecordsFailure(Step):
    """Doubles `x` into `y`, but the row with x == 3 gets `y` None and a recorded failure
    (`record_failure`): the batch keeps its rows, as an LLM task keeps the rows whose
    calls succeeded."""

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["y"]

    def _rows(self, inputs: StepInput) -> list[dict]:
        rows = []
        for row in inputs:
            if row["x"] == 3:
                self.record_failure("x == 3 was not answered")
            rows.append({**row, "y": None if row["x"] == 3 else row["x"] * 2})
        return rows

    def process(self, inputs: StepInput) -> StepOutput:
        yield self._rows(inputs)


class AsyncRecordsFailure(RecordsFailure):
    """`RecordsFailure` as an async step."""

    async def process(self, inputs: StepInput) -> AsyncIterator[list[dict]]:  # type: ignore[override]
        await asyncio.sleep(0)
        yield self._rows(inputs)


@step(inputs=["x"], outputs=["y"])
def StopsRun(inputs: StepInput) -> StepOutput:
    """Raises `StopRun` on the batch holding x == 3 (a refused key); doubles the others."""
    if any(row["x"] == 3 for row in inputs):
        raise StopRun("the key was refused")
    yield [{**row, "y": row["x"] * 2} for row in inputs]


@step(inputs=["x"], outputs=["y"])
async def AsyncStopsRun(inputs: StepInput) -> AsyncIterator[list[dict]]:
    """`StopsRun` as an async step."""
    await asyncio.sleep(0)
    if any(row["x"] == 3 for row in inputs):
        raise StopRun("the key was refused")
    yield [{**row, "y": row["x"] * 2} for row in inputs]
