"""Steps that produce rows from data the user already has, and `dataset_rows`, which
turns that data (a list of dicts, a `datasets.Dataset`, a pandas DataFrame) into rows."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from stillhouse.core.errors import DatasetArgumentError
from stillhouse.core.step import GeneratorStep, StepResources
from stillhouse.core.typing import GeneratorStepOutput, Row


class LoadDataFromDicts(GeneratorStep):
    """Yields the rows of `data` in batches of `batch_size`.

    Attributes:
        data: The rows, as a list of dicts (all rows should share their keys). A saved
            pipeline file does not hold them: they go once to a JSON file beside it,
            referenced by hash (`stillhouse.core.inline_data`).
    """

    data: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra={"inline_data": True}
    )

    outputs_follow_data: ClassVar[bool] = True

    @property
    def outputs(self) -> list[str]:
        return list(self.data[0]) if self.data else []

    def total_rows(self) -> int:
        """How many rows the step yields: the live view shows a total and an ETA from it."""
        return len(self.data)

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        size = self.batch_size or 50
        if offset >= len(self.data):
            yield [], True
            return
        for start in range(offset, len(self.data), size):
            end = start + size
            rows: list[Row] = [dict(row) for row in self.data[start:end]]
            yield rows, end >= len(self.data)


def make_generator_step(
    dataset: Any,
    pipeline: Any = None,
    batch_size: int = 50,
    input_mappings: dict[str, str] | None = None,
    output_mappings: dict[str, str] | None = None,
    resources: StepResources | None = None,
    repo_id: str | None = "default_dataset_repo_id",
) -> LoadDataFromDicts:
    """A generator step over a list of dicts, a `datasets.Dataset` or a pandas DataFrame.

    distilabel's arguments: `resources` as for any step; `repo_id` is accepted for
    compatibility and unused (distilabel falls back to loading it from the Hub; here
    the rows always come from `dataset`).
    """
    kwargs: dict[str, Any] = {
        "data": dataset_rows(dataset),
        "batch_size": batch_size,
        "input_mappings": input_mappings or {},
        "output_mappings": output_mappings or {},
    }
    if resources is not None:
        kwargs["resources"] = resources
    if pipeline is not None:
        kwargs["pipeline"] = pipeline
    return LoadDataFromDicts(**kwargs)


def dataset_rows(dataset: Any) -> list[dict[str, Any]]:
    """The rows of `dataset`: a list of dicts (returned as is), a `datasets.Dataset` or a
    pandas DataFrame (one dict per row). What `run(dataset=...)` and
    `make_generator_step` accept; anything else raises `DatasetArgumentError`."""
    if isinstance(dataset, list) and all(isinstance(row, dict) for row in dataset):
        return dataset
    if hasattr(dataset, "to_list") and hasattr(dataset, "column_names"):  # datasets.Dataset
        return dataset.to_list()
    if hasattr(dataset, "to_dict") and hasattr(dataset, "columns"):  # pandas.DataFrame
        return dataset.to_dict(orient="records")
    raise DatasetArgumentError(
        f"run(dataset=...) got a {type(dataset).__name__}; pass a list of dicts, a "
        "datasets.Dataset or a pandas.DataFrame."
    )
