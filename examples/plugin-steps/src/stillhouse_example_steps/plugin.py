"""The module the `stillhouse` entry point names: it registers this package's steps.

Registered steps resolve by class name in `pipeline.yaml` (`type_info: {name: Uppercase}`)
and show up in `stillhouse plugins list`.
"""

from __future__ import annotations

from collections.abc import Callable

from stillhouse.core import hookimpl
from stillhouse_example_steps.steps import Uppercase


@hookimpl
def register_steps(register: Callable[[type], None]) -> None:
    register(Uppercase)
