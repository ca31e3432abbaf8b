"""The child side of the "mp" executor: what runs inside each worker process.

Everything here executes in the worker (or is pickled to it), so it must be
importable by a freshly spawned interpreter and must not touch driver state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from logging.handlers import QueueHandler
from multiprocessing.queues import Queue
from typing import Any

from tblib import pickling_support

try:
    import fcntl
except ImportError:  # Windows: pipes keep their size
    fcntl = None  # type: ignore[assignment]

from stillhouse.core.engine import (
    REPLACED,
    Failed,
    Finished,
    StepRunner,
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
        if isinstance(obj, logging.LogRecord):
            return  # a log record with unpicklable extras is not worth a failure
        if isinstance(obj, Finished):
            result = obj.result
            error = RuntimeError(
                f"The result of step {result.step_name!r} for batch {result.key} could not be "
                f"sent to the driver: {type(e).__name__}: {e}. Make the step output only "
                "picklable values (str, numbers, lists, dicts, ...)."
            )
            self.put(Failed(result.step_name, error, f"{error}\n", result.key))
            return
        super()._on_queue_feeder_error(e, obj)


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
    route_logs(QueueHandler(results), log_levels, (str(step.name), replica))
    pickling_support.install()
    keep_freed_memory()
    runner = StepRunner(step, replica=replica, enable_metadata=enable_metadata)
    outcome = serve(runner, tasks.get, lambda event: results.put(portable(event)), replace=lambda _: None)
    if outcome == REPLACED:
        results.put(Replaced(step.name, replica))
        results.close()
        results.join_thread()  # the batch's failed result and the goodbye reach the driver
        os._exit(0)  # a hung batch thread must not keep this process alive
    results.put(Exited(step.name, replica))


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
