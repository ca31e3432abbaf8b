"""The cache on fsspec URLs: memory:// in process, s3:// on a real S3-compatible server."""

from __future__ import annotations

import logging
from typing import Any

import fsspec
import pytest

from stillhouse.core import Pipeline, Step, StepInput, StepOutput
from stillhouse.core.errors import CacheLockedError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.local_servers import moto_s3
from tests.support.results import rows_of
from tests.support.steps import Count, Double, Slow, Tag

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
