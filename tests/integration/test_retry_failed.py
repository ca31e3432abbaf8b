"""`run(retry_failed=True)` (SPEC §8): a rerun recomputes the batches that recorded a
failure, and what comes after them; without it a rerun returns what the first run
returned, failures included."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import (
    AsyncRecordsFailuresWhileMarked,
    FailsWhileMarked,
    RecordsFailuresWhileMarked,
    Tag,
    batches_logged,
)

pytestmark = pytest.mark.timeout(240)


def build(tmp_path: Path, executor: str) -> Pipeline:
    with Pipeline(name=f"retry-{executor}", cache_dir=tmp_path / "cache", executor=executor) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=2)
        double = FailsWhileMarked(
            name="double", input_batch_size=2,
            marker=str(tmp_path / "endpoint-down"), log=str(tmp_path / "double.log"),
        )
        load >> double >> Tag(name="tag", tag="t")
    return pipeline


def computed_batches(tmp_path: Path) -> list[str]:
    return batches_logged(tmp_path / "double.log")


@pytest.mark.parametrize("executor", ["sync", "threaded", "mp"])
def test_retry_failed_recomputes_only_the_failed_batch_and_what_follows_it(tmp_path, executor):
    (tmp_path / "endpoint-down").touch()
    first = rows_of(build(tmp_path, executor).run(progress=False))
    assert [row["y"] for row in first] == [0, 2, None, None, 8, 10, 12, 14, 16, 18]
    assert len(computed_batches(tmp_path)) == 5

    (tmp_path / "endpoint-down").unlink()  # the endpoint is back
    again = rows_of(build(tmp_path, executor).run(progress=False))
    assert again == first  # a plain rerun returns what the first run returned
    assert computed_batches(tmp_path) == []

    retried = build(tmp_path, executor)
    rows = rows_of(retried.run(progress=False, retry_failed=True))
    assert rows == [{"x": i, "y": 2 * i, "z": "t"} for i in range(10)]
    assert computed_batches(tmp_path) == ["[2, 3]"]  # only the failed batch reached the step
    summary = {row["step"]: row for row in retried.last_run_summary}
    assert summary["double"]["cached_batches"] == 4 and summary["double"]["failed_batches"] == 0

    # The retried result is what the cache now holds.
    assert rows_of(build(tmp_path, executor).run(progress=False)) == rows
    assert computed_batches(tmp_path) == []


@pytest.mark.parametrize(("executor", "step_class"), [
    ("sync", RecordsFailuresWhileMarked), ("threaded", RecordsFailuresWhileMarked),
    ("mp", AsyncRecordsFailuresWhileMarked), ("threaded", AsyncRecordsFailuresWhileMarked),
])
def test_a_failure_the_step_records_keeps_its_rows_and_is_retried(tmp_path, executor, step_class):
    # An LLM task keeps the rows whose calls succeeded and records the rest as failures.
    (tmp_path / "endpoint-down").touch()

    def build() -> Pipeline:
        with Pipeline(name=f"recorded-{executor}", cache_dir=tmp_path / "cache", executor=executor) as pipeline:
            load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=2)
            load >> step_class(name="double", input_batch_size=2, concurrency=4,
                               marker=str(tmp_path / "endpoint-down"), log=str(tmp_path / "double.log"))
        return pipeline

    first = build()
    rows = rows_of(first.run(progress=False))
    assert [row["y"] for row in rows] == [0, 2, 4, None, 8, 10, 12, 14, 16, 18]  # x == 2 kept
    summary = {row["step"]: row for row in first.last_run_summary}
    assert summary["double"]["failed_batches"] == 1
    assert len(computed_batches(tmp_path)) == 5

    (tmp_path / "endpoint-down").unlink()
    assert rows_of(build().run(progress=False)) == rows  # a plain rerun: what the first run returned
    assert computed_batches(tmp_path) == []
    retried = rows_of(build().run(progress=False, retry_failed=True))
    assert retried == [{"x": i, "y": 2 * i} for i in range(10)]
    assert computed_batches(tmp_path) == ["[2, 3]"]
