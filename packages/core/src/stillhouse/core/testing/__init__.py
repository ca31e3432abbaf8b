"""Helpers for testing steps and executors (for plugin authors too).

```python
from stillhouse.core.testing import run_step

rows = run_step(MyStep(), [{"text": "hi"}])
```

- `run_step`, `run_generator`: run one step without a pipeline, as a worker does.
- `registered_executor`: make an executor class usable as `Pipeline(executor=name)`
  for a block of code, without a plugin entry point.
- `rows_of`: a run's rows, whether `run()` returned a Distiset or `{leaf: rows}`.
- `conformance.ExecutorConformance`: the behaviour every executor must share, as a
  pytest class to subclass (needs pytest); `steps`: the steps it runs.
"""

from __future__ import annotations

import contextlib
import itertools
import types
from collections.abc import Iterable, Iterator
from typing import Any

from stillhouse.core import plugins
from stillhouse.core.engine.protocol import Executor, Task
from stillhouse.core.engine.worker import StepRunner
from stillhouse.core.hookspecs import hookimpl
from stillhouse.core.step import BaseStep, GeneratorStep, Step
from stillhouse.core.typing import Row, StepInput, StepOutput


def run_step(step: BaseStep, *inputs: Iterable[Row], enable_metadata: bool = False) -> list[Row]:
    """`load()` the step, run one batch (one list of rows per predecessor), `unload()`.

    Runs exactly as a worker does: mappings applied, a failing `process` gives the
    input rows with the step's outputs set to None (as in a pipeline)."""
    runner = StepRunner(step, enable_metadata=enable_metadata)
    runner.load()
    try:
        return runner.run(Task(step.name or "step", (0, 0), [list(rows) for rows in inputs])).rows
    finally:
        runner.unload()


def run_generator(step: GeneratorStep, *, offset: int = 0, max_batches: int | None = None) -> list[list[Row]]:
    """The batches a generator step yields (all of them, or the first `max_batches`)."""
    runner = StepRunner(step)
    runner.load()
    batches: list[list[Row]] = []
    try:
        while max_batches is None or len(batches) < max_batches:
            result = runner.run(Task(step.name or "generator", (0, len(batches)), None, offset))
            batches.append(result.rows)
            if result.last:
                break
    finally:
        runner.unload()
    return batches


_plugin_ids = itertools.count()


@contextlib.contextmanager
def registered_executor(cls: type[Executor], name: str | None = None) -> Iterator[str]:
    """Inside the block, `Pipeline(executor=name)` runs on `cls` (default name: `cls.name`).

    Registers a throwaway plugin with the plugin manager and removes it afterwards, so an
    executor under test needs no entry point (core's `InProcessExecutor`, say)::

        with registered_executor(InProcessExecutor) as name:
            Pipeline(executor=name) ...
    """
    name = name or cls.name
    if not name:
        raise ValueError(f"{cls.__qualname__} has no `name`: pass registered_executor(cls, name=...).")

    @hookimpl
    def register_executors(register: Any) -> None:
        register(name, cls)

    manager = plugins.plugin_manager()
    plugin_name = f"stillhouse-testing-executor-{name}-{next(_plugin_ids)}"
    plugin = types.ModuleType(plugin_name)  # pluggy keeps plugins in sets: hashable
    plugin.register_executors = register_executors  # type: ignore[attr-defined]
    manager.register(plugin, name=plugin_name)
    try:
        yield name
    finally:
        manager.unregister(name=plugin_name)


def rows_of(result: Any, leaf: str | None = None) -> list[Row]:
    """The rows of one leaf of what `Pipeline.run()` returned: a `{leaf: rows}` dict
    (stillhouse-core alone) or a Distiset (its "train" split). `leaf` may be left out
    when there is one."""
    if leaf is None:
        assert len(result) == 1, f"several leaves: {list(result)}"
        leaf = next(iter(result))
    if leaf not in result and "default" in result:
        leaf = "default"
    value = result[leaf]
    if isinstance(value, list):
        return value
    return value["train"].to_list()


class Identity(Step):
    """Passes rows through unchanged: a stand-in for a step under construction."""

    def process(self, *inputs: StepInput) -> StepOutput:
        rows: list[Any] = []
        for part in inputs:
            rows.extend(part)
        yield rows


class Constant(Step):
    """Sets `column` to `value` on every row.

    Attributes:
        column: The column to write.
        value: The value every row gets.
    """

    column: str = "constant"
    value: Any = None

    @property
    def outputs(self) -> list[str]:
        return [self.column]

    def process(self, inputs: StepInput) -> StepOutput:
        for row in inputs:
            row[self.column] = self.value
        yield inputs
