"""`load_stages`: which steps are loaded together, as a pure function of the DAG."""

from __future__ import annotations

import pytest

from stillhouse.core import Pipeline, StepInput, StepOutput, step
from stillhouse.core.dag import load_stages
from stillhouse.core.errors import PipelineValidationError
from stillhouse.core.steps import LoadDataFromDicts


@step(inputs=["x"], outputs=["x"])
def Work(inputs: StepInput) -> StepOutput:
    yield inputs


@step(inputs=["x"], outputs=["x"], step_type="global")
def Gather(inputs: StepInput) -> StepOutput:
    yield inputs


@step(inputs=["x"], outputs=["x"])
def Join(*inputs: StepInput) -> StepOutput:
    yield inputs[0]


def source(name: str = "source") -> LoadDataFromDicts:
    return LoadDataFromDicts(name=name, data=[{"x": 1}])


def chain(*kinds: str) -> Pipeline:
    """`source >> kinds[0] >> kinds[1] ...`, named s, a, b, c... ("g" makes a global step)."""
    with Pipeline(name="stages", executor="sync") as pipeline:
        previous = source("s")
        for name, kind in zip("abcdef", kinds, strict=False):
            current = (Gather if kind == "g" else Work)(name=name)
            previous >> current
            previous = current
    return pipeline


def test_without_global_steps_everything_is_one_stage() -> None:
    assert load_stages(chain("n", "n", "n").dag) == [["s", "a", "b", "c"]]


def test_a_global_step_splits_the_pipeline_in_three() -> None:
    assert load_stages(chain("n", "g", "n").dag) == [["s", "a"], ["b"], ["c"]]


def test_a_global_step_at_the_end() -> None:
    assert load_stages(chain("n", "g").dag) == [["s", "a"], ["b"]]


def test_two_global_steps_in_a_row() -> None:
    assert load_stages(chain("g", "n", "g", "n").dag) == [["s"], ["a"], ["b"], ["c"], ["d"]]


def test_a_branch_that_does_not_follow_the_global_step_is_loaded_first() -> None:
    with Pipeline(name="stages", executor="sync") as pipeline:
        s = source("s")
        s >> Gather(name="g") >> Work(name="after")
        s >> Work(name="beside")
    assert load_stages(pipeline.dag) == [["s", "beside"], ["g"], ["after"]]


def test_parallel_global_steps_share_a_stage() -> None:
    with Pipeline(name="stages", executor="sync") as pipeline:
        s = source("s")
        [s >> Gather(name="g1"), s >> Gather(name="g2")] >> Join(name="j")
    assert load_stages(pipeline.dag) == [["s"], ["g1", "g2"], ["j"]]


def test_load_groups_isolate_their_steps_and_what_follows_waits() -> None:
    with Pipeline(name="stages", executor="sync") as pipeline:
        s = source("s")
        a, b = Work(name="a"), Work(name="b")
        s >> [a, b] >> Join(name="j") >> Work(name="w")
    assert load_stages(pipeline.dag, [["a", "b"]]) == [["s"], ["a", "b"], ["j", "w"]]
    assert load_stages(pipeline.dag, [[a, b]]) == [["s"], ["a", "b"], ["j", "w"]]


def test_several_load_groups_are_separate_stages() -> None:
    pipeline = chain("n", "n", "n", "n")
    assert load_stages(pipeline.dag, [["a"], ["c", "d"]]) == [["s"], ["a"], ["b"], ["c", "d"]]


def test_load_groups_combine_with_global_steps() -> None:
    pipeline = chain("n", "g", "n", "n")
    assert load_stages(pipeline.dag, [["c"]]) == [["s", "a"], ["b"], ["c"], ["d"]]


def test_independent_load_groups_keep_their_order() -> None:
    with Pipeline(name="stages", executor="sync") as pipeline:
        s = source("s")
        s >> Work(name="left")
        s >> Work(name="right")
    assert load_stages(pipeline.dag, [["right"], ["left"]]) == [["s"], ["right"], ["left"]]


def test_sequential_step_execution_gives_every_step_a_stage() -> None:
    pipeline = chain("n", "g", "n")
    assert load_stages(pipeline.dag, "sequential_step_execution") == [["s"], ["a"], ["b"], ["c"]]


def test_an_unknown_load_groups_string_is_rejected() -> None:
    with pytest.raises(PipelineValidationError, match=r"'one_by_one'.*sequential_step_execution"):
        load_stages(chain("n").dag, "one_by_one")


def test_a_load_group_naming_an_unknown_step() -> None:
    with pytest.raises(PipelineValidationError, match=r"load_groups\[0\].*'ghost'"):
        load_stages(chain("n").dag, [["ghost"]])


def test_a_step_in_two_load_groups() -> None:
    with pytest.raises(PipelineValidationError, match=r"'a'.*load_groups\[1\]"):
        load_stages(chain("n", "n").dag, [["a"], ["a", "b"]])


def test_a_load_group_split_by_a_step_outside_it() -> None:
    # a >> b >> c with [a, c] grouped: b would have to load both after a and before c.
    with pytest.raises(PipelineValidationError, match="same group"):
        load_stages(chain("n", "n", "n").dag, [["a", "c"]])
