"""Failures that used to surface as raw Python errors naming nothing (issue 13.12).

A routing function that raises becomes a `RoutingError` naming the routing step and
the function; a lone surrogate in a row value becomes an `UnstorableValueError`
naming the step, the column and the fix, on every in-process executor, whether
the value reaches a leaf's results or only a checkpoint.
"""

from __future__ import annotations

import pytest

from stillhouse.core import Pipeline, StepInput, StepOutput, routing_batch_function, step
from stillhouse.core.errors import RoutingError, StepRuntimeError, UnstorableValueError
from stillhouse.core.steps import LoadDataFromDicts


@routing_batch_function
def broken_route(steps: list[str]) -> list[str]:
    raise KeyError("boom")


@routing_batch_function
def returns_nothing(steps: list[str]) -> list[str]:
    return None  # type: ignore[return-value]


@step(inputs=["x"], outputs=["y"])
def Echo(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["y"] = row["x"]
    yield inputs


@step(inputs=["x"], outputs=["text"])
def BadText(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["text"] = "ok" if row["x"] < 2 else "caf\udce9"  # bytes decoded with surrogateescape
    yield inputs


@step(inputs=["text"], outputs=["n"])
def Length(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["n"] = len(row["text"])
    yield inputs


@pytest.mark.parametrize("route", [broken_route, returns_nothing])
@pytest.mark.parametrize("executor", ["sync", "threaded"])
def test_a_routing_function_that_raises_is_a_routing_error_naming_step_and_function(tmp_path, executor, route):
    with Pipeline(name="route", cache_dir=tmp_path, executor=executor) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(4)])
        load >> route >> [Echo(name="a"), Echo(name="b")]
    with pytest.raises(RoutingError) as caught:
        pipeline.run(progress=False)
    message = str(caught.value)
    assert f"routing function {route.name!r} after step 'load' raised" in message
    assert "KeyError: 'boom'" in message if route is broken_route else "TypeError" in message
    assert "Fix the function" in message


@pytest.mark.parametrize("executor", ["sync", "threaded"])
@pytest.mark.parametrize("leaf", [True, False])
def test_a_lone_surrogate_names_the_step_the_column_and_the_fix(tmp_path, executor, leaf):
    with Pipeline(name="surrogate", cache_dir=tmp_path, executor=executor) as pipeline:
        bad = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(4)], batch_size=2) >> BadText(name="bad")
        if not leaf:
            bad >> Length(name="length")
    with pytest.raises(UnstorableValueError) as caught:
        pipeline.run(progress=False)
    error = caught.value
    assert isinstance(error, StepRuntimeError)
    message = str(error)
    assert error.step_name in {"bad", "length"}
    assert f"Rows of step {error.step_name!r} cannot be stored" in message
    assert "column 'text' (row 2 of the batch: 'caf\\udce9')" in message
    assert "lone surrogate" in message and "errors='replace'" in message


def test_a_long_pipeline_name_runs(tmp_path) -> None:
    with Pipeline(name="p" * 200, cache_dir=tmp_path, executor="sync") as pipeline:
        LoadDataFromDicts(name="s" * 200, data=[{"a": 1}])
    distiset = pipeline.run(progress=False)
    assert distiset["default"]["train"].to_list() == [{"a": 1}]
