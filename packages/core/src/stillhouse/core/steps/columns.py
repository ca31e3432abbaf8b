"""Steps that reshape columns: keep, combine, group, merge and expand them.

They behave like distilabel's `distilabel.steps.columns` steps, with
`stillhouse_metadata` in place of `distilabel_metadata`. They only move values
between columns and rows; anything that computes new values belongs elsewhere.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from pydantic import field_validator, model_validator

from stillhouse.core.step import METADATA_COLUMN, Step
from stillhouse.core.typing import Row, StepColumns, StepInput, StepOutput


def merge_metadata(*rows: Row) -> dict[str, Any] | list[Any]:
    """Merge the `stillhouse_metadata` of several rows into one value.

    Dict metadata is merged key by key: a key seen once keeps its value, a key seen
    several times gets the list of its values. List metadata (as left by an expanded
    row) wins over dicts and is concatenated.
    """
    by_key: dict[str, list[Any]] = defaultdict(list)
    as_list: list[Any] | None = None
    for row in rows:
        metadata = row.get(METADATA_COLUMN) or {}
        if isinstance(metadata, list):
            as_list = [*(as_list or []), *metadata]
            continue
        for key, value in metadata.items():
            by_key[key].append(value)
    if as_list is not None:
        return as_list
    return {key: values[0] if len(values) == 1 else values for key, values in by_key.items()}


class KeepColumns(Step):
    """Keeps only `columns`, in the order given (useful before saving the results).

    Attributes:
        columns: The columns to keep, in the order they should appear.
    """

    columns: list[str]

    @property
    def inputs(self) -> StepColumns:
        return self.columns

    @property
    def outputs(self) -> StepColumns:
        return self.columns

    def process(self, *inputs: StepInput) -> StepOutput:
        for rows in inputs:
            yield [{column: row[column] for column in self.columns} for row in rows]


class CombineOutputs(Step):
    """Combines the rows of several predecessors into one row each, row by row.

    Row *i* of the output has every column of row *i* of every input (later inputs
    win on a clash); their `stillhouse_metadata` values are merged.
    """

    def process(self, *inputs: StepInput) -> StepOutput:
        combined: list[Row] = []
        for rows in zip(*inputs, strict=False):
            row: Row = {}
            for part in rows:
                row.update((k, v) for k, v in part.items() if k != METADATA_COLUMN)
            if any(METADATA_COLUMN in part for part in rows):
                row[METADATA_COLUMN] = merge_metadata(*rows)
            combined.append(row)
        yield combined


class GroupColumns(Step):
    """Groups `columns` across the inputs: row *i* gets, for each of them, the list of
    its values in row *i* of every input.

    Attributes:
        columns: The columns to group.
        output_columns: Names of the grouped columns, one per column (default:
            `grouped_<column>`).
    """

    columns: list[str]
    output_columns: list[str] | None = None

    @model_validator(mode="after")
    def _same_length(self) -> GroupColumns:
        # distilabel only notices this on the first batch; the constructor is a better place.
        if self.output_columns is not None and len(self.output_columns) != len(self.columns):
            raise ValueError(
                f"output_columns {self.output_columns!r} must name one column per entry of "
                f"columns {self.columns!r} ({len(self.columns)}), got {len(self.output_columns)}."
            )
        return self

    @property
    def inputs(self) -> StepColumns:
        return self.columns

    @property
    def outputs(self) -> StepColumns:
        if self.output_columns is not None:
            return self.output_columns
        return [f"grouped_{column}" for column in self.columns]

    def process(self, *inputs: StepInput) -> StepOutput:
        renamed = dict(zip(self.columns, self.outputs, strict=True))
        grouped: list[Row] = []
        for rows in zip(*inputs, strict=False):
            row: Row = {}
            for part in rows:
                for key, value in part.items():
                    if key == METADATA_COLUMN:
                        continue
                    if key in renamed:
                        row.setdefault(renamed[key], []).append(value)
                    else:
                        row[key] = value
            if any(METADATA_COLUMN in part for part in rows):
                row[METADATA_COLUMN] = merge_metadata(*rows)
            grouped.append(row)
        yield grouped


class MergeColumns(Step):
    """Merges `columns` of each row into one list column; list values are flattened
    one level. The merged columns are removed from the row.

    Attributes:
        columns: The columns to merge, in order.
        output_column: Name of the merged column (default: `merged_column`).
    """

    columns: list[str]
    output_column: str | None = None

    @property
    def inputs(self) -> StepColumns:
        return self.columns

    @property
    def outputs(self) -> StepColumns:
        return [self.output_column or "merged_column"]

    def process(self, inputs: StepInput) -> StepOutput:
        target = self.outputs[0]
        merged: list[Row] = []
        for row in inputs:
            row = dict(row)
            values: list[Any] = []
            for column in self.columns:
                value = row.pop(column)
                values.extend(value if isinstance(value, list) else [value])
            row[target] = values
            merged.append(row)
        yield merged


class ExpandColumns(Step):
    """Expands list columns into rows: a row whose `columns` hold n items becomes n
    rows, each with one item per expanded column and the other columns copied.

    Attributes:
        columns: The list columns to expand, or `{column: new column name}` to write
            each item under another name (the original column is then kept as is).
        encoded: True, or the subset of `columns`, whose values are JSON-encoded lists
            to decode before expanding.
        split_statistics: Divide the token counts of the `statistics_<step>` entries of
            `stillhouse_metadata` among the n rows a row becomes, so that summing them
            afterwards does not count the tokens n times. The remainder goes to the
            first rows, so the sum is kept exactly.
    """

    columns: dict[str, str] | list[str]
    encoded: bool | list[str] = False
    split_statistics: bool = False

    @field_validator("columns")
    @classmethod
    def _always_dict(cls, value: dict[str, str] | list[str]) -> dict[str, str]:
        return {column: column for column in value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _encoded_subset(self) -> ExpandColumns:
        if isinstance(self.encoded, list):
            unknown = [c for c in self.encoded if c not in self.columns]
            if unknown:
                raise ValueError(
                    f"encoded columns {unknown!r} are not among the columns to expand "
                    f"{list(self.columns)!r}. List only columns that are expanded."
                )
        return self

    @property
    def _columns(self) -> dict[str, str]:
        assert isinstance(self.columns, dict)  # made so by _always_dict
        return self.columns

    @property
    def _encoded_columns(self) -> list[str]:
        if isinstance(self.encoded, list):
            return self.encoded
        return list(self._columns) if self.encoded else []

    @property
    def inputs(self) -> StepColumns:
        return list(self._columns)

    @property
    def outputs(self) -> StepColumns:
        return [new or column for column, new in self._columns.items()]

    def process(self, inputs: StepInput) -> StepOutput:
        yield [expanded for row in inputs for expanded in self._expand(row)]

    def _expand(self, row: Row) -> list[Row]:
        items: dict[str, list[Any]] = {}
        for column, new in self._columns.items():
            value = row.get(column)
            if column in self._encoded_columns and isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, list):
                raise ValueError(
                    f"Step {self.name!r}: column {column!r} must hold a list to be expanded, "
                    f"got {type(value).__name__}: {value!r:.80}."
                )
            items[new or column] = value
        # The columns are expanded side by side (item i of each in row i), as in distilabel;
        # a shorter list leaves None in the rows it cannot fill.
        length = max((len(values) for values in items.values()), default=0)
        return [
            {
                **row,
                **{
                    target: values[i] if i < len(values) else None
                    for target, values in items.items()
                },
                **self._split_metadata(row, i, length),
            }
            for i in range(length)
        ]

    def _split_metadata(self, row: Row, index: int, parts: int) -> Row:
        """`{METADATA_COLUMN: ...}` with part `index` of `parts` of each token count."""
        metadata = row.get(METADATA_COLUMN)
        if not self.split_statistics or not isinstance(metadata, dict):
            return {}
        split = dict(metadata)
        for key, stats in metadata.items():
            if key.startswith("statistics_") and isinstance(stats, dict):
                split[key] = {
                    name: _share(value, index, parts) if name in _TOKEN_COUNTS else value
                    for name, value in stats.items()
                }
        return {METADATA_COLUMN: split}


_TOKEN_COUNTS = ("input_tokens", "output_tokens")


def _share(value: Any, index: int, parts: int) -> Any:
    """Part `index` of `parts` of a token count (or of each count of a list)."""
    if isinstance(value, list):
        return [_share(v, index, parts) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value // parts + (1 if index < value % parts else 0)
    return value
