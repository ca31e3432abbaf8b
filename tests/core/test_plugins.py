"""The plugin manager: installed plugins, a throwaway plugin, and broken ones."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import types
from pathlib import Path

import pluggy
import pytest

from stillhouse.core import Pipeline, Step, StepInput, StepOutput, hookimpl, hookspecs
from stillhouse.core.engine import RunContext
from stillhouse.core.errors import PluginError, UnknownExecutorError
from stillhouse.core.plugins import (
    DISABLE_ENV,
    executor_class,
    plugin_manager,
    registry,
)
from stillhouse.core.serialization import resolve_step_class
from stillhouse.core.steps import LoadDataFromDicts


class Shout(Step):
    def process(self, inputs: StepInput) -> StepOutput:
        yield [{**row, "text": str(row.get("text", "")).upper()} for row in inputs]


class FakeExecutor:
    """Stands in for an executor class; nothing here starts it."""


class ThrowawayPlugin:
    @hookimpl
    def register_steps(self, register) -> None:
        register(Shout)

    @hookimpl
    def register_executors(self, register) -> None:
        register("throwaway", FakeExecutor)


class MisspeltPlugin:
    @hookimpl
    def register_stepz(self, register) -> None:  # the typo is the point
        register(Shout)


@pytest.fixture
def throwaway_plugin():
    manager = plugin_manager()
    plugin = ThrowawayPlugin()
    manager.register(plugin, name="throwaway-test-plugin")
    try:
        yield plugin
    finally:
        manager.unregister(plugin)


def installed_entry_points() -> list[str]:
    return [ep.name for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT)]


def test_installed_executors_are_registered() -> None:
    executors = registry().executors
    if not executors:
        pytest.skip("no executor plugin is installed in this environment")
    assert {"mp", "threaded"} <= set(executors)
    for name, cls in executors.items():
        assert executor_class(name) is cls
        assert registry().sources[f"executor:{name}"]


def test_an_unknown_executor_lists_the_installed_ones() -> None:
    installed = sorted(registry().executors)
    with pytest.raises(UnknownExecutorError, match="'nope'") as info:
        executor_class("nope")
    for name in installed:
        assert name in str(info.value)
    assert "Pipeline(executor=...)" in str(info.value)


def test_a_throwaway_plugin_registers_a_step_and_an_executor(throwaway_plugin) -> None:
    found = registry()
    assert found.steps["Shout"] is Shout
    assert found.executors["throwaway"] is FakeExecutor
    assert found.sources["step:Shout"] == "throwaway-test-plugin"
    assert executor_class("throwaway") is FakeExecutor


def test_the_throwaway_plugin_is_gone_after_its_test() -> None:
    assert "Shout" not in registry().steps
    assert "throwaway" not in registry().executors


def test_registered_steps_resolve_by_name_alone(throwaway_plugin) -> None:
    assert resolve_step_class({"name": "Shout"}, "shout") is Shout
    with Pipeline(name="registered", executor="sync") as pipeline:
        LoadDataFromDicts(name="data", data=[{"text": "a"}]) >> Shout(name="shout")
    data = pipeline.dump()
    data["pipeline"]["steps"][1]["step"]["type_info"] = {"name": "Shout"}  # no module path
    rebuilt = Pipeline.from_dict(data)
    assert type(rebuilt.dag.get_step("shout")) is Shout


def test_disabling_every_plugin_leaves_no_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, ",".join(installed_entry_points() or ["none"]))
    assert registry().executors == {}
    with pytest.raises(UnknownExecutorError, match="pip install stillhouse-executors"):
        executor_class("mp")


def test_a_plugin_that_fails_to_load_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = importlib.metadata.EntryPoint(
        name="broken", value="surely_no_such_module_xyz.plugin", group=hookspecs.PROJECT
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    # A disabled set of its own gives a fresh (uncached) manager.
    monkeypatch.setenv(DISABLE_ENV, "only-for-the-broken-plugin-test")
    with pytest.raises(PluginError, match=rf"'broken'.*ModuleNotFoundError.*{DISABLE_ENV}=broken"):
        registry()


def test_a_plugin_with_a_misspelt_hook_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    misspelt = importlib.metadata.EntryPoint(
        name="misspelt", value=f"{__name__}:MisspeltPlugin", group=hookspecs.PROJECT
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [misspelt])
    monkeypatch.setenv(DISABLE_ENV, "only-for-the-misspelt-plugin-test")
    with pytest.raises(PluginError, match=r"'misspelt'.*register_stepz"):
        registry()


def _hookspecs() -> list:
    return [
        function
        for _, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, f"{hookspecs.PROJECT}_spec")
    ]


def test_every_hook_is_documented() -> None:
    specs = _hookspecs()
    assert {"register_executors", "register_steps"} <= {spec.__name__ for spec in specs}
    for spec in specs:
        assert spec.__doc__ and len(inspect.getdoc(spec)) > 40, f"{spec.__name__} needs a docstring"


def test_every_hook_has_a_section_in_the_plugin_docs() -> None:
    text = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    for spec in _hookspecs():
        arguments = ", ".join(inspect.signature(spec).parameters)
        assert f"### `{spec.__name__}({arguments}" in text, f"docs/plugins.md lacks {spec.__name__}"
    for field in dataclasses.fields(RunContext):
        assert f"`{field.name}`" in text, f"docs/plugins.md lacks RunContext.{field.name}"


def test_hooks_follow_one_naming_scheme() -> None:
    for spec in _hookspecs():
        first_result = spec.stillhouse_spec["firstresult"]
        assert spec.__name__.startswith("make_" if first_result else "register_"), spec.__name__
        if first_result:
            assert list(inspect.signature(spec).parameters) == ["context"], spec.__name__
            assert inspect.signature(spec).parameters["context"].annotation == "RunContext"


def _manager() -> pluggy.PluginManager:
    """A manager of its own, with no installed plugin: only what a test registers."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def test_two_plugins_registering_one_name_is_an_error():
    manager = _manager()
    for plugin_name in ("pkg-one", "pkg-two"):
        module = types.ModuleType(plugin_name)
        cls = type(f"Executor{plugin_name[-3:]}", (), {})
        module.register_executors = hookspecs.hookimpl(lambda register, cls=cls: register("dup", cls))
        manager.register(module, name=plugin_name)
    with pytest.raises(PluginError, match=r"'dup'.*pkg-one.*pkg-two"):
        registry(manager)


def test_two_plugins_registering_one_step_name_are_both_named():
    manager = _manager()
    for plugin_name in ("steps-one", "steps-two"):
        module = types.ModuleType(plugin_name)
        cls = type("Shout", (Step,), {"process": Shout.process})
        module.register_steps = hookimpl(lambda register, cls=cls: register(cls))
        manager.register(module, name=plugin_name)
    with pytest.raises(PluginError, match=r"step name 'Shout'.*steps-one.*steps-two"):
        registry(manager)


def test_a_register_hook_that_raises_names_its_plugin():
    manager = _manager()
    manager.register(ThrowawayPlugin(), name="fine-plugin")
    module = types.ModuleType("broken")

    def register_executors(register):
        raise RuntimeError("no GPU driver")

    module.register_executors = hookimpl(register_executors)
    manager.register(module, name="broken-plugin")
    with pytest.raises(PluginError, match=r"register_executors.*'broken-plugin'.*RuntimeError: no GPU driver") as info:
        registry(manager)
    assert f"{DISABLE_ENV}=broken-plugin" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_bad_register_call_names_its_plugin():
    manager = _manager()
    module = types.ModuleType("sloppy")
    module.register_steps = hookimpl(lambda register: register("Shout"))  # a name, not a class
    manager.register(module, name="sloppy-plugin")
    with pytest.raises(PluginError, match=r"sloppy-plugin.*register\('Shout'\).*register\(StepClass\)"):
        registry(manager)


def test_registrations_come_through_the_hook_caller():
    """Every register hook is called through the manager's hook caller (its call
    monitoring sees each call), one plugin per call, so what a plugin registers is
    attributed to it."""
    manager = _manager()
    manager.register(ThrowawayPlugin(), name="throwaway-test-plugin")
    calls: list[tuple[str, list[str]]] = []
    manager.add_hookcall_monitoring(
        lambda hook_name, impls, kwargs: calls.append((hook_name, [i.plugin_name for i in impls])),
        lambda outcome, hook_name, impls, kwargs: None,
    )
    found = registry(manager)
    assert ("register_steps", ["throwaway-test-plugin"]) in calls
    assert ("register_executors", ["throwaway-test-plugin"]) in calls
    assert found.sources["step:Shout"] == "throwaway-test-plugin"
    assert found.sources["executor:throwaway"] == "throwaway-test-plugin"


class ContextSpy:
    """Sees the context every make_* hook gets, and leaves the making to the others."""

    def __init__(self) -> None:
        self.seen: dict[str, RunContext] = {}

    @hookimpl(tryfirst=True)
    def make_run_store(self, context):
        self.seen["make_run_store"] = context

    @hookimpl(tryfirst=True)
    def make_output_writer(self, context):
        self.seen["make_output_writer"] = context

    @hookimpl(tryfirst=True)
    def make_batch_storage(self, context):
        self.seen["make_batch_storage"] = context


@pytest.mark.timeout(120)
def test_the_make_hooks_get_the_run_context(tmp_path, inprocess) -> None:
    spy, manager = ContextSpy(), plugin_manager()
    manager.register(spy, name="context-spy")
    try:
        with Pipeline(name="context", executor=inprocess, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(name="data", data=[{"text": "a"}]) >> Shout(name="shout")
        pipeline.run(progress=False)
    finally:
        manager.unregister(spy)
    before = spy.seen["make_run_store"]
    assert before.pipeline is pipeline and before.pipeline_name == "context"
    assert before.plan is not None and before.plan.order == ("data", "shout")
    assert before.run_dir is None and before.data_dir is None and before.log_file is None
    if pipeline.run_dir is None:
        pytest.skip("no run store plugin is installed in this environment")
    for hook in ("make_output_writer", "make_batch_storage"):
        after = spy.seen[hook]
        assert after.run_dir == pipeline.run_dir and after.log_file is not None, hook
        assert after.plan is before.plan and after.fresh_steps == before.fresh_steps
    assert pipeline.run_context.run_dir == pipeline.run_dir


def test_an_error_in_a_make_hook_keeps_its_type_and_names_the_plugin(tmp_path, inprocess) -> None:
    module = types.ModuleType("leaky")

    def make_run_store(context):
        raise PermissionError(f"cannot create {context.cache_dir}")

    module.make_run_store = hookimpl(make_run_store)
    manager = plugin_manager()
    manager.register(module, name="leaky-store")
    try:
        with Pipeline(name="leaky", executor=inprocess, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(name="data", data=[{"text": "a"}]) >> Shout(name="shout")
        with pytest.raises(PermissionError, match="cannot create") as info:
            pipeline.run(progress=False)
    finally:
        manager.unregister(module)
    assert any("make_run_store hook of the stillhouse plugin 'leaky-store'" in note
               for note in info.value.__notes__)
