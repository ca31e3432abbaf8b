"""The module the `stillhouse` entry point names: registers this package's steps, so
`pipeline.yaml` names them without import paths."""

from __future__ import annotations

from collections.abc import Callable

from stillhouse.core import hookimpl


@hookimpl
def register_steps(register: Callable[[type], None]) -> None:
    # Imported here, not with the module: a run loads every plugin, and looks up steps
    # only to load a pipeline file.
    from stillhouse.llms.tasks import ChatGeneration, TextGeneration

    register(TextGeneration)
    register(ChatGeneration)
