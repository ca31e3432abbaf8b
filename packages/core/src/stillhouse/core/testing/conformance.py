"""The executor conformance suite: the behaviour every executor must share (SPEC.md
§1, §2, §5): the same rows in the same order, failures imputed or fatal the same way,
async steps, routing, batch timeouts. Needs pytest.

Run it against an executor by subclassing `ExecutorConformance` in a test module::

    from stillhouse.core.testing.conformance import ExecutorConformance

    class TestMyExecutor(ExecutorConformance):
        executor_class = MyExecutor   # registered for the test as `executor_name`
        executor_name = "mine"

or, for an executor a plugin already registers, set only `executor_name`. Each case
builds a small pipeline with the steps of `stillhouse.core.testing.steps` (importable by
name, so process and cluster workers can unpickle them) and runs it with
`Pipeline.run()`; with stillhouse-core alone the results are `{leaf: rows}` and nothing
is cached. A case that hangs is a failure: run the suite with a timeout (pytest-timeout,
e.g. `timeout = 120`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stillhouse.core import Pipeline, routing_batch_function, sample_n_steps
from stillhouse.core.engine.protocol import Executor
from stillhouse.core.errors import MisalignedInputsError, StepRuntimeError
from stillhouse.core.steps import ExpandColumns, LoadDataFromDicts
from stillhouse.core.testing import registered_executor, rows_of
from stillhouse.core.testing.steps import (
    AlwaysFail,
    AsyncBlocksLoop,
    AsyncCount,
    AsyncDouble,
    AsyncFail,
    AsyncHang,
    AsyncNumbers,
    AsyncPid,
    AsyncRecordsFailure,
    AsyncStopsRun,
    AsyncTag,
    AsyncZip,
    BrokenGenerator,
    BrokenGlobal,
    BrokenLoad,
    Count,
    CountAll,
    Double,
    DropAll,
    DropOdd,
    HangingGlobal,
    Ok,
    Pid,
    RecordsFailure,
    StopsRun,
    SyncHang,
    Tag,
    Zip,
)


def data(n: int) -> list[dict[str, int]]:
    return [{"x": i} for i in range(n)]


@routing_batch_function
def first_branch(steps: list[str]) -> list[str]:
    return steps[:1]


class ExecutorConformance:
    """Subclass it (its name must start with `Test`) and set what to run on.

    Attributes:
        executor_name: The name pipelines use (`Pipeline(executor=...)`).
        executor_class: When set, registered as `executor_name` for each case (no entry
            point needed); when None, `executor_name` must already be registered.
        replicas_in_own_processes: Each replica runs in a process of its own: two
            replicas must report two pids.
        cached_reruns: A second run with `use_cache=True` replays stored batches (a run
            store plugin, such as stillhouse-cache, is installed).
    """

    executor_name: ClassVar[str] = ""
    executor_class: ClassVar[type[Executor] | None] = None
    replicas_in_own_processes: ClassVar[bool] = False
    cached_reruns: ClassVar[bool] = importlib.util.find_spec("stillhouse.cache") is not None

    @pytest.fixture
    def executor(self) -> Iterator[str]:
        """The executor's name, registered for the case when `executor_class` is set."""
        if self.executor_class is None:
            yield self.executor_name
            return
        with registered_executor(self.executor_class, self.executor_name or None) as name:
            yield name

    def _meet(self, tmp_path: Path) -> dict[str, Any]:
        """Where replicas in processes of their own wait for each other (`Pid`): which
        replica takes which batch is up to how fast each starts, and a loaded machine
        could let one take them all before the other loaded."""
        if not self.replicas_in_own_processes:
            return {}
        return {"meet": 2, "meet_dir": str(tmp_path / "meet")}

    def test_linear_pipeline_keeps_every_row_in_order(self, executor, tmp_path):
        with Pipeline(name="linear", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(37), batch_size=5) >> Double(input_batch_size=4)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [(r["x"], r["y"]) for r in rows] == [(i, 2 * i) for i in range(37)]


    def test_replicas_split_batches_and_keep_input_order(self, executor, tmp_path):
        with Pipeline(name="replicas", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(60), batch_size=7)
            loader >> Pid(input_batch_size=3, sleep=0.02, resources={"replicas": 2}, **self._meet(tmp_path))
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(60))
        if self.replicas_in_own_processes:
            assert len({r["pid"] for r in rows}) == 2


    def test_fan_out_and_fan_in_align_rows(self, executor, tmp_path):
        with Pipeline(name="fan", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(25), batch_size=4)
            branches = [Tag(tag=t, sleep=0.01, input_batch_size=s) for t, s in (("a", 3), ("b", 5), ("c", 2))]
            join = Zip(input_batch_size=6)
            loader >> branches >> join
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(25))
        assert all(r["tags"] == ["a", "b", "c"] for r in rows)


    def test_sample_n_steps_convergence_gets_each_rows_branches(self, executor, tmp_path):
        with Pipeline(name="route", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(41), batch_size=6)
            branches = [Tag(tag=t, sleep=0.01, input_batch_size=s) for t, s in (("a", 4), ("b", 3), ("c", 5))]
            join = Zip(input_batch_size=7)
            loader >> sample_n_steps(2) >> branches >> join
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(41))
        for row in rows:
            assert len(row["tags"]) == 2 and len(set(row["tags"])) == 2
        # rows of one generator batch travel together
        by_batch = {}
        for row in rows:
            by_batch.setdefault(row["x"] // 6, set()).add(tuple(row["tags"]))
        assert all(len(tags) == 1 for tags in by_batch.values())




    def test_two_routings_in_a_row(self, executor, tmp_path):
        with Pipeline(name="route2", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(30), batch_size=4)
            first = [Tag(tag=t, input_batch_size=3) for t in ("a", "b")]
            join1 = Zip(name="join1", input_batch_size=5)
            second = [Tag(tag=t, input_batch_size=2) for t in ("c", "d")]
            join2 = Zip(name="join2", input_batch_size=4)
            loader >> sample_n_steps(1) >> first >> join1
            join1 >> first_branch >> second >> join2
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(30))
        assert all(r["tags"] == ["c"] for r in rows)


    def test_global_step_gets_all_rows_after_predecessors_finish(self, executor, tmp_path):
        with Pipeline(name="global", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(23), batch_size=5) >> Double(input_batch_size=4) >> Count()
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert rows == [{"n": 23, "xs": list(range(23))}]


    def test_failing_step_beside_a_working_one_gives_none_and_ok(self, executor, tmp_path):
        with Pipeline(name="fail", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
            loader = LoadDataFromDicts(data=data(6), batch_size=3)
            loader >> [AlwaysFail(name="bad"), Ok(name="good")] >> Zip(name="joined")
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert len(rows) == 6
        assert all(r["out"] == "ok" for r in rows)
        failed = {row["step"]: row for row in pipeline.last_run_summary}["bad"]["failed_batches"]
        bad_rows = rows_of(pipeline.run(use_cache=True, progress=False))
        assert bad_rows == rows
        if self.cached_reruns:  # the second run came from the cache, failures and all
            bad = {row["step"]: row for row in pipeline.last_run_summary}["bad"]
            assert (bad["computed_rows"], bad["failed_batches"]) == (0, failed)
            assert bad["status"] == f"cached, {failed} failed batches"


    def test_failing_step_imputes_none_and_records_metadata(self, executor, tmp_path):
        with Pipeline(name="fail-meta", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
            LoadDataFromDicts(data=data(4), batch_size=2) >> AlwaysFail(name="bad", input_batch_size=2)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["out"] for r in rows] == [None] * 4
        assert all("this step always fails" in r["stillhouse_metadata"]["error_bad"] for r in rows)
        assert {row["step"]: row for row in pipeline.last_run_summary}["bad"]["failed_batches"] == 2


    @pytest.mark.parametrize("make", [RecordsFailure, AsyncRecordsFailure], ids=["sync", "async"])
    def test_a_recorded_failure_keeps_the_rows_and_counts_the_batch_failed(self, executor, tmp_path, make):
        with Pipeline(name="recorded", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(6), batch_size=2) >> make(name="gaps", input_batch_size=2)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["y"] for r in rows] == [0, 2, 4, None, 8, 10]
        assert {row["step"]: row for row in pipeline.last_run_summary}["gaps"]["failed_batches"] == 1

    @pytest.mark.parametrize("make", [StopsRun, AsyncStopsRun], ids=["sync", "async"])
    def test_stop_run_from_a_normal_step_stops_the_run_naming_it(self, executor, tmp_path, make):
        with Pipeline(name="stop", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(6), batch_size=2) >> make(name="stops", input_batch_size=2)
        with pytest.raises(StepRuntimeError, match="the key was refused") as info:
            pipeline.run(use_cache=False, progress=False)
        assert info.value.step_name == "stops"

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (lambda: BrokenGlobal(name="boom"), "global step exploded"),
            (lambda: BrokenLoad(name="boom"), "model weights not found"),
        ],
    )
    def test_fatal_failures_stop_the_run_naming_the_step(self, executor, tmp_path, make, message):
        with Pipeline(name="fatal", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(5)) >> make()
        with pytest.raises(StepRuntimeError, match="boom") as info:
            pipeline.run(use_cache=False, progress=False)
        assert info.value.step_name == "boom"
        assert message in str(info.value)
        assert "Traceback" in str(info.value)


    def test_a_fatal_batch_failure_names_the_step_the_batch_and_its_rows(self, executor, tmp_path):
        with Pipeline(name="fatal-batch", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(300), batch_size=50) >> BrokenGlobal(name="boom")
        with pytest.raises(StepRuntimeError) as info:
            pipeline.run(use_cache=False, progress=False)
        text = str(info.value)
        assert "Step 'boom' failed on batch (0, 0)" in text
        assert "{'x': 0}, {'x': 1}" in text  # the rows' preview...
        assert "(300 rows)" in text and "{'x': 299}" not in text  # ...truncated

    def test_generator_failure_stops_the_run(self, executor, tmp_path):
        with Pipeline(name="fatal-gen", executor=executor, cache_dir=tmp_path) as pipeline:
            BrokenGenerator(name="gen") >> Double()
        with pytest.raises(StepRuntimeError, match="generator exploded"):
            pipeline.run(use_cache=False, progress=False)


    def test_diverging_row_counts_fail_naming_step_and_predecessors(self, executor, tmp_path):
        with Pipeline(name="misaligned", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(10), batch_size=5)
            loader >> [DropOdd(name="filtering"), Tag(name="keeping")] >> Zip(name="join")
        with pytest.raises(MisalignedInputsError) as info:
            pipeline.run(use_cache=False, progress=False)
        text = str(info.value)
        assert "'join'" in text and "'filtering'" in text and "'keeping'" in text


    def test_everything_filtered_still_finishes(self, executor, tmp_path):
        with Pipeline(name="empty", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(8), batch_size=3) >> DropAll() >> CountAll(name="total")
        result = pipeline.run(use_cache=False, progress=False)
        assert rows_of(result) == []


    def test_dataset_argument_becomes_the_generator(self, executor, tmp_path):
        with Pipeline(name="dataset", executor=executor, cache_dir=tmp_path) as pipeline:
            Double(input_batch_size=3)
        rows = rows_of(pipeline.run(dataset=data(5), use_cache=False, progress=False))
        assert [r["y"] for r in rows] == [0, 2, 4, 6, 8]


    def test_filters_and_expanders_keep_order(self, executor, tmp_path):
        with Pipeline(name="shape", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=[{"x": i, "parts": [i, -i]} for i in range(15)], batch_size=4)
            loader >> DropOdd(input_batch_size=3) >> ExpandColumns(columns=["parts"], input_batch_size=5)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [(r["x"], r["parts"]) for r in rows] == [(i, p) for i in range(0, 15, 2) for p in (i, -i)]


    def test_a_single_row(self, executor, tmp_path):
        with Pipeline(name="one", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(1))
            loader >> [Double(), Tag(tag="t")] >> Zip(name="join")
        assert rows_of(pipeline.run(use_cache=False, progress=False)) == [{"x": 0, "y": 0, "z": "t", "tags": [None, "t"]}]


    def test_a_hundred_thousand_rows(self, executor, tmp_path):
        with Pipeline(name="big", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(100_000), batch_size=1000) >> Double(input_batch_size=1000)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert len(rows) == 100_000
        assert rows[-1] == {"x": 99_999, "y": 199_998}


    # -- async steps in every position ------------------------------------------------------


    def test_async_generator_and_async_step_keep_every_row_in_order(self, executor, tmp_path):
        with Pipeline(name="async-linear", executor=executor, cache_dir=tmp_path) as pipeline:
            AsyncNumbers(n=37, batch=5) >> AsyncDouble(input_batch_size=2, sleep=0.02, concurrency=8)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [(r["x"], r["y"]) for r in rows] == [(i, 2 * i) for i in range(37)]


    def test_async_replicas_split_batches_and_keep_input_order(self, executor, tmp_path):
        with Pipeline(name="async-replicas", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(60), batch_size=7)
            loader >> AsyncPid(
                input_batch_size=3, sleep=0.03, concurrency=4, resources={"replicas": 2}, **self._meet(tmp_path)
            )
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(60))
        if self.replicas_in_own_processes:
            assert len({r["pid"] for r in rows}) == 2


    def test_async_fan_out_and_async_fan_in_align_rows(self, executor, tmp_path):
        with Pipeline(name="async-fan", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(25), batch_size=4)
            branches = [
                AsyncTag(tag="a", sleep=0.02, input_batch_size=3),
                Tag(tag="b", sleep=0.01, input_batch_size=5),
                AsyncTag(tag="c", sleep=0.02, input_batch_size=2, concurrency=1),
            ]
            loader >> branches >> AsyncZip(input_batch_size=6)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(25))
        assert all(r["tags"] == ["a", "b", "c"] for r in rows)


    def test_async_branches_after_routing_converge_per_row(self, executor, tmp_path):
        with Pipeline(name="async-route", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=data(41), batch_size=6)
            branches = [AsyncTag(tag=t, sleep=0.02, input_batch_size=s) for t, s in (("a", 4), ("b", 3), ("c", 5))]
            loader >> sample_n_steps(2) >> branches >> AsyncZip(input_batch_size=7)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(41))
        by_batch: dict[int, set] = {}
        for row in rows:
            assert len(row["tags"]) == 2 and len(set(row["tags"])) == 2
            by_batch.setdefault(row["x"] // 6, set()).add(tuple(row["tags"]))
        assert all(len(tags) == 1 for tags in by_batch.values())


    def test_async_global_step_gets_all_rows(self, executor, tmp_path):
        with Pipeline(name="async-global", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(23), batch_size=5) >> AsyncDouble(input_batch_size=4) >> AsyncCount()
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert rows == [{"n": 23, "xs": list(range(23))}]


    def test_failing_async_step_imputes_none_and_records_metadata(self, executor, tmp_path):
        with Pipeline(name="async-fail", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
            LoadDataFromDicts(data=data(4), batch_size=2) >> AsyncFail(name="bad", input_batch_size=2)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["out"] for r in rows] == [None] * 4
        assert all("this async step always fails" in r["stillhouse_metadata"]["error_bad"] for r in rows)


    @pytest.mark.parametrize("make", [AsyncHang, SyncHang, AsyncBlocksLoop], ids=["async", "sync", "async-blocking"])
    def test_batch_timeout_fails_the_batch_and_the_run_goes_on(self, executor, tmp_path, make):
        # A step blocking its loop holds every batch on it: one at a time, so only one fails.
        one = {"concurrency": 1} if make is AsyncBlocksLoop else {}
        with Pipeline(name="timeout", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
            loader = LoadDataFromDicts(data=data(12), batch_size=4)
            loader >> make(name="hangs", hang_on=5, input_batch_size=2, batch_timeout=1.0, **one)
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
        assert [r["x"] for r in rows] == list(range(12))
        assert [r["slow"] for r in rows] == [x if x not in (4, 5) else None for x in range(12)]
        assert "batch_timeout" in rows[4]["stillhouse_metadata"]["error_hangs"]
        assert {row["step"]: row for row in pipeline.last_run_summary}["hangs"]["failed_batches"] == 1


    def test_batch_timeout_on_a_global_step_stops_the_run_naming_it(self, executor, tmp_path):
        with Pipeline(name="timeout-global", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=data(3)) >> HangingGlobal(name="stuck", batch_timeout=1.0)
        with pytest.raises(StepRuntimeError, match="stuck") as info:
            pipeline.run(use_cache=False, progress=False)
        assert "batch_timeout" in str(info.value)
