"""The plugin manager: loads `stillhouse` entry points and collects what they register."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from stillhouse.core import hookspecs
from stillhouse.core.errors import MissingPluginError, PluginError, UnknownExecutorError

logger = logging.getLogger("stillhouse.plugins")

DISABLE_ENV = "STILLHOUSE_DISABLE_PLUGINS"
"""Comma-separated entry-point names not to load (e.g. `cache` to run without checkpoints)."""


@dataclass
class Registry:
    executors: dict[str, type] = field(default_factory=dict)
    steps: dict[str, type] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


@functools.cache
def _manager(disabled: frozenset[str]) -> tuple[pluggy.PluginManager, dict[str, str]]:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    origins: dict[str, str] = {}
    for entry_point in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        if entry_point.name in disabled or manager.has_plugin(entry_point.name):
            continue
        try:
            module = entry_point.load()
        except Exception as exc:
            raise PluginError(
                f"The stillhouse plugin {entry_point.name!r} ({entry_point.value}) failed to "
                f"load: {type(exc).__name__}: {exc}. Reinstall it, or skip it with "
                f"{DISABLE_ENV}={entry_point.name}."
            ) from exc
        manager.register(module, name=entry_point.name)
        dist = entry_point.dist.name if entry_point.dist else "?"
        origins[entry_point.name] = f"{dist} ({entry_point.value})"
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(
            f"The stillhouse plugin {name!r} implements a hook stillhouse does not define: "
            f"{exc}. Check the hook's spelling against stillhouse.core.hookspecs, or skip the "
            f"plugin with {DISABLE_ENV}={name}."
        ) from exc
    return manager, origins


def plugin_manager() -> pluggy.PluginManager:
    return _manager(frozenset(_disabled()))[0]


def plugin_origins() -> dict[str, str]:
    """`{entry point name: "distribution (module)"}` of every loaded plugin."""
    return dict(_manager(frozenset(_disabled()))[1])


REGISTER_HOOKS = ("register_executors", "register_steps")
"""The hooks whose registrations `registry()` collects."""


def registry(manager: pluggy.PluginManager | None = None, hooks: tuple[str, ...] = REGISTER_HOOKS) -> Registry:
    """Everything the installed plugins register with `hooks` (recomputed on each call:
    cheap). A run needs only its executor: `executor_class` calls `register_executors`
    alone, so no run imports the step classes a plugin registers (an LLM package's, a
    data package's) just to find its executor.

    Every register hook is called through the manager's hook caller, one plugin at a
    time (`subset_hook_caller`), so whatever a plugin registers, and whatever its hook
    raises, is attributed to it."""
    found = Registry()
    origins = plugin_origins() if manager is None else {}
    manager = manager or plugin_manager()
    for plugin_name, plugin in manager.list_name_plugin():
        origin = origins.get(plugin_name, plugin_name)
        callbacks = {
            "register_executors": functools.partial(_add_executor, found, origin),
            "register_steps": functools.partial(_add_step, found, origin),
        }
        for hook_name in hooks:
            _call_register(manager, hook_name, plugin_name, plugin, origin, callbacks[hook_name])
    return found


def _call_register(
    manager: pluggy.PluginManager, hook_name: str, plugin_name: str, plugin: object,
    origin: str, register: Callable[..., None],
) -> None:
    """Call `hook_name` of one plugin only, naming the plugin in whatever goes wrong."""
    others = [p for p in manager.get_plugins() if p is not plugin]
    caller = manager.subset_hook_caller(hook_name, remove_plugins=others)
    if not caller.get_hookimpls():
        return
    try:
        caller(register=register)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(
            f"The {hook_name} hook of the stillhouse plugin {plugin_name!r} ({origin}) raised "
            f"{type(exc).__name__}: {exc}. Fix or update the plugin, or skip it with "
            f"{DISABLE_ENV}={plugin_name}."
        ) from exc


def _add_executor(found: Registry, origin: str, name: str, cls: type) -> None:
    if not isinstance(name, str) or not isinstance(cls, type):
        raise PluginError(
            f"The stillhouse plugin {origin} called register({name!r}, {cls!r}) in its "
            "register_executors hook; it takes a name (str) and an executor class: "
            'register("name", ExecutorClass).'
        )
    _claim(found, "executor", name, cls, origin)
    found.executors[name] = cls


def _add_step(found: Registry, origin: str, cls: type) -> None:
    if not isinstance(cls, type):
        raise PluginError(
            f"The stillhouse plugin {origin} called register({cls!r}) in its register_steps "
            "hook; it takes a step class: register(StepClass)."
        )
    _claim(found, "step", cls.__name__, cls, origin)
    found.steps[cls.__name__] = cls


def _claim(found: Registry, kind: str, name: str, cls: type, origin: str) -> None:
    """Two plugins must not silently fight over one name."""
    key = f"{kind}:{name}"
    previous = found.executors.get(name) if kind == "executor" else found.steps.get(name)
    if previous is not None and previous is not cls:
        raise PluginError(
            f"Two plugins register the {kind} name {name!r}: {found.sources[key]} and {origin}. "
            f"Uninstall one of them, or skip one with {DISABLE_ENV}=<entry point name>."
        )
    found.sources[key] = origin


def executor_class(name: str) -> type:
    executors = registry(hooks=("register_executors",)).executors
    if name in executors:
        return executors[name]
    installed = ", ".join(sorted(executors)) or "none"
    hint = " Install stillhouse-executors (`pip install stillhouse-executors`)." if not executors else ""
    if name == "ray":  # an extra of the meta-distribution, not installed by default
        hint = ' The "ray" executor comes with stillhouse-ray: `pip install "stillhouse[ray]"`.'
    raise UnknownExecutorError(
        f"Unknown executor {name!r}. Installed executors: {installed}.{hint} "
        "Pass one of them as `Pipeline(executor=...)`."
    )


def first_result(hook: str, **kwargs: Any) -> Any:
    """Call a `make_*` hook (firstresult): the first plugin's answer that is not None.

    Each plugin is called through its own subset hook caller, in pluggy's order, so an
    exception escaping a plugin keeps its type (a `CacheError` stays one) and gains a
    note naming the hook and the plugin."""
    manager = plugin_manager()
    origins = plugin_origins()
    for impl in reversed(getattr(manager.hook, hook).get_hookimpls()):  # pluggy calls the last first
        others = [p for p in manager.get_plugins() if p is not impl.plugin]
        try:
            result = manager.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
        except Exception as exc:
            origin = origins.get(impl.plugin_name, impl.plugin_name)
            exc.add_note(f"Raised by the {hook} hook of the stillhouse plugin {impl.plugin_name!r} ({origin}).")
            raise
        if result is not None:
            return result
    return None


def require(value: Any, what: str, distribution: str) -> Any:
    if value is None:
        raise MissingPluginError(f"No {what} is installed. Install {distribution}.")
    return value
