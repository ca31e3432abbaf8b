"""The batch manager: one loop in the driver that owns all scheduling state.

It pulls generators lazily, cuts input batches from predecessors' streams, looks
each batch up in the run store before sending it to a worker, releases finished
batches in key order (so output order never depends on timing or replicas),
routes them, and moves through the load stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from stillhouse.core.engine.context import RunContext
from stillhouse.core.engine.guards import guard_storage
from stillhouse.core.engine.plan import ExecutionPlan
from stillhouse.core.engine.protocol import (
    BatchRecord,
    Died,
    Event,
    Executor,
    Failed,
    Finished,
    Loaded,
    OutputWriter,
    Task,
)
from stillhouse.core.engine.state import Lineage, Span, StepState, StepStatus
from stillhouse.core.errors import (
    EngineError,
    MisalignedInputsError,
    RoutingError,
    StepContractError,
    StepRuntimeError,
    StepsSuspendedError,
    WorkerDiedError,
)

logger = logging.getLogger("stillhouse.engine")

# Rows buffered ahead of the slowest step before generators are paused: enough to keep
# every replica busy, small enough that memory stays flat however large the dataset.
_MIN_BUFFERED_ROWS = 10_000
# STILLHOUSE_TRACE_SCHEDULING=1 logs every batch sent and released (at DEBUG), to see
# why a pipeline waits; off by default because it is one log line per batch.
TRACE = os.environ.get("STILLHOUSE_TRACE_SCHEDULING") == "1"
_REPLAY_CHUNK = 64  # stored batches replayed per pass, so events keep being served
PULLS_AHEAD = 2
"""Pulls a generator has in flight on an executor that `runs_in_order`: it makes its next
batch while the driver stores and passes on the one before. A pull answered after the
generator's last batch is dropped (its rows were never asked for with one pull in
flight), so the results do not change. What does change: `next()` is called once more
after the last batch, so code after the generator's last `yield` runs (with one pull
it never did), and a generator that still computes after yielding `last=True` makes
one batch that is dropped."""
# A step with batches in flight and no result for this many seconds is named in a
# warning (a hung endpoint, a deadlock): without `batch_timeout` nothing else would say
# why the run does not move. Long enough not to fire on slow but healthy batches.
STALL_WARNING = float(os.environ.get("STILLHOUSE_STALL_WARNING", "600"))
# Seconds the first Ctrl+C waits for batches in flight before giving them up (they are
# recomputed on resume) and killing the workers: a hung step must not hold the stop.
STOP_GRACE = float(os.environ.get("STILLHOUSE_STOP_GRACE", "2"))
# Seconds before a suspended batch is sent again under `wait_for_suspended=True` when
# the step gave no `retry_after`.
DEFAULT_RETRY_AFTER = 5.0


class Scheduler:
    """Runs the steps of `states` stage by stage until every step has finished.

    Everything about the run's shape comes from `context.plan` (an `ExecutionPlan`):
    the stages, the order, the routing and where routed branches rejoin. Batch storage
    and `use_fs_to_pass_data` come from the context too."""

    def __init__(
        self,
        context: RunContext,
        states: dict[str, StepState],
        executor: Executor,
        writer: OutputWriter,
        *,
        stop_requested: Callable[[], int] = lambda: 0,
        on_tick: Callable[[], None] = lambda: None,
        dry_run_rows: int | None = None,
        wait_for_suspended: bool = False,
    ) -> None:
        if not isinstance(context.plan, ExecutionPlan):
            raise EngineError(
                "The scheduler needs the run's execution plan in context.plan (got "
                f"{context.plan!r}): build it with Pipeline.validate() or compile_plan(dag)."
            )
        self.plan: ExecutionPlan = context.plan
        self.states = states
        self.executor = executor
        self.writer = writer
        self.context = context
        self.stop_requested = stop_requested
        self.on_tick = on_tick
        self.dry_run_rows = dry_run_rows
        self.batch_storage = context.batch_storage
        self.use_fs_to_pass_data = context.use_fs_to_pass_data
        self.payloads: dict[tuple[str, tuple[int, int]], Any] = {}
        self.active: list[StepState] = []
        self.buffer_cap = _MIN_BUFFERED_ROWS
        self.wait_for_suspended = wait_for_suspended
        self.tasks: dict[tuple[str, tuple[int, int]], Task] = {}  # kept to re-send suspended batches
        self.retries: list[tuple[float, Task]] = []  # (when, task): suspended, sent again in this run
        self.gave_up_on_stop = False  # Ctrl+C gave up batches in flight: kill, do not unload

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        guard_storage(self)
        for state in self.states.values():
            if state.mode == "skip":
                state.move(StepStatus.SKIPPED)
            elif state.is_leaf:
                self.writer.begin(state.name, state.store.version)
        with self._stall_watch():
            for stage in self.plan.stages:
                if all(self.states[name].finished for name in stage):
                    continue
                self._run_stage(stage)

    @contextlib.contextmanager
    def _stall_watch(self) -> Iterator[None]:
        """A thread runs `_watch_stalls` every second beside the loop: an executor that
        runs steps in the loop's own thread ("sync") runs them inside `events()`, where a
        hung step keeps the loop from looking. It only reads the steps' state."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(1.0):
                self._watch_stalls()

        watcher = threading.Thread(target=watch, name="stillhouse-stall-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join(5.0)

    def _run_stage(self, stage: tuple[str, ...]) -> None:
        """Run one load stage to its end.

        1. Start the stage's steps that have work (finished or replayed steps need no worker).
        2. Loop until every step of the stage finished:
           a. a stop request (Ctrl+C, `pipeline.stop()`) drains what is in flight and raises;
           b. advance every active step: pull generators, replay stored batches, cut and
              send input batches, close lineages, finish steps;
           c. handle the executor's events (results are stored, then released in key order);
           d. nothing moved and nothing in flight: raise `EngineError` with the buckets.
        3. Stop the stage's workers (`unload()`), so the next stage can load.
        """
        stage_set = set(stage) | {s.name for s in self.active}
        self.active = [self.states[n] for n in self.plan.order if n in stage_set]
        self._start([self.states[n] for n in self.plan.order if n in stage])
        while not all(self.states[name].finished for name in stage):
            if self.stop_requested():
                self._drain_and_interrupt()
            progressed = self._advance()
            if all(self.states[name].finished for name in stage):
                break
            inflight = sum(s.inflight for s in self.active)
            if not progressed and inflight == 0:
                self._raise_stuck(stage)
            for event in self.executor.events(0 if progressed else 0.05):
                self._handle(event)
            self.on_tick()
        started = [n for n in stage if self.states[n].had_workers]
        if started:
            self.executor.stop_steps(started)

    def _start(self, states: list[StepState]) -> None:
        # A finished step replayed inside routed branches answers every batch from its
        # store: it needs no worker.
        to_start = [
            s for s in states
            if s.mode == "compute" and not s.finished and (not s.store.finished or s.retry is not None)
        ]
        if not to_start:
            return
        replicas_ibs = sum(s.input_batch_size * s.max_inflight * max(1, len(s.preds)) for s in to_start)
        self.buffer_cap = max(_MIN_BUFFERED_ROWS, 2 * replicas_ibs)
        now = time.monotonic()
        for state in to_start:
            state.move(StepStatus.RUNNING)
            state.stats.started_at = now
        self.executor.start([self._dry_run_step(s.step) for s in to_start], self.context)

    def _dry_run_step(self, step: Any) -> Any:
        """The step the executor runs: in a dry run a generator is a copy that makes
        batches of `dry_run_rows` rows (distilabel's dry run sets every generator's
        `batch_size`), so its one batch is that size; the user's step is not modified."""
        if self.dry_run_rows is None or not step.is_generator or "batch_size" not in type(step).model_fields:
            return step
        return step.model_copy(update={"batch_size": self.dry_run_rows})

    def _advance(self) -> bool:
        progressed = self._send_due_retries()
        for state in self.active:
            if state.finished:
                continue
            if state.step.is_generator or state.mode == "source":
                progressed |= self._advance_source(state)
            else:
                progressed |= self._advance_compute(state)
            progressed |= self._maybe_finish(state)
        return progressed

    # -- events --------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, Finished):
            result = event.result
            state = self.states[result.step_name]
            state.stats.seconds += result.seconds
            state.last_activity = time.monotonic()
            state.sent.pop(result.key, None)
            if result.suspended is not None:
                self._suspend(state, result.key, result.suspended)
                return
            state.inflight -= 1
            self.tasks.pop((state.name, result.key), None)
            rows, last = result.rows, result.last
            if state.step.is_generator:
                if state.exhausted:  # a pull sent ahead of the last batch: nothing to keep
                    state.dispatched.remove(result.key)
                    return
                if state.status is StepStatus.PULLING:
                    state.move(StepStatus.RUNNING)  # a pull is answered
                if self.dry_run_rows is not None:
                    rows, last = rows[: self.dry_run_rows], True
            record = BatchRecord(result.key, rows, last, result.error)
            state.store.put(record)
            if result.key in state.resumed:  # stored: its suspended state is spent
                state.resumed.discard(result.key)
                state.store.put_suspended(result.key, None)
            payload = self.payloads.pop((state.name, result.key), None)
            if payload is not None:
                self.batch_storage.discard(payload)
            self._accept(state, record, cached=False)
        elif isinstance(event, Failed):
            if isinstance(event.exception, StepContractError):  # the step's code must change
                raise StepContractError(
                    f"{event.exception}\nWorker traceback:\n{event.traceback}",
                    step_name=event.step_name,
                ) from event.exception
            raise StepRuntimeError(
                f"{event.describe()} and the run stopped: "
                f"{type(event.exception).__name__}: {event.exception}\n"
                f"Worker traceback:\n{event.traceback}\n"
                "Finished work is cached; fix the step and run again to resume.",
                step_name=event.step_name,
            ) from event.exception
        elif isinstance(event, Died):
            raise WorkerDiedError(
                f"A worker of step {event.step_name!r} (replica {event.replica}) died: "
                f"{event.detail}. This is usually the system killing it (out of memory) or "
                "a crash in native code. Finished work is cached; run again to resume.",
                step_name=event.step_name,
            )
        elif isinstance(event, Loaded):
            self.states[event.step_name].loaded_replicas += 1
            began = self.states[event.step_name].stats.started_at
            logger.info("Step %r replica %d loaded in %.2f s", event.step_name, event.replica,
                        time.monotonic() - began if began else 0.0)

    # -- generators and replays of finished steps --------------------------------------

    def _advance_source(self, state: StepState) -> bool:
        progressed = False
        for _ in range(_REPLAY_CHUNK):
            if state.inflight >= self._pulls_ahead(state) or state.exhausted or not self._can_pull():
                break
            if state.mode == "source":
                if state.replay is None:
                    state.move(StepStatus.RUNNING)  # replays its store, without workers
                    state.replay = state.store.records()
                record = next(state.replay, None)  # type: ignore[call-overload]
                if record is None:
                    state.move(StepStatus.EXHAUSTED)
                    return True
                state.dispatched.append(record.key)
                self._accept(state, record, cached=True)
                progressed = True
                continue
            key = (0, state.next_index)
            record = state.store.get(key) if state.replay is None else None
            state.next_index += 1
            state.dispatched.append(key)
            progressed = True
            if record is not None:
                state.offset += len(record.rows)
                self._accept(state, record, cached=True)
                continue
            state.replay = iter(())  # from here on the worker produces every batch
            if state.status is not StepStatus.PULLING:
                state.move(StepStatus.PULLING)
            self._send(state, Task(state.name, key, None, state.offset))
        return progressed

    def _pulls_ahead(self, state: StepState) -> int:
        """Pulls a generator may have in flight: one where the executor may run a
        replica's tasks out of order, or for an async generator (its replica would run
        two pulls at once on one async generator)."""
        if state.step.is_async or not self.executor.runs_in_order:
            return 1
        return PULLS_AHEAD

    def _can_pull(self) -> bool:
        buffered = sum(s.buffered() + len(s.results) for s in self.active if not s.finished)
        if buffered < self.buffer_cap:
            return True
        return sum(s.inflight for s in self.active) == 0

    # -- cutting input batches ---------------------------------------------------------

    def _advance_compute(self, state: StepState) -> bool:
        progressed = False
        while state.lineages:
            lineage_id, lineage = next(iter(state.lineages.items()))
            if not lineage.input_closed:
                progressed |= self._cut(state, lineage_id, lineage)
            if lineage.input_closed and lineage.outstanding == 0:
                del state.lineages[lineage_id]
                self._close_lineage(state, lineage_id)
                progressed = True
                continue
            break
        return progressed

    def _cut(self, state: StepState, lineage_id: int, lineage: Lineage) -> bool:
        if state.step.is_global:
            if not lineage.all_closed():
                return False
            lineage.input_closed = True
            if any(lineage.buffers[p] for p in lineage.expected):
                inputs, span = lineage.take_all()
                state.spans[(lineage_id, 0)] = self._own_span(state, span)
                self._issue(state, lineage, (lineage_id, 0), inputs)
            return True
        size = state.input_batch_size
        progressed = False
        while True:
            self._check_aligned(state, lineage)
            counts = [len(lineage.buffers[p]) for p in lineage.expected]
            available = min(counts, default=0)
            closed = lineage.all_closed()
            if closed and len(set(counts)) > 1:
                self._misaligned(state, lineage, counts)
            if available < size and not (closed and available > 0):
                if closed:
                    lineage.input_closed = True
                    return True
                return progressed
            take = min(available, size)
            key = (lineage_id, lineage.next_index)
            record = _reusable(state, state.store.get(key))
            if record is None and (state.inflight >= state.max_inflight or self.stop_requested()):
                return progressed
            inputs, span = lineage.take(take)
            state.spans[key] = self._own_span(state, span)
            self._issue(state, lineage, key, inputs, record)
            progressed = True

    def _issue(
        self,
        state: StepState,
        lineage: Lineage,
        key: tuple[int, int],
        inputs: list[list[Any]],
        record: BatchRecord | None = None,
    ) -> None:
        lineage.next_index += 1
        lineage.outstanding += 1
        state.dispatched.append(key)
        state.dispatched_rows[key] = len(inputs[0]) if inputs else 0
        state.stats.rows_in += state.dispatched_rows[key]
        if record is None and state.step.is_global:
            record = _reusable(state, state.store.get(key))
        if record is not None:
            self._accept(state, record, cached=True)
            return
        if TRACE:
            logger.debug("send %s %s (%d rows)", state.name, key, len(inputs[0]) if inputs else 0)
        payload: Any = inputs
        if self.batch_storage is not None and (self.use_fs_to_pass_data or state.step.is_global):
            payload = self.batch_storage.put(state.name, key, inputs)
            self.payloads[(state.name, key)] = payload
        saved = state.store.get_suspended(key)
        if saved is not None:
            state.resumed.add(key)
        self._send(state, Task(state.name, key, payload, resume_state=saved and saved.get("state")))

    def _send(self, state: StepState, task: Task) -> None:
        """Hand `task` to the executor and count it in flight."""
        if state.inflight == 0:
            state.last_activity = time.monotonic()
        state.inflight += 1
        state.sent[task.key] = time.monotonic()
        if self.wait_for_suspended:
            self.tasks[(state.name, task.key)] = task
        self.executor.send(task)

    # -- suspended batches ------------------------------------------------------------------

    def _suspend(self, state: StepState, key: tuple[int, int], suspended: dict[str, Any]) -> None:
        """A batch's step raised `SuspendStep`: keep its state; send it again after
        `retry_after` (`wait_for_suspended`) or leave it for the next run."""
        state.store.put_suspended(key, suspended)
        state.resumed.add(key)
        task = self.tasks.get((state.name, key))
        if self.wait_for_suspended and task is not None:
            delay = suspended.get("retry_after")
            delay = DEFAULT_RETRY_AFTER if delay is None else max(0.0, float(delay))
            logger.info("Step %r suspended batch %s; sending it again in %.1f s.", state.name, key, delay)
            self.retries.append((time.monotonic() + delay, dataclasses.replace(task, resume_state=suspended["state"])))
            state.inflight -= 1  # `_send` counts it again
            return
        state.inflight -= 1
        state.suspended.add(key)
        payload = self.payloads.pop((state.name, key), None)
        if payload is not None:
            self.batch_storage.discard(payload)
        logger.warning(
            "Step %r suspended batch %s; its state is saved. The rest of the pipeline goes on; "
            "run the pipeline again to resume it.", state.name, key,
        )

    def _send_due_retries(self) -> bool:
        if not self.retries:
            return False
        now = time.monotonic()
        due = [task for when, task in self.retries if when <= now]
        if not due:
            return False
        self.retries = [(when, task) for when, task in self.retries if when > now]
        for task in due:
            self._send(self.states[task.step_name], task)
        return True

    def _raise_stuck(self, stage: list[str]) -> None:
        """Nothing moves and nothing is in flight: suspended steps, or an engine bug."""
        if self.retries:
            return  # suspended batches wait for their retry time
        suspended = {s.name: len(s.suspended) for s in self.states.values() if s.suspended}
        if not suspended:
            raise EngineError(self._stuck_message(stage))
        listed = ", ".join(f"{name!r} ({n} batch{'es' if n > 1 else ''})" for name, n in suspended.items())
        raise StepsSuspendedError(
            f"The run stopped with suspended steps: {listed}. Their state and everything "
            "else that finished is saved. Run the pipeline again (with use_cache=True) to "
            "resume them, or pass wait_for_suspended=True to run() to wait for them in one run.",
            steps=suspended,
        )

    # -- hung steps ---------------------------------------------------------------------------

    def _watch_stalls(self) -> None:
        """Warn about a step that gave no result for `STALL_WARNING` s with batches in
        flight, or whose workers have not finished `load()` for as long."""
        now = time.monotonic()
        for state in list(self.active):
            sent = dict(state.sent)  # one step at a time: the loop changes it meanwhile
            began = state.stats.started_at
            loading = began is not None and not state.loaded_replicas and not state.finished
            if loading:
                silent = now - began  # type: ignore[operator]
            elif state.inflight and sent:
                silent = now - state.last_activity
            else:
                continue
            if silent < STALL_WARNING or now - state.stall_warned_at < STALL_WARNING:
                continue
            state.stall_warned_at = now
            if loading:
                logger.warning(
                    "Step %r has not finished loading after %.0f s: its load() may be hung "
                    "(batch_timeout covers batches, not load()). Press Ctrl+C to stop "
                    "(finished work is cached).", state.name, silent,
                )
                continue
            oldest = min(sent, key=sent.__getitem__)
            logger.warning(
                "Step %r has given no result for %.0f s; its oldest batch in flight is %s "
                "(sent %.0f s ago). It may be hung: set `batch_timeout` on the step to fail "
                "such batches, or press Ctrl+C to stop (finished work is cached).",
                state.name, silent, oldest, now - sent[oldest],
            )

    def _check_aligned(self, state: StepState, lineage: Lineage) -> None:
        """Predecessors must send the same number of rows for the same upstream rows, batch
        by batch: equal totals are not enough (one drops a row, another duplicates one)."""
        found = lineage.misalignment()
        if found is None:
            return
        position, counts = found
        detail = ", ".join(f"{p!r}: {n} rows" for p, n in counts.items())
        raise MisalignedInputsError(
            f"Step {state.name!r} gets rows from {len(lineage.expected)} predecessors "
            f"({', '.join(map(repr, lineage.expected))}), but they are not aligned: for the "
            f"upstream rows before row {position} they produced different numbers of rows "
            f"({detail}), so rows would be paired with the wrong partners, even where the totals "
            "match. If one of them filters or expands rows, do that after joining instead, or "
            "connect the step to a single predecessor.",
            step_name=state.name,
        )

    def _misaligned(self, state: StepState, lineage: Lineage, counts: list[int]) -> None:
        detail = ", ".join(f"{p!r}: {n} rows" for p, n in zip(lineage.expected, counts, strict=True))
        raise MisalignedInputsError(
            f"Step {state.name!r} gets rows from {len(lineage.expected)} predecessors, but they "
            f"produced different numbers of rows ({detail} left to align). Rows cannot be "
            "paired. If one of them filters rows, filter after joining instead, or connect "
            "the step to a single predecessor.",
            step_name=state.name,
        )

    # -- releasing finished batches in order -------------------------------------------

    def _accept(self, state: StepState, record: BatchRecord, *, cached: bool) -> None:
        state.results[record.key] = record
        if cached:
            state.stats.cached_batches += 1
        else:
            state.stats.computed_rows += len(record.rows)
        while state.dispatched and state.dispatched[0] in state.results:
            key = state.dispatched.popleft()
            self._emit(state, state.results.pop(key))

    def _emit(self, state: StepState, record: BatchRecord) -> None:
        rows = record.rows
        if TRACE:
            logger.debug("release %s %s (%d rows)", state.name, record.key, len(rows))
        state.stats.batches += 1
        state.stats.rows_done += state.dispatched_rows.pop(record.key, 0)
        state.stats.rows_out += len(rows)
        if record.error:
            state.stats.failed_batches += 1
        if state.is_leaf and rows:
            self.writer.write(state.name, rows)
        if len(state.succs) > 1 or (state.is_leaf and state.succs):
            rows = _Fresh(rows)  # in-process executors must not let consumers share dicts
        if state.step.is_generator or state.mode == "source":
            if record.last or (state.step.is_generator and self.dry_run_rows is not None):
                state.move(StepStatus.EXHAUSTED)
        elif record.key[0] in state.lineages:
            state.lineages[record.key[0]].outstanding -= 1
        span = self._span_of(state, record)
        if state.name in self.plan.routing:
            self._route(state, rows, span)
        else:
            lineage_id = record.key[0] if state.region is not None else 0
            for succ in state.succs:
                target = self.states[succ].lineages.get(lineage_id)
                if target is not None:
                    target.add(state.name, rows, span)
                    rows = _Fresh.again(rows)
        state.released += 1

    def _span_of(self, state: StepState, record: BatchRecord) -> Span:
        """The upstream rows a released batch derives from (see `OriginTrace`)."""
        if state.step.is_generator:  # a generator's rows are the upstream rows
            start = state.origin_rows
            state.origin_rows += len(record.rows)
            return (state.name, start, state.origin_rows, True)
        return state.spans.pop(record.key, None)

    @staticmethod
    def _own_span(state: StepState, span: Span) -> Span:
        """A step that joins rows of different generators is the root of its outputs."""
        if span is None or span[0] is not None:
            return span
        start = state.origin_rows
        state.origin_rows += span[2]
        return (state.name, start, state.origin_rows, True)

    def _route(self, state: StepState, rows: list[Any], span: Span) -> None:
        ordinal = state.released
        chosen = state.store.get_route(ordinal)
        if chosen is None:
            chosen = self._call_routing(state)
            unknown = [name for name in chosen if name not in state.succs]
            if unknown:
                raise RoutingError(
                    f"The routing function of step {state.name!r} returned {unknown!r}, which "
                    f"are not its successors {state.succs!r}. Return names from the list it gets."
                )
            chosen = list(dict.fromkeys(chosen))
            state.store.put_route(ordinal, chosen)
        reached = set(chosen)
        for name in self.plan.routed_to(state.name):
            target = self.states[name]
            if name not in reached and any(p in reached for p in target.preds):
                reached.add(name)
            expected = [p for p in target.preds if p in reached or p == state.name]
            if name in reached and expected:
                target.lineages[ordinal] = Lineage.for_preds(expected)
        for name in chosen:
            lineage = self.states[name].lineages[ordinal]
            rows = _Fresh.again(rows)
            lineage.add(state.name, rows, span)
            lineage.closed.add(state.name)

    def _call_routing(self, state: StepState) -> list[str]:
        function = self.plan.routing[state.name]
        try:
            return function(list(state.succs))
        except Exception as exc:
            raise RoutingError(
                f"The routing function {function.name!r} after step {state.name!r} raised "
                f"{type(exc).__name__}: {exc} (on batch {state.released} of {state.name!r}, "
                f"choosing among {state.succs!r}). Fix the function: it gets the list of "
                "successor names and must return the names the batch goes to."
            ) from exc

    def _close_lineage(self, state: StepState, lineage_id: int) -> None:
        if state.region is None:
            return  # outside branches the only lineage closes when the step finishes
        for succ in state.succs:
            target = self.states[succ].lineages.get(lineage_id)
            if target is not None:
                target.closed.add(state.name)

    def _maybe_finish(self, state: StepState) -> bool:
        if state.finished or state.inflight or state.dispatched:
            return False
        if state.step.is_generator or state.mode == "source":
            if not state.exhausted:
                return False
        elif state.lineages or len(state.finished_preds) < len(state.preds):
            return False
        state.move(StepStatus.FINISHED)
        if state.mode == "compute":
            state.store.mark_finished()
        if state.is_leaf:
            self.writer.finish(state.name)
        for succ in state.succs:
            target = self.states[succ]
            target.finished_preds.add(state.name)
            if not target.lineaged and 0 in target.lineages:
                target.lineages[0].closed.add(state.name)
        return True

    # -- stopping ------------------------------------------------------------------------

    def _drain_and_interrupt(self) -> None:
        """First Ctrl+C: send nothing new, store what is in flight for up to `STOP_GRACE`
        seconds, then interrupt (batches still in flight are recomputed on resume)."""
        self.retries.clear()  # suspended batches waiting to be re-sent wait for the next run
        logger.warning("Stopping: waiting up to %.0f s for %d batch(es) in flight; press Ctrl+C "
                       "again to kill.", STOP_GRACE, sum(s.inflight for s in self.active))
        deadline = time.monotonic() + STOP_GRACE
        while sum(s.inflight for s in self.active):
            if time.monotonic() >= deadline:
                late = {s.name: s.inflight for s in self.active if s.inflight}
                logger.warning("Batches still in flight after %.0f s are given up (recomputed on "
                               "resume): %s.", STOP_GRACE, late)
                self.gave_up_on_stop = True
                break
            for event in self.executor.events(0.1):
                if isinstance(event, Finished | Died | Failed):
                    try:
                        self._handle(event)
                    except StepRuntimeError:
                        logger.exception("A step failed while stopping")
                        raise KeyboardInterrupt from None
            self.on_tick()
        raise KeyboardInterrupt

    def _stuck_message(self, stage: list[str]) -> str:
        waiting = {
            s.name: {
                "lineages": {k: (v.expected, sorted(v.closed), v.buffered()) for k, v in list(s.lineages.items())[:3]},
                "finished_preds": sorted(s.finished_preds),
                "dispatched": list(s.dispatched)[:3],
            }
            for s in self.active
            if not s.finished
        }
        return f"The engine cannot make progress in stage {stage!r}; waiting steps: {waiting}. Please report this."


def _reusable(state: StepState, record: BatchRecord | None) -> BatchRecord | None:
    """A stored batch, unless `run(retry_failed=True)` recomputes it."""
    if record is None or state.retry is None:
        return record
    if state.retry == "all" or record.error is not None:
        return None
    return record


class _Fresh(list):
    """Rows that must be copied before a second consumer gets them."""

    def __init__(self, rows: list[Any]) -> None:
        super().__init__(dict(row) for row in rows)

    @staticmethod
    def again(rows: list[Any]) -> list[Any]:
        return _Fresh(rows) if isinstance(rows, _Fresh) else rows
