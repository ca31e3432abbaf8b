"""Helpers for testing steps without running a pipeline (for plugin authors too).

```python
from stillhouse.core.testing import run_step

rows = run_step(MyStep(), [{"text": "hi"}])
```
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stillhouse.core.engine.protocol import Task
from stillhouse.core.engine.worker import StepRunner
from stillhouse.core.step import GeneratorStep, Step, _Step
from stillhouse.core.typing import Row, StepInput, StepOutput


def run_step(step: _Step, *inputs: Iterable[Row], enable_metadata: bool = False) -> list[Row]:
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
