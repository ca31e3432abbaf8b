"""The module the `stillhouse` entry point names: registers this package's steps, so
`pipeline.yaml` names them without import paths."""

from __future__ import annotations

from collections.abc import Callable

from stillhouse.core import hookimpl
from stillhouse.llms.tasks import ChatGeneration, TextGeneration


@hookimpl
def register_steps(register: Callable[[type], None]) -> None:
    register(TextGeneration)
    register(ChatGeneration)
