"""The plugin hooks core defines; other packages implement them.

A plugin is a module registered under the entry-point group `stillhouse` whose
functions are decorated with `stillhouse.core.hookimpl`. One naming scheme:
`register_*` hooks hand the plugin a `register` callback (every plugin is called);
`make_*` hooks are factories that get the run's `RunContext` (the first plugin that
returns something other than None wins). docs/plugins.md documents every hook here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext
    from stillhouse.core.engine.protocol import BatchStorage, OutputWriter, RunStore

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


@hookspec
def register_cli(subparsers: Any) -> None:
    """Add command groups to the `stillhouse` CLI.

    `subparsers` is the `argparse` sub-parsers object of the top-level parser; give every
    parser you add a `handler=function(args) -> int` default (stillhouse-cache adds
    `stillhouse cache ...` this way)."""


@hookspec(firstresult=True)
def make_run_store(context: RunContext) -> RunStore | None:
    """Return the `RunStore` that checkpoints this run (stillhouse-cache implements it).

    Called once per run, before anything else: `context.run_dir`, `data_dir`,
    `log_file` and `batch_storage` are still None (the store decides them).
    `context.fresh_steps` are the steps whose stored outputs must not be reused
    (`Step(use_cache=False)` and everything after it, or every step when
    `context.use_cache` is False). Return None to leave the run to another plugin."""


@hookspec(firstresult=True)
def make_output_writer(context: RunContext) -> OutputWriter | None:
    """Return the `OutputWriter` that receives leaf rows (stillhouse-distiset implements it).

    `context.data_dir` is where the run store wants results (`<run dir>/data`), or None
    when nothing is cached; `context.pipeline_file` and `context.log_file` are the
    run's `pipeline.yaml` and `pipeline.log` (None without a run dir). Return None to
    leave it to another plugin (core then keeps the rows in memory)."""


@hookspec(firstresult=True)
def make_batch_storage(context: RunContext) -> BatchStorage | None:
    """Return the `BatchStorage` that passes batch data through a filesystem.

    `context.storage_parameters` is `run(storage_parameters=...)`: `{"path": URL,
    **fsspec options}`; without a path, a folder inside `context.run_dir` (the run's
    cache folder). `context.use_fs_to_pass_data` says whether every batch goes through
    it or only global steps' inputs. Return None to leave it to another plugin."""
