"""The run summary of a rerun that takes steps whole from the cache (`last_run_summary`).

A step whose finished outputs are reused whole computes nothing and releases nothing in
the run, but its rows are there: the summary shows the rows its store holds as its rows
out, says it was cached, and counts 0 computed rows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import DropOdd, FailsWhileMarked, Tag

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["local", "memory"])
def cache_dir(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A local cache folder, or an fsspec one (the remote step store)."""
    if request.param == "local":
        return str(tmp_path / "cache")
    return f"memory://summary-{uuid.uuid4().hex}"


def build(cache_dir: str, *, tag: str | None = None, name: str = "summary") -> Pipeline:
    """load (10 rows) >> drop_odd (5 rows), and `>> tag` when a tag is given."""
    with Pipeline(name=name, cache_dir=cache_dir, executor="sync") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=4)
        drop = DropOdd(name="drop_odd", input_batch_size=3)
        load >> drop
        if tag is not None:
            drop >> Tag(name="tag", tag=tag)
    return pipeline


def summary(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    return {row["step"]: row for row in pipeline.last_run_summary}


def assert_reused(row: dict[str, Any], rows: int) -> None:
    assert (row["rows_out"], row["status"], row["computed_rows"]) == (rows, "cached", 0)
    assert not row["started_worker"]


def test_a_step_added_after_a_finished_pipeline_shows_the_reused_rows(cache_dir):
    first = build(cache_dir)
    first.run(progress=False)
    assert summary(first)["drop_odd"]["rows_out"] == 5

    grown = build(cache_dir, tag="a")
    grown.run(progress=False)
    rows = summary(grown)
    assert_reused(rows["load"], 10)  # nothing needs its rows: not even replayed
    assert_reused(rows["drop_odd"], 5)  # replayed from its store into `tag`
    assert (rows["tag"]["rows_out"], rows["tag"]["computed_rows"], rows["tag"]["status"]) == (5, 5, "computed")


def test_only_a_downstream_step_changed(cache_dir):
    build(cache_dir, tag="a").run(progress=False)
    changed = build(cache_dir, tag="b")
    changed.run(progress=False)
    rows = summary(changed)
    assert_reused(rows["load"], 10)
    assert_reused(rows["drop_odd"], 5)
    assert (rows["tag"]["rows_out"], rows["tag"]["status"]) == (5, "computed")


def test_a_rerun_that_reuses_everything_shows_every_step_s_rows(cache_dir):
    build(cache_dir, tag="a").run(progress=False)
    again = build(cache_dir, tag="a")
    again.run(progress=False)
    rows = summary(again)
    assert_reused(rows["load"], 10)
    assert_reused(rows["drop_odd"], 5)
    assert_reused(rows["tag"], 5)


def test_a_batch_recomputed_by_retry_failed_is_counted_once(tmp_path):
    """The local log keeps the failed batch beside the one that replaced it: the stored
    rows out are those of the batches a replay gives, not every record of the log."""
    marker = tmp_path / "endpoint-down"

    def build_failing(*, tag: bool = False) -> Pipeline:
        with Pipeline(name="retried", cache_dir=tmp_path / "cache", executor="sync") as pipeline:
            load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=2)
            double = FailsWhileMarked(name="double", input_batch_size=2, marker=str(marker),
                                      log=str(tmp_path / "double.log"))
            load >> double
            if tag:
                double >> Tag(name="tag")
        return pipeline

    marker.touch()
    build_failing().run(progress=False)
    marker.unlink()
    build_failing().run(progress=False, retry_failed=True)
    meta = json.loads(next((tmp_path / "cache" / "retried" / "steps").glob("double-*/meta.json")).read_text())
    assert (meta["rows"], meta["rows_out"]) == (12, 10)  # the log holds the failed batch too

    grown = build_failing(tag=True)
    grown.run(progress=False)
    rows = summary(grown)
    assert_reused(rows["load"], 10)
    assert_reused(rows["double"], 10)
