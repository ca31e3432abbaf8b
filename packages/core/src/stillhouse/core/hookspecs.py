"""The plugin hooks core defines; other packages implement them.

A plugin is a module registered under the entry-point group `stillhouse` whose
functions are decorated with `stillhouse.core.hookimpl`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "stillhouse"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_executors(register: Callable[[str, type], None]) -> None:
    """Register executors: call `register("name", ExecutorClass)` for each.

    The class subclasses `stillhouse.core.engine.Executor`; `Pipeline(executor="name")`
    selects it."""


@hookspec
def register_steps(register: Callable[[type], None]) -> None:
    """Register step classes: call `register(StepClass)` for each.

    A registered step is resolved by its class name in `pipeline.yaml` and on the CLI
    without importing an arbitrary module path."""


@hookspec(firstresult=True)
def stillhouse_make_run_store(pipeline: Any, use_cache: bool, fresh_steps: set[str]) -> Any:
    """Return the `RunStore` that checkpoints this run (stillhouse-cache implements it).

    `fresh_steps` are the steps whose stored outputs must not be reused
    (`Step(use_cache=False)` and everything after it, or every step when
    `use_cache=False`). Return None to leave the run to another plugin."""


@hookspec(firstresult=True)
def stillhouse_make_output_writer(pipeline: Any, data_dir: Any) -> Any:
    """Return the `OutputWriter` that receives leaf rows (stillhouse-distiset implements it).

    `data_dir` is where the run store wants results (`<run dir>/data`), or None when
    nothing is cached."""


@hookspec
def register_cli(subparsers: Any) -> None:
    """Add command groups to the `stillhouse` CLI.

    `subparsers` is the `argparse` sub-parsers object of the top-level parser; give every
    parser you add a `handler=function(args) -> int` default (stillhouse-cache adds
    `stillhouse cache ...` this way)."""


@hookspec(firstresult=True)
def stillhouse_make_batch_storage(pipeline: Any, storage_parameters: dict[str, Any] | None) -> Any:
    """Return the `BatchStorage` that passes batch data through a filesystem.

    `storage_parameters` is `run(storage_parameters=...)`: `{"path": URL, **fsspec
    options}`; without a path, a folder inside the run's cache directory."""
