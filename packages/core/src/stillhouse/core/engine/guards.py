"""Turn low-level failures of storing rows into errors that name the step and column.

The run store, the output writer and the batch storage encode rows (UTF-8 text in
Parquet, Arrow or JSON). A string holding a lone surrogate (`"\\ud800"`, as text
decoded with `errors="surrogateescape"` does) cannot be encoded, and the raw
`UnicodeEncodeError` names neither the step nor the column. The scheduler wraps
what it stores into with these guards; they add nothing on the normal path.
`OwnedWriter` guards the results of a run that lost its cache to another run.
Scheduling itself does not belong here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from stillhouse.core.engine.protocol import BatchRecord, BatchStorage, OutputWriter, StepStore
from stillhouse.core.errors import CacheLockedError, UnstorableValueError
from stillhouse.core.typing import Row

_SURROGATE = re.compile("[\ud800-\udfff]")


def _holds_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_surrogate(k) or _holds_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_surrogate(v) for v in value)
    return False


def _find_bad_value(rows: list[Row]) -> tuple[int, str, Any] | None:
    for index, row in enumerate(rows):
        for column, value in row.items():
            if _holds_surrogate(column) or _holds_surrogate(value):
                return index, column, value
    return None


def unstorable(step_name: str, rows: list[Row], doing: str, exc: UnicodeEncodeError) -> UnstorableValueError:
    """The error for `exc`, raised while `doing` with `rows` of step `step_name`."""
    found = _find_bad_value(rows)
    where = "a value"
    if found is not None:
        index, column, value = found
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        where = f"column {column!r} (row {index} of the batch: {shown})"
    return UnstorableValueError(
        f"Rows of step {step_name!r} cannot be stored ({doing}): {where} holds a "
        f"string with a lone surrogate character ({exc.object[exc.start:exc.end]!r}), which is "
        "not valid Unicode text. Make the step that sets this column return valid text, e.g. "
        "`text.encode('utf-8', 'replace').decode('utf-8')` turns such characters into '?' "
        "(text read with errors='surrogateescape' should be read with errors='replace').",
        step_name=step_name,
    )


class GuardedStore:
    """A `StepStore` whose `put` names the step and column of an unencodable value."""

    def __init__(self, store: StepStore, step_name: str) -> None:
        self._store = store
        self._step_name = step_name

    def put(self, record: BatchRecord) -> None:
        try:
            self._store.put(record)
        except UnicodeEncodeError as exc:
            raise unstorable(self._step_name, record.rows, "while writing its checkpoint", exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class GuardedWriter:
    """An `OutputWriter` whose `write` names the leaf and column of an unencodable value."""

    def __init__(self, writer: OutputWriter) -> None:
        self._writer = writer

    def write(self, leaf: str, rows: list[Row]) -> None:
        try:
            self._writer.write(leaf, rows)
        except UnicodeEncodeError as exc:
            raise unstorable(leaf, rows, "while writing its results", exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class OwnedWriter:
    """An `OutputWriter` that writes only while the run holds its cache: a run whose
    lock was taken over (a remote lease, after the run was cut off from the store) must
    not put results, or a `_COMPLETE`, into the run folder another run now writes.
    Checkpoint writes check the same in the stores; results replayed from the cache
    reach the writer without one. `flush` (after a failure) writes nothing then."""

    def __init__(self, writer: OutputWriter, check_owned: Callable[[], None]) -> None:
        self._writer = writer
        self._check_owned = check_owned

    def begin(self, leaf: str, version: str = "") -> None:
        self._check_owned()
        self._writer.begin(leaf, version)

    def write(self, leaf: str, rows: list[Row]) -> None:
        self._check_owned()
        self._writer.write(leaf, rows)

    def finish(self, leaf: str) -> None:
        self._check_owned()
        self._writer.finish(leaf)

    def flush(self) -> None:
        try:
            self._check_owned()
        except CacheLockedError:
            return  # the run stops with this error; what is buffered is the other run's to redo
        self._writer.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class GuardedBatchStorage:
    """A `BatchStorage` whose `put` names the receiving step and the column."""

    def __init__(self, storage: BatchStorage) -> None:
        self._storage = storage

    def put(self, step_name: str, key: Any, inputs: list[list[Row]]) -> Any:
        try:
            return self._storage.put(step_name, key, inputs)
        except UnicodeEncodeError as exc:
            rows = [row for rows in inputs for row in rows]
            raise unstorable(step_name, rows, "while passing them to it through the filesystem", exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def guard_storage(scheduler: Any) -> None:
    """Wrap the stores, the writer and the batch storage a scheduler writes rows into."""
    for state in scheduler.states.values():
        if not isinstance(state.store, GuardedStore):
            state.store = GuardedStore(state.store, state.name)
    if not isinstance(scheduler.writer, GuardedWriter):
        scheduler.writer = GuardedWriter(scheduler.writer)
    if scheduler.batch_storage is not None and not isinstance(scheduler.batch_storage, GuardedBatchStorage):
        scheduler.batch_storage = GuardedBatchStorage(scheduler.batch_storage)
