"""The module the `stillhouse` entry point names: registers this package's steps, so
`pipeline.yaml` names them without import paths."""

from __future__ import annotations

from collections.abc import Callable

from stillhouse.core import hookimpl


@hookimpl
def register_steps(register: Callable[[type], None]) -> None:
    from stillhouse.steps import STEPS

    for step_class in STEPS:
        register(step_class)
