"""Registers the "ray" executor, exactly as any third-party executor plugin would."""

from __future__ import annotations

from collections.abc import Callable

from stillhouse.core.hookspecs import hookimpl
from stillhouse.ray.executor import RayExecutor


@hookimpl
def register_executors(register: Callable[[str, type], None]) -> None:
    register("ray", RayExecutor)
