"""The group commit against power loss (SPEC §4): a record is fsynced within about
`SYNC_EVERY` of its append even when no append follows, and a step's log is never
fsynced before the dirty logs of the steps upstream of it, whose records its batches
were made from (or a rerun would recompute an upstream batch while a downstream
replays what it made from the lost one).

fsyncs are observed by wrapping `os.fsync` in this process, each call recorded by the
inode of the file it was given."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stillhouse.cache import records
from stillhouse.cache.records import BATCH, RecordLog
from stillhouse.cache.run_store import FileRunStore
from stillhouse.core import Pipeline
from stillhouse.core.engine import BatchRecord
from stillhouse.core.engine.context import RunContext
from stillhouse.core.errors import CacheDiskError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Double

pytestmark = pytest.mark.timeout(60)

PATIENCE = 20.0  # seconds: generous, the claim is "within about a second"


class Fsyncs:
    """`os.fsync`, recording the inode of every file it is called on, in order."""

    def __init__(self) -> None:
        self.inodes: list[int] = []
        self._lock = threading.Lock()
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        inode = os.fstat(fd).st_ino
        self._real(fd)
        with self._lock:
            self.inodes.append(inode)

    def of(self, *paths: Path) -> list[Path]:
        """The fsyncs of these files, in order (each as its path)."""
        by_inode = {path.stat().st_ino: path for path in paths}
        with self._lock:
            return [by_inode[inode] for inode in self.inodes if inode in by_inode]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Fsyncs:
    recorder = Fsyncs()
    monkeypatch.setattr(os, "fsync", recorder)
    return recorder


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_record_followed_by_silence_is_fsynced(tmp_path, fsyncs):
    path = tmp_path / "batches.log"
    log = RecordLog(path)
    try:
        log.append(BATCH, 0, 0, b"first", rows=1)
        time.sleep(0.2)
        log.append(BATCH, 0, 1, b"second", rows=1)  # within a second of the first
        # Nothing else is appended, synced or closed: the group commit alone must do it.
        assert wait_for(lambda: bool(fsyncs.of(path)) and not log.dirty), (
            f"no fsync of {path} within {PATIENCE} s of its last append (dirty={log.dirty})"
        )
    finally:
        log.close()


def build(cache: Path) -> Pipeline:
    with Pipeline(name="order", cache_dir=cache, executor="sync") as pipeline:
        LoadDataFromDicts(name="up", data=[{"x": i} for i in range(4)], batch_size=2) >> Double(
            name="down", input_batch_size=2
        )
    return pipeline


def two_dirty_stores(run: FileRunStore) -> tuple[Path, Path]:
    """The run store's stores of `up` and `down`, each holding one record not fsynced
    yet (`down`'s made from `up`'s, as the engine does); their log paths."""
    up, down = run.step_store("up"), run.step_store("down", batching=2)
    up.put(BatchRecord((0, 0), [{"x": 0}, {"x": 1}]))
    down.put(BatchRecord((0, 0), [{"x": 0, "y": 0}, {"x": 1, "y": 2}]))
    return up.log.path, down.log.path


def test_the_group_commit_fsyncs_upstream_logs_first(tmp_path, fsyncs):
    run = FileRunStore(RunContext(pipeline=build(tmp_path)))
    try:
        up, down = two_dirty_stores(run)
        assert wait_for(lambda: down in fsyncs.of(up, down)), f"{down} was never fsynced"
        order = fsyncs.of(up, down)
        assert up in order and order.index(up) < order.index(down), order
    finally:
        run.close(completed=False)


def test_an_explicit_sync_fsyncs_the_dirty_upstream_logs_first(tmp_path, fsyncs, monkeypatch):
    monkeypatch.setattr(records, "SYNC_EVERY", 3600.0)  # no group commit during the test
    run = FileRunStore(RunContext(pipeline=build(tmp_path)))
    try:
        up, down = two_dirty_stores(run)
        run.stores["down"].sync()
        assert fsyncs.of(up, down) == [up, down]
        run.stores["down"].sync()  # nothing is dirty now: no fsync at all
        assert fsyncs.of(up, down) == [up, down]
    finally:
        run.close(completed=False)


def test_once_a_store_fails_to_close_the_stores_after_it_are_closed_unsynced(tmp_path, fsyncs, monkeypatch):
    monkeypatch.setattr(records, "SYNC_EVERY", 3600.0)  # no group commit during the test
    run = FileRunStore(RunContext(pipeline=build(tmp_path)))
    up, down = two_dirty_stores(run)
    logs = [run.stores[name].log for name in ("up", "down")]
    failing = up.stat().st_ino

    def eio_for_up(fd: int) -> None:
        if os.fstat(fd).st_ino == failing:
            raise OSError(errno.EIO, "Input/output error")
        fsyncs(fd)

    monkeypatch.setattr(os, "fsync", eio_for_up)
    with pytest.raises(CacheDiskError, match=r"up-.*batches\.log"):
        run.close(completed=False)
    assert fsyncs.of(up, down) == []  # down's batch, made from up's lost one, stays unsynced
    assert all(log.closed for log in logs)  # every file closed all the same
    FileRunStore(RunContext(pipeline=build(tmp_path))).close(completed=False)  # the lock was released
