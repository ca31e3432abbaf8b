"""The thread that finishes a run's checkpoint writes behind the driver.

The driver turns a batch's rows into Arrow (`codec.encode_batch`) itself, so the rows
can go on to the next step, which may change them. What is left (splitting out the
large columns, hashing, compressing, checksumming, appending to the log) is handed to
one thread per run, which does it in the order it was handed over, for every step
store of the run. That order is the order the driver would have written in, so a
batch is never in a log before a blob it refers to, and a process killed at any
moment leaves the logs as a run killed a little earlier would have: the batches still
queued are recomputed on resume, as ones not yet computed would have been. Most of
that work (zstd, crc32, xxh3, the writes) releases the GIL, so it runs beside the
driver instead of on its path.

`drain` waits for the queue to be written (reading a log, a step finishing, the run
ending). A write that failed is raised by every later `submit`, and by `drain` if no
`submit` raised it yet; nothing handed over after it is written.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

# At most this many bytes of batches wait to be written (always at least one batch).
QUEUE_BYTES = 64 * 1024 * 1024


class WriteQueue:
    def __init__(self, limit: int = QUEUE_BYTES) -> None:
        self.limit = limit
        self._jobs: collections.deque[tuple[Callable[[], None], int]] = collections.deque()
        self._queued_bytes = 0
        self._busy = False  # a job is being run
        self._error: BaseException | None = None  # the first failure; nothing is written after it
        self._reported = False
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None], size: int) -> None:
        """Run `job` on the writes thread after every job submitted before it; waits
        while `limit` bytes are queued."""
        with self._changed:
            self._raise_error(again=True)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="stillhouse-checkpoints", daemon=True)
                self._thread.start()
            while self._jobs and self._queued_bytes + size > self.limit and self._error is None:
                self._changed.wait()
            self._raise_error(again=True)
            self._jobs.append((job, size))
            self._queued_bytes += size
            self._changed.notify_all()

    def drain(self) -> None:
        """Wait until every submitted job has run; raise the first failure not yet raised."""
        with self._changed:
            while self._jobs or self._busy:
                self._changed.wait()
            self._raise_error()

    def close(self) -> None:
        """Drain, then end the thread (it is started again by a later `submit`)."""
        try:
            self.drain()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()
                thread, self._thread = self._thread, None
            if thread is not None:
                thread.join()
            with self._changed:
                self._closed = False

    def _raise_error(self, *, again: bool = False) -> None:
        if self._error is not None and (again or not self._reported):
            self._reported = True
            raise self._error

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._closed:
                    self._changed.wait()
                if not self._jobs:
                    return
                job, size = self._jobs.popleft()
                self._busy = True
                failed = self._error is not None
            try:
                if not failed:
                    job()
            except BaseException as exc:  # raised on the driver by its next submit or drain
                with self._changed:
                    self._error = exc
            finally:
                with self._changed:
                    self._busy = False
                    self._queued_bytes -= size
                    self._changed.notify_all()
