"""What every dataset loader shares: batches out of a `datasets` dataset, and a pin.

A loader opens a `datasets.Dataset` or `IterableDataset` in its worker and yields
it in batches of `batch_size` rows, never more than one batch (and the one after
it, to know which is last) in memory. Resuming at `offset` skips rows without
holding them.

The pin is what the loader's data is, as of the run: a Hub commit sha, the
sizes and mtimes (or ETags) of files. `signature_extra()` puts it in the cache
signature, so changed data is never answered from an old cache.

Not here: where a dataset comes from (hub.py, disk.py, filesystem.py).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from pydantic import Field, PrivateAttr

from stillhouse.core import GeneratorStep, RuntimeParameter
from stillhouse.core.typing import GeneratorStepOutput, Row


@contextlib.contextmanager
def optional_runtime_parameters() -> Iterator[None]:
    """Around a class with `RuntimeParameter[T] | None` fields: distilabel's spelling of an
    optional runtime parameter, about which pydantic >= 2.12 warns harmlessly (as in core)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


with optional_runtime_parameters():

    class DatasetLoader(GeneratorStep):
        """Base of the loaders: yields the rows of `_open()` in batches.

        Attributes:
            num_examples: How many rows to load at most (all when `None`).
            storage_options: fsspec options of the filesystem the data is on.
        """

        num_examples: RuntimeParameter[int] | None = Field(
            default=None,
            description="The number of examples to load from the dataset. By default all of them.",
        )
        storage_options: dict[str, Any] | None = Field(
            default=None,
            description="The storage options to use when loading the dataset.",
        )

        _dataset: Any = PrivateAttr(default=None)

        def __getstate__(self) -> dict[Any, Any]:
            # A worker opens the dataset itself; an open one (e.g. from `outputs`) stays home.
            state = super().__getstate__()
            private = state.get("__pydantic_private__")
            if private:
                state["__pydantic_private__"] = {**private, "_dataset": None}
            return state

        def _open(self) -> Any:
            """The dataset (`datasets.Dataset` or `IterableDataset`) this step yields."""
            raise NotImplementedError

        def load(self) -> None:
            super().load()
            if self._dataset is None:
                self._dataset = self._open()

        def unload(self) -> None:
            self._dataset = None
            super().unload()

        @property
        def outputs(self) -> list[str]:
            """The dataset's columns (the dataset is opened to read them)."""
            return dataset_columns(self._dataset if self._dataset is not None else self._peek())

        def _peek(self) -> Any:
            """The dataset opened only to read its columns (in the driver, at validation)."""
            self._dataset = self._open()
            return self._dataset

        def process(self, offset: int = 0) -> GeneratorStepOutput:
            """Yield `(rows, is_last)` batches of `batch_size`, skipping the first `offset` rows."""
            if self._dataset is None:
                self.load()
            dataset = self._dataset
            wanted = self.num_examples
            if wanted is not None:
                dataset = dataset.take(wanted) if hasattr(dataset, "take") else dataset
            if offset:
                dataset = dataset.skip(offset)
            previous: list[Row] | None = None
            for rows in iter_batches(dataset, self.batch_size):
                if previous is not None:
                    yield previous, False
                previous = rows
            yield (previous or []), True


def iter_batches(dataset: Any, batch_size: int) -> Iterator[list[Row]]:
    """Rows of `dataset` in lists of `batch_size` (the last may be shorter)."""
    for batch in dataset.iter(batch_size=batch_size):
        columns = list(batch)
        if not columns:
            continue
        yield [dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def dataset_columns(dataset: Any) -> list[str]:
    """Column names of a Dataset or IterableDataset (peeking at one row if unknown)."""
    names = getattr(dataset, "column_names", None)
    if names:
        return list(names)
    for row in dataset.take(1):
        return list(row)
    return []
