"""The step contract (SPEC §5, issue 19 items 8 and 9): what `process` yields is checked
where the worker collects it, and a step that breaks the contract names itself."""

from __future__ import annotations

import pytest

from stillhouse.core import GeneratorStep, Step, StepInput
from stillhouse.core.engine import FatalStepError, StepRunner, Task
from stillhouse.core.errors import StepContractError


class Returns(Step):
    """`return`s its rows instead of yielding them."""

    @property
    def inputs(self):
        return ["x"]

    @property
    def outputs(self):
        return ["y"]

    def process(self, inputs: StepInput):  # type: ignore[override]
        return [{**row, "y": 1} for row in inputs]


class YieldsADict(Returns):
    def process(self, inputs: StepInput):  # type: ignore[override]
        for row in inputs:
            yield {**row, "y": 1}


class YieldsAString(Returns):
    def process(self, inputs: StepInput):  # type: ignore[override]
        yield "y"


class ForgetsItsOutput(Returns):
    def process(self, inputs: StepInput):  # type: ignore[override]
        yield [dict(row) for row in inputs]


class OptionalOutput(ForgetsItsOutput):
    @property
    def outputs(self):
        return {"y": False}


class SetsItsOutputToNone(Returns):
    def process(self, inputs: StepInput):  # type: ignore[override]
        yield [{**row, "y": None} for row in inputs]


class GeneratesWithoutFlag(GeneratorStep):
    @property
    def outputs(self):
        return ["x"]

    def process(self, offset: int = 0):  # type: ignore[override]
        yield [{"x": 1}]


def run(step, rows=({"x": 1}, {"x": 2})):
    runner = StepRunner(step)
    runner.load()
    try:
        if step.is_generator:
            return runner.run(Task(step.name, (0, 0), None, 0))
        return runner.run(Task(step.name, (0, 3), [list(dict(r) for r in rows)]))
    finally:
        runner.unload()


@pytest.mark.parametrize(
    ("step", "says"),
    [
        (Returns(name="returns"), r"Step 'returns': process\(\) returned list .* instead of yielding lists of rows"),
        (YieldsADict(name="dict"), r"Step 'dict': process\(\) yielded a dict \(\{'x': 1, 'y': 1\}\), but it must yield lists of row dicts"),
        (YieldsAString(name="text"), r"Step 'text': process\(\) yielded a str \('y'\)"),
        (ForgetsItsOutput(name="forgets"), r"Step 'forgets' did not set its output column 'y' .* in row 0 of batch \(0, 3\)"),
        (GeneratesWithoutFlag(name="gen"), r"Generator step 'gen': process\(\) yielded \[\{'x': 1\}\], but a generator step must yield `\(rows, is_last\)` pairs"),
    ],
    ids=["return", "dict", "str", "missing-output", "generator-without-flag"],
)
def test_a_step_that_breaks_the_contract_stops_the_run_naming_itself(step, says) -> None:
    with pytest.raises(FatalStepError) as info:
        run(step)
    assert isinstance(info.value.original, StepContractError)
    assert info.value.original.step_name == step.name
    with pytest.raises(StepContractError, match=says):
        raise info.value.original


def test_an_optional_output_may_be_left_out_and_none_is_a_value() -> None:
    assert run(OptionalOutput(name="optional")).rows == [{"x": 1}, {"x": 2}]
    assert run(SetsItsOutputToNone(name="none")).rows == [{"x": 1, "y": None}, {"x": 2, "y": None}]


def test_a_mapped_output_is_checked_under_its_new_name() -> None:
    step = SetsItsOutputToNone(name="mapped", output_mappings={"y": "z"})
    assert run(step).rows == [{"x": 1, "z": None}, {"x": 2, "z": None}]


def test_a_failing_batch_still_imputes_none() -> None:
    class Raises(Returns):
        def process(self, inputs: StepInput):  # type: ignore[override]
            raise ValueError("boom")
            yield inputs

    result = run(Raises(name="raises"))
    assert result.error == "ValueError: boom"
    assert result.rows == [{"x": 1, "y": None}, {"x": 2, "y": None}]
