"""The child side of the "mp" executor: what runs inside each worker process.

Everything here executes in the worker (or is pickled to it), so it must be
importable by a freshly spawned interpreter and must not touch driver state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from logging.handlers import QueueHandler
from multiprocessing.queues import Queue
from multiprocessing.reduction import ForkingPickler
from typing import Any

from tblib import pickling_support

try:
    import fcntl
except ImportError:  # Windows: pipes keep their size
    fcntl = None  # type: ignore[assignment]

from stillhouse.core.engine import (
    REPLACED,
    STOP,
    BatchKey,
    Failed,
    Finished,
    StepRunner,
    Task,
    portable,
    route_logs,
    serve,
)
from stillhouse.core.memory import keep_freed_memory
from stillhouse.core.step import BaseStep

PIPE_BYTES = 1 << 20
"""Kernel buffer of a queue's pipe (Linux): a 1 MB batch (1,000 rows of 1 KB) then
crosses in one write and one read instead of 16 of 64 KB each, with as many fewer
wake-ups of the other side; measured 0.47 -> 0.21 ms per MB (benchmarks/README.md)."""

PIPE_BUDGET = 16
"""Live pipes one driver widens at most: the kernel charges a user's pipe buffers against
`/proc/sys/fs/pipe-user-pages-soft` (64 MB by default), and once over it every new
pipe of that user shrinks to one page. Further queues keep the default 64 KB."""

_widened: weakref.WeakSet[Queue] = weakref.WeakSet()  # the live widened queues

PARENT_CHECK_INTERVAL = 1.0
"""Seconds between a worker's checks that its driver is alive: a driver killed with
SIGKILL must not leave orphans holding memory or GPUs."""


@dataclass(frozen=True, slots=True)
class Exited:
    """A worker's last message: it is ending because it was told to (not a death)."""

    step_name: str
    replica: int


@dataclass(frozen=True, slots=True)
class Replaced:
    """A worker's last message when a batch outlived `batch_timeout`: its hung thread
    cannot be stopped, so the process ends and the driver starts a new one in its place."""

    step_name: str
    replica: int


@dataclass(frozen=True, slots=True)
class Took:
    """Sent by a worker whose step has a `batch_timeout` as it takes a task, before the
    task runs: the driver then knows which process holds which batch since when, and
    can kill a process that holds one far past its timeout (`mp.KILL_MARGIN`)."""

    step_name: str
    replica: int
    key: BatchKey


def widen(queue: Queue) -> Queue:
    """Give `queue`'s pipe a `PIPE_BYTES` buffer where the kernel allows it (Linux, within
    `PIPE_BUDGET`); elsewhere, or when refused, the queue keeps its default pipe."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None or len(_widened) >= PIPE_BUDGET:
        return queue
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(queue._writer.fileno(), set_size, PIPE_BYTES)  # type: ignore[attr-defined]
        _widened.add(queue)
    return queue


class ResultsQueue(Queue):
    """The queue workers send events and log records on (its pipe widened: every
    batch's rows come back on it).

    Pickling happens in the queue's feeder thread, where a failure would otherwise
    just print a traceback and drop the message (and the engine would wait forever
    for that batch). This turns an unpicklable result into a `Failed` event.
    """

    def __init__(self, maxsize: int = 0, *, ctx: Any) -> None:
        super().__init__(maxsize, ctx=ctx)
        widen(self)

    def _on_queue_feeder_error(self, e: Exception, obj: Any) -> None:
        if isinstance(obj, logging.LogRecord | Finished):
            instead = _unsendable(e, obj)
            if instead is not None:
                self.put(instead)
            return
        super()._on_queue_feeder_error(e, obj)

    def send_now(self, obj: Any) -> None:
        """Put `obj` in the pipe from this thread, before returning (no feeder thread).

        A worker the driver may kill (its step has a `batch_timeout`) sends everything
        this way: when a thread of the step holds the GIL for good, no write of this
        process is left half done, and no lock of the queue is left held, by a feeder
        thread that cannot run any more."""
        try:
            data = ForkingPickler.dumps(obj)
        except Exception as exc:
            instead = _unsendable(exc, obj)
            if instead is None:
                return
            data = ForkingPickler.dumps(instead)
        lock = self._wlock  # type: ignore[attr-defined]  # None on Windows
        self._sem.acquire()  # type: ignore[attr-defined]  # as `put` does: `get` releases it
        if lock is None:
            self._writer.send_bytes(data)  # type: ignore[attr-defined]
            return
        with lock:
            self._writer.send_bytes(data)  # type: ignore[attr-defined]


def _unsendable(e: Exception, obj: Any) -> Any:
    """What to send instead of `obj`, which did not pickle: a `Failed` event for a
    result (or None, to send nothing: a log record with unpicklable extras is not worth
    a failure). Other objects are the caller's bug: `e` is raised."""
    if isinstance(obj, logging.LogRecord):
        return None
    if isinstance(obj, Finished):
        result = obj.result
        error = RuntimeError(
            f"The result of step {result.step_name!r} for batch {result.key} could not be "
            f"sent to the driver: {type(e).__name__}: {e}. Make the step output only "
            "picklable values (str, numbers, lists, dicts, ...)."
        )
        return Failed(result.step_name, error, f"{error}\n", result.key)
    raise e


class _SendingHandler(QueueHandler):
    """A `QueueHandler` that writes each record to the pipe at once (`send_now`)."""

    def enqueue(self, record: logging.LogRecord) -> None:
        self.queue.send_now(record)  # type: ignore[attr-defined]


def worker_main(
    step: BaseStep,
    replica: int,
    tasks: Queue,
    results: ResultsQueue,
    enable_metadata: bool,
    env: dict[str, str],
    log_levels: dict[str, int],
    driver: int,
) -> None:
    """Body of a worker process: serve `step` from `tasks` until told to stop, or until
    the driver (pid `driver`) is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's to handle
    _exit_with_parent(driver)
    os.environ.update(env)  # before load(): CUDA_VISIBLE_DEVICES must precede any CUDA init
    # A step with a batch_timeout may be killed by the driver (a C call holding the GIL
    # past its timeout): it tells the driver what it takes, and sends without a feeder.
    killable = step.batch_timeout is not None
    send = results.send_now if killable else results.put
    handler = _SendingHandler(results) if killable else QueueHandler(results)
    route_logs(handler, log_levels, (str(step.name), replica))
    pickling_support.install()
    keep_freed_memory()
    runner = StepRunner(step, replica=replica, enable_metadata=enable_metadata)
    get_task = _reporting(step.name, replica, tasks, runner.concurrency, send) if killable else tasks.get
    outcome = serve(runner, get_task, lambda event: send(portable(event)), replace=lambda _: None)
    if outcome == REPLACED:
        send(Replaced(step.name, replica))
        results.close()
        results.join_thread()  # the batch's failed result and the goodbye reach the driver
        os._exit(0)  # a hung batch thread must not keep this process alive
    send(Exited(step.name, replica))


def _reporting(
    step_name: str, replica: int, tasks: Queue, concurrency: int, send: Callable[[Any], None]
) -> Callable[[], Task | None]:
    """`get_task` for `serve` in a worker the driver may kill: each task taken is
    reported (`Took`) before it runs."""

    def get_task() -> Task | None:
        task = _take_lightly(tasks) if concurrency > 1 else tasks.get()
        if task is not STOP:
            send(Took(step_name, replica, task.key))
        return task

    return get_task


TAKE_WAIT = 0.05
"""Seconds `_take_lightly` holds the task queue's read lock waiting for a task that
another replica may have taken first."""


def _take_lightly(tasks: Queue) -> Task | None:
    """The next task, waiting for it without holding the queue's read lock (`get()`
    holds it while it waits). An async replica takes tasks while its batches run; the
    driver may kill it then, and a lock it held would be held for good, starving every
    other replica of the step."""
    while True:
        tasks._reader.poll(None)  # type: ignore[attr-defined]  # readable: a task may be there
        try:
            return tasks.get(timeout=TAKE_WAIT)
        except queue.Empty:
            continue  # another replica took it


def _alive(pid: int) -> bool:
    """Whether process `pid` runs. A zombie does not: a driver killed with SIGKILL stays
    one until its own parent reaps it, and signal 0 still reaches it meanwhile."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid: ours is gone
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS), or it ended just now
        return True


def _exit_with_parent(driver: int) -> None:
    """Exit when this process's parent changes (its parent died: the driver, or with
    "forkserver" the fork server, which dies with the driver). The driver's pid comes from
    the driver: a worker started by "spawn" reads its parent only after importing and
    unpickling, when a driver killed meanwhile has already left it to init, so a parent
    that is not the driver, while the driver is gone, is a reason to exit too."""
    parent = os.getppid()
    if parent != driver and not _alive(driver):
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_INTERVAL)
            # The driver may have died just before the check above, while still a zombie
            # (alive to signal 0): this process then already had its new parent.
            if os.getppid() != parent or (parent != driver and not _alive(driver)):
                os._exit(1)

    threading.Thread(target=watch, name="stillhouse-parent-watch", daemon=True).start()
