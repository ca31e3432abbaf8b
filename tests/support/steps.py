"""Steps used by the integration tests; importable by module name for spawned workers.

The steps the executor conformance suite needs live in `stillhouse.core.testing.steps`
and are imported from there.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

from stillhouse.core import (
    RuntimeParameter,
    Step,
    StepInput,
    StepOutput,
    StopRun,
    SuspendStep,
    step,
)
from stillhouse.core.testing.steps import (  # noqa: F401  (re-exported for the tests)
    AlwaysFail,
    AsyncCount,
    AsyncDouble,
    AsyncFail,
    AsyncHang,
    AsyncNumbers,
    AsyncPid,
    AsyncTag,
    AsyncZip,
    BrokenGenerator,
    BrokenGlobal,
    BrokenLoad,
    Count,
    CountAll,
    Double,
    DropAll,
    DropOdd,
    HangingGlobal,
    Ok,
    Pid,
    RecordsFailure,
    SyncHang,
    Tag,
    Zip,
)


@step(inputs=["x"], outputs=["slow"])
def Slow(inputs: StepInput, sleep: float = 0.01) -> StepOutput:
    time.sleep(sleep)
    for row in inputs:
        row["slow"] = row["x"]
    yield inputs


class Recorder(Step):
    """Appends "<name> load|unload <time>" to `log_path`, to observe load stages."""

    log_path: str

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    def _note(self, what: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{self.name} {what} {time.time()}\n")

    def load(self) -> None:
        self._note("load")

    def unload(self) -> None:
        self._note("unload")

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


class NeedsParam(Step):
    """Has a required runtime parameter."""

    temperature: RuntimeParameter[float] = None

    def process(self, inputs: StepInput) -> StepOutput:
        for row in inputs:
            row["temperature"] = self.temperature
        yield inputs


# -- async steps (issue 15): the same behaviour with `async def process` ----------------


class SuspendOnce(Step):
    """Suspends each batch the first time it sees it, and finishes it when its state
    comes back: `{"job": <first row's x>}` stands for an external job's id."""

    retry_after: float | None = None

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["job"]

    def process(self, inputs: StepInput) -> StepOutput:
        state = self.resume_state
        if state is None:
            raise SuspendStep(state={"job": inputs[0]["x"]}, retry_after=self.retry_after)
        assert state["job"] == inputs[0]["x"], (state, inputs[0])
        for row in inputs:
            row["job"] = state["job"]
        yield inputs


class AsyncSuspendOnce(SuspendOnce):
    """`SuspendOnce` as an async step (its state travels per batch, in a contextvar)."""

    async def process(self, inputs: StepInput) -> AsyncIterator[list[dict]]:  # type: ignore[override]
        await asyncio.sleep(random.random() * 0.01)
        for rows in SuspendOnce.process(self, inputs):
            yield rows


class CountCalls(Step):
    """Appends one line per batch to `log_path`: to see which batches were computed."""

    log_path: str

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    def process(self, inputs: StepInput) -> StepOutput:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{inputs[0]['x']}\n")
        yield inputs


@step(inputs=["x"], outputs=["slow"])
async def AsyncSlow(inputs: StepInput, sleep: float = 0.01) -> AsyncIterator[list[dict]]:
    await asyncio.sleep(sleep * (0.5 + random.random()))
    for row in inputs:
        row["slow"] = row["x"]
    yield inputs


@step(inputs=["x"], outputs=["started", "ended"])
async def AsyncSpan(inputs: StepInput, sleep: float = 0.3) -> AsyncIterator[list[dict]]:
    """Records when each batch started and ended, to count batches in flight at once."""
    started = time.time()
    await asyncio.sleep(sleep)
    ended = time.time()
    for row in inputs:
        row["started"], row["ended"] = started, ended
    yield inputs


@step(inputs=["x"], outputs=["pid"])
def HangPid(inputs: StepInput, hang_on: int = -1) -> StepOutput:
    """Records the worker's pid; never finishes the batch holding row `hang_on`."""
    if any(row["x"] == hang_on for row in inputs):
        time.sleep(3600)
    for row in inputs:
        row["pid"] = os.getpid()
    yield inputs


@step(inputs=["x"], outputs=["y"])
def ForgetsItsOutput(inputs: StepInput) -> StepOutput:
    """Declares output `y` and never sets it (breaks the step contract)."""
    yield [dict(row) for row in inputs]


def batches_logged(log: Path) -> list[str]:
    """The batches a step appended to `log` (one line each) since the last call; the
    file is removed, so the next call sees only what came after."""
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


@step(inputs=["x"], outputs=["y"])
def FailsWhileMarked(inputs: StepInput, marker: str = "", log: str = "") -> StepOutput:
    """Doubles `x`; while the file `marker` exists, a batch holding x == 3 fails. Appends
    one line per batch it computes to the file `log` (workers may be other processes)."""
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{[row['x'] for row in inputs]}\n")
    if os.path.exists(marker) and any(row["x"] == 3 for row in inputs):
        raise RuntimeError("the endpoint is down")
    yield [{**row, "y": row["x"] * 2} for row in inputs]


class PageFaults(Step):
    """Passes its rows through, each batch stamped with the page faults its process
    had taken when the batch was done (Linux: `ru_minflt`)."""

    def process(self, inputs: StepInput) -> StepOutput:
        import resource

        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        yield [{**row, "faults": faults} for row in inputs]


class RecordsFailuresWhileMarked(RecordsFailure):
    """`RecordsFailure` (x == 3 gets `y` None and a recorded failure, the batch keeps its
    rows) only while the file `marker` exists; appends one line per batch it computes to
    `log`."""

    marker: str
    log: str

    def _rows(self, inputs: StepInput) -> list[dict]:
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"{[row['x'] for row in inputs]}\n")
        if os.path.exists(self.marker):
            return super()._rows(inputs)
        return [{**row, "y": row["x"] * 2} for row in inputs]


class AsyncRecordsFailuresWhileMarked(RecordsFailuresWhileMarked):
    """`RecordsFailuresWhileMarked` as an async step: concurrent batches each record their own."""

    async def process(self, inputs: StepInput) -> AsyncIterator[list[dict]]:  # type: ignore[override]
        await asyncio.sleep(random.random() * 0.01)
        yield self._rows(inputs)


@step(inputs=["x"], outputs=["y"])
def StopsRunWhileMarked(inputs: StepInput, marker: str = "", log: str = "") -> StepOutput:
    """Doubles `x`; while the file `marker` exists, a batch holding x == 6 raises `StopRun`
    (as an LLM task does on a refused key). Appends one line per batch it computes to `log`."""
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{[row['x'] for row in inputs]}\n")
    if os.path.exists(marker) and any(row["x"] == 6 for row in inputs):
        raise StopRun("the endpoint refused the key")
    yield [{**row, "y": row["x"] * 2} for row in inputs]


@step(inputs=["x"], outputs=["y"])
async def AsyncBlocksOnTwo(inputs: StepInput) -> AsyncIterator[list[dict]]:
    """Blocks its event loop (a sync sleep in async code) on the batch holding x == 2."""
    if any(row["x"] == 2 for row in inputs):
        time.sleep(4)
    yield [{**row, "y": row["x"]} for row in inputs]
