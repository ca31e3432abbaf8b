"""Routing batch functions: decorating, wiring, regions and their serialised form."""

from __future__ import annotations

import random

import pytest

from stillhouse.core import (
    Pipeline,
    RoutingBatchFunction,
    StepInput,
    StepOutput,
    routing_batch_function,
    sample_n_steps,
    step,
)
from stillhouse.core.dag import convergence_steps, routed_region, routing_context
from stillhouse.core.errors import RoutingError, SerializationError
from stillhouse.core.steps import CombineOutputs, LoadDataFromDicts


@step(inputs=["x"], outputs=["x"])
def Work(inputs: StepInput) -> StepOutput:
    yield inputs


@routing_batch_function
def first_only(steps: list[str]) -> list[str]:
    """Send every batch to the first successor."""
    return steps[:1]


@routing_batch_function(description="Every successor.")
def everyone(steps: list[str]) -> list[str]:
    return steps


def source(name: str = "source") -> LoadDataFromDicts:
    return LoadDataFromDicts(name=name, data=[{"x": 1}])


def test_the_decorator_works_with_and_without_parentheses() -> None:
    assert isinstance(first_only, RoutingBatchFunction)
    assert isinstance(everyone, RoutingBatchFunction)
    assert first_only(["a", "b"]) == ["a"]
    assert everyone(["a", "b"]) == ["a", "b"]
    assert first_only.description == "Send every batch to the first successor."
    assert everyone.description == "Every successor."
    assert first_only.name == "first_only"


def test_sample_n_steps_picks_n_distinct_successors() -> None:
    route = sample_n_steps(2)
    random.seed(3)
    for _ in range(20):
        chosen = route(["a", "b", "c"])
        assert len(chosen) == 2 and len(set(chosen)) == 2 and set(chosen) <= {"a", "b", "c"}
    assert route.name == "sample_n_steps"


def test_sample_n_steps_rejects_a_bad_n() -> None:
    with pytest.raises(RoutingError, match="n=0"):
        sample_n_steps(0)
    with pytest.raises(RoutingError, match=r"sample_n_steps\(3\).*2 successors"):
        sample_n_steps(3)(["a", "b"])


def test_routing_is_recorded_on_the_source_step() -> None:
    with Pipeline(name="routing", executor="sync") as pipeline:
        s = source("s")
        a, b = Work(name="a"), Work(name="b")
        s >> first_only >> [a, b] >> CombineOutputs(name="c")
    dag = pipeline.dag
    assert dag.routing == {"s": first_only}
    assert dag.routed_branches("s") == ["a", "b"]
    assert dag.routed_branches("a") == []
    assert routed_region(dag, "s") == ["a", "b"]
    assert routing_context(dag, "a") == "s"
    assert routing_context(dag, "c") is None
    assert convergence_steps(dag) == {"s": "c"}


def test_downstream_of_a_branch_stays_in_the_routed_region() -> None:
    with Pipeline(name="routing", executor="sync") as pipeline:
        s = source("s")
        a, b = Work(name="a"), Work(name="b")
        s >> sample_n_steps(1) >> [a, b]
        a >> Work(name="a2")
        [pipeline.dag.get_step("a2"), b] >> CombineOutputs(name="c")
    assert routed_region(pipeline.dag, "s") == ["a", "b", "a2"]
    assert convergence_steps(pipeline.dag) == {"s": "c"}
    pipeline.validate()


def test_one_routing_function_after_two_steps_is_two_routings() -> None:
    # As in distilabel (issue 18): each use of one routing function object is its own routing.
    route = sample_n_steps(1)
    with Pipeline(name="routing", executor="sync") as p:
        first, second = source("first"), source("second")
        first >> route >> [Work(), Work()]
        second >> route >> [Work(), Work()]
    assert p.dag.routing["first"] is route
    assert p.dag.routing["second"] is not route
    assert p.dag.routing["second"].dump()["step"] == "second"
    assert route.dump()["step"] == "first"


def test_a_routing_function_must_be_followed_by_a_list() -> None:
    with Pipeline(name="routing", executor="sync"):
        s, a = source(), Work()
        with pytest.raises(RoutingError, match="list of steps"):
            s >> sample_n_steps(1) >> a


def test_a_routing_function_needs_an_upstream_step() -> None:
    with Pipeline(name="routing", executor="sync"):
        a = Work()
        with pytest.raises(RoutingError, match="no upstream step"):
            sample_n_steps(1) >> [a]


def test_nested_routing_is_rejected() -> None:
    with Pipeline(name="routing", executor="sync") as pipeline:
        s = source("s")
        a, b = Work(name="a"), Work(name="b")
        s >> sample_n_steps(1) >> [a, b]
        a >> everyone >> [Work(name="a1"), Work(name="a2")]
    with pytest.raises(RoutingError, match=r"'a'.*'s'.*Nested routing"):
        pipeline.validate()


def test_dump_and_from_dump_rebuild_a_decorated_function() -> None:
    data = first_only.dump()
    assert data["type_info"] == {"module": __name__, "name": "first_only", "kwargs": {}}
    rebuilt = RoutingBatchFunction.from_dump(data)
    assert rebuilt is not first_only
    assert rebuilt(["a", "b"]) == ["a"]


def test_dump_and_from_dump_rebuild_sample_n_steps_with_its_argument() -> None:
    data = sample_n_steps(2).dump()
    assert data["type_info"] == {
        "module": "stillhouse.core.routing", "name": "sample_n_steps", "kwargs": {"n": 2}
    }
    rebuilt = RoutingBatchFunction.from_dump(data)
    assert rebuilt.dump() == data
    assert len(rebuilt(["a", "b", "c"])) == 2


def test_a_description_set_by_the_user_survives_dump_and_from_dump() -> None:
    """distilabel keeps a routing function's saved description (it is in pipeline.yaml and
    the signature); sample_n_steps' own says what distilabel's says."""
    sampled = sample_n_steps(2)
    assert sampled.description == "Sample 2 steps from the list of downstream steps."
    sampled.description = "two of the judges"
    assert RoutingBatchFunction.from_dump(sampled.dump()).description == "two of the judges"
    data = first_only.dump()
    data["description"] = "only the first branch"
    assert RoutingBatchFunction.from_dump(data).description == "only the first branch"
    del data["description"]  # a file without one: the function's own
    assert RoutingBatchFunction.from_dump(data).description == first_only.description


def test_from_dump_names_an_unresolvable_function() -> None:
    data = {"type_info": {"module": "no_such_module_here", "name": "route"}}
    with pytest.raises(SerializationError, match=r"no_such_module_here\.route"):
        RoutingBatchFunction.from_dump(data)


# -- RoutingBatchFunction.validate ----------------------------------------------------


def test_validate_refuses_sample_n_steps_with_too_few_successors() -> None:
    route = sample_n_steps(3)
    route.validate(["a", "b", "c"])
    route.validate(["a", "b", "c", "d"])
    with pytest.raises(RoutingError, match=r"'sample_n_steps'.*sample_n_steps\(3\).*only 2 successors \['a', 'b'\]"):
        route.validate(["a", "b"])


def test_validate_names_the_step_the_function_follows() -> None:
    with Pipeline(name="routing", executor="sync"):
        s = source("s")
        route = sample_n_steps(2)
        s >> route >> [Work(name="a"), Work(name="b")]
    route.validate(["a", "b"])
    with pytest.raises(RoutingError, match=r"after step 's'.*only 1 successors"):
        route.validate(["a"])


def test_a_plain_routing_function_accepts_any_successors() -> None:
    first_only.validate(["a"])
    first_only.validate(["a", "b", "c"])


def test_validate_survives_a_dump_and_a_copy_for_another_step() -> None:
    rebuilt = RoutingBatchFunction.from_dump(sample_n_steps(2).dump())
    with pytest.raises(RoutingError, match=r"sample_n_steps\(2\)"):
        rebuilt.validate(["only"])
    route = sample_n_steps(2)
    with Pipeline(name="routing", executor="sync") as p:
        first, second = source("first"), source("second")
        first >> route >> [Work(), Work()]
        second >> route >> [Work(), Work()]
    copy = p.dag.routing["second"]
    assert copy is not route
    with pytest.raises(RoutingError, match=r"after step 'second'"):
        copy.validate(["x"])
