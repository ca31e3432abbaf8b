"""How a worker runs a step: the same code under every executor.

An executor owns transport (queues, threads, actors); `StepRunner` owns what
happens to a task inside the worker, so failures, imputation and generator
offsets behave identically everywhere.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any

from stillhouse.core.engine.logs import step_context
from stillhouse.core.engine.protocol import Payload, Task, TaskResult
from stillhouse.core.step import GeneratorStep, _Step
from stillhouse.core.typing import Row

METADATA_COLUMN = "stillhouse_metadata"

logger = logging.getLogger("stillhouse.worker")


class FatalStepError(Exception):
    """Raised by `StepRunner.run` when the failure must stop the run.

    Carries the original exception (`__cause__`) and its formatted traceback."""

    def __init__(self, step_name: str, original: BaseException) -> None:
        super().__init__(f"Step {step_name!r} failed: {type(original).__name__}: {original}")
        self.step_name = step_name
        self.original = original
        self.traceback = "".join(traceback.format_exception(original))


class StepRunner:
    """Holds one replica of a step: `load()`, then `run(task)` per task, then `unload()`."""

    def __init__(self, step: _Step, *, replica: int = 0, enable_metadata: bool = False) -> None:
        self.step = step
        self.replica = replica
        self.enable_metadata = enable_metadata
        self._generator: Iterator[tuple[list[Row], bool]] | None = None

    @step_context  # records made inside are tagged with the step and replica
    def load(self) -> None:
        try:
            self.step.load()
        except Exception as exc:
            raise FatalStepError(self.step.name, exc) from exc

    @step_context
    def unload(self) -> None:
        try:
            self.step.unload()
        except Exception:
            logger.exception("Step %r failed to unload (ignored)", self.step.name)

    @step_context
    def run(self, task: Task) -> TaskResult:
        started = time.perf_counter()
        if isinstance(task.inputs, Payload):
            task = Task(task.step_name, task.key, task.inputs.load(), task.offset)
        if isinstance(self.step, GeneratorStep):
            rows, last = self._pull(task)
            return TaskResult(task.step_name, task.key, rows, last, None, time.perf_counter() - started)
        if self.step.is_global:
            try:
                rows = _collect(self.step.process_applying_mappings(*task.inputs))
            except Exception as exc:
                raise FatalStepError(self.step.name, exc) from exc
            return TaskResult(task.step_name, task.key, rows, True, None, time.perf_counter() - started)
        try:
            rows = _collect(self.step.process_applying_mappings(*task.inputs))
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "Step %r failed on batch %s (%d rows); its outputs are set to None: %s\n%s",
                self.step.name,
                task.key,
                len(task.inputs[0]) if task.inputs else 0,
                error,
                "".join(traceback.format_exception(exc)),
            )
            rows = self._imputed(task.inputs, error)
        return TaskResult(task.step_name, task.key, rows, False, error, time.perf_counter() - started)

    def _pull(self, task: Task) -> tuple[list[Row], bool]:
        try:
            if self._generator is None:
                self._generator = iter(self.step.process_applying_mappings(offset=task.offset))
            try:
                rows, last = next(self._generator)
            except StopIteration:
                return [], True
        except Exception as exc:
            raise FatalStepError(self.step.name, exc) from exc
        return list(rows), bool(last)

    def _imputed(self, inputs: list[list[Row]] | None, error: str) -> list[Row]:
        rows = self.step.impute_step_outputs(list(inputs[0]) if inputs else [])
        if not self.enable_metadata:
            return rows
        for row in rows:
            metadata: dict[str, Any] = dict(row.get(METADATA_COLUMN) or {})
            metadata[f"error_{self.step.name}"] = error
            row[METADATA_COLUMN] = metadata
        return rows


def _collect(outputs: Any) -> list[Row]:
    rows: list[Row] = []
    for batch in outputs:
        rows.extend(batch)
    return rows
