"""The checkpoint log's group commit (issue 20): `append` returns once the record is in
the OS and never waits for an fsync; a background thread fsyncs within `SYNC_EVERY`;
`sync` fsyncs at once; a failed background fsync is reported, naming the file."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from stillhouse.cache import records
from stillhouse.cache.records import BATCH, RecordLog, iter_headers
from stillhouse.cache.store import FileStepStore
from stillhouse.core.engine import BatchRecord
from stillhouse.core.errors import CacheDiskError
from stillhouse.core.files import WRITE_PIECE

pytestmark = pytest.mark.timeout(60)


def _store(tmp_path: Path) -> FileStepStore:
    return FileStepStore.open(
        tmp_path / "step", step_name="step", signature="s", batching=2, predecessors={}, fresh=True
    )


def test_appends_are_fsynced_off_the_callers_thread(tmp_path, monkeypatch):
    appended = 0
    fsyncs: list[tuple[str, int]] = []  # (thread, appends begun when the fsync ran)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsyncs.append((threading.current_thread().name, appended))
        real_fsync(fd)

    monkeypatch.setattr(records, "SYNC_EVERY", 0.0)  # every append asks for a group commit
    monkeypatch.setattr(os, "fsync", recording_fsync)
    log = RecordLog(tmp_path / "batches.log")
    for index in range(20):
        appended += 1  # counted before: an fsync seeing 20 ran after the last append began
        log.append(BATCH, 0, index, b"payload %d" % index, rows=1)
    caller = threading.current_thread().name
    assert all(thread != caller for thread, _ in fsyncs)  # the caller never waited for the disk
    log.close()  # waits for a background fsync in progress, then fsyncs what is left
    # Whoever ran it (the background thread may have got there first), an fsync began
    # after the last append did (one during it leaves the log dirty, so close fsyncs).
    assert fsyncs and fsyncs[-1][1] == 20 and not log.dirty
    assert [h.b for h in iter_headers(tmp_path / "batches.log")] == list(range(20))


def test_sync_covers_records_appended_during_a_background_fsync(tmp_path, monkeypatch):
    log = RecordLog(tmp_path / "batches.log")
    log.append(BATCH, 0, 0, b"first", rows=1)
    real_fsync = os.fsync
    synced: list[int] = []

    def fsync_while_appending(fd: int) -> None:
        # A record arrives while the background fsync runs: it must stay dirty.
        monkeypatch.setattr(os, "fsync", real_fsync)
        log.append(BATCH, 0, 1, b"second", rows=1)
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_while_appending)
    log.background_sync()
    assert synced and log.dirty
    log.sync()
    assert not log.dirty
    log.close()


def test_a_failed_background_fsync_is_raised_by_the_next_sync_naming_the_file(tmp_path, monkeypatch):
    store = _store(tmp_path)
    store.put(BatchRecord((0, 0), [{"x": 1}]))

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    store.log.background_sync()  # what the background thread runs
    monkeypatch.undo()
    with pytest.raises(CacheDiskError, match=r"batches\.log"):
        store.put(BatchRecord((0, 1), [{"x": 2}]))
    store.put(BatchRecord((0, 1), [{"x": 2}]))  # reported once; the disk works again
    store.mark_finished()
    store.close()
    reopened = _reopen(tmp_path)
    try:
        assert [r.rows for r in reopened.records()] == [[{"x": 1}], [{"x": 2}]]
    finally:
        reopened.close()


def _reopen(tmp_path: Path) -> FileStepStore:
    return FileStepStore.open(
        tmp_path / "step", step_name="step", signature="s", batching=2, predecessors={}, fresh=False
    )



def test_a_record_written_in_pieces_reads_back_whole(tmp_path):
    import pyarrow as pa

    body = os.urandom(WRITE_PIECE * 2 + 77)
    log = RecordLog(tmp_path / "batches.log")
    header = log.append(BATCH, 0, 1, [b"prefix", pa.py_buffer(body)], rows=3)
    assert log.read(header) == b"prefix" + body
    log.close()
    assert [h.length for h in iter_headers(tmp_path / "batches.log")] == [len(body) + 6]
