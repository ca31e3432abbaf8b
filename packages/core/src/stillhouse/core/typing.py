"""Type aliases shared by steps and the engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

Row = dict[str, Any]
StepInput = Annotated[list[Row], "StepInput"]
"""What a step receives from one predecessor: a list of rows."""
StepOutput = Iterator[list[Row]]
"""What `Step.process` returns: an iterator of lists of rows."""
GeneratorStepOutput = Iterator[tuple[list[Row], bool]]
"""What `GeneratorStep.process` returns: `(rows, is_last_batch)` pairs."""
StepColumns = list[str] | dict[str, bool]
"""A step's inputs or outputs: column names, or `{column: required}`."""
