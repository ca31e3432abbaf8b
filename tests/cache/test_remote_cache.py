"""The cache on fsspec URLs: memory:// in process, s3:// on a real S3-compatible server."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import fsspec
import pytest

from stillhouse.core import Pipeline, Step, StepInput, StepOutput, sample_n_steps
from stillhouse.core.errors import CacheLockedError
from stillhouse.core.steps import GroupColumns, LoadDataFromDicts
from tests.support.local_servers import moto_s3
from tests.support.results import rows_of
from tests.support.steps import AlwaysFail, Count, Double, Slow, Tag

pytestmark = pytest.mark.timeout(120)


def build(cache_dir: str, executor: str, *, tag: str = "a", name: str = "remote") -> Pipeline:
    with Pipeline(name=name, cache_dir=cache_dir, executor=executor) as pipeline:
        loader = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(30)], batch_size=7)
        loader >> Slow(name="slow", sleep=0.01, input_batch_size=4) >> Tag(name="tag", tag=tag)
        loader >> Double(name="double") >> Count(name="count")
    return pipeline


def computed(pipeline: Pipeline) -> set[str]:
    return {row["step"] for row in pipeline.last_run_summary if row["started_worker"]}


def check_reuse_and_resume(cache_dir: str, executor: str) -> None:
    first = build(cache_dir, executor)
    result = first.run(progress=False)
    assert [r["x"] for r in rows_of(result, "tag")] == list(range(30))
    assert rows_of(result, "count")[0]["n"] == 30
    again = build(cache_dir, executor)
    assert rows_of(again.run(progress=False), "tag") == rows_of(result, "tag")
    assert computed(again) == set()
    changed = build(cache_dir, executor, tag="b")
    assert {r["z"] for r in rows_of(changed.run(progress=False), "tag")} == {"b"}
    assert computed(changed) == {"tag"}
    fs, root = fsspec.core.url_to_fs(cache_dir)
    names = {path.rsplit("/", 1)[-1] for path in fs.find(f"{root}/remote")}
    assert {"pipeline.yaml", "pipeline.log", "stages.json", "batch_manager.json", "meta.json"} <= names


def test_memory_cache_reuses_and_recomputes_only_what_changed():
    check_reuse_and_resume("memory://stillhouse-cache-test", "threaded")


def test_memory_cache_lease_blocks_a_second_run():
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/lease-test/remote/.lock", b'{"owner": "elsewhere", "time": 9999999999}')
    with pytest.raises(CacheLockedError, match="elsewhere"):
        build("memory://lease-test", "sync").run(progress=False)


def test_interrupted_run_resumes_from_a_memory_cache():
    cache = "memory://stillhouse-resume-test"
    pipeline = build(cache, "threaded")
    stored = {"n": 0}
    original = pipeline.dag.get_step("slow").process

    def stop_midway(*inputs):
        stored["n"] += 1
        if stored["n"] == 3:
            pipeline.stop()
        yield from original(*inputs)

    object.__setattr__(pipeline.dag.get_step("slow"), "process", stop_midway)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(progress=False)
    resumed = build(cache, "threaded")
    rows = rows_of(resumed.run(progress=False), "tag")
    assert [r["x"] for r in rows] == list(range(30))


@pytest.fixture
def s3_server(monkeypatch):
    with moto_s3(monkeypatch, "stillhouse-test") as (endpoint, _):
        yield endpoint


def test_s3_cache_on_an_s3_compatible_server(s3_server):
    check_reuse_and_resume("s3://stillhouse-test/cache", "mp")


def test_s3_cache_and_s3_batch_data_together(s3_server, caplog):
    caplog.set_level(logging.DEBUG, logger="stillhouse.cache")
    pipeline = build("s3://stillhouse-test/cache2", "mp")
    result = pipeline.run(
        progress=False, use_fs_to_pass_data=True,
        storage_parameters={"path": "s3://stillhouse-test/batches", "client_kwargs": {"endpoint_url": s3_server}},
    )
    assert [r["x"] for r in rows_of(result, "tag")] == list(range(30))
    assert rows_of(result, "count")[0]["n"] == 30
    through = [r.getMessage() for r in caplog.records if "goes through" in r.getMessage()]
    assert through and all("s3://stillhouse-test/batches/" in line for line in through)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert not fs.find("stillhouse-test/batches")  # every batch file was removed after use


class Holds(Step):
    """A step with a field that may hold anything (a value that cannot be serialised)."""

    thing: Any = None

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


def test_a_failed_open_frees_the_lease_for_the_next_run():
    def with_thing(thing: Any) -> Pipeline:
        with Pipeline(name="lease-leak", cache_dir="memory://lease-leak", executor="sync") as pipeline:
            LoadDataFromDicts(name="load", data=[{"x": 1}]) >> Holds(name="holds", thing=thing)
        return pipeline

    with pytest.raises(Exception, match="serialize"):
        with_thing(object()).run(progress=False)
    assert rows_of(with_thing("fine").run(progress=False)) == [{"x": 1}]


def test_a_finished_remote_store_missing_a_batch_is_recomputed():
    url = "memory://remote-short"
    first = rows_of(build(url, "sync").run(progress=False), "tag")
    fs, root = fsspec.core.url_to_fs(url)
    batch = sorted(p for p in fs.find(f"{root}/remote/steps") if "/slow-" in p and p.rsplit("/", 1)[-1].startswith("b-"))[0]
    fs.rm_file(batch)
    again = build(url, "sync", tag="b")  # "tag" must re-read slow's batches
    rows = rows_of(again.run(progress=False), "tag")
    assert [r["x"] for r in rows] == [r["x"] for r in first]
    assert "slow" in computed(again)


def routed(cache_dir: str, *, tag: str = "C") -> Pipeline:
    with Pipeline(name="routes", cache_dir=cache_dir, executor="sync") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(24)], batch_size=4)
        branches = [Tag(name="a", tag="A"), Tag(name="b", tag="B"), Tag(name="c", tag=tag)]
        group = GroupColumns(name="group", columns=["z"], output_columns=["zs"])
        load >> sample_n_steps(2) >> branches >> group
    return pipeline


def test_a_finished_remote_store_missing_a_routing_decision_is_recomputed(caplog):
    url = "memory://remote-routes"
    first = rows_of(routed(url).run(progress=False))
    fs, root = fsspec.core.url_to_fs(url)
    routes = sorted(p for p in fs.find(f"{root}/routes/steps") if "/load-" in p and p.rsplit("/", 1)[-1].startswith("r-"))
    assert len(routes) == 6  # one routing decision per batch of "load"
    fs.rm_file(routes[2])
    caplog.set_level(logging.WARNING, logger="stillhouse.cache")
    again = routed(url, tag="C2")  # branch "c" is recomputed and needs load's routes
    rows = rows_of(again.run(progress=False))
    assert "load" in computed(again)  # routes are decided again for every batch, not one
    assert any("cannot be trusted" in r.getMessage() and "routing decisions" in r.getMessage() for r in caplog.records)
    assert [r["x"] for r in rows] == [r["x"] for r in first]
    assert all(len(set(r["zs"])) == 2 for r in rows)


def test_the_remote_pipeline_log_keeps_earlier_runs_and_no_local_copy_is_left(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the local copy of the log goes

    def failing() -> Pipeline:
        with Pipeline(name="logs", cache_dir="memory://remote-logs", executor="sync") as pipeline:
            LoadDataFromDicts(name="load", data=[{"x": i} for i in range(4)]) >> AlwaysFail(name="fails")
        return pipeline

    first = failing()
    first.run(progress=False)
    log = f"{first.run_dir}/pipeline.log"
    fs, path = fsspec.core.url_to_fs(log)
    computed_log = fs.cat_file(path).decode()
    assert "this step always fails" in computed_log
    again = failing()
    again.run(progress=False)
    assert computed(again) == set()
    cached_log = fs.cat_file(path).decode()
    assert cached_log.startswith(computed_log)  # the computing run's traceback is kept
    assert "resumes from its cache" in cached_log[len(computed_log):]
    assert list(tmp_path.glob("stillhouse-log-*")) == []


def test_the_remote_pipeline_yaml_keeps_inline_rows_beside_it():
    rows = [{"marker": f"ROW-{i}"} for i in range(3)]
    with Pipeline(name="inline", cache_dir="memory://remote-inline", executor="sync") as pipeline:
        LoadDataFromDicts(name="load", data=rows)
    pipeline.run(progress=False)
    fs, run_path = fsspec.core.url_to_fs(pipeline.run_dir)
    text = fs.cat_file(f"{run_path}/pipeline.yaml").decode()
    assert "ROW-1" not in text and "inline_data/" in text
    assert [p.rsplit("/", 1)[-1].endswith(".parquet") for p in fs.find(f"{run_path}/inline_data")] == [True]
    loaded = Pipeline.from_yaml(f"{pipeline.run_dir}/pipeline.yaml")
    assert loaded.dag.get_step("load").data == rows
