"""The scheduling state of one run: per step, per lineage, per batch.

A step's output is a stream of batches ordered by `BatchKey = (lineage, index)`.
Outside routed branches every batch has lineage 0. A routing step's n-th
released batch starts lineage n in its branches; branch steps never cut a batch
across lineages, and the convergence step receives, per lineage, one list per
branch the batch was routed to. Because batch keys depend only on the data, a
resumed run cuts exactly the same batches and can look each one up in the cache.
"""

from __future__ import annotations

import bisect
import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from stillhouse.core.dag import DAG
from stillhouse.core.engine.plan import ExecutionPlan
from stillhouse.core.engine.protocol import BatchKey, BatchRecord, OutputWriter, StepStore
from stillhouse.core.errors import EngineError
from stillhouse.core.step import _Step
from stillhouse.core.typing import Row

Mode = Literal["skip", "source", "compute"]
"""skip: nothing downstream needs it; source: replay its finished stored outputs without
looking at its inputs; compute: cut inputs and run (or look up) every batch."""


Span = tuple[str | None, int, int, bool] | None
"""`(root, start, end, exact)`: a batch derives from rows `[start, end)` of `root`'s
output, `root` being the generator the rows come from (or the step that first joined
rows of different generators, which pair by position: its input rows are its root's
rows; None while being cut). `exact`: its rows map one to one onto those upstream rows
(as far as row counts can tell). None when unknown (a finished step replayed from its
store)."""


@dataclass
class OriginTrace:
    """Which upstream rows the rows one predecessor sent to one lineage derive from.

    Every released batch adds a segment: its span and its row count. Where the segment
    is exact, its rows map one to one onto its upstream rows; elsewhere (a filter, an
    expander, a batch cut through such a segment) only its ends are known, and the
    spans of consecutive segments may overlap. `rows_before(p)` is how many rows derive
    from upstream rows before `p`, when that is known: predecessors whose rows are
    aligned agree on it wherever they all know it.
    """

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)  # rows up to and including each segment
    pending: deque[list[Any]] = field(default_factory=deque)  # [start, end, rows, exact] not cut yet
    root: str | None = None
    unknown: bool = False
    history: bool = True  # keep every segment (only a step with several predecessors checks them)

    def add(self, span: Span, rows: int) -> None:
        if span is None or (self.root is not None and span[0] != self.root):
            self.unknown = True
            return
        self.root, start, end, exact = span
        exact = exact and rows == end - start
        self.pending.append([start, end, rows, exact])
        if not self.history:
            return
        self.starts.append(start)
        self.ends.append(end)
        self.exact.append(exact)
        self.totals.append((self.totals[-1] if self.totals else 0) + rows)

    def settled(self, closed: bool) -> int:
        """Upstream position up to which no later batch can add rows: a later batch may
        start inside the last one (a cut through a segment that is not exact)."""
        if not self.ends:
            return 0
        return self.ends[-1] if closed else self.starts[-1]

    def rows_before(self, position: int) -> int | None:
        done = bisect.bisect_right(self.ends, position)  # segments that end by `position`
        before = self.totals[done - 1] if done else 0
        if done == len(self.ends):
            return before
        if self.starts[done] >= position:  # starts never decrease: nothing straddles
            return before
        if self.exact[done]:
            return before + (position - self.starts[done])
        return None

    def take(self, rows: int) -> Span:
        """The upstream span of the next `rows` buffered rows, which are being cut."""
        if self.unknown:
            return None
        first: int | None = None
        last, exact = 0, True
        while rows > 0 and self.pending:
            segment = self.pending[0]
            start, end, count, whole = segment
            first = start if first is None else first
            exact = exact and whole
            if count <= rows:
                self.pending.popleft()
                rows -= count
                last = max(last, end)
                continue
            if whole:  # one to one: split exactly
                segment[:] = [start + rows, end, count - rows, True]
                last = max(last, start + rows)
            else:  # both parts may derive from anywhere in the segment
                segment[:] = [start, end, count - rows, False]
                last, exact = max(last, end), False
            rows = 0
        while self.pending and self.pending[0][2] == 0:  # batches that produced no rows
            start, end, _, whole = self.pending.popleft()
            first = start if first is None else first
            last, exact = max(last, end), exact and whole
        return None if first is None else (self.root, first, last, exact)


@dataclass
class Lineage:
    """Rows waiting to be cut into batches for one lineage of one step."""

    expected: list[str]
    buffers: dict[str, list[Row]]
    closed: set[str] = field(default_factory=set)
    next_index: int = 0
    outstanding: int = 0
    input_closed: bool = False
    traces: dict[str, OriginTrace] = field(default_factory=dict)
    verified: int = 0  # upstream position up to which the predecessors were found aligned

    @classmethod
    def for_preds(cls, preds: list[str]) -> Lineage:
        return cls(
            expected=list(preds),
            buffers={p: [] for p in preds},
            traces={p: OriginTrace(history=len(preds) > 1) for p in preds},
        )

    def buffered(self) -> int:
        return sum(len(rows) for rows in self.buffers.values())

    def all_closed(self) -> bool:
        return all(p in self.closed for p in self.expected)

    def add(self, pred: str, rows: list[Row], span: Span) -> None:
        """Buffer a released batch of `pred`, remembering the upstream rows it derives from."""
        self.buffers[pred].extend(rows)
        self.traces[pred].add(span, len(rows))

    def take(self, size: int) -> tuple[list[list[Row]], Span]:
        """Cut `size` rows from every predecessor: the inputs and their upstream span."""
        inputs, spans = [], []
        for pred in self.expected:
            rows = self.buffers[pred]
            inputs.append(rows[:size])
            del rows[:size]
            spans.append(self.traces[pred].take(size))
        if not spans or any(span is None for span in spans):
            return inputs, None
        known: list[tuple[str | None, int, int, bool]] = spans  # type: ignore[assignment]
        if len({span[0] for span in known}) > 1:
            return inputs, (None, 0, size, True)  # rows of different roots: pair by position
        exact = len({span[1:3] for span in known}) == 1 and all(span[3] for span in known)
        return inputs, (known[0][0], min(s[1] for s in known), max(s[2] for s in known), exact)

    def take_all(self) -> tuple[list[list[Row]], Span]:
        """Every buffered row of every predecessor (a global step's one batch)."""
        inputs, span = self.take(max((len(rows) for rows in self.buffers.values()), default=0))
        return inputs, span

    def misalignment(self) -> tuple[int, dict[str, int]] | None:
        """`(position, rows per predecessor)` where predecessors disagree on how many rows
        derive from the upstream rows before `position`; None while they agree.

        Only positions every predecessor has settled are checked, each once.
        """
        traces = [self.traces[p] for p in self.expected]
        if len(traces) < 2 or any(t.unknown or not t.ends for t in traces):
            return None
        if len({t.root for t in traces}) > 1:
            return None  # rows of different generators pair by position: nothing to check
        frontier = min(self.traces[p].settled(p in self.closed) for p in self.expected)
        if frontier <= self.verified:
            return None
        points: set[int] = set()
        for trace in traces:
            low = bisect.bisect_right(trace.ends, self.verified)
            high = bisect.bisect_right(trace.ends, frontier)
            points.update(trace.ends[low:high])
        for position in sorted(points):
            counts = {p: self.traces[p].rows_before(position) for p in self.expected}
            known = {p: n for p, n in counts.items() if n is not None}
            if len(set(known.values())) > 1:
                return position, known
        self.verified = frontier
        return None


@dataclass
class StepStats:
    rows_in: int = 0  # rows of the batches sent (or taken from the cache), in flight too
    rows_done: int = 0  # rows in of the batches released: `rows_in` without those in flight
    rows_out: int = 0  # a step taken whole from the cache ("skip"): the rows its store holds
    # (its rows in and failed batches too, see `_stored_figures`)
    batches: int = 0
    cached_batches: int = 0
    failed_batches: int = 0
    computed_rows: int = 0  # rows out of batches computed in this run (not from the cache)
    seconds: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None


class StepStatus(enum.Enum):
    """Where a step is in this run; `StepState.move` is the only place that changes it."""

    WAITING = "waiting"  # nothing sent, nothing released yet
    RUNNING = "running"  # its workers are started, or it replays or cuts batches
    PULLING = "pulling"  # a generator waits for the batch it asked its worker for
    EXHAUSTED = "exhausted"  # a generator or a replay gave its last batch; releases remain
    FINISHED = "finished"  # every batch released and its successors told
    SKIPPED = "skipped"  # nothing after it needs its rows: it does nothing in this run


_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.WAITING: frozenset(StepStatus) - {StepStatus.WAITING},
    StepStatus.RUNNING: frozenset({StepStatus.PULLING, StepStatus.EXHAUSTED, StepStatus.FINISHED}),
    StepStatus.PULLING: frozenset({StepStatus.RUNNING}),
    StepStatus.EXHAUSTED: frozenset({StepStatus.FINISHED}),
    StepStatus.FINISHED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
}
"""The moves a status may make; any other is an engine bug."""


@dataclass
class StepState:
    name: str
    step: _Step
    preds: list[str]
    succs: list[str]
    store: StepStore
    mode: Mode = "compute"
    region: str | None = None  # the routing step whose branches this step is in
    lineaged: bool = False  # inputs arrive per lineage (region member or convergence step)
    is_leaf: bool = False
    lineages: dict[int, Lineage] = field(default_factory=dict)
    dispatched: deque[BatchKey] = field(default_factory=deque)
    dispatched_rows: dict[BatchKey, int] = field(default_factory=dict)  # rows in, until released
    results: dict[BatchKey, BatchRecord] = field(default_factory=dict)
    spans: dict[BatchKey, Span] = field(default_factory=dict)  # upstream rows of batches cut
    origin_rows: int = 0  # rows so far of a root (generator, join of generators): next position
    inflight: int = 0
    finished_preds: set[str] = field(default_factory=set)
    status: StepStatus = StepStatus.WAITING
    released: int = 0
    stats: StepStats = field(default_factory=StepStats)
    # generators and "source" replays
    next_index: int = 0
    offset: int = 0
    replay: object | None = None  # an iterator of stored records
    # run(retry_failed=True): "failed" recomputes the stored batches that failed, "all"
    # (a step after such a step) recomputes every batch; None reuses what is stored.
    retry: Literal["failed", "all"] | None = None
    # batches in flight, suspension and stall watching
    sent: dict[BatchKey, float] = field(default_factory=dict)  # key -> when it was sent
    resumed: set[BatchKey] = field(default_factory=set)  # sent with a suspended state
    suspended: set[BatchKey] = field(default_factory=set)  # suspended: wait for the next run
    last_activity: float = 0.0
    stall_warned_at: float = 0.0
    loaded_replicas: int = 0  # replicas whose load() returned (a replaced one loads again)

    def move(self, status: StepStatus) -> None:
        """Change the status (the only place it changes): refuses a move `_MOVES` does not
        allow, and records when the step started its workers or finished."""
        if status is self.status:
            return
        if status not in _MOVES[self.status]:
            raise EngineError(
                f"Step {self.name!r} cannot go from {self.status.value} to {status.value}. "
                "This is an engine bug: please report it."
            )
        if status is StepStatus.FINISHED:
            self.stats.ended_at = time.monotonic()
        self.status = status

    @property
    def finished(self) -> bool:
        """Done for this run: finished, or skipped."""
        return self.status in (StepStatus.FINISHED, StepStatus.SKIPPED)

    @property
    def exhausted(self) -> bool:
        """A generator or a replay has nothing more to produce (or is done)."""
        return self.status is StepStatus.EXHAUSTED or self.finished

    @property
    def had_workers(self) -> bool:
        """Workers were started for this step in this run."""
        return self.stats.started_at is not None

    @property
    def max_inflight(self) -> int:
        """Batches in flight at once: two per replica (one running, one queued); an
        async replica works on `concurrency` at once, plus one queued."""
        if not self.step.is_normal:
            return 1
        replicas = self.step.resources.replicas or 1
        if self.step.is_async:
            return replicas * (int(getattr(self.step, "concurrency", 1)) + 1)
        return 2 * replicas

    @property
    def input_batch_size(self) -> int:
        return int(getattr(self.step, "input_batch_size", 50) or 50)

    def buffered(self) -> int:
        return sum(lineage.buffered() for lineage in self.lineages.values())


def build_states(
    plan: ExecutionPlan,
    dag: DAG,
    stores: dict[str, StepStore],
    writer: OutputWriter,
    *,
    retry_failed: bool = False,
) -> dict[str, StepState]:
    """One `StepState` per step of `plan` (steps from `dag`), with its mode decided from
    what is already stored.

    `retry_failed`: steps whose stored batches recorded a failure recompute those batches,
    and every step after them recomputes all of its batches (their inputs change); each
    keeps its store, so its durable folder (a call record) is kept too."""
    states: dict[str, StepState] = {}
    for name in plan.order:
        state = StepState(
            name=name,
            step=dag.get_step(name),
            preds=list(plan.predecessors[name]),
            succs=list(plan.successors[name]),
            store=stores[name],
            region=plan.region_of[name],
            lineaged=plan.lineaged(name),
            is_leaf=not plan.successors[name],
        )
        if not state.lineaged and not state.step.is_generator:
            state.lineages[0] = Lineage.for_preds(state.preds)
        states[name] = state
    if retry_failed:
        _mark_retries(plan, states)
    _decide_modes(plan, states, writer)
    for state in states.values():
        if state.mode != "compute":
            _stored_figures(state, states)
    return states


def _stored_figures(state: StepState, states: dict[str, StepState]) -> None:
    """The figures of a finished step whose stored outputs are reused, from what the
    stores read when opened (never the batches; 0 where a store cannot say).

    Its inputs are not cut in this run: its rows in are the rows its first predecessor's
    store gives, which it consumed (they are unchanged, else it would not be reused);
    inside routed branches it got only the rows routed to it, which no store counts.
    Taken whole ("skip"), it releases nothing in this run: its rows out and failed
    batches are its store's. A replay ("source") counts those as its batches go by."""
    stats = state.stats
    if state.preds and not state.lineaged:
        stats.rows_in = states[state.preds[0]].store.stored_rows() or 0
    if state.mode == "skip":
        stats.rows_out = state.store.stored_rows() or 0
        stats.failed_batches = state.store.stored_failed_batches() or 0


def _mark_retries(plan: ExecutionPlan, states: dict[str, StepState]) -> None:
    """`retry = "failed"` on steps whose stores hold failed batches, `"all"` after them."""
    for name in plan.order:
        state = states[name]
        if any(states[p].retry is not None for p in state.preds):
            state.retry = "all"
        elif not state.step.is_generator and state.store.failed_keys():
            state.retry = "failed"


def _decide_modes(plan: ExecutionPlan, states: dict[str, StepState], writer: OutputWriter) -> None:
    """Walk backwards: a step runs only if something after it needs its rows."""
    needs_inputs: dict[str, bool] = {}
    for name in reversed(plan.order):
        state = states[name]
        finished = state.store.finished and state.retry is None
        complete = state.retry is None and writer.is_complete(name, state.store.version)
        wanted = (state.is_leaf and not complete) or any(
            needs_inputs[succ] for succ in state.succs
        )
        if not finished:
            state.mode = "compute"
        elif not wanted:
            state.mode = "skip"
        elif state.region is not None:
            state.mode = "compute"  # lineage closings inside branches are replayed, not stored
        else:
            state.mode = "source"
        needs_inputs[name] = state.mode == "compute" and not state.step.is_generator
