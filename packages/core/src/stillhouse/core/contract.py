"""The step contract, checked where a step hands its output back (SPEC §5).

`process` of a normal or global step yields lists of row dicts; `process` of a
generator step yields `(rows, is_last)` pairs; every row a step yields sets each
required output column it declares. A step that breaks the contract stops the run
with `StepContractError` naming the step and what it yielded, instead of letting
strings become rows, blaming the next step, or "succeeding" with garbage.

Only the shape is checked here; what the values mean is the step's business.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator, Iterator
from itertools import repeat
from typing import Any

from stillhouse.core.errors import StepContractError
from stillhouse.core.typing import Row

_PREVIEW = 120  # characters of a bad value shown in a message
_PLAIN_DICT = {dict}


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."


def require_iterator(step_name: str, result: Any, *, generator: bool = False) -> Any:
    """`result` of calling `process`: it must be a (sync or async) iterator, made by `yield`."""
    if isinstance(result, Iterator | AsyncIterator):
        return result
    what = "(rows, is_last) pairs" if generator else "lists of rows"
    raise StepContractError(
        f"Step {step_name!r}: process() returned {type(result).__name__} {_preview(result)} "
        f"instead of yielding {what}. Write `yield ...` instead of `return ...` in process().",
        step_name=step_name,
    )


def checked_batch(step_name: str, batch: Any) -> list[Row]:
    """One batch a normal or global step yielded: a list of row dicts."""
    if not isinstance(batch, list | tuple):
        raise StepContractError(
            f"Step {step_name!r}: process() yielded a {type(batch).__name__} ({_preview(batch)}), "
            "but it must yield lists of row dicts: `yield [row, ...]` (a single row: `yield [row]`).",
            step_name=step_name,
        )
    if set(map(type, batch)) <= _PLAIN_DICT:  # the usual case, checked at C speed
        return list(batch)
    for index, row in enumerate(batch):
        if not isinstance(row, dict):
            raise StepContractError(
                f"Step {step_name!r}: process() yielded a list whose item {index} is a "
                f"{type(row).__name__} ({_preview(row)}), not a row dict. Yield lists of dicts "
                "mapping column names to values.",
                step_name=step_name,
            )
    return list(batch)


def checked_pair(step_name: str, item: Any) -> tuple[list[Row], bool]:
    """One item a generator step yielded: `(rows, is_last)`."""
    if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], bool | int)):
        raise StepContractError(
            f"Generator step {step_name!r}: process() yielded {_preview(item)}, but a generator "
            "step must yield `(rows, is_last)` pairs: `yield rows, is_last` with `rows` a list "
            "of row dicts and `is_last` True on the last batch.",
            step_name=step_name,
        )
    return checked_batch(step_name, item[0]), bool(item[1])


def check_outputs(step_name: str, required: list[str], rows: list[Row], key: Any) -> None:
    """Every row sets each required output column (names after `output_mappings`)."""
    if not required or all(all(map(operator.contains, rows, repeat(column))) for column in required):
        return  # the usual case, checked at C speed; the loop below finds the culprit
    for index, row in enumerate(rows):
        missing = [column for column in required if column not in row]
        if missing:
            raise StepContractError(
                f"Step {step_name!r} did not set its output column {missing[0]!r} (declared in "
                f"its outputs) in row {index} of batch {key}: {_preview(row)}. Set it in every "
                f"row it yields (None is a value), or declare it optional: "
                f"`outputs = {{{missing[0]!r}: False}}`.",
                step_name=step_name,
            )
