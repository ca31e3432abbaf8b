"""The driver side of the "mp" results queue: a thread that reads it.

Every batch's rows come back on the results queue, about 1 MB for 1,000 rows of
1 KB. Read on the driver's main thread, a message costs that thread a blocking read
(the worker's feeder thread is still writing it: a message is larger than the widest
pipe an unprivileged process gets) and the unpickling. `Receiver` does both on its
own thread, while the main thread writes checkpoints and results (GIL-free file I/O),
and hands the messages over in order through `take()`. `wake` is readable whenever
messages wait, for `multiprocessing.connection.wait` beside the workers' sentinels.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from typing import Any

from stillhouse.executors._mp_worker import ResultsQueue

logger = logging.getLogger("stillhouse.executors.mp")

SETTLE_TIMEOUT = 5.0
"""Seconds `settle()` waits for the messages already in the pipe: a worker that ended
flushed all it sent, so they are complete, and only the receiver's unpickling (slow on
a loaded machine) is waited for; a partly written one (a killed worker) is not waited
for longer."""


class _Stop:
    """Sent by the driver itself on the results queue: the receiver ends."""


class Receiver(threading.Thread):
    def __init__(self, results: ResultsQueue) -> None:
        super().__init__(name="stillhouse-mp-receiver", daemon=True)
        self._results = results
        self._inbox: collections.deque[Any] = collections.deque()
        self._busy = False  # between seeing bytes in the pipe and queueing their message
        self.wake, self._wake_w = os.pipe()
        os.set_blocking(self.wake, False)
        os.set_blocking(self._wake_w, False)

    def run(self) -> None:
        reader = self._results._reader  # type: ignore[attr-defined]
        while True:
            try:
                reader.poll(None)  # wait without consuming: `settle()` sees the bytes
                self._busy = True
                item = self._results.get()
            except (EOFError, OSError):
                return  # the driver closed the queue
            except Exception:
                logger.exception("A message from a worker could not be unpickled; it is lost.")
                self._busy = False
                continue
            if isinstance(item, _Stop):
                self._busy = False
                return
            self._inbox.append(item)  # before the wake byte: no wake-up can be lost
            self._busy = False
            with contextlib.suppress(BlockingIOError):  # full: `wake` is readable anyway
                os.write(self._wake_w, b"\0")

    def take(self) -> list[Any]:
        """Every message received so far, in the order they came."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake, 65536):
                pass
        items = []
        while self._inbox:
            items.append(self._inbox.popleft())
        return items

    def settle(self) -> None:
        """Wait until what is in the pipe now has been received (a worker's sentinel
        is ready: its last messages must be read before its end is judged)."""
        reader = self._results._reader  # type: ignore[attr-defined]
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (self._busy or reader.poll(0)) and time.monotonic() < deadline:
            time.sleep(0.0005)

    def stop(self, timeout: float = 1.0) -> None:
        """End the thread (every writer is gone) and close the wake pipe. A worker
        killed while writing may hold the queue's write lock forever: then the thread,
        a daemon, is left blocked on the pipe rather than the driver on the lock."""
        if self.is_alive():
            # What `Queue.put` does, without its feeder thread: `get()` releases the
            # queue's semaphore for every message, so the sender takes it first.
            queue: Any = self._results
            lock = queue._wlock
            if queue._sem.acquire(timeout=timeout) and (lock is None or lock.acquire(timeout=timeout)):
                try:
                    queue._writer.send(_Stop())
                finally:
                    if lock is not None:
                        lock.release()
                self.join(timeout)
        if not self.is_alive():
            for fd in (self.wake, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
