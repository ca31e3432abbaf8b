"""The child side of the "mp" executor: what runs inside each worker process.

Everything here executes in the worker (or is pickled to it), so it must be
importable by a freshly spawned interpreter and must not touch driver state.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from logging.handlers import QueueHandler
from multiprocessing.queues import Queue
from typing import Any

from tblib import pickling_support

from stillhouse.core.engine import (
    REPLACED,
    Failed,
    Finished,
    StepRunner,
    portable,
    route_logs,
    serve,
)
from stillhouse.core.step import BaseStep

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


class ResultsQueue(Queue):
    """The queue workers send events and log records on.

    Pickling happens in the queue's feeder thread, where a failure would otherwise
    just print a traceback and drop the message (and the engine would wait forever
    for that batch). This turns an unpicklable result into a `Failed` event.
    """

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
) -> None:
    """Body of a worker process: serve `step` from `tasks` until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's to handle
    os.environ.update(env)  # before load(): CUDA_VISIBLE_DEVICES must precede any CUDA init
    route_logs(QueueHandler(results), log_levels, (str(step.name), replica))
    pickling_support.install()
    _exit_with_parent()
    runner = StepRunner(step, replica=replica, enable_metadata=enable_metadata)
    outcome = serve(runner, tasks.get, lambda event: results.put(portable(event)), replace=lambda _: None)
    if outcome == REPLACED:
        results.put(Replaced(step.name, replica))
        results.close()
        results.join_thread()  # the batch's failed result and the goodbye reach the driver
        os._exit(0)  # a hung batch thread must not keep this process alive
    results.put(Exited(step.name, replica))


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_INTERVAL)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="stillhouse-parent-watch", daemon=True).start()
