"""stillhouse-ray: the "ray" executor, one Ray actor per step replica.

It registers through the `stillhouse` entry-point group (see `plugin.py`). Importing
this package does not import `ray`; a run does.
"""

from __future__ import annotations

from typing import Any

from stillhouse.ray.executor import RayExecutor

__all__ = ["RayExecutor", "start_local_runtime"]


def start_local_runtime(num_cpus: int | None = None, **init_kwargs: Any) -> None:
    """Start a Ray runtime on this machine that several runs share (see `_runtime`)."""
    from stillhouse.ray._runtime import start_local_runtime as start

    start(num_cpus, **init_kwargs)
