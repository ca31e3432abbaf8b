"""The cache never serves wrong rows (issue 13): edits undone, short logs, changed
headers, leaked locks, private files, disks that refuse writes."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

from stillhouse.cache import pipeline_dir
from stillhouse.cache.records import BATCH, iter_headers
from stillhouse.core import Pipeline, Step, StepInput, StepOutput
from stillhouse.core.errors import CacheError, CorruptCacheError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import Double, Tag

pytestmark = pytest.mark.timeout(120)


def computed(pipeline: Pipeline) -> set[str]:
    return {row["step"] for row in pipeline.last_run_summary if row["started_worker"]}


def build(cache: Path, *, tag: str = "a", n: int = 10, name: str = "trust") -> Pipeline:
    with Pipeline(name=name, cache_dir=cache, executor="sync") as pipeline:
        loader = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(n)], batch_size=4)
        loader >> Double(name="double", input_batch_size=3) >> Tag(name="tag", tag=tag)
    return pipeline


def reference(tag: str = "a", n: int = 10) -> list[dict[str, Any]]:
    return [{"x": i, "y": 2 * i, "z": tag} for i in range(n)]


def store_of(cache: Path, step: str, name: str = "trust") -> Path:
    stores = sorted((cache / name / "steps").glob(f"{step}-*"), key=lambda p: (p / "meta.json").stat().st_mtime)
    return stores[-1]


# -- 13.1 edit, then undo --------------------------------------------------------------


def test_edit_then_undo_returns_the_live_pipelines_rows(tmp_path):
    for tag in ("a", "b", "a", "b"):
        assert rows_of(build(tmp_path, tag=tag).run(progress=False)) == reference(tag)


def test_undone_edit_upstream_is_not_answered_by_the_other_leaf_results(tmp_path):
    for n in (10, 12, 10):
        assert rows_of(build(tmp_path, n=n).run(progress=False)) == reference(n=n)


def test_leaf_results_record_the_stored_outputs_they_come_from(tmp_path):
    pipeline = build(tmp_path)
    pipeline.run(progress=False)
    marker = json.loads(next(tmp_path.glob("trust/*/data/tag/_COMPLETE")).read_text())
    meta = json.loads((store_of(tmp_path, "tag") / "meta.json").read_text())
    assert marker["version"] == f"{meta['signature']}:{meta['generation']}"
    assert (meta["batches"], meta["rows"]) == (1, 10)  # tag has the default input_batch_size


# -- 13.2 a finished store that lost batches -------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "delete", "empty"])
def test_short_log_of_a_finished_step_is_recomputed_with_a_warning(tmp_path, caplog, damage):
    build(tmp_path).run(progress=False)
    log = store_of(tmp_path, "tag") / "batches.log"
    if damage == "truncate":
        data = log.read_bytes()
        log.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        log.unlink()
    else:
        log.write_bytes(b"")
    next(tmp_path.glob("trust/*/data/tag/_COMPLETE")).unlink()
    again = build(tmp_path)
    with caplog.at_level(logging.WARNING, logger="stillhouse"):
        assert rows_of(again.run(progress=False)) == reference()
    assert "tag" in computed(again)
    assert any(str(log) in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    # ... and the next run trusts what it wrote.
    third = build(tmp_path)
    assert rows_of(third.run(progress=False)) == reference()
    assert computed(third) == set()


def test_a_changed_batch_index_in_a_record_header_is_caught(tmp_path):
    build(tmp_path).run(progress=False)
    log = store_of(tmp_path, "double") / "batches.log"
    data = bytearray(log.read_bytes())
    first = next(h for h in iter_headers(log) if h.kind == BATCH)
    assert data[first.offset + 12] == 0
    data[first.offset + 12] = 7  # the first batch's index: 0 -> 7 (the header is under the checksum)
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError) as info:
        build(tmp_path, tag="new").run(progress=False)  # "tag" must re-read double's batches
    assert str(log) in str(info.value) and "use_cache=False" in str(info.value)


@pytest.mark.parametrize("swap", ["sibling", "older-version"])
def test_a_log_copied_from_another_store_is_refused(tmp_path, swap):
    """A log's records carry checksums, not whose they are: a log copied over from a
    sibling step (same batches, same sizes) or from an earlier version of this step would
    read as good. Each log starts with its store's identity, checked when it is opened."""
    with Pipeline(name="swap", cache_dir=tmp_path, executor="sync") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(6)], batch_size=3)
        load >> [Tag(name="aaa", tag="a"), Tag(name="bbb", tag="b")]
    pipeline.run(progress=False)
    mine = store_of(tmp_path, "aaa", "swap") / "batches.log"
    if swap == "sibling":
        theirs = store_of(tmp_path, "bbb", "swap") / "batches.log"
    else:  # the same step's log, kept from a run of another version of it
        meta = json.loads((mine.parent / "meta.json").read_text())
        (mine.parent / "meta.json").write_text(json.dumps({**meta, "generation": "0" * 32}))
        theirs = mine
    data = theirs.read_bytes()
    assert len(data) == len(mine.read_bytes())  # nothing else tells them apart
    mine.write_bytes(data)
    for complete in tmp_path.glob("swap/*/data/*/_COMPLETE"):
        complete.unlink()  # the results are rebuilt from the stores
    with pytest.raises(CorruptCacheError) as info:
        pipeline.run(progress=False)
    assert str(mine) in str(info.value) and "does not start with their identity" in str(info.value)


def test_a_store_of_an_older_format_is_recomputed(tmp_path):
    build(tmp_path).run(progress=False)
    meta_path = store_of(tmp_path, "double") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": 1}))
    again = build(tmp_path, tag="new")
    assert rows_of(again.run(progress=False)) == reference("new")
    assert computed(again) == {"double", "tag"}


# -- 13.10 the lock is released when opening the cache fails ---------------------------


class Holds(Step):
    thing: Any = None

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


def test_a_failed_open_releases_the_lock_for_the_next_run_in_this_process(tmp_path):
    def with_thing(thing: Any) -> Pipeline:
        with Pipeline(name="leak", cache_dir=tmp_path, executor="sync") as pipeline:
            LoadDataFromDicts(name="load", data=[{"x": 1}]) >> Holds(name="holds", thing=thing)
        return pipeline

    with pytest.raises(Exception, match="serialize"):
        with_thing(object()).run(progress=False)  # pipeline.yaml cannot be written
    assert rows_of(with_thing("fine").run(progress=False)) == [{"x": 1}]


def test_a_file_where_the_run_folder_goes_is_a_cache_error_and_frees_the_lock(tmp_path):
    pipeline = build(tmp_path)
    blocker = pipeline_dir(pipeline) / pipeline.signature
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match=str(blocker)) as info:
        pipeline.run(progress=False)
    assert "cache_dir" in str(info.value)
    blocker.unlink()
    assert rows_of(build(tmp_path).run(progress=False)) == reference()


# -- 13.8 private files ----------------------------------------------------------------


def test_run_files_and_folders_are_private_to_the_user(tmp_path):
    cache = tmp_path / "cache"
    build(cache).run(progress=False, use_fs_to_pass_data=True)
    seen = 0
    for path in [cache / "trust", *(cache / "trust").rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"
        seen += 1
    names = {p.name for p in (cache / "trust").rglob("*")}
    assert {".lock", "pipeline.log", "pipeline.yaml", "batches.log", "meta.json", "_COMPLETE"} <= names
    assert seen > 10


# -- 13.12 disks that refuse writes ----------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_cache_disk_is_a_cache_error_naming_the_folder(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk, pytest.raises(CacheError, match="read-only") as info:
        build(disk).run(progress=False)
    assert str(disk / "trust") in str(info.value)
    assert isinstance(info.value, OSError)  # code that catches disk errors still does


def test_a_full_cache_disk_is_a_cache_error_naming_the_file_and_a_later_run_works(tmp_path):
    with tmpfs(tmp_path / "full", "size=64k") as disk:
        with pytest.raises(CacheError, match="disk is full") as info:
            build(disk, n=3000).run(progress=False)
        assert str(disk) in str(info.value)
        # The lock was released: another run in this process is only refused by the disk.
        with pytest.raises(CacheError, match="disk is full"):
            build(disk, n=3000).run(progress=False)
        del info
        with warnings.catch_warnings(record=True) as caught:  # every store's log was closed
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        assert [str(w.message) for w in caught if "batches.log" in str(w.message)] == []
    assert rows_of(build(tmp_path / "roomy", n=3000).run(progress=False)) == reference(n=3000)


def test_no_pickle_file_is_written(tmp_path):
    build(tmp_path).run(progress=False, use_fs_to_pass_data=True)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"



# -- 14.4 one reuse rule -----------------------------------------------------------------


def test_explain_gives_the_decision_the_run_then_takes(tmp_path):
    from stillhouse.cache.cli import explain

    build(tmp_path).run(progress=False)
    log = store_of(tmp_path, "double") / "batches.log"
    log.write_bytes(log.read_bytes()[:-10])
    said = {row["step"]: row for row in explain(build(tmp_path, tag="b"))}
    assert said["load"]["decision"] == "reuse"
    assert said["double"]["decision"] == "recompute" and str(log) in said["double"]["why"]
    assert said["tag"]["decision"] == "recompute"
    again = build(tmp_path, tag="b")
    assert rows_of(again.run(progress=False)) == reference("b")
    assert computed(again) == {"double", "tag"}


def test_stages_json_records_the_load_groups_the_run_used(tmp_path):
    """The run folder's stages.json is what a user reads to see how the run loaded its
    steps: with load_groups, the stages the run used, not those it would use without."""
    pipeline = build(tmp_path)
    pipeline.run(progress=False, load_groups=[["double"], ["tag"]])
    [stages] = tmp_path.glob("trust/*/stages.json")
    assert json.loads(stages.read_text()) == {"stages": [["load"], ["double"], ["tag"]]}
