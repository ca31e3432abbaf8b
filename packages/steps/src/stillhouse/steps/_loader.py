"""What every dataset loader shares: batches out of a `datasets` dataset, and a pin.

A loader opens a `datasets.Dataset` or `IterableDataset` in its worker and yields
it in batches of `batch_size` rows, never more than one batch (and the one after
it, to know which is last) in memory. Resuming at `offset` skips rows without
holding them.

The pin is what the loader's data is, as of the run: a Hub commit sha, the
sizes and change stamps of files (_files.py). `signature_extra()` puts it in the
cache signature, so changed data is never answered from an old cache.

The dataset is opened where it is read: `load()` opens it afresh in every worker,
and `outputs` (validation, in the driver) opens one only to read its columns and
keeps nothing but their names, with the pin they were read at. So a rerun in the
same process (a forked worker inherits the driver's memory) never reads what an
earlier run opened.

A dataset that cannot be read (a bad JSON line, a file of another type, a folder
that is not a saved dataset) is a `StepRuntimeError` naming the step, what it
reads and how to fix it, at validation when the first rows show it. So is data
that cannot be reached (no credentials, a refused signature, an endpoint that does
not answer): the loaders find their files inside `_reaching`, which names the path
and points at `storage_options`, never quoting a credential.

Not here: where a dataset comes from (hub.py, disk.py, filesystem.py); the
credentials in `storage_options` (_options.py).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator

from stillhouse.core import GeneratorStep, RuntimeParameter
from stillhouse.core.errors import StepRuntimeError, StillhouseError
from stillhouse.core.lookups import one_lookup_each
from stillhouse.core.typing import GeneratorStepOutput, Row
from stillhouse.steps._options import hide_credentials, merge_options, without_secrets


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
            storage_options: fsspec options of the filesystem the data is on. Its
                credentials are secrets: never saved, logged or in the signature; pass
                them again on `pipeline run --config` (`--param step.storage_options.key=...`
                adds to the options the file kept) or let fsspec find them (environment,
                config files).
        """

        num_examples: RuntimeParameter[int] | None = Field(
            default=None,
            ge=0,
            description="The number of examples to load from the dataset. By default all of them.",
        )
        storage_options: RuntimeParameter[dict[str, Any]] | None = Field(
            default=None,
            description="The storage options to use when loading the dataset. Credentials in "
            "them are never saved.",
        )

        outputs_follow_data: ClassVar[bool] = True  # the dataset's columns

        _dataset: Any = PrivateAttr(default=None)
        _source: str = PrivateAttr(default="")
        _columns: tuple[str, list[str]] | None = PrivateAttr(default=None)
        """`(data key, columns)` of the last peek: validation asks for the columns once per
        step after the loader, and a peek reads the first rows."""

        @field_validator("storage_options")
        @classmethod
        def _credentials_are_secrets(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
            return hide_credentials(value)

        def set_runtime_parameters(self, runtime_parameters: dict[str, Any]) -> list[str]:
            # `--param loader.storage_options.secret=...` adds to the options a pipeline file
            # kept (an endpoint) instead of replacing them: its credentials were not kept.
            given = runtime_parameters.get("storage_options")
            if isinstance(given, dict):
                merged = merge_options(self.storage_options, given)
                runtime_parameters = {**runtime_parameters, "storage_options": hide_credentials(merged)}
            return super().set_runtime_parameters(runtime_parameters)

        def __getstate__(self) -> dict[Any, Any]:
            # A worker opens the dataset itself; an open one stays home.
            state = super().__getstate__()
            private = state.get("__pydantic_private__")
            if private:
                state["__pydantic_private__"] = {**private, "_dataset": None}
            return state

        def _open(self) -> tuple[Any, str]:
            """The dataset (`datasets.Dataset` or `IterableDataset`) this step yields, and
            what it reads, for messages ("the json files ['a.jsonl']")."""
            raise NotImplementedError

        def _read_hint(self, error: Exception) -> str:
            """How to fix a dataset that cannot be read (`error` says why), for messages."""
            return "Check the data and the step's fields."

        def load(self) -> None:
            super().load()
            self._dataset, self._source = self._open()  # afresh: the data may have changed

        def unload(self) -> None:
            self._dataset = None
            super().unload()

        @property
        def outputs(self) -> list[str]:
            """The dataset's columns: the loaded one's in a worker; in the driver (validation)
            a dataset is opened to read them, and not kept. They are read again only when
            the data or the fields changed: what `_data_key()` says."""
            if self._dataset is not None:
                return dataset_columns(self._dataset)
            with one_lookup_each():  # the key and the peek see the same commit or files
                key = self._data_key()
                if self._columns is None or self._columns[0] != key:
                    dataset, source = self._peek()
                    with self._reading(source):
                        self._columns = (key, dataset_columns(dataset))
            return list(self._columns[1])

        def _data_key(self) -> str:
            """What the columns depend on: the fields and the data's pin as of now (the
            commit sha, the files' fingerprint)."""
            fields = self.model_dump(mode="json", exclude={"pipeline"})
            return json.dumps([fields, self.signature_extra()], sort_keys=True, default=repr)

        def _peek(self) -> tuple[Any, str]:
            """The dataset opened only to read its columns (in the driver, at validation)."""
            return self._open()

        @contextlib.contextmanager
        def _reading(self, source: str) -> Iterator[None]:
            """Around reading rows: an error of the reader becomes one naming the step, what
            it reads (`source`) and the fix."""
            try:
                yield
            except StepRuntimeError:
                raise
            except Exception as exc:
                reason = str(exc).strip().rstrip(".") or "(no message)"
                raise StepRuntimeError(
                    f"Step {self.name!r}: cannot read {source}: {type(exc).__name__}: {reason}. "
                    f"{self._read_hint(exc)}",
                    step_name=self.name,
                ) from exc

        @contextlib.contextmanager
        def _reaching(self, where: str) -> Iterator[None]:
            """Around finding the data (opening its filesystem, listing, fingerprinting): an
            error of the filesystem (no credentials, a refused signature, an endpoint that
            does not answer) becomes one naming the step, `where` (the path) and the fix.
            The message holds no credential of `storage_options`."""
            try:
                yield
            except StillhouseError:  # ours already says what and where
                raise
            except Exception as exc:
                reason = without_secrets(str(exc), self.storage_options).strip().rstrip(".")
                raise StepRuntimeError(
                    f"Step {self.name!r}: cannot reach {where}: {type(exc).__name__}: "
                    f"{reason or '(no message)'}. Check the path (that it exists and may be "
                    "read) and storage_options (the endpoint, e.g. client_kwargs.endpoint_url, "
                    "and the credentials); fsspec also reads credentials from the environment "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...) and its "
                    "configuration files.",
                    step_name=self.name,
                ) from exc

        def process(self, offset: int = 0) -> GeneratorStepOutput:
            """Yield `(rows, is_last)` batches of `batch_size`, skipping the first `offset` rows."""
            if self._dataset is None:
                self.load()
            dataset = self._dataset
            with self._reading(self._source):
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
