"""Reuse and invalidation (SPEC.md §3): what is recomputed after which change."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stillhouse.cache import pipeline_dir
from stillhouse.core import Pipeline, Step, StepInput, StepOutput
from stillhouse.core.errors import CacheLockedError, CorruptCacheError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import Double, Tag

pytestmark = pytest.mark.timeout(120)


def computed(pipeline: Pipeline) -> set[str]:
    """Steps whose workers ran in the last run."""
    return {row["step"] for row in pipeline.last_run_summary if row["started_worker"]}


def build(tmp_path: Path, *, tag: str = "a", extra: bool = False, ibs: int = 3) -> Pipeline:
    with Pipeline(name="reuse", cache_dir=tmp_path, executor="sync") as pipeline:
        loader = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=4)
        double = Double(name="double", input_batch_size=ibs)
        tagger = Tag(name="tag", tag=tag)
        loader >> double >> tagger
        if extra:
            loader >> Tag(name="extra", tag="e")
    return pipeline


def test_finished_pipeline_is_returned_from_cache_without_workers(tmp_path):
    first = build(tmp_path).run(progress=False)
    again = build(tmp_path)
    second = again.run(progress=False)
    assert computed(again) == set()
    assert rows_of(second) == rows_of(first)


def test_changed_field_recomputes_the_step_and_its_successors_only(tmp_path):
    build(tmp_path).run(progress=False)
    changed = build(tmp_path, tag="b")
    rows = rows_of(changed.run(progress=False))
    assert computed(changed) == {"tag"}
    assert {r["z"] for r in rows} == {"b"}


def test_added_step_is_the_only_one_that_runs(tmp_path):
    build(tmp_path).run(progress=False)
    grown = build(tmp_path, extra=True)
    result = grown.run(progress=False)
    assert computed(grown) == {"extra"}
    assert [r["z"] for r in rows_of(result, "extra")] == ["e"] * 10
    assert [r["y"] for r in rows_of(result, "tag")] == [2 * i for i in range(10)]


def test_changed_input_batch_size_takes_effect_but_keeps_finished_outputs(tmp_path):
    build(tmp_path).run(progress=False)
    rebatched = build(tmp_path, ibs=5)
    rebatched.run(progress=False)
    assert computed(rebatched) == set()  # batch sizes are not part of the signature


def test_use_cache_false_recomputes_everything(tmp_path):
    build(tmp_path).run(progress=False)
    again = build(tmp_path)
    again.run(use_cache=False, progress=False)
    assert computed(again) == {"load", "double", "tag"}


def test_step_use_cache_false_recomputes_it_and_its_successors(tmp_path):
    build(tmp_path).run(progress=False)
    again = build(tmp_path)
    again.dag.get_step("double").use_cache = False
    again.run(progress=False)
    assert computed(again) == {"double", "tag"}


def test_new_generator_data_is_never_answered_from_the_old_cache(tmp_path):
    build(tmp_path).run(progress=False)
    with Pipeline(name="reuse", cache_dir=tmp_path, executor="sync") as pipeline:
        loader = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(100, 103)])
        loader >> Double(name="double", input_batch_size=3) >> Tag(name="tag", tag="a")
    rows = rows_of(pipeline.run(progress=False))
    assert [r["x"] for r in rows] == [100, 101, 102]


STEP_SOURCE = '''
from stillhouse.core import StepInput, step

@step(inputs=["x"], outputs=["v"])
def Edited(inputs: StepInput):
    for row in inputs:
        row["v"] = {value}
    yield inputs
'''


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_an_edited_process_body_is_a_change(tmp_path):
    source = tmp_path / "edited_step.py"
    results = []
    for value in (1, 2):
        source.write_text(textwrap.dedent(STEP_SOURCE.format(value=value)))
        module = load_module(source, "edited_step")
        with Pipeline(name="edit", cache_dir=tmp_path / "cache", executor="sync") as pipeline:
            LoadDataFromDicts(name="load", data=[{"x": 1}]) >> module.Edited(name="edited")
        results.append(rows_of(pipeline.run(progress=False)))
        assert "edited" in computed(pipeline)
    assert [r["v"] for r in results[0]] == [1] and [r["v"] for r in results[1]] == [2]


def test_second_concurrent_run_fails_fast_with_a_clear_message(tmp_path):
    import fcntl
    import os

    pipeline = build(tmp_path)
    lock_dir = pipeline_dir(pipeline)
    lock_dir.mkdir(parents=True)
    fd = os.open(lock_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(CacheLockedError, match="Another run of pipeline 'reuse'"):
            pipeline.run(progress=False)
    finally:
        os.close(fd)
    assert rows_of(build(tmp_path).run(progress=False))


@pytest.mark.parametrize("damage", ["meta", "log"])
def test_corrupt_cache_file_names_the_file_and_the_fix(tmp_path, damage):
    build(tmp_path).run(progress=False)
    store = next((tmp_path / "reuse" / "steps").glob("double-*"))
    if damage == "meta":
        (store / "meta.json").write_text("{not json")
    else:
        meta = json.loads((store / "meta.json").read_text())
        meta["finished"] = True
        (store / "meta.json").write_text(json.dumps(meta))
        log = store / "batches.log"
        data = bytearray(log.read_bytes())
        data[30] ^= 0xFF  # inside the first record's payload
        log.write_bytes(bytes(data))
    again = build(tmp_path, tag="new")  # "tag" must re-read double's batches
    with pytest.raises(CorruptCacheError) as info:
        again.run(progress=False)
    assert str(store) in str(info.value)
    assert "use_cache=False" in str(info.value)
    assert rows_of(build(tmp_path, tag="new").run(use_cache=False, progress=False))


def routed(tmp_path: Path, *, branch_ibs: int, join_name: str = "join") -> Pipeline:
    from stillhouse.core import sample_n_steps
    from tests.support.steps import Zip

    with Pipeline(name="routed", cache_dir=tmp_path, executor="sync") as pipeline:
        loader = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(20)], batch_size=6)
        branches = [Tag(name=f"tag_{t}", tag=t, input_batch_size=branch_ibs) for t in "abc"]
        loader >> sample_n_steps(2) >> branches >> Zip(name=join_name, input_batch_size=4)
    return pipeline


def test_branch_with_a_new_batch_size_is_recomputed_when_replayed_batch_by_batch(tmp_path):
    routed(tmp_path, branch_ibs=2).run(progress=False)
    again = routed(tmp_path, branch_ibs=5)
    again.dag.get_step("join").use_cache = False  # the convergence step must re-read the branches
    rows = rows_of(again.run(progress=False))
    assert [r["x"] for r in rows] == list(range(20))
    assert all(len(set(r["tags"])) == 2 for r in rows)
    assert {"tag_a", "tag_b", "tag_c"} & computed(again)


def test_damaged_result_files_are_rebuilt_from_the_checkpoints(tmp_path):
    first = rows_of(build(tmp_path).run(progress=False))
    damaged = next(tmp_path.glob("reuse/*/data/tag/*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:40])
    again = build(tmp_path)
    assert rows_of(again.run(progress=False)) == first
    assert computed(again) == set()  # rebuilt from stored batches, no step re-ran


def test_create_distiset_names_a_damaged_file(tmp_path):
    from stillhouse.distiset import create_distiset

    pipeline = build(tmp_path)
    pipeline.run(progress=False)
    damaged = next(tmp_path.glob("reuse/*/data/tag/*.parquet"))
    damaged.write_bytes(b"not parquet at all")
    with pytest.raises(CorruptCacheError, match=damaged.name):
        create_distiset(Path(pipeline.run_dir) / "data")


class CountsItsSignatureLookups(Step):
    """A step whose `signature_extra()` stands for a costly lookup (a Hub commit, a file
    listing): the run must ask once per step, not once per place that needs a signature."""

    lookups: ClassVar[list[str]] = []

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["y"]

    def signature_extra(self) -> dict[str, Any]:
        CountsItsSignatureLookups.lookups.append(self.name)
        return {"source": "commit-1"}

    def process(self, inputs: StepInput) -> StepOutput:
        yield [{**row, "y": row["x"]} for row in inputs]


def test_a_run_looks_up_each_steps_signature_once(tmp_path):
    CountsItsSignatureLookups.lookups.clear()
    with Pipeline(name="lookups", cache_dir=tmp_path, executor="sync") as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": 1}]) >> CountsItsSignatureLookups(name="costly")
    pipeline.run(progress=False)
    assert CountsItsSignatureLookups.lookups == ["costly"]


HOLDER = """
import os, sys, time
from pathlib import Path
from stillhouse.cache.lock import acquire

acquire(Path(sys.argv[1]), "busy {pid}")
started, tell = os.pipe()
if os.fork() == 0:  # a worker forked by the run: it outlives its driver for a moment
    os.write(tell, b"x")  # fork() has returned here: the after-fork hooks have run
    time.sleep(60)
    os._exit(0)
os.read(started, 1)  # not before the child runs: under load it may start seconds later
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(120)
def test_a_forked_worker_does_not_keep_the_lock_of_a_killed_driver(tmp_path):
    """A `flock` lasts while any process holds the file open: workers close their copy."""
    import signal
    import subprocess

    from stillhouse.cache.lock import acquire, release

    driver = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert driver.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=f"busy {driver.pid}"):
            acquire(tmp_path, "busy {pid}")  # held by the live driver (its fork did not drop it)
        driver.kill()
        driver.wait(10)
        release(acquire(tmp_path, "busy {pid}"))  # at once, while the forked child still sleeps
        os.killpg(driver.pid, 0)  # the child is alive: the process group still exists
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.stdout.close()
        driver.wait(10)
