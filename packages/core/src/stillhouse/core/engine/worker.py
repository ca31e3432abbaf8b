"""How a worker runs a step: the same code under every executor.

An executor owns transport (queues, threads, actors); `StepRunner` owns what
happens to a task inside the worker, so failures, imputation, generator offsets,
async steps, suspension and batch timeouts behave identically everywhere.

Async steps (`async def process`) run on an event loop that the runner keeps in a
thread of its own: it works the same whether or not the calling thread already
runs a loop (Jupyter), and `submit()` lets an executor keep up to
`step.concurrency` batches of one replica in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from stillhouse.core.contract import check_outputs
from stillhouse.core.engine.logs import environment_secrets, mask_secrets, step_context
from stillhouse.core.engine.loopwatch import LoopWatch, Pending
from stillhouse.core.engine.protocol import Payload, Task, TaskResult
from stillhouse.core.errors import (
    BatchTimeoutError,
    StepContractError,
    StepRuntimeError,
    StopRun,
    SuspendStep,
)
from stillhouse.core.secrets import secret_values
from stillhouse.core.step import (
    METADATA_COLUMN,
    BaseStep,
    GeneratorStep,
    _batch_failures,
    _resume_state,
)
from stillhouse.core.typing import Row

__all__ = ["METADATA_COLUMN", "PREVIEW_CHARS", "FatalStepError", "Outcome", "StepRunner", "preview_rows"]

logger = logging.getLogger("stillhouse.worker")

Outcome = TaskResult | Exception
"""What `StepRunner.submit` hands its callback: a result, or a `FatalStepError`."""


Computed = tuple[list[Row], bool, list[str]]
"""A batch's rows, whether it was the step's last, and what the step said failed in it
(`record_failure`)."""

FAILURES_SHOWN = 3
"""`record_failure` messages kept in a batch's error (the count says how many there were)."""

PREVIEW_CHARS = 200
"""Characters of a batch's rows shown in a failure message (`preview_rows`)."""


def preview_rows(inputs: list[list[Row]] | None, limit: int = PREVIEW_CHARS) -> str | None:
    """A short view of a batch's rows for messages: the first input's rows as `repr`,
    cut at `limit` characters, with the row count when cut. None for no inputs."""
    if not inputs:
        return None
    rows = inputs[0]
    text = repr(rows)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(rows)} rows)"
    return text


class FatalStepError(Exception):
    """Raised by `StepRunner.run` when the failure must stop the run.

    Carries the original exception (`__cause__`) and its formatted traceback; when a
    batch caused it, that batch's `key` and a truncated `preview` of its rows."""

    def __init__(
        self,
        step_name: str,
        original: BaseException,
        *,
        key: tuple[int, int] | None = None,
        preview: str | None = None,
    ) -> None:
        where = f" on batch {key}" if key is not None else ""
        super().__init__(f"Step {step_name!r} failed{where}: {type(original).__name__}: {original}")
        self.step_name = step_name
        self.original = original
        self.key = key
        self.preview = preview
        self.traceback = "".join(traceback.format_exception(original))

    def __reduce__(self) -> Any:  # keyword arguments survive pickling
        return _fatal, (self.step_name, self.original, self.key, self.preview)


class StepRunner:
    """Holds one replica of a step: `load()`, then `run(task)` (or `submit`) per task,
    then `unload()`.

    A sync batch that outlives `step.batch_timeout` runs in a helper thread that cannot
    be killed: the batch fails, the runner is marked `abandoned` (the thread may still
    use the step object), and the executor replaces the replica (`replacement()`, or a
    new process under "mp"). An async step's batch that blocks the runner's loop past
    its `batch_timeout` is failed from beside the loop (`LoopWatch`), and the runner is
    abandoned the same way.
    """

    def __init__(self, step: BaseStep, *, replica: int = 0, enable_metadata: bool = False) -> None:
        self.step = step
        self.replica = replica
        self.enable_metadata = enable_metadata
        self.abandoned = False
        self._secret_values: set[str] | None = None
        self._generator: Iterator[tuple[list[Row], bool]] | None = None
        self._agenerator: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._watch: LoopWatch | None = None
        # Required output columns (after output_mappings) each row of a batch must set.
        unchecked = getattr(step, "outputs_follow_data", False)
        self._required = [] if unchecked else [c for c, r in step.get_outputs().items() if r]

    @property
    def concurrency(self) -> int:
        """How many tasks this replica works on at once: `step.concurrency` for an async
        normal step, else 1."""
        if self.step.is_async and self.step.is_normal:
            return max(1, int(getattr(self.step, "concurrency", 1)))
        return 1

    # -- lifecycle --------------------------------------------------------------------

    @step_context  # records made inside are tagged with the step and replica
    def load(self) -> None:
        try:
            if self.step.is_async:  # on the step's loop: load() may create async clients
                self._on_loop(_called(self.step.load)).result()
            else:
                self.step.load()
        except Exception as exc:
            raise FatalStepError(self.step.name, exc) from exc

    @step_context
    def unload(self) -> None:
        answered = True  # the loop ran what it was given: it may be waited for below
        try:
            if self._loop is not None:
                answered = False
                self._on_loop(_called(self.step.unload)).result()
                answered = True
            else:
                self.step.unload()
        except Exception:
            logger.exception("Step %r failed to unload (ignored)", self.step.name)
        finally:  # interrupted while a blocked loop never ran unload(): leave it at once
            self._stop_loop(wait=answered)

    def cancel_pending(self) -> None:
        """Cancel the batches an async replica is still running (the engine gave them up
        on a stop): what they would do next (a remote call) is not done. Safe from any
        thread; a sync step's batch cannot be cancelled."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_cancel_tasks, loop)

    def replacement(self) -> StepRunner:
        """A new runner on a copy of the step, for an in-process replica that replaces
        this abandoned one (its caller loads it)."""
        return StepRunner(self.step.model_copy(), replica=self.replica, enable_metadata=self.enable_metadata)

    # -- running tasks ----------------------------------------------------------------

    @step_context
    def run(self, task: Task) -> TaskResult:
        """Run `task` to its end (an async step's on the runner's loop).

        Raises `FatalStepError` when the failure must stop the run."""
        if not self.step.is_async:
            return self._run_sync(task)
        answer: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self.submit(task, answer.set_result)  # answered by the loop, or by its watch
        outcome = answer.result()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @step_context  # an async task copies this context: its records are tagged too
    def submit(self, task: Task, on_done: Callable[[Outcome], None]) -> None:
        """Start `task` and return at once; `on_done` gets its `TaskResult` (or the
        `FatalStepError`) once, later, from the loop's thread (or from its watch's, for a
        batch that blocked the loop past its timeout). Sync steps run before returning."""
        if not self.step.is_async:
            on_done(_outcome(lambda: self._run_sync(task)))
            return
        self._start_loop()
        pending = self._watch.track(task, on_done)  # type: ignore[union-attr]  # _start_loop made it
        future = self._on_loop(self._answering(task, pending))
        # What ends it otherwise: the loop closed under the task (its error).
        future.add_done_callback(lambda done: pending.answer(_outcome(done.result)))

    def _run_sync(self, task: Task) -> TaskResult:
        started = time.perf_counter()
        task = _loaded(task)
        try:
            rows, last, failures = self._with_timeout(lambda: self._compute(task), task)
        except Exception as exc:
            return self._failed(task, exc, started)
        return TaskResult(task.step_name, task.key, rows, last, _failure(failures), time.perf_counter() - started)

    async def _answering(self, task: Task, pending: Pending) -> TaskResult:
        """`_arun`, answering the batch on the loop as soon as it ends. An answer through
        the future's callback is queued on the loop behind what runs next: a batch that
        then blocks the loop past its timeout would make the watch fail this one too,
        though it was done (its rows, a paid call's, lost)."""
        try:
            result = await self._arun(task)
        except Exception as exc:  # a FatalStepError
            pending.answer(exc)
            raise
        pending.answer(result)
        return result

    async def _arun(self, task: Task) -> TaskResult:
        started = time.perf_counter()
        task = _loaded(task)
        timeout = self.step.batch_timeout
        try:
            try:
                async with asyncio.timeout(timeout) as deadline:
                    rows, last, failures = await self._acompute(task)
            except TimeoutError as exc:
                if deadline.expired():
                    raise self._timeout_error(task) from exc
                raise
        except Exception as exc:
            return self._failed(task, exc, started)
        return TaskResult(task.step_name, task.key, rows, last, _failure(failures), time.perf_counter() - started)

    def _compute(self, task: Task) -> Computed:
        failures: list[str] = []
        resume_token = _resume_state.set(task.resume_state)
        failures_token = _batch_failures.set(failures)
        try:
            if isinstance(self.step, GeneratorStep):
                if self._generator is None:
                    self._generator = iter(self.step.process_applying_mappings(offset=task.offset))
                rows, last = _next_generated(self._generator)
                check_outputs(self.step.name, self._required, rows, task.key)
                return rows, last, failures
            rows = _collect(self.step.process_applying_mappings(*task.inputs))
            check_outputs(self.step.name, self._required, rows, task.key)
            return rows, self.step.is_global, failures
        finally:
            _batch_failures.reset(failures_token)
            _resume_state.reset(resume_token)

    async def _acompute(self, task: Task) -> Computed:
        # This coroutine runs in its own context: what it sets is this batch's alone.
        failures: list[str] = []
        _resume_state.set(task.resume_state)
        _batch_failures.set(failures)
        if isinstance(self.step, GeneratorStep):
            if self._agenerator is None:
                self._agenerator = self.step.aprocess_applying_mappings(offset=task.offset)
            try:
                rows, last = await anext(self._agenerator)
            except StopAsyncIteration:
                return [], True, failures
            check_outputs(self.step.name, self._required, rows, task.key)
            return list(rows), bool(last), failures
        rows: list[Row] = []
        async for batch in self.step.aprocess_applying_mappings(*task.inputs):  # type: ignore[attr-defined]
            rows.extend(batch)
        check_outputs(self.step.name, self._required, rows, task.key)
        return rows, self.step.is_global, failures

    def _with_timeout(self, compute: Callable[[], Computed], task: Task) -> Computed:
        """Run `compute` here, or, with a `batch_timeout`, in a helper thread that is
        abandoned (and the runner with it) when the batch outlives the timeout."""
        timeout = self.step.batch_timeout
        if timeout is None:
            return compute()
        future: concurrent.futures.Future[Computed] = concurrent.futures.Future()

        def target() -> None:
            try:
                future.set_result(compute())
            except BaseException as exc:
                future.set_exception(exc)

        name = f"stillhouse-{self.step.name}-{self.replica}-batch-{task.key[0]}-{task.key[1]}"
        context = contextvars.copy_context()  # the step's log tag goes with the batch
        started = time.monotonic()  # before the thread: it may hold the GIL from its start
        threading.Thread(target=context.run, args=(target,), name=name, daemon=True).start()
        try:
            computed = future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.abandoned = True
            raise self._timeout_error(task) from None
        if time.monotonic() - started > timeout:
            # Done, but late: the batch held the GIL (a C call) past its timeout, so no
            # thread could end it in time. An overlong batch is a failed batch all the same.
            raise self._timeout_error(task)
        return computed

    def _expired(self, pending: Pending) -> Outcome:
        """The outcome of a batch the watch failed: it outlived its timeout on a loop that
        could not end it (blocked by a batch), or that it would not let end it."""
        task = _loaded(pending.task)
        return _outcome(lambda: self._failed(task, self._timeout_error(task), pending.started))

    def _loop_blocked(self) -> None:
        self.abandoned = True

    def _timeout_error(self, task: Task) -> BatchTimeoutError:
        return BatchTimeoutError(
            f"Step {self.step.name!r} took longer than its batch_timeout "
            f"({self.step.batch_timeout!r} s) on batch {task.key}. Raise `batch_timeout` "
            "if batches legitimately take this long, or find what the step waits for.",
            step_name=self.step.name,
        )

    def _failed(self, task: Task, exc: Exception, started: float) -> TaskResult:
        """The result of a batch whose `process` raised; raises `FatalStepError` when
        the run must stop (global and generator steps)."""
        seconds = time.perf_counter() - started
        if isinstance(exc, SuspendStep):
            suspended = self._suspension(exc)
            if isinstance(suspended, dict):
                return TaskResult(task.step_name, task.key, [], False, None, seconds, suspended)
            exc = suspended
        # A rerun meets a broken contract again; a StopRun says no batch can succeed.
        if not self.step.is_normal or isinstance(exc, StepContractError | StopRun):
            raise FatalStepError(
                self.step.name, exc, key=task.key, preview=preview_rows(_inputs_of(task))
            ) from exc
        # Stored with the batch and in its rows' metadata: never with a secret in it (an
        # error that quotes the key it was given).
        error = mask_secrets(f"{type(exc).__name__}: {exc}", self._secrets())
        logger.warning(
            "Step %r failed on batch %s (%d rows); its outputs are set to None: %s\nRows: %s\n%s",
            self.step.name,
            task.key,
            len(task.inputs[0]) if task.inputs else 0,
            error,
            preview_rows(_inputs_of(task)),
            "".join(traceback.format_exception(exc)),
        )
        return TaskResult(task.step_name, task.key, self._imputed(task.inputs, error), False, error, seconds)

    def _secrets(self) -> set[str]:
        """The values of the step's secret fields and of credential-named environment
        variables, masked in the error text a failed batch stores."""
        if self._secret_values is None:
            self._secret_values = secret_values(self.step) | environment_secrets()
        return self._secret_values

    def _suspension(self, exc: SuspendStep) -> dict[str, Any] | Exception:
        """What the engine keeps of a `SuspendStep`, or the error that replaces it."""
        if self.step.is_generator:
            return StepRuntimeError(
                f"Generator step {self.step.name!r} raised SuspendStep; only normal and "
                "global steps can suspend. Suspend in a step after the generator instead.",
                step_name=self.step.name,
            )
        try:
            json.dumps(exc.state)
        except (TypeError, ValueError) as error:
            return StepRuntimeError(
                f"Step {self.step.name!r} suspended with a state that is not JSON-serialisable "
                f"({error}): {exc.state!r:.200}. Keep only str, numbers, lists and dicts in it.",
                step_name=self.step.name,
            )
        retry_after = exc.retry_after
        return {"state": exc.state, "retry_after": None if retry_after is None else float(retry_after)}

    def _imputed(self, inputs: list[list[Row]] | None, error: str) -> list[Row]:
        rows = self.step.impute_step_outputs(list(inputs[0]) if inputs else [])
        if not self.enable_metadata:
            return rows
        for row in rows:
            metadata: dict[str, Any] = dict(row.get(METADATA_COLUMN) or {})
            metadata[f"error_{self.step.name}"] = error
            row[METADATA_COLUMN] = metadata
        return rows

    # -- the event loop of an async step ------------------------------------------------

    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule `coro` on this runner's loop (started on first use, in its own thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._start_loop())

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        """This runner's loop and its watch, started on first use, in their own threads."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_forever, args=(loop,), daemon=True,
                name=f"stillhouse-{self.step.name}-{self.replica}-loop",
            )
            thread.start()
            self._loop, self._loop_thread = loop, thread
            self._watch = LoopWatch(
                loop, thread, step_name=self.step.name, replica=self.replica,
                timeout=self.step.batch_timeout, expire=self._expired, on_blocked=self._loop_blocked,
            )
            self._watch.start()
        return self._loop

    def _stop_loop(self, wait: bool = True) -> None:
        """Close the async generators, stop the loop and close it; without `wait`, only
        ask it to stop (its thread is a daemon: a loop a step blocked is left behind)."""
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None:
            return
        if self._watch is not None:
            self._watch.stop()
        self._loop = self._loop_thread = self._watch = None
        closing = asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop)
        try:
            closing.result(5 if wait else 0)
        except Exception:
            logger.debug("Async generators of step %r did not close", self.step.name)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5 if wait else 0)
        if not thread.is_alive():
            loop.close()


def _failure(failures: list[str]) -> str | None:
    """A batch's stored error from what its step recorded with `record_failure`: None
    when nothing failed, else how many failures and the first few."""
    if not failures:
        return None
    shown = "; ".join(failures[:FAILURES_SHOWN])
    more = f"; and {len(failures) - FAILURES_SHOWN} more" if len(failures) > FAILURES_SHOWN else ""
    return f"{len(failures)} failure(s) recorded by the step: {shown}{more}"


def _fatal(step_name: str, original: BaseException, key: Any, preview: str | None) -> FatalStepError:
    return FatalStepError(step_name, original, key=key, preview=preview)


def _inputs_of(task: Task) -> list[list[Row]] | None:
    return task.inputs if isinstance(task.inputs, list) else None


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


async def _called(function: Callable[[], Any]) -> Any:
    return function()


def _outcome(get: Callable[[], TaskResult]) -> Outcome:
    try:
        return get()
    except Exception as exc:  # FatalStepError, or the loop was closed under the task
        return exc


def _loaded(task: Task) -> Task:
    if isinstance(task.inputs, Payload):
        return Task(task.step_name, task.key, task.inputs.load(), task.offset, task.resume_state)
    return task


def _next_generated(generator: Iterator[tuple[list[Row], bool]]) -> tuple[list[Row], bool]:
    try:
        rows, last = next(generator)
    except StopIteration:
        return [], True
    return list(rows), bool(last)


def _collect(outputs: Any) -> list[Row]:
    rows: list[Row] = []
    for batch in outputs:
        rows.extend(batch)
    return rows
