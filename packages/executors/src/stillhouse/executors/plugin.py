"""Registers the built-in executors, exactly as a third-party plugin would."""

from __future__ import annotations

from collections.abc import Callable

from stillhouse.core.hookspecs import hookimpl
from stillhouse.executors.mp import MultiprocessingExecutor
from stillhouse.executors.sync import SyncExecutor
from stillhouse.executors.threaded import ThreadedExecutor


@hookimpl
def register_executors(register: Callable[[str, type], None]) -> None:
    register("mp", MultiprocessingExecutor)
    register("threaded", ThreadedExecutor)
    register("sync", SyncExecutor)
