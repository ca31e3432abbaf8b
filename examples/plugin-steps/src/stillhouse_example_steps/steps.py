"""The steps this package provides. Plain stillhouse steps: nothing here knows about plugins."""

from __future__ import annotations

from pydantic import Field

from stillhouse.core import Step, StepInput, StepOutput


class Uppercase(Step):
    """Uppercases text columns in place.

    Attributes:
        columns: The text columns to uppercase; a `None` value stays `None`.
    """

    columns: list[str] = Field(min_length=1)

    @property
    def inputs(self) -> list[str]:
        return list(self.columns)

    @property
    def outputs(self) -> list[str]:
        return list(self.columns)

    def process(self, inputs: StepInput) -> StepOutput:
        for row in inputs:
            for column in self.columns:
                if row.get(column) is not None:
                    row[column] = str(row[column]).upper()
        yield inputs
