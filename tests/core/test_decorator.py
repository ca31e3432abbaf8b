"""`@step`: classes made from functions, their fields, and pickling them."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from stillhouse.core import (
    GeneratorStep,
    GlobalStep,
    Pipeline,
    RuntimeParameter,
    Step,
    StepInput,
    StepOutput,
    step,
)

ROOT = Path(__file__).resolve().parents[2]


# Module-level on purpose: a class pickles by reference to `module.qualname`.
@step(inputs=["text"], outputs=["length"])
def Measure(inputs: StepInput, factor: int = 1) -> StepOutput:
    """Length of `text` times `factor`."""
    yield [{**row, "length": len(row["text"]) * factor} for row in inputs]


@step(inputs=["text"], outputs=["model"])
def Label(inputs: StepInput, model: RuntimeParameter[str] = None, prefix: str = ">") -> StepOutput:
    yield [{**row, "model": f"{prefix}{model}"} for row in inputs]


@step(inputs={"a": True, "b": False}, outputs={"c": True}, step_type="global")
def Everything(inputs: StepInput) -> StepOutput:
    yield [{**row, "c": len(inputs)} for row in inputs]


@step(outputs=["n"], step_type="generator")
def Count(limit: int = 5) -> StepOutput:
    yield [{"n": i} for i in range(2)], False
    yield [{"n": i} for i in range(2, limit)], True


@step(outputs=["n"], step_type="generator")
def CountFrom(offset: int = 0, limit: int = 4) -> StepOutput:
    yield [{"n": i} for i in range(offset, limit)], True


@step(inputs=["x"], outputs=["x"])
def Pair(*inputs: StepInput) -> StepOutput:
    yield [{**a, **b} for a, b in zip(*inputs, strict=True)]


def test_the_class_is_named_after_the_function() -> None:
    assert Measure.__name__ == "Measure"
    assert Measure.__module__ == __name__
    assert Measure.__doc__ == "Length of `text` times `factor`."
    assert issubclass(Measure, Step) and not issubclass(Measure, GlobalStep)
    assert issubclass(Everything, GlobalStep)
    assert issubclass(Count, GeneratorStep)


def test_inputs_and_outputs_come_from_the_decorator() -> None:
    assert Measure().inputs == ["text"]
    assert Measure().outputs == ["length"]
    assert Everything().get_inputs() == {"a": True, "b": False}
    assert Everything().outputs == {"c": True}


def test_function_parameters_become_fields() -> None:
    assert set(Label.model_fields) >= {"model", "prefix", "input_batch_size"}
    assert "inputs" not in Label.model_fields
    label = Label(model="m", prefix="#")
    [rows] = label.process([{"text": "t"}])
    assert rows == [{"text": "t", "model": "#m"}]
    assert Measure(factor=3).factor == 3


def test_runtime_parameter_fields_are_runtime_parameters() -> None:
    assert Label().runtime_parameters_names["model"] is False  # required: no default
    assert "prefix" not in Label().runtime_parameters_names
    assert Label().missing_runtime_parameters() == ["model"]


def test_a_normal_step_may_take_several_inputs() -> None:
    [rows] = Pair().process([{"x": 1}], [{"y": 2}])
    assert rows == [{"x": 1, "y": 2}]


def test_a_generator_without_offset_skips_offset_rows_itself() -> None:
    assert list(Count().process()) == [
        ([{"n": 0}, {"n": 1}], False),
        ([{"n": 2}, {"n": 3}, {"n": 4}], True),
    ]
    assert list(Count().process(offset=3)) == [([{"n": 3}, {"n": 4}], True)]
    assert list(Count(limit=2).process(offset=2)) == [([], True)]


def test_a_generator_with_offset_receives_it() -> None:
    assert list(CountFrom().process(offset=2)) == [([{"n": 2}, {"n": 3}], True)]
    assert "offset" not in CountFrom.model_fields


def test_an_unknown_step_type_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*'normal', 'global', 'generator'"):
        step(step_type="nope")  # type: ignore[arg-type]


def test_decorated_steps_join_the_current_pipeline() -> None:
    with Pipeline(name="decorated", executor="sync") as pipeline:
        first = CountFrom()
        first >> Measure(input_mappings={"text": "n"})
    assert pipeline.dag.step_names == ["count_from_0", "measure_0"]
    pipeline.validate()


def test_decorated_classes_and_instances_pickle() -> None:
    assert pickle.loads(pickle.dumps(Measure)) is Measure
    assert pickle.loads(pickle.dumps(Count)) is Count
    with Pipeline(name="pickled", executor="sync"):
        original = Label(name="label", model="m")
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is Label
    assert (copy.name, copy.model, copy.pipeline) == ("label", "m", None)
    assert list(copy.process([{"text": "t"}])) == [[{"text": "t", "model": ">m"}]]


@pytest.mark.timeout(60)
def test_a_decorated_step_unpickles_in_a_fresh_interpreter() -> None:
    # What the spawn start method and Ray do: re-import the class by its module name.
    payload = pickle.dumps(Measure(name="measure", factor=2))
    code = (
        "import pickle, sys; step = pickle.loads(sys.stdin.buffer.read()); "
        "print(next(step.process([{'text': 'abc'}]))[0]['length'])"
    )
    # The child sees what this process sees (the repo root for `tests.core...`, and the
    # packages even when they are only on sys.path, as in an isolated-install run).
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=payload,
        capture_output=True,
        cwd=ROOT,
        timeout=50,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "6"
