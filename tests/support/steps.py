"""Steps used by the integration tests; importable by module name for spawned workers."""

from __future__ import annotations

import os
import random
import time

from stillhouse.core import GlobalStep, RuntimeParameter, Step, StepInput, StepOutput, step


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


@step(inputs=["x"], outputs=["slow"])
def Slow(inputs: StepInput, sleep: float = 0.01) -> StepOutput:
    time.sleep(sleep)
    for row in inputs:
        row["slow"] = row["x"]
    yield inputs


@step(inputs=["x"], outputs=["pid"])
def Pid(inputs: StepInput, sleep: float = 0.0) -> StepOutput:
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


class Zip(Step):
    """Merges one row from each predecessor; records which branches a row went through."""

    def process(self, *inputs: StepInput) -> StepOutput:
        merged = []
        for rows in zip(*inputs, strict=True):
            row = {}
            for part in rows:
                row.update(part)
            row["tags"] = [part.get("z") for part in rows]
            merged.append(row)
        yield merged


class CountAll(GlobalStep):
    def process(self, *inputs: StepInput) -> StepOutput:
        yield [{"rows": sum(len(rows) for rows in inputs)}]


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
