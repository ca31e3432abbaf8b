"""The execution plan: the DAG compiled once per run, read by the state, scheduler and store."""

from __future__ import annotations

import importlib.util

import pytest

from stillhouse.core import Pipeline, StepInput, StepOutput, sample_n_steps, step
from stillhouse.core import dag as dag_module
from stillhouse.core.engine.plan import ExecutionPlan, StepKind, compile_plan
from stillhouse.core.steps import CombineOutputs, LoadDataFromDicts

HAS_CACHE = importlib.util.find_spec("stillhouse.cache") is not None


@step(inputs=["x"], outputs=["x"])
def Work(inputs: StepInput) -> StepOutput:
    yield inputs


@step(inputs=["x"], outputs=["x"], step_type="global")
def Gather(inputs: StepInput) -> StepOutput:
    yield inputs


def routed(name: str, cache_dir=None, executor: str = "sync") -> Pipeline:
    """load >> route >> [a, b]; a >> a2; [a2, b] >> join >> after (a global step)."""
    with Pipeline(name=name, executor=executor, cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(12)], batch_size=3)
        a, b, a2 = Work(name="a", input_batch_size=2), Work(name="b"), Work(name="a2")
        load >> sample_n_steps(1) >> [a, b]
        a >> a2
        join = CombineOutputs(name="join")
        [a2, b] >> join >> Gather(name="after")
    return pipeline


def test_the_plan_holds_the_routing_convergence_kinds_and_stages() -> None:
    pipeline = routed("plan")
    plan = pipeline.validate()
    assert isinstance(plan, ExecutionPlan)
    assert plan.order == ("load", "a", "b", "a2", "join", "after")
    assert plan.stages == (("load", "a", "b", "a2", "join"), ("after",))
    assert plan.kinds == {
        "load": StepKind.GENERATOR, "a": StepKind.NORMAL, "b": StepKind.NORMAL,
        "a2": StepKind.NORMAL, "join": StepKind.NORMAL, "after": StepKind.GLOBAL,
    }
    assert set(plan.routing) == {"load"}
    assert plan.regions == {"load": ("a", "b", "a2")}
    assert plan.convergence == {"load": "join"}
    assert plan.routed_to("load") == ("a", "b", "a2", "join")
    assert plan.region_of == {"load": None, "a": "load", "b": "load", "a2": "load", "join": None,
                              "after": None}
    assert [plan.lineaged(name) for name in plan.order] == [False, True, True, True, True, False]
    assert plan.predecessors["join"] == ("a2", "b")
    assert plan.leaves == ("after",)


def test_load_groups_go_into_the_plan() -> None:
    plan = routed("plan").validate(load_groups="sequential_step_execution")
    assert plan.stages == tuple((name,) for name in plan.order)


def test_the_plan_is_what_the_graph_says_after_it_changes() -> None:
    pipeline = routed("plan")
    before = compile_plan(pipeline.dag)
    with pipeline:
        pipeline.dag.get_step("b") >> Work(name="b2")
    after = compile_plan(pipeline.dag)
    assert "b2" not in before.order and after.region_of["b2"] == "load"
    assert "_context_cache" not in pipeline.dag.__dict__  # nothing cached on the graph


@pytest.mark.timeout(120)
def test_a_run_compiles_its_plan_once_and_never_asks_the_graph_again(monkeypatch, tmp_path, inprocess) -> None:
    layouts, plans = [], []
    real_layout, real_compile = dag_module.routing_layout, compile_plan

    def counting_layout(dag):
        layouts.append(dag)
        return real_layout(dag)

    def counting_compile(*args, **kwargs):
        plans.append(args)
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(dag_module, "routing_layout", counting_layout)
    monkeypatch.setattr("stillhouse.core.engine.plan.compile_plan", counting_compile)
    pipeline = routed("plan-once", cache_dir=tmp_path, executor=inprocess)
    result = pipeline.run(progress=False)
    assert len(layouts) == 1, "the routing layout was computed more than once in one run"
    assert len(plans) == 1, "the execution plan was compiled more than once in one run"
    assert isinstance(pipeline.run_context.plan, ExecutionPlan)
    if HAS_CACHE:  # with core alone nothing is cached: no run dir
        assert pipeline.run_dir is not None and pipeline.run_dir.startswith(str(tmp_path))
    rows = result["default"]["train"] if hasattr(result, "keys") and "default" in result else None
    if rows is not None:
        assert sorted(rows["x"]) == list(range(12))
    layouts.clear(), plans.clear()
    pipeline.run(progress=False)  # a (cached, with stillhouse-cache) rerun: once again
    assert (len(layouts), len(plans)) == (1, 1)
