"""The executors register through the `stillhouse` entry-point group like any plugin."""

from __future__ import annotations

import importlib.metadata

import pluggy
import pytest

from stillhouse.core import hookspecs
from stillhouse.core.errors import PipelineValidationError
from stillhouse.executors import MultiprocessingExecutor, SyncExecutor, ThreadedExecutor, plugin


def test_entry_point_names_the_plugin_module() -> None:
    points = importlib.metadata.entry_points(group=hookspecs.PROJECT)
    assert [p.value for p in points if p.name == "executors"] == ["stillhouse.executors.plugin"]


def test_plugin_registers_all_three() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(plugin, name="executors")
    manager.check_pending()
    registered: dict[str, type] = {}
    manager.hook.register_executors(register=registered.__setitem__)
    assert registered == {
        "mp": MultiprocessingExecutor, "threaded": ThreadedExecutor, "sync": SyncExecutor,
    }
    assert all(cls.name == name for name, cls in registered.items())


@pytest.mark.parametrize("cls", [MultiprocessingExecutor, ThreadedExecutor, SyncExecutor])
def test_unknown_options_are_refused(cls: type) -> None:
    with pytest.raises(PipelineValidationError, match="Unknown option\\(s\\) 'join_timout'"):
        cls(join_timout=3)
