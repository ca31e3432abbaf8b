"""The "mp" executor: one OS process per step replica.

Data path: each step has one task queue shared by its replicas, and every worker
writes its events and log records to one results queue that the driver reads on a
receiver thread (`_mp_receiver.py`: the blocking reads and the unpickling of 1 MB
batches stay off the main thread). Every pipe is widened to 1 MB where Linux allows
(`_mp_worker.widen`). `events()` waits on the receiver and on every worker's
sentinel together, so a killed worker is noticed at once. The worker side lives in `_mp_worker.py`;
scheduling decisions belong to the engine, never here.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import connection, get_context
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Any, ClassVar

from stillhouse.core.engine import (
    STOP,
    Died,
    Event,
    Executor,
    Loaded,
    RunContext,
    Task,
    log_levels,
    queue_task,
    reemit,
)
from stillhouse.core.errors import EngineError, PipelineValidationError, StepRuntimeError
from stillhouse.core.limits import worker_environment
from stillhouse.core.step import BaseStep
from stillhouse.executors._gpus import GPU_COUNT_ENV, parse_gpu_count, place_gpus
from stillhouse.executors._mp_receiver import Receiver
from stillhouse.executors._mp_worker import Exited, Replaced, ResultsQueue, widen, worker_main

logger = logging.getLogger("stillhouse.executors.mp")

START_METHOD_ENV = "STILLHOUSE_START_METHOD"
"""Overrides the default start method, e.g. to try "spawn" (macOS, Python 3.14) on Linux."""

START_METHODS = ("fork", "forkserver", "spawn")

DEFAULT_JOIN_TIMEOUT = 30.0
"""Seconds a graceful stop waits for replicas to unload before terminating them: time
for a model to free its GPU, but a stuck `unload()` cannot hang the run."""

KILL_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL for a replica that outlived its join timeout."""


@dataclass
class _Replica:
    step_name: str
    index: int
    process: BaseProcess
    gpus: list[str]
    args: tuple[Any, ...] = ()  # what `worker_main` was started with, to start it again
    loaded: bool = False
    exited: bool = False  # it said goodbye: its end is not a death
    restart: bool = False  # it ended after a batch timeout: start a new one in its place


class MultiprocessingExecutor(Executor):
    """Runs each replica of a step in its own process.

    Options:
        start_method: "fork", "forkserver" or "spawn"; default `STILLHOUSE_START_METHOD`,
            else "fork" on Linux and "spawn" elsewhere.
        gpu_count: GPUs to hand out when `CUDA_VISIBLE_DEVICES` is unset (default
            `STILLHOUSE_GPU_COUNT`, else 0).
        join_timeout: Seconds to wait for replicas to unload when stopping (default 30).

    A replica of a step with `resources.gpus = n` gets its own n devices in
    `CUDA_VISIBLE_DEVICES`, set in the child before `load()`.
    """

    name: ClassVar[str] = "mp"
    runs_in_order: ClassVar[bool] = True  # a FIFO queue per step
    known_options: ClassVar[tuple[str, ...]] = ("start_method", "gpu_count", "join_timeout")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.start_method = _start_method(options.get("start_method"))
        self._ctx = get_context(self.start_method)
        self._gpu_count = parse_gpu_count(options.get("gpu_count", os.environ.get(GPU_COUNT_ENV)))
        self._join_timeout = float(options.get("join_timeout", DEFAULT_JOIN_TIMEOUT))
        self._results: ResultsQueue | None = None
        self._receiver: Receiver | None = None  # reads `_results` off the main thread
        self._tasks: dict[str, Queue] = {}
        self._replicas: dict[tuple[str, int], _Replica] = {}
        self._pending: list[Event] = []

    # -- the Executor interface ---------------------------------------------------------

    def start(self, steps: Sequence[BaseStep], context: RunContext) -> None:
        enable_metadata = context.enable_metadata
        for step in steps:
            if step.name in self._tasks:
                raise EngineError(f"Step {step.name!r} was started twice without being stopped.")
        taken = [gpu for replica in self._replicas.values() for gpu in replica.gpus]
        placement = place_gpus(steps, self._gpu_count, taken)  # raises before any process
        if self._results is None:
            self._results = ResultsQueue(ctx=self._ctx)
            self._receiver = Receiver(self._results)
            self._receiver.start()
            # Workers are not daemonic (steps may start processes of their own, as vLLM
            # does), so multiprocessing's exit hook would wait for them forever.
            atexit.register(self._at_exit)
        levels = log_levels()
        for step in steps:
            tasks = widen(self._ctx.Queue())  # a task carries its batch's rows
            tasks._ignore_epipe = True  # see _close_queue
            self._tasks[step.name] = tasks
            for index in range(step.resources.replicas):
                gpus = placement.get((step.name, index), [])
                env = worker_environment()  # a fork server's children miss the driver's
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                args = (step, index, tasks, self._results, enable_metadata, env, levels, os.getpid())
                self._spawn(_Replica(step.name, index, None, gpus, args))  # type: ignore[arg-type]

    def _spawn(self, replica: _Replica) -> None:
        """Start (or restart) the process of `replica`."""
        process = self._ctx.Process(
            target=worker_main, args=replica.args, name=f"stillhouse-{replica.step_name}-{replica.index}"
        )
        try:
            process.start()
        except Exception as exc:
            raise StepRuntimeError(
                f"Step {replica.step_name!r} could not be sent to a worker process "
                f"(start method {self.start_method!r}): {type(exc).__name__}: {exc}. "
                "Steps are pickled to their workers: define the step class or "
                "`@step` function at module level in an importable module, keep its "
                "fields picklable, and run the pipeline under "
                "`if __name__ == '__main__':`.",
                step_name=replica.step_name,
            ) from exc
        replica.process = process
        self._replicas[replica.step_name, replica.index] = replica

    def send(self, task: Task) -> None:
        queue_task(self._tasks, task)

    def events(self, timeout: float) -> list[Event]:
        events, self._pending = self._pending, []
        if self._results is None:
            return events  # nothing started: nothing can arrive
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self._poll(0.0 if events else max(0.0, deadline - time.monotonic()), events)
            if events or time.monotonic() >= deadline:
                return events

    def stop_steps(self, names: Sequence[str]) -> None:
        names = [name for name in names if name in self._tasks]
        targets = [r for r in self._replicas.values() if r.step_name in names]
        for replica in targets:
            self._tasks[replica.step_name].put(STOP)
        self._join(targets, self._join_timeout)
        self._end([r for r in targets if (r.step_name, r.index) in self._replicas], force=False)
        for name in names:
            _close_queue(self._tasks.pop(name))

    def shutdown(self, force: bool = False) -> None:
        try:
            if not force:
                targets = list(self._replicas.values())
                for replica in targets:
                    self._tasks[replica.step_name].put(STOP)
                self._join(targets, self._join_timeout)
            self._end(list(self._replicas.values()), force=force)
        finally:
            for tasks in self._tasks.values():
                _close_queue(tasks)
            self._tasks.clear()
            if self._results is not None:
                assert self._receiver is not None
                self._receiver.stop()
                if not self._receiver.is_alive():
                    # Only this process reads it and every writer is gone: close both ends
                    # now rather than leave the descriptors to the garbage collector.
                    self._results._reader.close()
                    self._results._writer.close()
                self._results = self._receiver = None
            self._pending.clear()
            atexit.unregister(self._at_exit)

    def worker_pids(self) -> dict[str, list[int]]:
        """`{step name: [pid of each live replica]}`, for tests and debugging."""
        pids: dict[str, list[int]] = {}
        for (name, _), replica in sorted(self._replicas.items()):
            if replica.process.pid is not None:
                pids.setdefault(name, []).append(replica.process.pid)
        return pids

    # -- driver side of the data path ------------------------------------------------------

    def _poll(self, timeout: float, out: list[Event]) -> None:
        """Wait up to `timeout` for a message or a worker's end; collect what came."""
        if self._receiver is None:
            return
        by_sentinel = {r.process.sentinel: r for r in self._replicas.values()}
        ready = connection.wait([self._receiver.wake, *by_sentinel], timeout)
        if not ready:
            return
        # Drain first: a worker flushes everything it sent before it exits, so a clean
        # exit's goodbye is always read before its sentinel is judged.
        if any(handle in by_sentinel for handle in ready):
            self._receiver.settle()
        self._drain(out)
        for handle in ready:
            replica = by_sentinel.get(handle)
            if replica is not None:
                self._reap(replica, out)

    def _drain(self, out: list[Event]) -> None:
        assert self._receiver is not None
        for item in self._receiver.take():
            if isinstance(item, logging.LogRecord):
                reemit(item)  # the user's loggers, and pipeline.log for a step's records
            elif isinstance(item, Exited | Replaced):
                replica = self._replicas.get((item.step_name, item.replica))
                if replica is not None:
                    replica.exited = True
                    replica.restart = isinstance(item, Replaced)
            else:
                if isinstance(item, Loaded) and (item.step_name, item.replica) in self._replicas:
                    self._replicas[item.step_name, item.replica].loaded = True
                out.append(item)

    def _reap(self, replica: _Replica, out: list[Event]) -> None:
        process = replica.process
        process.join(1.0)  # its sentinel is ready: this returns at once and reaps it
        del self._replicas[replica.step_name, replica.index]
        if not replica.exited:
            detail = _describe_exit(process)
            if not replica.loaded:
                detail += (
                    " before its step loaded; its traceback, if any, is on stderr (a script "
                    "run with 'spawn' or 'forkserver' needs `if __name__ == '__main__':`)"
                )
            out.append(Died(replica.step_name, replica.index, detail))
        if process.exitcode is not None:
            process.close()
        if replica.restart and replica.step_name in self._tasks:
            logger.warning(
                "Replica %d of step %r timed out on a batch; its process ended and a new one "
                "takes its place.", replica.index, replica.step_name,
            )
            self._spawn(_Replica(replica.step_name, replica.index, None, replica.gpus, replica.args))  # type: ignore[arg-type]

    def _join(self, targets: list[_Replica], timeout: float) -> None:
        """Wait for `targets` to exit, reading results meanwhile (a worker cannot exit
        while its last messages do not fit in the pipe)."""
        deadline = time.monotonic() + timeout
        while any((r.step_name, r.index) in self._replicas for r in targets):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._poll(remaining, self._pending)

    def _end(self, targets: list[_Replica], *, force: bool) -> None:
        """Terminate (or kill) replicas that are still there, and reap them."""
        for replica in targets:
            if replica.process.is_alive():
                if not force:
                    logger.warning(
                        "Replica %d of step %r did not stop within %.0f s; terminating it.",
                        replica.index, replica.step_name, self._join_timeout,
                    )
                    replica.process.terminate()
                else:
                    replica.process.kill()
        for replica in targets:
            replica.process.join(KILL_GRACE)
            if replica.process.exitcode is None:
                replica.process.kill()
                replica.process.join()
            self._replicas.pop((replica.step_name, replica.index), None)
            replica.process.close()

    def _at_exit(self) -> None:
        self.shutdown(force=True)


def _start_method(requested: str | None) -> str:
    default = "fork" if sys.platform.startswith("linux") else "spawn"
    method = requested or os.environ.get(START_METHOD_ENV) or default
    if method not in START_METHODS:
        raise PipelineValidationError(
            f"Unknown start method {method!r} for the 'mp' executor. Expected one of: "
            f"{', '.join(repr(m) for m in START_METHODS)}. Set the `start_method` option "
            f"or {START_METHOD_ENV}."
        )
    return method


def _describe_exit(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code} without saying goodbye"
    return f"worker process {process.pid} ({process.name}) {how}"


def _close_queue(tasks: Queue) -> None:
    # Tasks nobody will read must not block the driver's exit on the feeder thread.
    tasks.cancel_join_thread()
    tasks.close()
    feeder = tasks._thread
    if feeder is not None:
        feeder.join(0.2)
        if feeder.is_alive():
            # Blocked writing to a pipe no worker reads: closing our read end gives it
            # EPIPE, which `_ignore_epipe` turns into a quiet exit.
            tasks._reader.close()
