"""The "mp" executor: one OS process per step replica.

Data path: each step has one task queue shared by its replicas, and every worker
writes its events and log records to one results queue that the driver reads on a
receiver thread (`_mp_receiver.py`: the blocking reads and the unpickling of 1 MB
batches stay off the main thread). Every pipe is widened to 1 MB where Linux allows
(`_mp_worker.widen`). `events()` waits on the receiver and on every worker's
sentinel together, so a killed worker is noticed at once. The worker side lives in `_mp_worker.py`;
scheduling decisions belong to the engine, never here.

`batch_timeout` is enforced inside the worker (`StepRunner`), and, as a last resort,
from here: a worker of a step with a timeout reports each task it takes (`Took`), and
one that holds a batch `KILL_MARGIN` past its timeout (a C call holding the GIL, which
keeps the worker's own watchdog from running) is killed and replaced by `events()`.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import connection, get_context
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Any, ClassVar

from stillhouse.core.engine import (
    STOP,
    BatchKey,
    Died,
    Event,
    Executor,
    Failed,
    Finished,
    Loaded,
    RunContext,
    StepRunner,
    Task,
    failed_event,
    log_levels,
    queue_task,
    reemit,
)
from stillhouse.core.errors import EngineError, PipelineValidationError, StepRuntimeError
from stillhouse.core.limits import worker_environment
from stillhouse.core.step import BaseStep
from stillhouse.executors._gpus import GPU_COUNT_ENV, parse_gpu_count, place_gpus
from stillhouse.executors._mp_receiver import SETTLE_TIMEOUT, Receiver
from stillhouse.executors._mp_worker import Exited, Replaced, ResultsQueue, Took, widen, worker_main

logger = logging.getLogger("stillhouse.executors.mp")

START_METHOD_ENV = "STILLHOUSE_START_METHOD"
"""Overrides the default start method, e.g. to try "spawn" (macOS, Python 3.14) on Linux."""

START_METHODS = ("fork", "forkserver", "spawn")

DEFAULT_JOIN_TIMEOUT = 30.0
"""Seconds a graceful stop waits for replicas to unload before terminating them: time
for a model to free its GPU, but a stuck `unload()` cannot hang the run."""

KILL_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL for a replica that outlived its join timeout."""

KILL_MARGIN = 5.0
"""Seconds past a batch's `batch_timeout` (at least; half the timeout when that is longer)
after which the driver kills (SIGKILL) the worker process holding the batch, fails the
batch as the worker would have, and starts a new process in its place. The worker's own
watchdog fails an overlong batch first; it cannot run while a thread of the step holds
the GIL (a C call that does not release it: a catastrophic regex, some tokenizers), and
then only the driver can end it. The margin keeps a loaded machine's slow answer from
being mistaken for such a hang."""


def kill_after(timeout: float) -> float:
    """Seconds a worker may hold a batch of a step with this `batch_timeout` before the
    driver kills it (`KILL_MARGIN`)."""
    return timeout + max(KILL_MARGIN, timeout / 2)


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
    held: dict[BatchKey, float] = field(default_factory=dict)  # batches it took: since when


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
        # Steps with a batch_timeout, and their tasks sent and not answered: a worker
        # killed for holding a batch too long is replaced, and the tasks it held resent.
        self._timed: dict[str, BaseStep] = {}
        self._sent: dict[tuple[str, BatchKey], Task] = {}
        self._enable_metadata = False

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
        self._enable_metadata = enable_metadata
        for step in steps:
            if step.batch_timeout is not None:
                self._timed[step.name] = step
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
        if task.step_name in self._timed:
            self._sent[task.step_name, task.key] = task

    def events(self, timeout: float) -> list[Event]:
        events, self._pending = self._pending, []
        if self._results is None:
            return events  # nothing started: nothing can arrive
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            # Wake for the first batch due to be taken from its worker, too.
            until = min(deadline, self._next_kill())
            self._poll(0.0 if events else max(0.0, until - time.monotonic()), events)
            self._kill_overdue(events)
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
            self._forget(name)

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
            self._timed.clear()
            self._sent.clear()
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
            elif isinstance(item, Took):
                replica = self._replicas.get((item.step_name, item.replica))
                if replica is not None:
                    replica.held[item.key] = time.monotonic()
            else:
                if isinstance(item, Loaded) and (item.step_name, item.replica) in self._replicas:
                    self._replicas[item.step_name, item.replica].loaded = True
                elif isinstance(item, Finished):
                    self._answered(item.result.step_name, item.result.key)
                elif isinstance(item, Failed) and item.key is not None:
                    self._answered(item.step_name, item.key)
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

    # -- batches held far past their batch_timeout -----------------------------------------

    def _answered(self, step_name: str, key: BatchKey) -> None:
        if self._sent.pop((step_name, key), None) is None:
            return  # not a step with a timeout
        for replica in self._replicas.values():
            if replica.step_name == step_name and replica.held.pop(key, None) is not None:
                return

    def _next_kill(self) -> float:
        """When the first worker is due to be killed for a batch it holds (monotonic)."""
        due = float("inf")
        for replica in self._replicas.values():
            if replica.held:
                timeout = self._timed[replica.step_name].batch_timeout
                due = min(due, min(replica.held.values()) + kill_after(timeout))  # type: ignore[arg-type]
        return due

    def _kill_overdue(self, out: list[Event]) -> None:
        now = time.monotonic()
        for replica in list(self._replicas.values()):
            if replica.held and min(replica.held.values()) + kill_after(
                self._timed[replica.step_name].batch_timeout  # type: ignore[arg-type]
            ) <= now:
                self._kill_hung(replica, out)

    def _kill_hung(self, replica: _Replica, out: list[Event]) -> None:
        """Kill `replica`, which holds a batch far past its timeout; fail the batches it
        held past their timeout as the worker would have, resend the others (they never
        ended: no result of theirs exists), and start a new process in its place."""
        assert self._receiver is not None and self._results is not None
        step = self._timed[replica.step_name]
        timeout: float = step.batch_timeout  # type: ignore[assignment]
        process = replica.process
        logger.warning(
            "Replica %d of step %r (process %s) has held a batch for more than %.0f s, past its "
            "batch_timeout of %r s, without its own timeout ending it (a call that holds the "
            "GIL?); killing the process and starting a new one in its place.",
            replica.index, replica.step_name, process.pid, kill_after(timeout), timeout,
        )
        process.kill()
        process.join(KILL_GRACE)
        # What it sent before it died is in: a batch it answered just now is answered.
        self._receiver.settle()
        self._drain(out)
        del self._replicas[replica.step_name, replica.index]
        if process.exitcode is not None:
            process.close()
        if not _lock_free(self._results._wlock):  # type: ignore[attr-defined]
            # Killed in the middle of a write: the results pipe cannot be trusted.
            out.append(Died(replica.step_name, replica.index, (
                f"worker process {process.pid} was killed for holding a batch past its "
                f"batch_timeout ({timeout!r} s) while it was sending to the driver"
            )))
            return
        now = time.monotonic()
        for key, since in sorted(replica.held.items()):
            task = self._sent.pop((replica.step_name, key), None)
            if task is None:
                continue
            if now - since >= timeout:
                out.append(_timed_out(step, replica.index, task, self._enable_metadata, now - since))
            elif replica.step_name in self._tasks:
                self._sent[replica.step_name, key] = task
                self._tasks[replica.step_name].put(task)  # another replica runs it
        if replica.step_name in self._tasks:
            self._spawn(_Replica(replica.step_name, replica.index, None, replica.gpus, replica.args))  # type: ignore[arg-type]

    def _forget(self, step_name: str) -> None:
        self._timed.pop(step_name, None)
        for key in [k for k in self._sent if k[0] == step_name]:
            del self._sent[key]

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


def _timed_out(step: BaseStep, replica: int, task: Task, enable_metadata: bool, seconds: float) -> Event:
    """The event for a batch its worker was killed over: what the worker would have sent
    had its own timeout ended it (a failed batch, or a `Failed` event that stops the run
    for a generator or global step)."""
    # TODO(core): a public `StepRunner.timed_out(task, seconds) -> Outcome` would replace
    # these two private calls; they keep the result identical to the worker's own.
    runner = StepRunner(step, replica=replica, enable_metadata=enable_metadata)
    try:
        loaded = Task(task.step_name, task.key, _inputs(task), task.offset, task.resume_state)
        result = runner._failed(loaded, runner._timeout_error(loaded), time.perf_counter() - seconds)
    except Exception as exc:  # FatalStepError: the run stops
        return failed_event(step.name, exc)
    return Finished(result)


def _inputs(task: Task) -> Any:
    inputs = task.inputs
    return inputs if inputs is None or isinstance(inputs, list) else inputs.load()


def _lock_free(lock: Any) -> bool:
    """Whether `lock` (a queue's lock, None on Windows) can be taken: a process killed
    while holding it would hold it for good."""
    if lock is None:
        return True
    if not lock.acquire(timeout=SETTLE_TIMEOUT):
        return False
    lock.release()
    return True


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
