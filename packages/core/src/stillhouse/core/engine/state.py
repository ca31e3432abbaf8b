"""The scheduling state of one run: per step, per lineage, per batch.

A step's output is a stream of batches ordered by `BatchKey = (lineage, index)`.
Outside routed branches every batch has lineage 0. A routing step's n-th
released batch starts lineage n in its branches; branch steps never cut a batch
across lineages, and the convergence step receives, per lineage, one list per
branch the batch was routed to. Because batch keys depend only on the data, a
resumed run cuts exactly the same batches and can look each one up in the cache.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from stillhouse.core.dag import DAG, convergence_steps, routing_context
from stillhouse.core.engine.protocol import BatchKey, BatchRecord, OutputWriter, StepStore
from stillhouse.core.step import _Step
from stillhouse.core.typing import Row

Mode = Literal["skip", "source", "compute"]
"""skip: nothing downstream needs it; source: replay its finished stored outputs without
looking at its inputs; compute: cut inputs and run (or look up) every batch."""


@dataclass
class Lineage:
    """Rows waiting to be cut into batches for one lineage of one step."""

    expected: list[str]
    buffers: dict[str, list[Row]]
    closed: set[str] = field(default_factory=set)
    next_index: int = 0
    outstanding: int = 0
    input_closed: bool = False

    @classmethod
    def for_preds(cls, preds: list[str]) -> Lineage:
        return cls(expected=list(preds), buffers={p: [] for p in preds})

    def buffered(self) -> int:
        return sum(len(rows) for rows in self.buffers.values())

    def all_closed(self) -> bool:
        return all(p in self.closed for p in self.expected)


@dataclass
class StepStats:
    rows_in: int = 0
    rows_out: int = 0
    batches: int = 0
    cached_batches: int = 0
    failed_batches: int = 0
    seconds: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None


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
    results: dict[BatchKey, BatchRecord] = field(default_factory=dict)
    inflight: int = 0
    finished_preds: set[str] = field(default_factory=set)
    finished: bool = False
    started: bool = False
    released: int = 0
    stats: StepStats = field(default_factory=StepStats)
    # generators and "source" replays
    pulling: bool = False
    source_done: bool = False
    next_index: int = 0
    offset: int = 0
    replay: object | None = None  # an iterator of stored records
    # batches in flight, suspension and stall watching
    sent: dict[BatchKey, float] = field(default_factory=dict)  # key -> when it was sent
    resumed: set[BatchKey] = field(default_factory=set)  # sent with a suspended state
    suspended: set[BatchKey] = field(default_factory=set)  # suspended: wait for the next run
    last_activity: float = 0.0
    stall_warned_at: float = 0.0

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


def build_states(dag: DAG, stores: dict[str, StepStore], writer: OutputWriter) -> dict[str, StepState]:
    """One `StepState` per step, with its mode decided from what is already stored."""
    convergence = set(convergence_steps(dag).values())
    states: dict[str, StepState] = {}
    for name in dag.topological_order():
        region = routing_context(dag, name)
        state = StepState(
            name=name,
            step=dag.get_step(name),
            preds=dag.predecessors(name),
            succs=dag.successors(name),
            store=stores[name],
            region=region,
            lineaged=region is not None or name in convergence,
            is_leaf=not dag.successors(name),
        )
        if not state.lineaged and not state.step.is_generator:
            state.lineages[0] = Lineage.for_preds(state.preds)
        states[name] = state
    _decide_modes(dag, states, writer)
    return states


def _decide_modes(dag: DAG, states: dict[str, StepState], writer: OutputWriter) -> None:
    """Walk backwards: a step runs only if something after it needs its rows."""
    needs_inputs: dict[str, bool] = {}
    for name in reversed(dag.topological_order()):
        state = states[name]
        finished = state.store.finished
        wanted = (state.is_leaf and not writer.is_complete(name)) or any(
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
