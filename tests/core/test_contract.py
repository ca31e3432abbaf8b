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


class GeneratesTheWrongColumn(GeneratesWithoutFlag):
    def process(self, offset: int = 0):  # type: ignore[override]
        yield [{"nope": 0}, {"nope": 1}], True


class AsyncGeneratesTheWrongColumn(GeneratesWithoutFlag):
    async def process(self, offset: int = 0):  # type: ignore[override]
        yield [{"nope": 0}], True


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
        (GeneratesTheWrongColumn(name="gen"), r"Step 'gen' did not set its output column 'x' .* in row 0 of batch \(0, 0\): \{'nope': 0\}"),
        (AsyncGeneratesTheWrongColumn(name="agen"), r"Step 'agen' did not set its output column 'x' .* in row 0 of batch \(0, 0\)"),
    ],
    ids=["return", "dict", "str", "missing-output", "generator-without-flag",
         "generator-missing-output", "async-generator-missing-output"],
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


def test_rows_of_a_generator_whose_outputs_follow_its_data_may_lack_a_key() -> None:
    """`LoadDataFromDicts` declares the first row's keys; rows without one give None in
    the results (as in distilabel), not a contract error."""
    from stillhouse.core.steps import LoadDataFromDicts

    step = LoadDataFromDicts(name="dicts", data=[{"x": 1, "y": 2}, {"x": 3}])
    assert run(step).rows == [{"x": 1, "y": 2}, {"x": 3}]


def test_a_generator_batch_size_below_one_is_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    from stillhouse.core.steps import LoadDataFromDicts

    for size in (0, -1):
        with pytest.raises(ValidationError, match="batch_size"):
            LoadDataFromDicts(name="dicts", data=[{"x": 1}], batch_size=size)
    step = LoadDataFromDicts(name="dicts", data=[{"x": 1}])
    with pytest.raises(ValidationError, match="batch_size"):
        step.set_runtime_parameters({"batch_size": 0})
